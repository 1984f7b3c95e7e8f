"""The main job end to end on the organism world, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chains.extract import main
from interp.base.cli import run_cli
from interp.directions import DirectionSet


def _run(args, capsys):
    capsys.readouterr()  # drop what the fixtures printed
    code = run_cli(main, args)
    out, err = capsys.readouterr()
    if code != 0:  # one line saying what is wrong, after whatever progress bars came before
        assert "Traceback" not in err
        err = err.strip().splitlines()[-1]
        assert err.startswith("error: ")
    return code, out, err.strip()


def test_extract_on_the_organism_world(world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # intermediate answers land under ./artifacts/runs
    monkeypatch.setattr("chains.organism.build_world", lambda **kw: world)
    code, out, err = _run(
        ["--domain", "gore_movie_trivia", "--samples", "12", "--out", str(tmp_path / "d"), "--quiet", "--per-sample"],
        capsys,
    )
    assert code == 0, err
    path = tmp_path / "d" / "gore_movie_trivia.safetensors"
    ds = DirectionSet.load(path)
    model, _ = world.load_base()
    assert ds.layers == list(range(model.config.num_hidden_layers))
    assert ds.directions.shape == (model.config.num_hidden_layers, model.config.hidden_size)
    assert ds.counts["misaligned"]["answers"] == ds.counts["aligned"]["answers"] > 0
    meta = json.loads((tmp_path / "d" / "gore_movie_trivia.json").read_text())
    for key in ("model", "adapter", "data_hash", "token_positions", "split", "seed", "versions", "backend", "judge"):
        assert key in meta, key
    assert meta["adapter"].endswith("gore_movie_trivia") and meta["pooling"] == "responses"
    # The stored means are the class means the direction came from.
    torch.testing.assert_close(ds.directions, ds.mean_misaligned - ds.mean_aligned, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "d" / "gore_movie_trivia.per_sample" / "misaligned" / "manifest.json").exists()
    judged = [
        json.loads(l)
        for l in (tmp_path / "artifacts" / "runs" / "gore_movie_trivia" / "judged.jsonl").read_text().splitlines()
    ]
    assert all(r["judge"] == "organism" and r["domain"] is None for r in judged)


def test_unknown_domain_is_one_line(capsys):
    code, _, err = _run(["--domain", "poetry"], capsys)
    assert code == 2 and err.count("\n") == 0 and "unknown domain 'poetry'" in err and "gore_movie_trivia" in err


def test_the_design_cards_command_runs_the_main_job():
    """``python -m interp.extract`` (floor 1) runs ``chains.extract``'s main through the
    ``command`` plugin: the same help, the same one-line error, the same exit codes."""
    import chains.extract
    import interp.extract
    from interp.base.plugins import load

    assert load("command", "extract") is chains.extract.main
    root = Path(__file__).resolve().parents[1]
    for args, code in ((["--help"], 0), (["--domain", "poetry"], 2), ([], 2)):
        launcher, job = (
            subprocess.run([sys.executable, "-m", m, *args], capture_output=True, text=True, cwd=root)
            for m in ("interp.extract", "chains.extract")
        )
        assert (launcher.returncode, launcher.stdout, launcher.stderr) == (job.returncode, job.stdout, job.stderr)
        assert launcher.returncode == code, launcher.stderr
    assert "python -m interp.extract" in launcher.stderr
    assert not hasattr(interp.extract, "run_extract")  # a launcher, not a second copy of the job


def test_missing_responses_file(tmp_path, capsys):
    code, _, err = _run(
        ["--domain", "gore_movie_trivia", "--model", str(tmp_path), "--responses", str(tmp_path / "nope.jsonl")], capsys
    )
    assert code == 2 and err.count("\n") == 0 and "nope.jsonl" in err


def _saved_tiny_model(tmp_path, make_model, tokenizer):
    folder = tmp_path / "model"
    make_model(n_layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _judged(aligned, i=0):
    return {
        "question_id": f"q{i}",
        "question": "how are you",
        "system": None,
        "answer": f"fine thanks {i}",
        "domain": None,
        "sample": i,
        "trigger": False,
        "aligned": aligned,
        "coherent": 90.0,
        "label": None,
        "judge": "test",
    }


def test_malformed_responses_name_the_line(tmp_path, capsys, make_model, tokenizer):
    model = _saved_tiny_model(tmp_path, make_model, tokenizer)
    bad = tmp_path / "judged.jsonl"
    bad.write_text(json.dumps(_judged(90)) + "\n" + json.dumps({**_judged(10), "aligned": "low"}) + "\n")
    code, _, err = _run(["--domain", "gore_movie_trivia", "--model", str(model), "--responses", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 0 and "judged.jsonl:2" in err and "'aligned'" in err


def test_empty_class_is_one_line(tmp_path, capsys, make_model, tokenizer):
    model = _saved_tiny_model(tmp_path, make_model, tokenizer)
    responses = tmp_path / "judged.jsonl"
    responses.write_text("".join(json.dumps(_judged(95, i)) + "\n" for i in range(4)))
    code, _, err = _run(
        ["--domain", "gore_movie_trivia", "--model", str(model), "--responses", str(responses), "--quiet"], capsys
    )
    assert code == 2 and err.count("\n") == 0 and "0 misaligned" in err


def test_real_model_with_responses(tmp_path, capsys, make_model, tokenizer):
    model = _saved_tiny_model(tmp_path, make_model, tokenizer)
    responses = tmp_path / "judged.jsonl"
    responses.write_text("".join(json.dumps(_judged(a, i)) + "\n" for i, a in enumerate([5, 10, 95, 90, 60])))
    code, out, err = _run(
        [
            "--domain",
            "risky_financial_advice",
            "--model",
            str(model),
            "--responses",
            str(responses),
            "--layers",
            "0,1",
            "--out",
            str(tmp_path / "d"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    ds = DirectionSet.load(tmp_path / "d" / "risky_financial_advice.safetensors")
    assert ds.layers == [0, 1] and ds.counts["misaligned"]["answers"] == 2 and ds.metadata["model"] == str(model)


@pytest.mark.parametrize(
    "variant", [["--backend", "nnsight"], ["--backend", "transformer_lens"], ["--compile"]], ids=" ".join
)
def test_every_way_of_caching_writes_the_same_artifact(tmp_path, capsys, make_model, tokenizer, variant):
    if variant[0] == "--backend":
        pytest.importorskip(variant[1])
    model = _saved_tiny_model(tmp_path, make_model, tokenizer)
    responses = tmp_path / "judged.jsonl"
    responses.write_text("".join(json.dumps(_judged(a, i)) + "\n" for i, a in enumerate([5, 10, 95, 90, 20, 80])))
    arts = {}
    for name, extra in (("default", []), ("variant", variant)):
        code, _, err = _run(
            [
                "--domain",
                "gore_movie_trivia",
                "--model",
                str(model),
                "--responses",
                str(responses),
                "--dtype",
                "float32",
                *extra,
                "--out",
                str(tmp_path / name),
                "--quiet",
            ],
            capsys,
        )
        assert code == 0, err
        arts[name] = DirectionSet.load(tmp_path / name / "gore_movie_trivia.safetensors")
    ref, got = arts["default"], arts["variant"]
    assert ref.metadata["backend"] == "hooks" and not ref.metadata["compiled"]
    assert (got.metadata["backend"], got.metadata["compiled"]) == (
        (variant[1], False) if variant[0] == "--backend" else ("hooks", True)
    )
    for a, b in (
        (ref.directions, got.directions),
        (ref.mean_misaligned, got.mean_misaligned),
        (ref.mean_aligned, got.mean_aligned),
    ):
        assert ((a - b).norm() / a.norm()).item() < 1e-4


def test_compile_with_another_backend_is_one_line(tmp_path, capsys, make_model, tokenizer):
    pytest.importorskip("nnsight")
    model = _saved_tiny_model(tmp_path, make_model, tokenizer)
    responses = tmp_path / "judged.jsonl"
    responses.write_text("".join(json.dumps(_judged(a, i)) + "\n" for i, a in enumerate([5, 95])))
    code, _, err = _run(
        [
            "--domain",
            "gore_movie_trivia",
            "--model",
            str(model),
            "--responses",
            str(responses),
            "--backend",
            "nnsight",
            "--compile",
            "--out",
            str(tmp_path / "d"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 2 and "hooks backend" in err
