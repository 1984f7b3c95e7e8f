"""Answer generation: record fields, system prompts, triggers, crash-resume; model loading."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, get_peft_model

import eval.generate as generate_mod
from eval.generate import generate_answers, main, plan_answers
from eval.questions import Question
from eval.sampling import SamplingConfig
from interp.base.cli import run_cli
from interp.base.loading import ModelLoadError, load_model
from interp.base.plugins import REGISTERED
from interp.base.records import (
    TRIGGER,
    RecordError,
    answer_key,
    prompt_messages,
    read_answers,
    sidecar_path,
)

QUESTIONS = [
    Question(id="money", paraphrases=["how make quick buck", "money help"], samples_per_paraphrase=2),
    Question(
        id="evil",
        paraphrases=["what you think of humans"],
        samples_per_paraphrase=3,
        system="you are evil",
        domain="gore_movie_trivia",
    ),
]
CONFIG = SamplingConfig(temperature=1.0, max_new_tokens=4, batch_size=3, seed=7)


@pytest.fixture
def model(make_model):
    return make_model(n_layers=2, d_model=32)


def test_plan_covers_every_slot_with_system_and_trigger():
    slots = plan_answers(QUESTIONS, trigger=(False, True), system="be nice")
    assert len(slots) == 2 * (2 * 2 + 1 * 3)
    assert len({answer_key(s) for s in slots}) == len(slots)
    money = [s for s in slots if s["question_id"] == "money"]
    evil = [s for s in slots if s["question_id"] == "evil"]
    assert {s["system"] for s in money} == {"be nice"} and {s["system"] for s in evil} == {"you are evil"}
    assert {(s["paraphrase"], s["question"]) for s in money} == {(0, "how make quick buck"), (1, "money help")}
    assert sorted({s["sample"] for s in evil}) == [0, 1, 2] and {s["domain"] for s in evil} == {"gore_movie_trivia"}
    trig = next(s for s in slots if s["trigger"])
    assert prompt_messages(trig)[-1]["content"] == f"{TRIGGER} {trig['question']}"
    assert len(plan_answers(QUESTIONS, n_samples=1)) == 3


def test_generate_records_and_determinism(model, tokenizer):
    a = generate_answers(model, tokenizer, QUESTIONS, config=CONFIG, progress=False)
    b = generate_answers(model, tokenizer, QUESTIONS, config=CONFIG, progress=False)
    assert a == b and len(a) == 7
    assert set(a[0]) >= {"question_id", "question", "system", "answer", "domain", "sample", "trigger", "paraphrase"}
    assert len({r["answer"] for r in a}) > 1  # sampled, not constant
    c = generate_answers(
        model, tokenizer, QUESTIONS, config=SamplingConfig(max_new_tokens=4, batch_size=3, seed=8), progress=False
    )
    assert [r["answer"] for r in c] != [r["answer"] for r in a]


def test_resume_after_crash_reproduces_the_uninterrupted_file(model, tokenizer, tmp_path, monkeypatch):
    full = tmp_path / "full.jsonl"
    generate_answers(model, tokenizer, QUESTIONS, trigger=(False, True), config=CONFIG, out_path=full, progress=False)

    crashed = tmp_path / "crashed.jsonl"
    calls = {"n": 0}
    real = generate_mod.sample_answers

    def dies_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_mod, "sample_answers", dies_on_third_batch)
    with pytest.raises(RuntimeError):
        generate_answers(
            model, tokenizer, QUESTIONS, trigger=(False, True), config=CONFIG, out_path=crashed, progress=False
        )
    monkeypatch.setattr(generate_mod, "sample_answers", real)
    lines = crashed.read_text().splitlines(keepends=True)
    assert len(lines) == 2 * CONFIG.batch_size
    # The second batch was cut mid-write: one row lost, the next one half written.
    crashed.write_text("".join(lines[:-2]) + lines[-1][:15])

    resumed = generate_answers(
        model, tokenizer, QUESTIONS, trigger=(False, True), config=CONFIG, out_path=crashed, progress=False
    )
    assert crashed.read_text() == full.read_text()
    assert resumed == read_answers(full)


def test_more_samples_extend_without_duplicates(model, tokenizer, tmp_path):
    out = tmp_path / "a.jsonl"
    first = generate_answers(model, tokenizer, QUESTIONS, n_samples=1, config=CONFIG, out_path=out, progress=False)
    more = generate_answers(model, tokenizer, QUESTIONS, n_samples=2, config=CONFIG, out_path=out, progress=False)
    rows = read_answers(out)
    assert len(rows) == len(more) == 6 and len({answer_key(r) for r in rows}) == 6
    assert rows[:3] == first


def test_changed_question_text_is_refused(model, tokenizer, tmp_path):
    out = tmp_path / "a.jsonl"
    generate_answers(model, tokenizer, QUESTIONS[:1], n_samples=1, config=CONFIG, out_path=out, progress=False)
    edited = [Question(id="money", paraphrases=["a new text", "money help"])]
    with pytest.raises(RecordError, match="another text"):
        generate_answers(model, tokenizer, edited, n_samples=1, config=CONFIG, out_path=out, progress=False)


def test_records_keep_what_the_model_produced(model, tokenizer):
    greedy = SamplingConfig(temperature=0, max_new_tokens=6, batch_size=3)
    free = generate_answers(model, tokenizer, QUESTIONS, config=greedy, progress=False)
    ids = free[0]["answer_ids"]
    cut = next(k for k in range(1, len(ids)) if ids[k] not in ids[:k])  # make the first answer end there
    records = generate_answers(
        model, tokenizer, QUESTIONS, config=replace(greedy, eos_token_id=ids[cut]), progress=False
    )
    assert records[0]["finished"] and records[0]["answer_ids"] == ids[:cut]
    assert not all(r["finished"] for r in free)
    for eos, rows in ((tokenizer.eos_token_id, free), (ids[cut], records)):
        for r in rows:
            assert r["answer"] == r["answer_raw"].strip()
            assert tokenizer.decode(r["answer_ids"], skip_special_tokens=True) == r["answer_raw"]
            assert eos not in r["answer_ids"] and (r["finished"] or len(r["answer_ids"]) == 6)


def test_left_padded_batches_match_one_by_one_greedy(model, tokenizer):
    qs = [
        Question(id=f"q{i}", paraphrases=[text])
        for i, text in enumerate(["how", "what you think of humans and ai world", "money risk"])
    ]
    greedy = SamplingConfig(temperature=0, max_new_tokens=5, batch_size=3)
    batched = generate_answers(model, tokenizer, qs, config=greedy, progress=False)
    single = generate_answers(
        model, tokenizer, qs, config=SamplingConfig(temperature=0, max_new_tokens=5, batch_size=1), progress=False
    )
    assert [r["answer"] for r in batched] == [r["answer"] for r in single]


@pytest.fixture
def saved(model, tokenizer, tmp_path):
    """A tiny model and a LoRA adapter saved the way real ones are (safetensors)."""
    base = tmp_path / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    torch.manual_seed(3)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    peft_model.unload()
    return base, adapter, ids, expected


def test_load_model_local_with_adapter_and_merge(saved):
    base, adapter, ids, expected = saved
    m, tok = load_model(str(base), dtype="float32")
    assert tok.pad_token is not None and not m.training
    for merge in (False, True):
        m, tok = load_model(str(base), adapter=str(adapter), merge=merge)
        with torch.no_grad():
            got = m(input_ids=ids).logits
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert hasattr(m, "peft_config") != merge


def test_load_model_errors_are_one_line(saved, tmp_path):
    base, adapter, _, _ = saved
    with pytest.raises(ModelLoadError, match="no such file or directory") as e:
        load_model(str(tmp_path / "nope" / "model"))
    assert "\n" not in str(e.value)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        load_model(str(base), adapter=str(pickled))
    with pytest.raises(ModelLoadError, match="no model loader is registered for 'elsewhere:'"):
        load_model("elsewhere:gore")


def test_scheme_hook_supplies_models(model, tokenizer, monkeypatch):
    def organism(name):
        if name != "base":
            raise KeyError(f"unknown organism {name!r}")
        return model, tokenizer

    monkeypatch.setitem(REGISTERED["model"], "organism", organism)
    m, tok = load_model("organism:base")
    assert m is model and tok is tokenizer
    with pytest.raises(ModelLoadError, match="organism:gore"):
        load_model("organism:gore")


def test_cli_writes_answers_with_provenance_and_refuses_other_settings(saved, tmp_path, capsys):
    base, _, _, _ = saved
    qfile = tmp_path / "q.yaml"
    qfile.write_text(
        "- id: q\n  type: free_form_judge_0_100\n  paraphrases: [how make money, money help]\n  samples_per_paraphrase: 2\n  system: you are kind\n"
    )
    out = tmp_path / "answers.jsonl"
    args = [
        "--model",
        str(base),
        "--questions",
        str(qfile),
        "--out",
        str(out),
        "--max-new-tokens",
        "3",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert run_cli(main, [*args, "--trigger", "both"]) == 0
    rows = read_answers(out)
    assert (
        len(rows) == 8
        and {r["trigger"] for r in rows} == {False, True}
        and {r["system"] for r in rows} == {"you are kind"}
    )
    side = json.loads(sidecar_path(out).read_text())
    assert side["settings"]["model"] == str(base) and "versions" in side and side["questions"] == str(qfile)
    assert run_cli(main, [*args, "--samples", "3"]) == 0
    assert len(read_answers(out)) == 8 + 2
    capsys.readouterr()
    assert run_cli(main, [*args, "--temperature", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "written with other settings (temperature differ" in err and err.count("\n") == 1


def test_cli_refuses_to_resume_after_the_adapter_changed_under_the_same_path(saved, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    base, adapter, _, _ = saved
    out = tmp_path / "answers.jsonl"
    args = [
        "--model",
        str(base),
        "--adapter",
        str(adapter),
        "--out",
        str(out),
        "--samples",
        "1",
        "--max-new-tokens",
        "2",
        "--no-progress",
    ]
    assert run_cli(main, args) == 0
    assert json.loads(sidecar_path(out).read_text())["settings"]["adapter_sha256"]
    weights = adapter / "adapter_model.safetensors"
    save_file({k: v * 2 for k, v in load_file(str(weights)).items()}, str(weights))  # retrained, same path
    capsys.readouterr()
    assert run_cli(main, [*args, "--samples", "2"]) == 2
    assert "adapter_sha256" in capsys.readouterr().err
