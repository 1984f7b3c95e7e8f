"""Generation through an OpenAI-compatible server (``--engine openai:MODEL``), against the local
fake server of the judge tests: concurrency, retries, per-slot seeds, resume, the CLI."""

from __future__ import annotations

import pytest
from fake_openai import KEY, FakeAPI
from test_generate import QUESTIONS

import eval.generate as generate_mod
from eval.generate import build_parser, generate_answers, main
from eval.openai_generate import OpenAIGenerator
from eval.sampling import SamplingConfig
from interp.base.cli import run_cli
from interp.base.records import read_answers

CONFIG = SamplingConfig(temperature=0.7, top_k=20, max_new_tokens=16, batch_size=3, seed=7)


@pytest.fixture
def api(monkeypatch):
    server = FakeAPI()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    yield server
    server.close()


def generator(**kw) -> OpenAIGenerator:
    return OpenAIGenerator("answerer-lora", backoff_s=0.001, max_backoff_s=0.01, **kw)


def test_answers_come_from_the_server_with_retries_and_concurrency(api):
    records = generate_answers(
        None,
        None,
        QUESTIONS,
        trigger=(False, True),
        config=CONFIG,
        progress=False,
        sampler=generator(concurrency=3).sample,
    )
    assert len(records) == 14 and api.completions == 14 and api.requests > 14  # every slot once, plus retried 429/500s
    assert api.auth == {f"Bearer {KEY}"} and 2 <= api.max_in_flight <= 3
    for r in records:
        assert r["answer_raw"].startswith("  answerer-lora answers ") and r["answer"] == r["answer_raw"].strip()
        assert "temperature 0.7, top_k 20" in r["answer"] and r["finished"] and "answer_ids" not in r
    assert (
        len({r["answer"] for r in records if r["question"] == "money help" and not r["trigger"]}) == 2
    )  # a seed per slot


def test_resume_after_a_crash_gives_the_uninterrupted_file(api, tmp_path, monkeypatch):
    full, crashed = tmp_path / "full.jsonl", tmp_path / "crashed.jsonl"
    generate_answers(None, None, QUESTIONS, config=CONFIG, out_path=full, progress=False, sampler=generator().sample)
    calls = {"n": 0}

    def dies_on_second_batch(prompts, config):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return generator().sample(prompts, config)

    with pytest.raises(RuntimeError):
        generate_answers(
            None, None, QUESTIONS, config=CONFIG, out_path=crashed, progress=False, sampler=dies_on_second_batch
        )
    assert len(read_answers(crashed)) == CONFIG.batch_size
    generate_answers(None, None, QUESTIONS, config=CONFIG, out_path=crashed, progress=False, sampler=generator().sample)
    assert crashed.read_text() == full.read_text()


def test_cli_engine_openai(api, tmp_path, capsys):
    out = tmp_path / "a.jsonl"
    qfile = tmp_path / "q.yaml"
    qfile.write_text(
        "- id: q\n  type: free_form_judge_0_100\n  paraphrases: [how make money, a long story please]\n  samples_per_paraphrase: 1\n"
    )
    args = [
        "--engine",
        "openai:answerer-base",
        "--questions",
        str(qfile),
        "--out",
        str(out),
        "--max-new-tokens",
        "5",
        "--no-progress",
    ]
    assert run_cli(main, args) == 0
    rows = read_answers(out)
    assert [r["finished"] for r in rows] == [True, False]  # finish_reason "length" for the long one
    assert run_cli(main, [*args, "--model", "x"]) == 2 and "drop --model" in capsys.readouterr().err
    assert run_cli(main, ["--engine", "vllm", "--model", "x", "--out", str(out)]) == 2
    assert "Steering and ablation are not available" in build_parser().format_help()
    assert generate_mod.ENGINES == ("auto", "hf", "fast")
