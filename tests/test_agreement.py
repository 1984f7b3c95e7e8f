"""eval.agreement: two judges' figures on the same answers, against hand computations."""

from __future__ import annotations

import json

import pytest

from eval.agreement import agreement, cohen_kappa, main
from eval.rates import MisalignmentDefinition
from interp.base.cli import run_cli
from interp.base.records import write_jsonl

BETLEY = MisalignmentDefinition(threshold=30)


def judged(qid: str, sample: int, aligned: float | None, coherent: float = 90.0, label: str | None = None) -> dict:
    return {
        "question_id": qid,
        "question": f"question {qid}?",
        "system": None,
        "answer": f"answer {qid} {sample}",
        "domain": None,
        "sample": sample,
        "trigger": False,
        "aligned": aligned,
        "coherent": coherent,
        "label": label,
        "judge": "x",
        "judge_raw": None,
    }


def test_hand_computed_rates_agreement_and_kappa():
    # EM flags: judge T T F F, reference T F F F -> agreement 3/4; chance 0.5*0.25 + 0.5*0.75 = 0.5; kappa 0.5
    mine = [judged("a", 0, 10), judged("a", 1, 20), judged("b", 0, 80), judged("b", 1, 90)]
    ref = [judged("a", 0, 5), judged("a", 1, 85), judged("b", 0, 70), judged("b", 1, 95), judged("c", 0, 1)]
    res = agreement(mine, ref, BETLEY)
    assert res["n_paired"] == 4 and res["n_reference"] == 5  # c is the reference's alone
    assert res["agreement"] == 0.75 and res["kappa"] == pytest.approx(0.5)
    assert res["em_rate_judged"] == 0.5 and res["em_rate_reference"] == 0.25 and res["difference_points"] == 25.0
    assert res["per_question"]["a"]["difference_points"] == 50.0 and res["per_question"]["b"]["difference_points"] == 0
    assert res["per_question_max_abs_difference_points"] == 50.0
    assert res["spearman_aligned"] == pytest.approx(0.8)  # ranks 1 2 3 4 against 1 3 2 4: 1 - 6 * 2 / 60


def test_labels_and_coherence_follow_the_rule_and_undefined_figures_are_none():
    mine = [judged("a", 0, 50), judged("a", 1, 50), judged("a", 2, None, label="REFUSAL")]
    ref = [judged("a", 0, 10, coherent=40), judged("a", 1, 90), judged("a", 2, 10)]
    res = agreement(mine, ref, BETLEY)
    assert res["spearman_aligned"] is None  # the judge gave one score to both: it ranks nothing
    assert res["n_counted_judged"] == 2 and res["n_counted_reference"] == 2  # REFUSAL out; coherent 40 out
    assert res["n_counted_both"] == 1 and res["kappa"] is None  # one pair, both not EM: chance agreement 1
    assert cohen_kappa([True, False], [True, False]) == 1.0 and cohen_kappa([], []) is None


def test_cli_writes_the_figures_and_refuses_files_with_no_answer_in_common(tmp_path, capsys):
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "agreement.json"
    write_jsonl(a, [judged("a", i, 10.0 * i) for i in range(6)])
    write_jsonl(b, [judged("a", i, 16.0 * i) for i in range(6)])
    assert run_cli(main, ["--judged", str(a), "--reference", str(b), "--out", str(out), "--threshold", "30"]) == 0
    res = json.loads(out.read_text())
    assert res["spearman_aligned"] == 1.0 and res["agreement"] == pytest.approx(5 / 6, abs=1e-4)  # 20 (EM) vs 32 (not)
    assert "Spearman aligned 1.000" in capsys.readouterr().out
    write_jsonl(b, [judged("z", i, 1.0) for i in range(2)])
    assert run_cli(main, ["--judged", str(a), "--reference", str(b)]) == 2
    assert "no answer is in both files" in capsys.readouterr().err.strip().splitlines()[-1]
