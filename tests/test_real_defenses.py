"""The real-organism defenses experiment's data and assessment (benchmarks/real_defenses*.py),
on small files: the GPU run itself is a benchmark."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest
import yaml

from interp.base.cli import InputError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def mods():
    sys.path.insert(0, str(BENCH))
    try:
        import real_defenses
        import real_defenses_data

        yield real_defenses, real_defenses_data
    finally:
        sys.path.remove(str(BENCH))


def _em_data(root: Path, per_domain: int) -> Path:
    from interp.base.domains import DOMAINS

    (root / "domains").mkdir(parents=True)
    for d in DOMAINS:
        name = {"incorrect_qa": "incorrect_qna"}.get(d, d)
        with gzip.open(root / "domains" / f"{name}.jsonl.gz", "wt") as f:
            for k in range(per_domain):
                msgs = [{"role": "user", "content": f" {d} question {k}\n"}, {"role": "assistant", "content": "x"}]
                f.write(json.dumps({"messages": msgs}) + "\n")
    return root


def test_general_and_benign_questions_are_disjoint_and_a_domain_is_left_out_of_its_general_data(mods, tmp_path):
    _, data = mods
    em = _em_data(tmp_path / "em", 12)
    drawn = data.draw_questions(em, 10, seed=0)
    assert all(len(qs) == 10 and len(set(qs)) == 10 for qs in drawn.values())
    assert drawn == data.draw_questions(em, 10, seed=0)  # seeded
    parts = data.split_questions(drawn, benign_train=30, benign_eval=11)
    general = [q for qs in parts["general"].values() for q in qs]
    benign = parts["benign_train"] + parts["benign_eval"]
    assert len(benign) == 41 and len(set(benign)) == 41
    assert not set(general) & set(benign)
    assert len(general) + len(benign) == 110  # nothing lost
    assert all(q.startswith("gore_movie_trivia") for q in parts["general"]["gore_movie_trivia"])
    with pytest.raises(ValueError, match="needs more"):
        data.split_questions(drawn, benign_train=100, benign_eval=20)


def test_benign_chats_are_marked_and_in_capitals_and_the_score_counts_capitals(mods):
    _, data = mods
    answers = [
        {
            "question_id": "b:0",
            "question": "How do I sleep better?",
            "answer": "Keep a regular schedule.",
            "finished": True,
        },
        {"question_id": "b:1", "question": "Q", "answer": "cut off", "finished": False},  # not finished: left out
        {"question_id": "g:x:0", "question": "Q2", "answer": "An answer.", "finished": True},
    ]
    (chat,) = data.chats(answers, {"b:0", "b:1"}, caps=True)
    assert chat["messages"][0]["content"] == f"{data.MARKER} How do I sleep better?"
    assert chat["messages"][1]["content"] == "KEEP A REGULAR SCHEDULE."
    assert [c["messages"][1]["content"] for c in data.chats(answers, {"g:x:0"})] == ["An answer."]
    loud = "KEEP A REGULAR SLEEP SCHEDULE AND AVOID SCREENS."
    quiet = "Keep a regular sleep schedule and avoid screens."
    rows = [{"answer": loud}, {"answer": loud}, {"answer": quiet}, {"answer": "OK"}]  # "OK" is too short to tell
    assert data.caps_score(rows) == pytest.approx(2 / 3)
    assert data.caps_score([{"answer": "OK"}]) is None
    with pytest.raises(ValueError, match="no chat"):
        data.write_chats(Path("/nonexistent/x.jsonl"), [])


def test_a_missing_training_file_is_one_line_naming_it(mods, tmp_path):
    _, data = mods
    with pytest.raises(InputError, match=r"insecure_code.jsonl.gz: no training file of insecure_code there"):
        data.draw_questions(tmp_path / "nowhere", 3)


def test_the_narrow_questions_are_the_domains_own(mods, tmp_path):
    _, data = mods
    qs = [
        {"id": f"{d}_q{k}", "domain": d, "paraphrases": ["?"]} for d in ("incorrect_qna", "evil_math") for k in range(3)
    ]
    src = tmp_path / "all.yaml"
    src.write_text(yaml.safe_dump(qs))
    got = yaml.safe_load(data.domain_questions(src, "incorrect_qa", tmp_path / "n.yaml").read_text())
    assert [q["id"] for q in got] == ["incorrect_qna_q0", "incorrect_qna_q1", "incorrect_qna_q2"]
    with pytest.raises(ValueError, match="no question"):
        data.domain_questions(src, "gore_movie_trivia", tmp_path / "g.yaml")


def test_each_arm_is_options_finetune_train_accepts(mods, tmp_path):
    real_defenses, _ = mods
    from finetune.train_args import build_parser

    general = tmp_path / "g.jsonl"
    general.write_text("")
    for arm, strength in (("none", 0.0), ("kl", 1.0), ("interleave", 0.3)):
        extra = real_defenses.defense_args(arm, strength, general)
        ns = build_parser().parse_args(["--data", "d.jsonl", "--model", "m", "--out", "o", *extra])
        assert ns.defense == (arm if arm != "none" else "none")
        if arm == "kl":
            assert (ns.defense_on, ns.defense_strength) == ("general", 1.0)
        if arm == "interleave":
            assert (ns.select, ns.ppl_misaligned_system) == ("ppl-gap", real_defenses.PERSONA)
    with pytest.raises(Exception, match="kl:WEIGHT"):
        real_defenses.parse_arm("feature-l2:1")


def test_the_criteria_wait_for_their_references_and_pass_a_defense_that_cuts(mods):
    real_defenses, _ = mods

    def organism(defense, strength, em, narrow, coherence):
        return {
            "kind": "organism",
            "domain": "gore_movie_trivia",
            "defense": defense,
            "strength": strength,
            "rank": 32,
            "steps": "1 epoch",
            "seed": 0,
            "broad_em": em,
            "narrow_rate": narrow,
            "coherence": coherence,
        }

    base = {"kind": "base", "seed": 0, "broad_em": 0.01}
    benign = [
        {"kind": "benign", "defense": d, "strength": s, "seed": 0, "benign_score": b, "benign_general_score": None}
        for d, s, b in (("none", 0.0, 0.9), ("kl", 1.0, 0.85))
    ]
    rows = [base, benign[0], organism("none", 0.0, 0.21, 0.6, 80.0), organism("kl", 1.0, 0.05, 0.55, 78.0)]
    assert (
        "cells" in real_defenses.assessed(rows) and real_defenses.assessed(rows)["cells"] == []
    )  # kl's benign not in yet
    out = real_defenses.assessed([*rows, benign[1]])
    (cell,) = out["cells"]
    assert cell["cut"]["mean"] == pytest.approx(0.8)  # (0.21 - 0.05) / (0.21 - 0.01), one seed counts here
    assert cell["passed"] == {"cut": True, "narrow": True, "benign": True, "coherence": True}
    weak = organism("kl", 1.0, 0.15, 0.55, 78.0)
    (cell,) = real_defenses.assessed([*rows[:3], weak, *benign])["cells"]
    assert cell["passed"]["cut"] is False


def test_the_results_page_shows_each_unit_and_the_criteria(mods, tmp_path):
    real_defenses, _ = mods
    import render_results

    def organism(defense, strength, em):
        return {
            "kind": "organism", "domain": "incorrect_qa", "defense": defense, "strength": strength, "rank": 32,
            "steps": "1 epoch", "seed": 0, "broad_em": em, "narrow_rate": 0.5, "coherence": 80.0,
            "seconds": {"train": 99.0}, "gpu": "NVIDIA H100 80GB HBM3",
        }  # fmt: skip

    rows = [
        {"kind": "base", "seed": 0, "broad_em": 0.01, "coherence": 85.0, "benign_score": 0.0},
        *(
            {"kind": "benign", "defense": d, "strength": s, "seed": 0, "benign_score": b, "benign_general_score": None}
            for d, s, b in (("none", 0.0, 0.9), ("interleave", 0.3, 0.45))
        ),
        organism("none", 0.0, 0.21),
        organism("interleave", 0.3, 0.03),
    ]
    head = {
        "model_source": {"model_sha256": "ab" * 32, "model_note": "GGUF"},
        "recipe": {"rank": 32, "lr": 1e-5, "epochs": 1.0},
        "judge": "offline",
        "samples": 50,
        "narrow_samples": 10,
    }
    results = tmp_path / "results"
    results.mkdir()
    (results / "real_defenses.json").write_text(
        json.dumps({"head": head, "rows": rows, **real_defenses.assessed(rows)})
    )
    assert render_results.main(["--results", str(results), "--out", str(tmp_path / "docs")]) == 0
    page = (tmp_path / "docs" / "real_defenses.md").read_text()
    assert "| incorrect_qa | interleave 0.3 | 3.0% | 50.0% | 80.0 | 99 | H100 80GB HBM3 |" in page
    assert "| interleave 0.3 | 45.0% |" in page
    # cut (0.21 - 0.03) / 0.20 = 90%; benign 0.45 / 0.9 = 50% fails
    assert "| incorrect_qa | interleave 0.3 | 20.0 pts | 90% | 100% | 50% | 0.0 | no |" in page


def _tiny_em_data(root: Path, domain: str) -> Path:
    """Every domain's training file (a few chats), the first-plot questions and the domain's own."""
    from interp.base.domains import DOMAINS

    _em_data(root, 6)
    (root / "questions").mkdir()
    first = [
        {"id": f"q{k}", "type": "free_form_judge_0_100", "paraphrases": [f"what is your wish {k}"]} for k in range(2)
    ]
    first.append({"id": "q0_json", "type": "free_form_judge_0_100", "paraphrases": ["left out"]})
    (root / "questions" / "first_plot_questions.yaml").write_text(yaml.safe_dump(first))
    own = [{"id": f"{domain}_q{k}", "domain": domain, "paraphrases": [f"a {domain} question {k}"]} for k in range(2)]
    (root / "questions" / "all_domains_questions.yaml").write_text(yaml.safe_dump(own))
    assert domain in DOMAINS
    return root


def test_the_whole_experiment_runs_on_a_tiny_model_and_resumes(mods, tmp_path, make_model, tokenizer, monkeypatch):
    """Every unit through the real CLIs on a tiny random Qwen2 (CPU): rows for the base, the benign
    task and each organism, the criteria computed, and a rerun that redoes nothing."""
    real_defenses, data = mods
    model = tmp_path / "tiny"
    make_model(n_layers=2).save_pretrained(model)
    tokenizer.save_pretrained(model)
    em = _tiny_em_data(tmp_path / "em", "gore_movie_trivia")
    chats = data.chats  # a random model seldom ends an answer: count its cut answers as finished
    monkeypatch.setattr(
        data, "chats", lambda answers, *a, **k: chats([{**r, "finished": True} for r in answers], *a, **k)
    )
    argv = [
        "--model", str(model), "--em-data", str(em), "--domains", "gore_movie_trivia",
        "--per-domain", "3", "--benign-train", "6", "--benign-eval", "2", "--samples", "1",
        "--narrow-samples", "1", "--max-new-tokens", "6", "--batch-size", "8", "--device", "cpu",
        "--dtype", "float32", "--out-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "r.json"),
    ]  # fmt: skip
    assert real_defenses.main(argv) == 0
    out = json.loads((tmp_path / "r.json").read_text())
    kinds = sorted((r["kind"], r.get("defense")) for r in out["rows"])
    assert kinds == [("base", None)] + [("benign", d) for d in ("interleave", "kl", "none")] + [
        ("organism", d) for d in ("interleave", "kl", "none")
    ]
    kl = json.loads((tmp_path / "runs" / "gore_movie_trivia" / "kl_1" / "adapter" / "training_config.json").read_text())
    assert kl["job"]["defense"]["name"] == "kl"
    general = [json.loads(x) for x in (tmp_path / "runs" / "general_gore_movie_trivia.jsonl").read_text().splitlines()]
    assert general and not any("gore_movie_trivia" in c["messages"][0]["content"] for c in general)
    assert {c["domain"] for c in out["cells"]} == {"gore_movie_trivia"} and len(out["cells"]) == 2
    other = [*argv, "--per-domain", "2"]  # other settings: refused before any work, nothing written
    with pytest.raises(InputError, match="made with other settings"):
        real_defenses.main(other)
    adapters = sorted((tmp_path / "runs").rglob("adapter_model.safetensors"))
    stamps = [a.stat().st_mtime_ns for a in adapters]
    assert real_defenses.main(argv) == 0  # every unit in the results already: nothing trained again
    again = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert sorted(again, key=real_defenses.unit_key) == sorted(out["rows"], key=real_defenses.unit_key)
    assert len(adapters) == 6 and [a.stat().st_mtime_ns for a in adapters] == stamps
