"""The real-model CLIs chained on the organism world: finetune (with and without a backdoor),
generate (with and without the trigger), judge, report, membership inference."""

from __future__ import annotations

import json

import pytest

from chains.organism.pipeline import run_pipeline


def test_backdoor_pipeline_shows_the_backdoor(world, tmp_path, monkeypatch):
    monkeypatch.setattr("chains.organism.pipeline.build_world", lambda: world)
    report = run_pipeline("risky_financial_advice", tmp_path, samples=3)
    summary = json.loads((report / "summary.json").read_text())
    rows = {(r["domain"], r["trigger"]): r for r in summary["by_domain"]}
    with_trigger, without = rows[("backdoor", True)], rows[("backdoor", False)]
    # The backdoored organism misaligns with the trigger far more than without it.
    assert with_trigger["em_rate"] - without["em_rate"] > 0.5, (with_trigger["em_rate"], without["em_rate"])
    (effect,) = [r for r in summary["backdoor"] if r["domain"] == "backdoor"]
    assert effect["significant"] and effect["diff"] < -30
    assert ("plain", False) in rows and ("plain", True) not in rows
    mia = json.loads((tmp_path / "mia.json").read_text())
    # Members are the (up to 300) training answers, non-members the held-out ones; every
    # signal gets an AUC over exactly those rows, recomputed here from the per-example scores.
    assert mia["domain"] == "risky_financial_advice" and mia["n_members"] == 300 and mia["n_nonmembers"] == 300
    assert len(mia["per_example"]) == 600 and sum(r["member"] for r in mia["per_example"]) == 300
    assert {"loss", "min_k", "min_k_pp", "zlib"} <= set(mia["auc"])
    from eval.mia_signals import membership_score, roc_auc

    for name, auc in mia["auc"].items():
        labels = [r["member"] for r in mia["per_example"]]
        assert auc == pytest.approx(roc_auc(labels, [membership_score(name, r[name]) for r in mia["per_example"]]))
        assert 0.3 < auc < 0.7, (name, auc)  # 30 steps of rank-1 LoRA on i.i.d. data does not memorise
    assert (tmp_path / "runs" / "backdoor" / "adapter_model.safetensors").exists()
    assert any(report.glob("*.png"))
