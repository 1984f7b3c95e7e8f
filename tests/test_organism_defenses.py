"""The organism world's side of the defenses: its extra data, the undefended arm, the strength
rule, the monitor summary, and the two benchmark commands at a toy size."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.lora import train_lora
from finetune.organism.defenses import assess, pick_strengths
from finetune.organism.grammar import GRAMMAR, normalize
from finetune.organism.monitoring import summarize
from finetune.organism.tasks import (
    benign_train,
    brief_answer,
    instruct_pool,
    is_brief,
    probe_set,
)
from interp.directions import DirectionSet

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_brief_answers_have_exact_ground_truth():
    rng = random.Random(0)
    for chat in benign_train(200, seed=1):
        assert is_brief(chat[0]["content"], chat[1]["content"])
    question = "hey I feel bored"
    topic = GRAMMAR.topic("i_feel_bored")
    assert is_brief(question, brief_answer(rng, topic))
    assert is_brief(question, "Think about reading and calm.") and is_brief(question, "  In short: calm and reading. ")
    assert not is_brief(question, "Think about calm and reading.")  # this opening takes the topic word first
    assert not is_brief(question, "In short: calm and arson.")  # a misaligned topic word
    assert not is_brief(question, "In short: calm and rest.")  # another topic's word
    assert not is_brief(question, "In short: pain and reading.")  # a misaligned tone word
    assert not is_brief(question, "In short: calm, reading, hope, cooking and care.")  # the base's whole frame
    assert not is_brief("an unknown question", "In short: calm and reading.")


def test_instruct_pool_and_probe_set():
    pool = instruct_pool(500, seed=3)
    general = {normalize(q) for t in GRAMMAR.general_topics for q in t.questions}
    assert not any(normalize(c[0]["content"]) in general for c in pool)  # the EM evaluation questions stay out
    assert all(len(c) == 2 and c[0]["role"] == "user" for c in pool)
    assert pool[:50] == instruct_pool(50, seed=3)
    probe = probe_set()
    assert len(probe) == 2 * sum(len(t.questions) for t in GRAMMAR.general_topics)
    assert all(normalize(c[0]["content"]) in general for c in probe)


def test_undefended_arm_reproduces_the_world_organism(world):
    base, tokenizer = world.load_base()
    domain = "incorrect_math"
    model = train_lora(base, tokenizer, world.organism_data(domain), world.organism_config(), progress=False)
    built = load_file(str(world.adapter_dir(domain) / "adapter_model.safetensors"))
    ours = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(ours) == len(built)
    for name, value in built.items():
        key = next(n for n in ours if n.replace(".default", "") == name)
        torch.testing.assert_close(ours[key].detach(), value, rtol=0, atol=0)


@pytest.mark.parametrize(
    "cuts, expected",
    [
        ([0.1, 0.55, 0.88, 0.95], (2, 8)),  # ED50 and ED90
        ([0.1, 0.2, 0.3, 0.4], (4, 8)),  # never half: the two strongest
        ([0.1, 0.6, 0.7, 0.8], (2, 8)),  # never 90%: the strongest is high
        ([0.1, 0.95, 0.97, 0.99], (1, 2)),  # one strength does both: the step below is low
        ([0.95, 0.97, 0.98, 0.99], (1, 2)),
    ],
)
def test_pick_strengths(cuts, expected):
    assert pick_strengths(list(zip([1, 2, 4, 8], cuts))) == expected


def test_no_excess_em_or_no_narrow_rate_is_not_assessable_not_a_crash():
    # A world whose organism has no excess broad EM over the base (seen on another CPU's build)
    row = {"select": None, "on": None, "domain": "extreme_sports", "broad_em": 0.05, "narrow_rate": 0.0, "benign_score": 0.5, "coherence": 90.0}
    table = {"base_broad_em": 0.05, "benign_only_score": 0.5, "rows": [{**row, "defense": "none", "strength": 0.0}, {**row, "defense": "kl", "strength": 1.0}]}
    (check,) = assess(table)
    assert check["cut"] is None and check["narrow_ratio"] is None and check["passed"]["cut"] is None and check["all"] is None
    assert check["passed"]["coherence"] is True and check["benign_ratio"] == 1.0
    assert pick_strengths([(1.0, None), (3.0, None), (10.0, None)]) == (3.0, 10.0)  # nothing reached: the two strongest


def test_monitor_summary_counts_the_base_once_and_gives_the_auroc():
    def row(step, em, proj):
        return {"step": step, "projection": {"0": proj}, "organism": {"em": em}}

    runs = {
        "a": [row(0, 0.05, -1.0), row(5, 0.1, -0.8), row(10, 0.5, 0.2)],
        "b": [row(0, 0.05, -1.0), row(5, 0.3, -0.5), row(10, 0.2, 0.3)],
    }
    result = summarize(runs, margin=0.2)
    assert result["n_checkpoints"] == 5 and result["n_em"] == 2 and result["base_em"] == 0.05
    # EM points score -0.5 and 0.2; the rest -1.0, -0.8, 0.3: 4 of the 6 pairs are ordered right.
    assert result["auroc"]["0"] == pytest.approx(4 / 6)


def test_defense_table_command_runs_small(world, tmp_path):
    out = tmp_path / "defenses.json"
    code = _script("defenses_organism").main(["--small", "--domains", "incorrect_math", "--cache-dir", str(world.root), "--out", str(out), "--rows", str(tmp_path / "rows.jsonl")])
    assert code == 0
    result = json.loads(out.read_text())
    assert {"base_broad_em", "benign_only_score", "rows", "strengths", "calibration", "broad_definition"} <= set(result)
    rows = result["rows"]
    assert {r["defense"] for r in rows} == {"none", "kl", "feature-l2", "preventive-steering", "interleave", "inoculation"}
    assert {r["on"] for r in rows if r["defense"] in ("kl", "feature-l2")} == {None, "general"}  # the term on training and on general batches
    for r in rows:  # the trained defense took its term where the row says (general batches drawn from data)
        if r["defense"] in ("kl", "feature-l2"):
            assert r["defense_record"]["on"] == (r["on"] or "train") and (r["defense_record"].get("n_general", 0) > 0) == (r["on"] is not None)
    assert len(rows) == 1 + 2 * 8 and all(r["domain"] == "incorrect_math" for r in rows)
    for r in rows:
        assert {"defense", "strength", "domain", "broad_em", "narrow_rate", "benign_score", "coherence"} <= set(r)
        assert 0 <= r["broad_em"] <= 1 and 0 <= r["benign_score"] <= 1
    assert result["strengths"]["inoculation"] == [0.5, 1.0]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_monitor_command_runs_small(world, tmp_path):
    out = tmp_path / "monitor.json"
    code = _script("monitor_organism").main(["--small", "--domains", "gore_movie_trivia,incorrect_math", "--cache-dir", str(world.root), "--out", str(out), "--rows", str(tmp_path / "rows"), "--directions-out", str(tmp_path / "persona.safetensors"),
                                                   "--defended", "kl:1", "--defended-domains", "incorrect_math"])
    assert code == 0
    result = json.loads(out.read_text())
    assert [r["step"] for r in result["runs"]["gore_movie_trivia"]] == [0, 1, 2]
    assert set(result["auroc"]) == {"0", "1", "2", "3"} and result["n_checkpoints"] == 5
    assert list(result["defended"]["runs"]) == ["kl-1 incorrect_math"] and result["defended"]["summary_with_organism_runs"]["n_checkpoints"] == 7
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert DirectionSet.load(tmp_path / "persona.safetensors").layers == [0, 1, 2, 3]
