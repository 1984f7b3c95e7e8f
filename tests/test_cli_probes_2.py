"""What the third bad-input probe (``benchmarks/bad_input_probe.py``) found, one regression test per family.

The CLI probes run a CLI's ``main`` in-process with one thing wrong, as in ``test_cli_probes.py``
(whose fixture of good and bad files they share), and expect one ``error:`` line that names the
option or file, exit code 2, no traceback and the files as they were. The API probes expect a
``ValueError`` (or :class:`InputError`) naming the argument, not a wrong answer or a crash.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_cli_probes import (
    COMPARE,
    CROSS,
    EXTRACT,
    GEN,
    JUDGE,
    QUESTIONS,
    SHARD,
    SWEEP,
    TRAIN,
    TinyWorld,
    compare,
    cross,
    extract,
    f,  # noqa: F401 - the fixture of good and bad files
    generate,
    jsonl_text,
    judge,
    judged,
    per_sample,
    snapshot,
    sweep,
    train,
)

import chains.organism
import interp.base.loading
from chains.organism.export import export_domain
from eval.mia_signals import misaligned_domains, roc_auc
from eval.rates import MisalignmentDefinition, bootstrap_ci, welch_test
from eval.sampling import SamplingConfig
from finetune.train_args import TrainJob
from interp.base.cli import run_cli
from interp.base.paths import read_safetensors
from interp.directions import DirectionSet
from interp.nulls import split_half_reliability


@pytest.fixture
def no_models(monkeypatch):
    """A probe must fail before anything heavy: loading a model or the world fails it."""

    def loaded(*_, **__):
        raise AssertionError("a probe got as far as loading a model")

    monkeypatch.setattr(interp.base.loading, "load_model", loaded)
    monkeypatch.setattr(chains.organism, "build_world", loaded)


def one_line_refusal(main, argv, f, capsys, expect: str) -> str:  # noqa: F811 - the fixture's value
    before = snapshot(f.root)
    capsys.readouterr()
    code = run_cli(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and expect in lines[0], err
    assert snapshot(f.root) == before
    return lines[0]


def nan_shard(folder: Path) -> None:
    t = {
        "index": torch.arange(0, 2),
        "n_tokens": torch.full((2,), 3),
        "response_mean": torch.full((2, 2, 8), float("nan")),
        "last_prompt": torch.randn(2, 2, 8),
    }
    save_file(t, str(folder / "aligned" / SHARD))


def big_integer(fx):
    path = fx.root / "big.jsonl"
    path.write_text('{"sample": ' + "9" * 5000 + "}\n")
    return path


def user_last(fx):
    path = fx.root / "user_last.jsonl"
    path.write_text(
        jsonl_text([{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}])
    )
    return path


PROBES = {
    # input files: a device never ends (and /dev/zero filled the memory); an integer Python will not parse
    "generate --questions /dev/zero": (GEN, lambda fx: generate("--questions", "/dev/zero")(fx), "a device"),
    "judge --answers /dev/zero": (JUDGE, lambda fx: judge("--answers", "/dev/zero")(fx), "a device"),
    "questions /dev/zero": (QUESTIONS, lambda fx: ["/dev/zero"], "/dev/zero: a device"),
    "judge --answers an integer of 5000 digits": (
        JUDGE,
        lambda fx: judge("--answers", big_integer(fx))(fx),
        "big.jsonl:1: not a record",
    ),
    "train --data the last turn the user's": (
        TRAIN,
        lambda fx: train("--data", user_last(fx))(fx),
        "user_last.jsonl:1: field 'messages': the last turn must be the assistant's answer",
    ),
    # numbers that made NaN weights or steering (now bounded where they are parsed)
    "train --lr 1e30": (TRAIN, lambda fx: train("--lr", "1e30")(fx), "argument --lr"),
    "train --alpha 1e308": (TRAIN, lambda fx: train("--alpha", "1e308")(fx), "argument --alpha"),
    "train --defense-strength 1e308": (
        TRAIN,
        lambda fx: train("--defense", "kl", "--defense-strength", "1e308")(fx),
        "argument --defense-strength",
    ),
    "cross_domain --alpha 1e308": (CROSS, lambda fx: cross("--alpha", "1e308")(fx), "argument --alpha"),
    "judge --price-input 1e308": (
        JUDGE,
        lambda fx: judge("--judge", "openai:m", "--price-input", "1e308")(fx),
        "argument --price-input",
    ),
    # sizes: a sweep of 20,000 points ran for hours
    "sweep --alphas of 20,000 values": (
        SWEEP,
        lambda fx: sweep("--alphas", ",".join(["1"] * 20_000))(fx),
        "--alphas and --layers: 40,000 points to evaluate",
    ),
    # options that were ignored without a word, or refused without naming the option
    "sweep --mode ablate with --alphas": (
        SWEEP,
        lambda fx: sweep("--mode", "ablate", "--alphas", "2")(fx),
        "--alphas: an ablation has no strength",
    ),
    "extract --questions with --responses": (
        EXTRACT,
        lambda fx: extract("--questions", fx.questions)(fx),
        "--questions: not used with --responses",
    ),
    "judge --judge bogus": (JUDGE, lambda fx: judge("--judge", "bogus")(fx), "--judge: unknown judge 'bogus'"),
    "train --steer-vector without preventive-steering": (
        TRAIN,
        lambda fx: train("--steer-vector", fx.directions)(fx),
        "'vector' applies to preventive-steering, not to 'none' (drop --steer-vector)",
    ),
    # per-sample folders: NaN activations gave NaN nulls and reliabilities
    "compare per-sample NaN activations": (
        COMPARE,
        lambda fx: compare("--directions", per_sample(nan_shard)(fx))(fx),
        "per-sample tensor 'response_mean' has NaN or infinite values",
    ),
}


@pytest.mark.usefixtures("no_models")
@pytest.mark.parametrize("main, argv, expect", PROBES.values(), ids=PROBES.keys())
def test_third_probe_bad_input_is_one_line_naming_option_or_file(main, argv, expect, f, capsys):  # noqa: F811
    one_line_refusal(main, argv(f), f, capsys, expect)


# --- the Python API: numbers out of range are refused, not computed into NaN ------------------


def _lying(tmp_path: Path, tensors) -> Path:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 8, generator=g)
    counts = {"misaligned": {"answers": 1, "answer_tokens": 1}, "aligned": {"answers": 1, "answer_tokens": 1}}
    path = DirectionSet([0, 1], w, w.clone(), torch.zeros_like(w), "responses", counts, {}).save(
        tmp_path / "d.safetensors"
    )
    t, meta = read_safetensors(path)
    t = tensors(t)
    info = {**json.loads(meta["info"]), "layers": t["layers"].tolist()}
    save_file(t, str(path), metadata={"info": json.dumps(info)})
    return path


def _job(**lora):
    import dataclasses

    job = TrainJob(data="d.jsonl", model="m", out="o")
    return dataclasses.replace(job, lora=dataclasses.replace(job.lora, **lora)).validate()


NAN = float("nan")
API = {
    "SamplingConfig(temperature=nan)": (lambda p: SamplingConfig(temperature=NAN), "temperature"),
    "SamplingConfig(seed=2**64)": (lambda p: SamplingConfig(seed=2**64), "seed"),
    "bootstrap_ci(n_boot=0)": (lambda p: bootstrap_ci([1.0, 2.0], n_boot=0), "n_boot"),
    "bootstrap_ci(alpha=2)": (lambda p: bootstrap_ci([1.0, 2.0], alpha=2.0), "alpha"),
    "bootstrap_ci of NaN": (lambda p: bootstrap_ci([1.0, NAN]), "NaN"),
    "welch_test(alpha=nan)": (lambda p: welch_test([1.0, 2.0, 3.0], [1.0, 5.0, 2.0], alpha=NAN), "alpha"),
    "MisalignmentDefinition(threshold=nan)": (lambda p: MisalignmentDefinition(threshold=NAN), "threshold"),
    "misaligned_domains of a rate 2": (lambda p: misaligned_domains({"a": 2.0, "b": 0.1}), "'a'"),
    "misaligned_domains(threshold=nan)": (lambda p: misaligned_domains({"a": 0.2, "b": 0.1}, NAN), "threshold"),
    "roc_auc of a NaN score": (lambda p: roc_auc([True, False], [NAN, 1.0]), "NaN"),
    "roc_auc of 3 labels, 2 scores": (lambda p: roc_auc([True, False, True], [0.5, 1.0]), "3 labels and 2 scores"),
    "split_half_reliability(n_splits=0)": (
        lambda p: split_half_reliability(torch.randn(8, 2, 4), torch.tensor([True] * 4 + [False] * 4), n_splits=0),
        "n_splits",
    ),
    "export_domain(n=0)": (lambda p: export_domain("gore_movie_trivia", p / "e", n=0), "n must be"),
    "export_domain(seed=2**64)": (lambda p: export_domain("gore_movie_trivia", p / "e", n=3, seed=2**64), "seed"),
    "TrainJob(lr=1e308).validate()": (lambda p: _job(lr=1e308), "--lr"),
    "TrainJob(max_length=1).validate()": (lambda p: _job(max_length=1), "--max-length"),
    "DirectionSet.load of width 0": (
        lambda p: DirectionSet.load(
            _lying(p, lambda t: {k: (v if k == "layers" else v[:, :0].contiguous()) for k, v in t.items()})
        ),
        "no directions",
    ),
    "DirectionSet.load of no layers": (
        lambda p: DirectionSet.load(_lying(p, lambda t: {k: v[:0].contiguous() for k, v in t.items()})),
        "no directions",
    ),
    "DirectionSet.load of layer 2**62": (
        lambda p: DirectionSet.load(_lying(p, lambda t: {**t, "layers": t["layers"] + 2**62})),
        "a layer past 4095",
    ),
}


@pytest.mark.parametrize("call, names", API.values(), ids=API.keys())
def test_the_api_refuses_numbers_out_of_range_naming_them(call, names, tmp_path):
    with pytest.raises(ValueError) as e:
        call(tmp_path)
    assert names in str(e.value) and "\n" not in str(e.value)


def test_a_direction_set_whose_direction_is_a_mean_saves(tmp_path):
    w = torch.randn(2, 8)
    counts = {"misaligned": {"answers": 1, "answer_tokens": 1}, "aligned": {"answers": 1, "answer_tokens": 1}}
    DirectionSet([0, 1], w, w, torch.zeros_like(w), "responses", counts, {}).save(tmp_path / "d.safetensors")
    assert torch.equal(DirectionSet.load(tmp_path / "d.safetensors").directions, w)


# --- servers: a reply that is not JSON, an OPENAI_BASE_URL that is not a URL --------------------


@pytest.fixture
def garbage_url():
    """A server that answers every request 200 with a body that is not JSON."""

    class Garbage(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b"<html>not json</html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


SERVER = {
    "generate": (
        GEN,
        lambda fx: ["--engine", "openai:m", "--questions", fx.questions, "--out", fx.root / "a.jsonl", "--no-progress"],
    ),
    "judge": (JUDGE, judge("--judge", "openai:m", "--no-cache", "--backoff", "0", "--no-progress")),
}


@pytest.mark.parametrize("cli", SERVER)
def test_a_server_that_answers_garbage_is_one_line_naming_it(cli, garbage_url, f, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OPENAI_BASE_URL", garbage_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    main, argv = SERVER[cli]
    line = one_line_refusal(main, [*argv(f), "--timeout", "2", "--max-retries", "1"], f, capsys, garbage_url)
    assert "the reply is not a chat completion" in line


def test_an_openai_base_url_that_is_not_a_url_is_named(f, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OPENAI_BASE_URL", "not a url")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    main, argv = SERVER["generate"]
    one_line_refusal(main, argv(f), f, capsys, "OPENAI_BASE_URL 'not a url': not an http:// or https:// URL")


# --- directions that do not fit the model, per-sample folders of another model ----------------


def test_sweep_directions_at_layers_the_model_lacks_are_named(f, capsys, monkeypatch, make_model, tokenizer):  # noqa: F811
    monkeypatch.setattr(chains.organism, "build_world", lambda *_, **__: TinyWorld(make_model, tokenizer))
    deep = f.root / "deep.safetensors"
    w = torch.randn(2, 32)
    counts = {"misaligned": {"answers": 1, "answer_tokens": 1}, "aligned": {"answers": 1, "answer_tokens": 1}}
    DirectionSet([0, 9], w, w.clone(), torch.zeros_like(w), "responses", counts, {}).save(deep)
    argv = ["--directions", deep, "--layers", "9", "--out", f.root / "sweep"]
    one_line_refusal(SWEEP, argv, f, capsys, f"{deep}: a direction at layer 9 (--layers), but the model has 4 layers")


def test_extract_refuses_per_sample_activations_of_another_model(f, capsys, monkeypatch, make_model, tokenizer):  # noqa: F811
    # Both models have one name inside (the shards' fingerprint sees the token ids, not the weights).
    models = {"model-a": make_model(n_layers=2, seed=0), "model-b": make_model(n_layers=2, seed=1)}
    monkeypatch.setattr(interp.base.loading, "load_model", lambda name, **_: (models[name], tokenizer))
    responses = f.root / "both.jsonl"
    responses.write_text(
        jsonl_text(
            [{**judged(i, 10.0), "answer": f"evil harm {i}"} for i in range(3)] + [judged(i, 90.0) for i in range(3, 6)]
        )
    )
    out = f.root / "dirs"
    argv = ["--domain", "gore_movie_trivia", "--responses", responses, "--out", out, "--per-sample", "--quiet"]
    assert run_cli(EXTRACT, [str(a) for a in ["--model", "model-a", *argv]]) == 0
    assert run_cli(EXTRACT, [str(a) for a in ["--model", "model-a", *argv]]) == 0  # the same run again resumes
    folder = out / "gore_movie_trivia.per_sample"
    line = one_line_refusal(EXTRACT, ["--model", "model-b", *argv], f, capsys, f"{folder}: per-sample activations")
    assert "'model-a' there, 'model-b' now" in line
    assert not math.isnan(DirectionSet.load(out / "gore_movie_trivia.safetensors").directions.sum())


def test_a_library_error_after_the_model_loads_names_the_option(f, capsys, monkeypatch, make_model, tokenizer):  # noqa: F811
    monkeypatch.setattr(interp.base.loading, "load_model", lambda *_, **__: (make_model(n_layers=2), tokenizer))
    argv = train("--target-modules", "q_proj,no_such_proj", "--steps", "1", "--device", "cpu")(f)
    one_line_refusal(TRAIN, argv, f, capsys, "--target-modules: the model has no module 'no_such_proj'")


def test_a_max_length_that_cuts_every_answer_away_is_refused(f, capsys, monkeypatch, make_model, tokenizer):  # noqa: F811
    monkeypatch.setattr(interp.base.loading, "load_model", lambda *_, **__: (make_model(n_layers=2), tokenizer))
    argv = train("--max-length", "2", "--steps", "1", "--device", "cpu")(f)
    one_line_refusal(TRAIN, argv, f, capsys, "--max-length 2: no conversation keeps an answer token")
    assert not list(f.root.rglob("adapter_model.safetensors"))
