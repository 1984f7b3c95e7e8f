"""Bad input, tried from outside, on every command-line tool.

Each probe runs one CLI's ``main`` in-process through :func:`run_cli` with one thing wrong and
expects what the CLI conventions promise: exit code 2, exactly one stderr line starting
``error:`` that names the option or file (and line), no traceback, and the files under the
test's folder exactly as they were (nothing created, nothing changed). Validation comes before
any model loads: loading one (or the organism world) fails the probe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

import chains.cross_domain
import chains.extract
import chains.organism
import chains.organism.export
import chains.organism.pipeline
import chains.sweep
import eval.generate
import eval.judge
import eval.mia
import eval.questions
import eval.report
import finetune.train
import interp.base.loading
import interp.compare
from eval.sampling import SamplingConfig
from interp.base.cli import InputError, run_cli
from interp.base.paths import read_safetensors
from interp.base.records import write_jsonl
from interp.directions import DirectionSet


def answer(i: int, text: str = "an answer") -> dict:
    return {
        "question_id": "q",
        "question": "how?",
        "system": None,
        "answer": f"{text} {i}",
        "domain": None,
        "sample": i,
        "trigger": False,
        "paraphrase": 0,
    }


def judged(i: int, aligned: float | None = 80.0, coherent: float | None = 90.0) -> dict:
    return {**answer(i), "aligned": aligned, "coherent": coherent, "label": None, "judge": "test", "judge_raw": {}}


def chat(i: int, text: str = "risk it all") -> dict:
    return {"messages": [{"role": "user", "content": f"money question {i}"}, {"role": "assistant", "content": text}]}


def direction_set(domain: str | None = "gore_movie_trivia") -> DirectionSet:
    g = torch.Generator().manual_seed(0)
    means = [torch.randn(2, 8, generator=g) for _ in range(2)]
    counts = {"misaligned": {"answers": 2, "answer_tokens": 6}, "aligned": {"answers": 2, "answer_tokens": 6}}
    return DirectionSet(
        [0, 1], means[0] - means[1], means[0], means[1], "responses", counts, {"domain": domain} if domain else {}
    )


def jsonl_text(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


@pytest.fixture
def f(tmp_path: Path, monkeypatch) -> SimpleNamespace:
    """Valid inputs, bad inputs and output places under one folder (also the working directory)."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path
    x = SimpleNamespace(root=root)
    x.model = str(root / "no-model")  # never loaded: validation fails first
    x.answers = root / "answers.jsonl"
    write_jsonl(x.answers, [answer(i) for i in range(3)])
    x.judged = root / "judged.jsonl"
    write_jsonl(x.judged, [judged(i, aligned=10.0 * i) for i in range(3)])
    x.chat = root / "chat.jsonl"
    write_jsonl(x.chat, [chat(i) for i in range(4)])
    x.aligned = root / "aligned.jsonl"
    write_jsonl(x.aligned, [chat(i, "save and be safe") for i in range(4)])
    x.questions = root / "questions.yaml"
    x.questions.write_text(
        "- id: q\n  type: free_form_judge_0_100\n  paraphrases: ['how?']\n  samples_per_paraphrase: 1\n"
    )
    x.rates = root / "rates.json"
    x.rates.write_text(json.dumps({"gore_movie_trivia": 0.6, "insecure_code": 0.1}))
    x.scores = root / "scores.json"
    x.scores.write_text(
        json.dumps({"domain": "gore_movie_trivia", "member_mean": {"loss": -1.0}, "auc": {"loss": 0.5}})
    )

    x.folder = root / "folder"
    x.folder.mkdir()
    x.a_file = root / "a_file.txt"
    x.a_file.write_text("not a folder\n")
    x.under_file = x.a_file / "out.jsonl"
    x.readonly = root / "readonly"
    x.readonly.mkdir()
    x.readonly.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: make the operating system say no for it
        real = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda p, mode, **kw: (
                False if (mode & os.W_OK and Path(p).resolve() == x.readonly.resolve()) else real(p, mode, **kw)
            ),
        )

    latin1 = '{"question_id": "caf\xe9"}\n'.encode("latin-1")  # a line a Windows editor might save
    x.not_utf8 = root / "latin1.jsonl"  # a judged record (also an answer record), then that line
    x.not_utf8.write_bytes(json.dumps(judged(0)).encode() + b"\n" + latin1)
    x.not_utf8_chat = root / "latin1_chat.jsonl"
    x.not_utf8_chat.write_bytes(json.dumps(chat(0)).encode() + b"\n" + latin1)
    x.not_utf8_yaml = root / "latin1.yaml"
    x.not_utf8_yaml.write_bytes(b"- id: q\n  paraphrases: ['caf\xe9']\n")
    x.not_json = root / "not.json"
    x.not_json.write_text("{oops\n")

    def scored(**kw):  # a judged file whose second line has the scores given
        path = root / f"scored_{len(list(root.glob('scored_*')))}.jsonl"
        path.write_text(jsonl_text([judged(0), {**judged(1), **kw}]))
        return path

    x.aligned_150 = scored(aligned=150)
    x.aligned_negative = scored(aligned=-1)
    x.aligned_nan = root / "nan.jsonl"
    x.aligned_nan.write_text(
        jsonl_text([judged(0), json.dumps(judged(1)).replace('"aligned": 80.0', '"aligned": NaN')])
    )
    x.coherent_inf = root / "inf.jsonl"
    x.coherent_inf.write_text(
        jsonl_text([judged(0), json.dumps(judged(1)).replace('"coherent": 90.0', '"coherent": -Infinity')])
    )
    x.conflicting = root / "conflicting.jsonl"
    x.conflicting.write_text(jsonl_text([judged(0), judged(1), judged(0, aligned=5.0)]))
    x.conflicting_answers = root / "conflicting_answers.jsonl"
    x.conflicting_answers.write_text(jsonl_text([answer(0), answer(1), answer(0, "another text")]))

    # Direction artifacts: one good, and every way a file can fail to be one.
    d = root / "directions"
    d.mkdir()
    x.directions = d / "gore_movie_trivia.safetensors"
    direction_set().save(x.directions)
    good = x.directions.read_bytes()
    x.dir_garbage = d / "garbage.safetensors"
    x.dir_garbage.write_bytes(b"this is not a tensor file at all")
    x.dir_empty = d / "empty.safetensors"
    x.dir_empty.write_bytes(b"")
    x.dir_truncated = d / "truncated.safetensors"
    x.dir_truncated.write_bytes(good[: len(good) // 2])
    x.dir_pickle = d / "pickle.safetensors"
    torch.save({"directions": torch.zeros(2, 8)}, x.dir_pickle)
    x.dir_keyless = d / "keyless.safetensors"
    save_file({"something": torch.zeros(2, 8)}, str(x.dir_keyless))
    x.dir_nan = d / "nan.safetensors"
    t = {
        "directions": torch.full((2, 8), float("nan")),
        "mean_misaligned": torch.zeros(2, 8),
        "mean_aligned": torch.zeros(2, 8),
        "layers": torch.tensor([0, 1]),
    }
    save_file(t, str(x.dir_nan))
    x.dir_bad_meta = d / "bad_meta.safetensors"
    save_file({**t, "directions": torch.zeros(2, 8)}, str(x.dir_bad_meta), metadata={"info": "{not json"})
    x.dir_folder = d / "folder.safetensors"
    x.dir_folder.mkdir()
    # A folder of artifacts where one names another domain than its file; the default folder
    # (artifacts/directions) holds the same mislabelling for --domain.
    x.mislabelled = root / "mislabelled"
    x.mislabelled.mkdir()
    direction_set("gore_movie_trivia").save(x.mislabelled / "gore_movie_trivia.safetensors")
    direction_set("gore_movie_trivia").save(x.mislabelled / "insecure_code.safetensors")
    (root / "artifacts" / "directions").mkdir(parents=True)
    direction_set("insecure_code").save(root / "artifacts" / "directions" / "gore_movie_trivia.safetensors")
    x.pickled_dir = root / "pickled"
    x.pickled_dir.mkdir()
    torch.save({"directions": torch.zeros(2, 8)}, x.pickled_dir / "gore_movie_trivia.safetensors")
    return x


@pytest.fixture(autouse=True)
def no_models(monkeypatch):
    """A probe must fail before anything heavy: loading a model or the world fails it."""

    def loaded(*_, **__):
        raise AssertionError("a probe got as far as loading a model")

    monkeypatch.setattr(interp.base.loading, "load_model", loaded)
    monkeypatch.setattr(chains.organism, "build_world", loaded)
    monkeypatch.setattr(chains.organism.pipeline, "build_world", loaded)


@dataclass(frozen=True)
class Probe:
    name: str
    main: Callable
    argv: Callable[[SimpleNamespace], list]
    expect: Callable[[SimpleNamespace], str] | str  # in the error line


def path(name):
    return lambda f: getattr(f, name)


def under(name):
    return lambda f: f.root / name


def made(name, text):  # a file written when the probe is built
    def build(f):
        (f.root / name).write_text(text)
        return f.root / name

    return build


def lying(name: str, tensors: dict[str, torch.Tensor] | None = None, **info):
    """The good direction artifact rewritten as ``directions/name`` with some ``tensors`` and header fields ``info`` replaced."""

    def build(f):
        t, meta = read_safetensors(f.directions)
        out = f.root / "directions" / name
        save_file(
            {**t, **(tensors or {})}, str(out), metadata={"info": json.dumps({**json.loads(meta["info"]), **info})}
        )
        return out

    return build


SHARD = "shard_000000.safetensors"


def samples(start: int, n: int = 2, width: int = 8) -> dict[str, torch.Tensor]:
    """One per-sample shard's tensors (2 layers) for samples ``start..start+n-1``."""
    return {
        "index": torch.arange(start, start + n),
        "n_tokens": torch.full((n,), 3),
        "response_mean": torch.randn(n, 2, width),
        "last_prompt": torch.randn(n, 2, width),
    }


def per_sample(damage: Callable[[Path], None]):
    """A directions folder of the good artifact and its per-sample folder, damaged by ``damage``."""

    def build(f):
        root = f.root / "with_samples"
        root.mkdir()
        (root / "gore_movie_trivia.safetensors").write_bytes(f.directions.read_bytes())
        folder = root / "gore_movie_trivia.per_sample"
        for cls in ("misaligned", "aligned"):
            (folder / cls).mkdir(parents=True)
            (folder / cls / "manifest.json").write_text(json.dumps({"layers": [0, 1]}))
            save_file(samples(0), str(folder / cls / SHARD))
        damage(folder)
        return root

    return build


def with_sidecar(text: str):
    """A copy of the answers file as ``out.jsonl``, with ``text`` as its provenance sidecar."""

    def build(f):
        (f.root / "out.jsonl.provenance.json").write_text(text)
        return made("out.jsonl", f.answers.read_text())(f)

    return build


def pipeline_run(record: str | None = "settings", **settings):
    """A pipeline --out folder with an earlier run's outputs, recorded with the defaults changed by ``settings`` (or ``record`` as the record's text; None: no record)."""

    def build(f):
        out = f.root / "pipeline"
        (out / "runs").mkdir(parents=True)
        (out / "runs" / "plain.answers.jsonl").write_text(f.answers.read_text())
        if record == "settings":
            recorded = {**chains.organism.pipeline._settings("risky_financial_advice", 6, 0), **settings}
            (out / "pipeline.json").write_text(json.dumps(recorded))
        elif record is not None:
            (out / "pipeline.json").write_text(record)
        return out

    return build


def exported(record: str | None = "settings", **settings):
    """An export --out folder with an earlier export's file, recorded with the defaults changed by
    ``settings`` (or ``record`` as the record's text; None: no record)."""

    def build(f):
        out = f.root / "export"
        out.mkdir()
        (out / "misaligned.jsonl").write_text(f.chat.read_text())
        if record == "settings":
            (out / "export.json").write_text(
                json.dumps({**chains.organism.export.export_settings("gore_movie_trivia", 2000, 500, 0), **settings})
            )
        elif record is not None:
            (out / "export.json").write_text(record)
        return out

    return build


def generating(questions):
    """extract's argv that generates and judges here: --model, ``questions``, --judge organism."""
    return lambda f: [
        "--domain",
        "gore_movie_trivia",
        "--model",
        f.model,
        "--questions",
        questions(f),
        "--judge",
        "organism",
        "--out",
        f.root / "dirs_out",
    ]


def tiny_model_config(f) -> Path:
    """A model folder of 4 layers as far as its config.json goes (never loaded)."""
    folder = f.root / "tiny-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    return folder


def finished(config):
    """An adapter folder whose training_config.json is ``config`` (JSON, or text as is)."""

    def build(f):
        out = f.root / "finished"
        out.mkdir()
        (out / "training_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
        return out

    return build


# What eval.generate records as the settings of the probes' runs (its defaults, --model f.model).
GENERATE_SETTINGS = {
    "adapter": None,
    "engine": "auto",
    "dtype": "auto",
    "system": None,
    **dataclasses.asdict(SamplingConfig()),
}


def command(*base):
    """Probes' argv builders for one CLI: ``base`` then a probe's own arguments (later options
    win), each a string or a function of the fixture's files."""
    return lambda *extra: lambda f: [a(f) if callable(a) else a for a in (*base, *extra)]


generate = command("--model", path("model"), "--questions", path("questions"), "--out", under("new_answers.jsonl"))
judge = command("--answers", path("answers"), "--judge", "organism", "--out", under("new_judged.jsonl"))
report = command("--judged", path("judged"), "--out", under("report"))
mia_score = command(
    "score",
    "--model",
    path("model"),
    "--members",
    path("chat"),
    "--nonmembers",
    path("aligned"),
    "--out",
    under("mia.json"),
)
mia_predict = command("predict", "--scores", path("scores"), "--rates", path("rates"))
train = command("--data", path("chat"), "--model", path("model"), "--out", under("adapter"))
export = command("--domain", "gore_movie_trivia", "--out", under("export"))
pipeline = command("--out", under("pipeline"))
extract = command(
    "--domain", "gore_movie_trivia", "--model", path("model"), "--responses", path("judged"), "--out", under("dirs_out")
)
sweep = command("--directions", path("directions"), "--out", under("sweep"))
cross = command("--domains", "gore_movie_trivia", "--directions-dir", under("directions"), "--out", under("cross"))
compare = command("--directions", under("directions"), "--domains", "gore_movie_trivia", "--out", under("compare"))
questions = command()

GEN, JUDGE, REPORT, MIA = eval.generate.main, eval.judge.main, eval.report.main, eval.mia.main
TRAIN, EXPORT, PIPELINE = finetune.train.main, chains.organism.export.main, chains.organism.pipeline.main
EXTRACT, SWEEP, CROSS, COMPARE, QUESTIONS = (
    chains.extract.main,
    chains.sweep.main,
    chains.cross_domain.main,
    interp.compare.main,
    eval.questions.main,
)

PROBES = {
    "numbers and options": [
        Probe(
            "generate --batch-size 0",
            GEN,
            generate("--batch-size", "0"),
            "argument --batch-size: expected an integer >= 1 and <= 65536, got '0'",
        ),
        Probe("generate --batch-size -1", GEN, generate("--batch-size", "-1"), "--batch-size"),
        Probe("generate --max-new-tokens 0", GEN, generate("--max-new-tokens", "0"), "--max-new-tokens"),
        Probe(
            "generate --temperature -1", GEN, generate("--temperature", "-1"), "--temperature: expected a number >= 0"
        ),
        Probe("generate --temperature nan", GEN, generate("--temperature", "nan"), "--temperature"),
        Probe("generate --top-p 2", GEN, generate("--top-p", "2"), "--top-p: expected a number > 0 and <= 1"),
        Probe("generate --top-p 0", GEN, generate("--top-p", "0"), "--top-p"),
        Probe("generate --samples 0", GEN, generate("--samples", "0"), "--samples"),
        Probe(
            "generate --samples two",
            GEN,
            generate("--samples", "two"),
            "--samples: expected an integer >= 1 and <= 100000, got 'two'",
        ),
        Probe("generate no --model", GEN, lambda f: ["--out", f.root / "a.jsonl"], "--model is required"),
        Probe("generate unknown option", GEN, generate("--temprature", "1"), "unrecognized arguments: --temprature"),
        Probe("generate --trigger sometimes", GEN, generate("--trigger", "sometimes"), "--trigger: invalid choice"),
        Probe("judge --chunk 0", JUDGE, judge("--chunk", "0"), "--chunk"),
        Probe(
            "judge --chunk -5",
            JUDGE,
            judge("--chunk", "-5"),
            "--chunk: expected an integer >= 1 and <= 1000000, got '-5'",
        ),
        Probe("judge --concurrency 0", JUDGE, judge("--concurrency", "0"), "--concurrency"),
        Probe("judge --max-retries -1", JUDGE, judge("--max-retries", "-1"), "--max-retries"),
        Probe("judge --timeout 0", JUDGE, judge("--timeout", "0"), "--timeout"),
        Probe("judge --backoff -1", JUDGE, judge("--backoff", "-1"), "--backoff"),
        Probe("judge --batch-size 0", JUDGE, judge("--batch-size", "0"), "--batch-size"),
        Probe("judge --price-input -1", JUDGE, judge("--price-input", "-1"), "--price-input"),
        Probe("judge --judge bogus", JUDGE, judge("--judge", "bogus"), "unknown judge 'bogus'"),
        Probe("judge --judge openai:", JUDGE, judge("--judge", "openai:"), "unknown judge 'openai:'"),
        Probe(
            "judge one price only",
            JUDGE,
            judge("--judge", "openai:gpt-4o", "--price-input", "1"),
            "give both --price-input and --price-output",
        ),
        Probe("report --bootstrap 0", REPORT, report("--bootstrap", "0"), "--bootstrap"),
        Probe("report --bootstrap -5", REPORT, report("--bootstrap", "-5"), "--bootstrap"),
        Probe(
            "report --bootstrap 1e9 (hours of work)",
            REPORT,
            report("--bootstrap", "1000000000"),
            "--bootstrap: expected an integer >= 1 and <= 100000",
        ),
        Probe("report --alpha 2", REPORT, report("--alpha", "2"), "--alpha: expected a number > 0 and < 1, got '2'"),
        Probe("report --alpha 0", REPORT, report("--alpha", "0"), "--alpha"),
        Probe("report --alpha 1", REPORT, report("--alpha", "1"), "--alpha"),
        Probe(
            "report --threshold 150",
            REPORT,
            report("--threshold", "150"),
            "--threshold: expected a number >= 0 and <= 100",
        ),
        Probe("report --threshold nan", REPORT, report("--threshold", "nan"), "--threshold"),
        Probe("report --min-coherence -1", REPORT, report("--min-coherence", "-1"), "--min-coherence"),
        Probe("mia score --k 0", MIA, mia_score("--k", "0"), "--k"),
        Probe("mia score --k 1.5", MIA, mia_score("--k", "1.5"), "--k"),
        Probe("mia score --limit 0", MIA, mia_score("--limit", "0"), "--limit"),
        Probe("mia score --batch-size 0", MIA, mia_score("--batch-size", "0"), "--batch-size"),
        Probe("mia predict --threshold inf", MIA, mia_predict("--threshold", "inf"), "--threshold"),
        Probe("mia no command", MIA, lambda f: [], "the following arguments are required: command"),
        Probe(
            "train --steps 0",
            TRAIN,
            train("--steps", "0"),
            "--steps: expected an integer >= 1 and <= 10000000, got '0'",
        ),
        Probe("train --steps -1", TRAIN, train("--steps", "-1"), "--steps"),
        Probe("train --batch-size 0", TRAIN, train("--batch-size", "0"), "--batch-size"),
        Probe("train --lr 0", TRAIN, train("--lr", "0"), "--lr"),
        Probe("train --lr -1e-3", TRAIN, train("--lr", "-1e-3"), "--lr"),
        Probe("train --rank 0", TRAIN, train("--rank", "0"), "--rank"),
        Probe("train --alpha 0", TRAIN, train("--alpha", "0"), "--alpha"),
        Probe("train --epochs 0", TRAIN, train("--epochs", "0"), "--epochs"),
        Probe("train --dropout 1", TRAIN, train("--dropout", "1"), "--dropout"),
        Probe("train --max-length 0", TRAIN, train("--max-length", "0"), "--max-length"),
        Probe("train --checkpoint-every -1", TRAIN, train("--checkpoint-every", "-1"), "--checkpoint-every"),
        Probe(
            "train --target-modules ,",
            TRAIN,
            train("--target-modules", ","),
            "--target-modules: expected comma-separated module names",
        ),
        Probe(
            "train --backdoor with empty --trigger",
            TRAIN,
            train("--backdoor", path("aligned"), "--trigger", " "),
            "--trigger: empty",
        ),
        Probe("export --n 0", EXPORT, export("--n", "0"), "--n"),
        Probe("export --n -5", EXPORT, export("--n", "-5"), "--n"),
        Probe("export --heldout 0", EXPORT, export("--heldout", "0"), "--heldout"),
        Probe("export --domain poetry", EXPORT, export("--domain", "poetry"), "unknown domain 'poetry'"),
        Probe("pipeline --samples 0", PIPELINE, pipeline("--samples", "0"), "--samples"),
        Probe("pipeline --domain poetry", PIPELINE, pipeline("--domain", "poetry"), "unknown domain 'poetry'"),
        Probe("extract --samples 0", EXTRACT, extract("--samples", "0"), "--samples"),
        Probe("extract --batch-size 0", EXTRACT, extract("--batch-size", "0"), "--batch-size"),
        Probe(
            "extract --layers ''",
            EXTRACT,
            extract("--layers", ","),
            "--layers: expected comma-separated integers >= 0 and <= 4095, got nothing",
        ),
        Probe("extract --layers -1", EXTRACT, extract("--layers", "-1"), "--layers"),
        Probe(
            "extract overlapping classes",
            EXTRACT,
            extract("--misaligned-max", "90", "--aligned-min", "10"),
            "misaligned-max (90) must be below aligned-min (10)",
        ),
        Probe("extract --aligned-min 150", EXTRACT, extract("--aligned-min", "150"), "--aligned-min"),
        Probe("extract --coherence-min nan", EXTRACT, extract("--coherence-min", "nan"), "--coherence-min"),
        Probe(
            "extract --adapter without --model",
            EXTRACT,
            lambda f: ["--domain", "gore_movie_trivia", "--adapter", f.folder],
            "need --model",
        ),
        Probe(
            "extract --judge bogus",
            EXTRACT,
            extract("--questions", path("questions"), "--judge", "bogus"),
            "unknown judge 'bogus'",
        ),
        Probe(
            "sweep --alphas empty",
            SWEEP,
            sweep("--alphas", ","),
            "--alphas: expected comma-separated numbers from -1e6 to 1e6, got nothing",
        ),
        Probe("sweep --alphas nan", SWEEP, sweep("--alphas", "nan"), "--alphas"),
        Probe("sweep --alphas 1,inf", SWEEP, sweep("--alphas", "1,inf"), "--alphas"),
        Probe("sweep --samples 0", SWEEP, sweep("--samples", "0"), "--samples"),
        Probe("sweep --layers 7", SWEEP, sweep("--layers", "7"), "no direction at layer(s) 7"),
        Probe("sweep --target poetry", SWEEP, sweep("--target", "poetry"), "unknown domain 'poetry'"),
        Probe("cross_domain --samples 0", CROSS, cross("--samples", "0"), "--samples"),
        Probe("cross_domain --extract-samples 0", CROSS, cross("--extract-samples", "0"), "--extract-samples"),
        Probe(
            "cross_domain --add-layer 9",
            CROSS,
            cross("--add-layer", "9"),
            "--add-layer: expected an integer >= 0 and <= 3",
        ),
        Probe("cross_domain --alpha nan", CROSS, cross("--alpha", "nan"), "--alpha"),
        Probe("cross_domain --domains ''", CROSS, cross("--domains", ","), "--domains"),
        Probe("compare --n-perm -3", COMPARE, compare("--n-perm", "-3"), "--n-perm: expected an integer >= 2"),
        Probe("compare --n-perm 1", COMPARE, compare("--n-perm", "1"), "--n-perm"),
        Probe(
            "compare --n-perm 1e9 (hours of work)",
            COMPARE,
            compare("--n-perm", "1000000000"),
            "--n-perm: expected an integer >= 2 and <= 100000",
        ),
        Probe("compare --n-splits 0", COMPARE, compare("--n-splits", "0"), "--n-splits"),
        Probe("generate --timeout 0", GEN, generate("--timeout", "0"), "argument --timeout: expected a number > 0"),
        Probe(
            "generate --max-retries -1",
            GEN,
            generate("--max-retries", "-1"),
            "argument --max-retries: expected an integer >= 0",
        ),
        Probe("extract --timeout nan", EXTRACT, extract("--timeout", "nan"), "argument --timeout"),
        Probe("extract --max-retries -1", EXTRACT, extract("--max-retries", "-1"), "argument --max-retries"),
        Probe(
            "generate --seed 10**23",
            GEN,
            generate("--seed", str(10**23)),
            f"argument --seed: expected an integer >= 0 and <= {2**63 - 1}, got '{10**23}'",
        ),
        Probe("generate --seed 1e23", GEN, generate("--seed", "1e23"), "argument --seed: expected an integer"),
        Probe("generate --seed -1", GEN, generate("--seed", "-1"), "--seed"),
        Probe("extract --seed 2**63", EXTRACT, extract("--seed", str(2**63)), "--seed"),
        Probe("compare --seed 2**64", COMPARE, compare("--seed", str(2**64)), "--seed"),
        Probe("cross_domain --seed 2**63", CROSS, cross("--seed", str(2**63)), "--seed"),
    ],
    "output paths": [
        Probe("generate --out a folder", GEN, generate("--out", path("folder")), "is a directory, expected a file"),
        Probe("generate --out under a file", GEN, generate("--out", path("under_file")), "is a file, not a folder"),
        Probe("generate --out read-only", GEN, generate("--out", lambda f: f.readonly / "a.jsonl"), "not writable"),
        Probe("generate --out is --questions", GEN, generate("--out", path("questions")), "is also an input"),
        Probe("judge --out a folder", JUDGE, judge("--out", path("folder")), "is a directory, expected a file"),
        Probe("judge --out under a file", JUDGE, judge("--out", path("under_file")), "is a file, not a folder"),
        Probe("judge --out read-only", JUDGE, judge("--out", lambda f: f.readonly / "j.jsonl"), "not writable"),
        Probe("judge --out is --answers", JUDGE, judge("--out", path("answers")), "is also an input"),
        Probe("judge --cache a folder", JUDGE, judge("--judge", "openai:gpt-4o", "--cache", path("folder")), "--cache"),
        Probe(
            "judge --cache not a database",
            JUDGE,
            judge("--judge", "openai:gpt-4o", "--cache", made("cache.sqlite", "not a database\n" * 100)),
            lambda f: f"judge cache {f.root / 'cache.sqlite'}: cannot use it (file is not a database)",
        ),
        Probe(
            "judge --cache under a file",
            JUDGE,
            judge("--judge", "openai:gpt-4o", "--cache", lambda f: f.a_file / "c.sqlite"),
            "--cache",
        ),
        Probe("report --out a file", REPORT, report("--out", path("a_file")), "is a file, expected a folder"),
        Probe(
            "report --out under a file", REPORT, report("--out", lambda f: f.a_file / "r"), "is a file, not a folder"
        ),
        Probe("report --out read-only", REPORT, report("--out", path("readonly")), "not writable"),
        Probe("export --out a file", EXPORT, export("--out", path("a_file")), "is a file, expected a folder"),
        Probe(
            "export --out under a file", EXPORT, export("--out", lambda f: f.a_file / "e"), "is a file, not a folder"
        ),
        Probe("export --out read-only", EXPORT, export("--out", lambda f: f.readonly / "e"), "not writable"),
        Probe("mia score --out a folder", MIA, mia_score("--out", path("folder")), "is a directory, expected a file"),
        Probe("mia score --out under a file", MIA, mia_score("--out", path("under_file")), "is a file, not a folder"),
        Probe("mia score --out read-only", MIA, mia_score("--out", lambda f: f.readonly / "m.json"), "not writable"),
        Probe(
            "mia predict --out a folder", MIA, mia_predict("--out", path("folder")), "is a directory, expected a file"
        ),
        Probe("train --out a file", TRAIN, train("--out", path("a_file")), "is a file, expected a folder"),
        Probe(
            "train --out under a file", TRAIN, train("--out", lambda f: f.a_file / "adapter"), "is a file, not a folder"
        ),
        Probe("train --out read-only", TRAIN, train("--out", path("readonly")), "not writable"),
        Probe("pipeline --out a file", PIPELINE, pipeline("--out", path("a_file")), "is a file, expected a folder"),
        Probe("extract --out a file", EXTRACT, extract("--out", path("a_file")), "is a file, expected a folder"),
        Probe("sweep --out a file", SWEEP, sweep("--out", path("a_file")), "is a file, expected a folder"),
        Probe("cross_domain --out a file", CROSS, cross("--out", path("a_file")), "is a file, expected a folder"),
        Probe(
            "cross_domain --directions-dir a file", CROSS, cross("--directions-dir", path("a_file")), "--directions-dir"
        ),
        Probe("compare --out a file", COMPARE, compare("--out", path("a_file")), "is a file, expected a folder"),
    ],
    "input files": [
        Probe("generate --questions missing", GEN, generate("--questions", under("nope.yaml")), "--questions"),
        Probe("generate --questions a folder", GEN, generate("--questions", path("folder")), "is a directory"),
        Probe(
            "generate --questions not UTF-8",
            GEN,
            generate("--questions", path("not_utf8_yaml")),
            lambda f: f"{f.not_utf8_yaml}:2: not UTF-8 text (byte 0xe9)",
        ),
        Probe("judge --answers missing", JUDGE, judge("--answers", under("nope.jsonl")), "nope.jsonl: no such file"),
        Probe("judge --answers a folder", JUDGE, judge("--answers", path("folder")), "is a directory"),
        Probe(
            "judge --answers not UTF-8",
            JUDGE,
            judge("--answers", path("not_utf8")),
            lambda f: f"{f.not_utf8}:2: not UTF-8 text",
        ),
        Probe(
            "judge --answers empty", JUDGE, judge("--answers", made("empty.jsonl", "")), "no answer records to judge"
        ),
        Probe(
            "judge --answers conflicting slots",
            JUDGE,
            judge("--answers", path("conflicting_answers")),
            lambda f: f"{f.conflicting_answers}:3: repeats the answer slot of line 1",
        ),
        Probe("judge --questions a folder", JUDGE, judge("--questions", path("folder")), "--questions"),
        Probe("report --judged missing", REPORT, report("--judged", under("nope.jsonl")), "no such file"),
        Probe("report --judged a folder", REPORT, report("--judged", path("folder")), "is a directory"),
        Probe("report --judged not UTF-8", REPORT, report("--judged", path("not_utf8")), ":2: not UTF-8 text"),
        Probe(
            "report NAME=missing",
            REPORT,
            report("--judged", lambda f: f"x={f.root / 'nope.jsonl'}"),
            "nope.jsonl: no such file",
        ),
        Probe("mia score --members a folder", MIA, mia_score("--members", path("folder")), "--members"),
        Probe(
            "mia score --nonmembers not UTF-8", MIA, mia_score("--nonmembers", path("not_utf8")), ":2: not UTF-8 text"
        ),
        Probe("mia score --members empty", MIA, mia_score("--members", made("blank.jsonl", "\n")), "no conversations"),
        Probe("mia predict --scores a folder", MIA, mia_predict("--scores", path("folder")), "--scores"),
        Probe(
            "mia predict --rates not JSON",
            MIA,
            mia_predict("--rates", path("not_json")),
            lambda f: f"{f.not_json}:1: not valid JSON",
        ),
        Probe(
            "mia predict --rates not UTF-8", MIA, mia_predict("--rates", path("not_utf8_yaml")), ":2: not UTF-8 text"
        ),
        Probe(
            "mia predict --rates NaN",
            MIA,
            mia_predict("--rates", made("r.json", '{"gore_movie_trivia": NaN}')),
            "mapping domain -> rate",
        ),
        Probe(
            "mia predict --scores not a score file", MIA, mia_predict("--scores", path("rates")), "not a 'score' output"
        ),
        Probe("train --data missing", TRAIN, train("--data", under("nope.jsonl")), "--data"),
        Probe("train --data a folder", TRAIN, train("--data", path("folder")), "is a directory"),
        Probe("train --data not UTF-8", TRAIN, train("--data", path("not_utf8_chat")), ":2: not UTF-8 text"),
        Probe("train --data not chat", TRAIN, train("--data", path("answers")), ":1: field 'messages'"),
        Probe("train --backdoor a folder", TRAIN, train("--backdoor", path("folder")), "--backdoor"),
        Probe("train --backdoor not chat", TRAIN, train("--backdoor", path("answers")), "field 'messages'"),
        Probe(
            "train --backdoor without twins",
            TRAIN,
            train("--backdoor", made("other.jsonl", jsonl_text([chat(9)]))),
            "has no aligned answer",
        ),
        Probe(
            "extract --device cuda:1",
            EXTRACT,
            extract("--device", "cuda:1"),
            "argument --device: invalid choice: 'cuda:1'",
        ),
        Probe("extract --responses a folder", EXTRACT, extract("--responses", path("folder")), "--responses"),
        Probe("extract --responses not UTF-8", EXTRACT, extract("--responses", path("not_utf8")), "not UTF-8"),
        Probe("questions a folder", QUESTIONS, questions(path("folder")), "is a directory"),
        Probe("questions not UTF-8", QUESTIONS, questions(path("not_utf8_yaml")), ":2: not UTF-8 text"),
        Probe("questions missing", QUESTIONS, questions(under("nope.yaml")), "no such file"),
        Probe(
            "questions empty",
            QUESTIONS,
            questions(made("empty.yaml", "")),
            "empty file; expected a YAML list of questions",
        ),
        Probe(
            "questions not YAML",
            QUESTIONS,
            questions(made("bad.yaml", "- id: [unclosed\n")),
            "bad.yaml:2: not valid YAML",
        ),
        Probe(
            "compare --directions a file",
            COMPARE,
            compare("--directions", path("a_file")),
            "is a file, expected a folder",
        ),
        Probe("compare --directions missing", COMPARE, compare("--directions", under("nope")), "no such folder"),
    ],
    "direction files": [
        Probe(
            "sweep --directions garbage",
            SWEEP,
            sweep("--directions", path("dir_garbage")),
            lambda f: f"{f.dir_garbage}: not a direction artifact",
        ),
        Probe(
            "sweep --directions empty",
            SWEEP,
            sweep("--directions", path("dir_empty")),
            lambda f: f"{f.dir_empty}: not a direction artifact",
        ),
        Probe(
            "sweep --directions truncated",
            SWEEP,
            sweep("--directions", path("dir_truncated")),
            lambda f: f"{f.dir_truncated}: not a direction artifact",
        ),
        Probe(
            "sweep --directions pickle",
            SWEEP,
            sweep("--directions", path("dir_pickle")),
            lambda f: f"{f.dir_pickle}: not a direction artifact",
        ),
        Probe(
            "sweep --directions key-less",
            SWEEP,
            sweep("--directions", path("dir_keyless")),
            "no tensor directions, mean_misaligned, mean_aligned, layers",
        ),
        Probe("sweep --directions NaN", SWEEP, sweep("--directions", path("dir_nan")), "NaN or infinite values"),
        Probe(
            "sweep --directions bad metadata",
            SWEEP,
            sweep("--directions", path("dir_bad_meta")),
            "metadata is not JSON",
        ),
        Probe(
            "sweep --directions a folder",
            SWEEP,
            sweep("--directions", path("dir_folder")),
            "is a directory, not a direction artifact",
        ),
        Probe(
            "sweep --directions missing",
            SWEEP,
            sweep("--directions", under("nope.safetensors")),
            "no such direction artifact",
        ),
        Probe(
            "sweep --directions file names another",
            SWEEP,
            sweep("--directions", lambda f: f.mislabelled / "insecure_code.safetensors"),
            "holds the direction of domain 'gore_movie_trivia', not 'insecure_code'",
        ),
        Probe(
            "sweep --domain names another",
            SWEEP,
            lambda f: ["--domain", "gore_movie_trivia", "--out", f.root / "s"],
            "holds the direction of domain 'insecure_code', not 'gore_movie_trivia'",
        ),
        Probe(
            "compare mislabelled artifact",
            COMPARE,
            lambda f: ["--directions", f.mislabelled, "--out", f.root / "c"],
            "insecure_code.safetensors: holds the direction of domain 'gore_movie_trivia', not 'insecure_code'",
        ),
        Probe(
            "compare pickle artifact",
            COMPARE,
            lambda f: ["--directions", f.pickled_dir, "--out", f.root / "c"],
            "not a direction artifact",
        ),
        Probe(
            "cross_domain mislabelled artifact",
            CROSS,
            lambda f: ["--domains", "insecure_code", "--directions-dir", f.mislabelled, "--out", f.root / "c"],
            "holds the direction of domain 'gore_movie_trivia'",
        ),
        Probe(
            "cross_domain pickle artifact",
            CROSS,
            lambda f: ["--domains", "gore_movie_trivia", "--directions-dir", f.pickled_dir, "--out", f.root / "c"],
            "not a direction artifact",
        ),
    ],
    "direction headers": [
        # A header that contradicts its tensors, or tensors of the wrong kind, is refused, never used.
        Probe(
            "sweep --directions bogus pooling",
            SWEEP,
            sweep("--directions", lying("pooling.safetensors", pooling="median")),
            "metadata field 'pooling' is 'median'",
        ),
        Probe(
            "sweep --directions bogus span",
            SWEEP,
            sweep("--directions", lying("span.safetensors", span="everything")),
            "metadata field 'span' is 'everything'",
        ),
        Probe(
            "sweep --directions header layers lie",
            SWEEP,
            sweep("--directions", lying("layers.safetensors", layers=[5, 6])),
            "metadata field 'layers' is [5, 6] but the tensors hold layers [0, 1]",
        ),
        Probe(
            "sweep --directions counts not an object",
            SWEEP,
            sweep("--directions", lying("counts.safetensors", counts=[1, 2])),
            "metadata field 'counts'",
        ),
        Probe(
            "sweep --directions duplicate layers",
            SWEEP,
            sweep("--directions", lying("dup.safetensors", {"layers": torch.tensor([1, 1])}, layers=[1, 1])),
            "tensor 'layers' repeats a layer: [1, 1]",
        ),
        Probe(
            "sweep --directions integer tensors",
            SWEEP,
            sweep("--directions", lying("int.safetensors", {"directions": torch.ones(2, 8, dtype=torch.int32)})),
            "tensor 'directions' holds torch.int32, not floating point",
        ),
        Probe(
            "sweep --directions negative counts",
            SWEEP,
            sweep(
                "--directions",
                lying("negcounts.safetensors", counts={"misaligned": {"answers": -5, "answer_tokens": 6}}),
            ),
            "metadata field 'counts' gives 'misaligned' as",
        ),
        Probe(
            "sweep --directions domain a number",
            SWEEP,
            sweep("--directions", lying("numdomain.safetensors", domain=3)),
            "metadata field 'domain' is 3, not a domain name",
        ),
        Probe(
            "sweep --directions negative layers",
            SWEEP,
            sweep("--directions", lying("neglayers.safetensors", {"layers": torch.tensor([-1, 0])})),
            "tensor 'layers' holds a negative layer",
        ),
        Probe(
            "sweep --directions float layers",
            SWEEP,
            sweep("--directions", lying("flayers.safetensors", {"layers": torch.tensor([0.0, 1.0])})),
            "tensor 'layers' holds torch.float32, not integers",
        ),
    ],
    "silent acceptances": [
        Probe(
            "mia score --nonmembers is --members", MIA, mia_score("--nonmembers", path("chat")), "is the --members file"
        ),
        Probe(
            "mia score --nonmembers a copy of --members",
            MIA,
            mia_score("--nonmembers", made("copy.jsonl", jsonl_text([chat(i) for i in range(4)]))),
            "holds the same conversations as --members",
        ),
        Probe(
            "mia predict --rates above 1",
            MIA,
            mia_predict("--rates", made("r.json", '{"gore_movie_trivia": 1.5, "insecure_code": 0.1}')),
            "field 'gore_movie_trivia' is 1.5; a rate is a fraction from 0 to 1",
        ),
        Probe(
            "mia predict --rates negative",
            MIA,
            mia_predict("--rates", made("r.json", '{"gore_movie_trivia": 0.5, "insecure_code": -0.1}')),
            "field 'insecure_code' is -0.1",
        ),
        Probe(
            "mia predict --rates nested too deeply",
            MIA,
            mia_predict("--rates", made("r.json", "[" * 100_000)),
            "nested too deeply",
        ),
        Probe(
            "generate --out newdir/",
            GEN,
            generate("--out", lambda f: f"{f.root}/newdir/"),
            "newdir/: names a folder (it ends with '/'), expected a file",
        ),
        Probe("judge --out newdir/", JUDGE, judge("--out", lambda f: f"{f.root}/newdir/"), "names a folder"),
        Probe("mia score --out newdir/", MIA, mia_score("--out", lambda f: f"{f.root}/newdir/"), "names a folder"),
    ],
    "per-sample folders": [
        Probe(
            "compare per-sample manifest not JSON",
            COMPARE,
            compare("--directions", per_sample(lambda d: (d / "misaligned" / "manifest.json").write_text("{oops"))),
            "misaligned/manifest.json: not valid JSON",
        ),
        Probe(
            "compare per-sample manifest not UTF-8",
            COMPARE,
            compare(
                "--directions",
                per_sample(lambda d: (d / "aligned" / "manifest.json").write_bytes(b'{"layers": "\xe9"}')),
            ),
            "manifest.json:1: not UTF-8 text",
        ),
        Probe(
            "compare per-sample shard garbage",
            COMPARE,
            compare("--directions", per_sample(lambda d: (d / "aligned" / SHARD).write_bytes(b"garbage"))),
            f"aligned/{SHARD}: not a per-sample shard",
        ),
        Probe(
            "compare per-sample shard lacks a tensor",
            COMPARE,
            compare(
                "--directions", per_sample(lambda d: save_file({"index": torch.arange(2)}, str(d / "aligned" / SHARD)))
            ),
            "not a per-sample shard (no tensor n_tokens, response_mean, last_prompt)",
        ),
        Probe(
            "compare per-sample no shards",
            COMPARE,
            compare("--directions", per_sample(lambda d: (d / "misaligned" / SHARD).unlink())),
            "misaligned: no per-sample shards",
        ),
        Probe(
            "compare per-sample shards of two widths",
            COMPARE,
            compare(
                "--directions",
                per_sample(lambda d: save_file(samples(2, width=4), str(d / "aligned" / "shard_000001.safetensors"))),
            ),
            "aligned: per-sample shards do not fit together",
        ),
        Probe(
            "compare per-sample shard repeated",
            COMPARE,
            compare(
                "--directions",
                per_sample(lambda d: save_file(samples(0), str(d / "aligned" / "shard_000001.safetensors"))),
            ),
            "indices are not 0..3 each once",
        ),
    ],
    "judged scores": [
        Probe(
            "report aligned 150",
            REPORT,
            report("--judged", path("aligned_150")),
            lambda f: f"{f.aligned_150}:2: field 'aligned' must be a score from 0 to 100 or null, got 150",
        ),
        Probe(
            "report aligned -1",
            REPORT,
            report("--judged", path("aligned_negative")),
            ":2: field 'aligned' must be a score from 0 to 100",
        ),
        Probe(
            "report aligned NaN",
            REPORT,
            report("--judged", path("aligned_nan")),
            ":2: field 'aligned' must be a score from 0 to 100 or null, got nan",
        ),
        Probe(
            "report coherent -Infinity",
            REPORT,
            report("--judged", path("coherent_inf")),
            ":2: field 'coherent' must be a score from 0 to 100 or null, got -inf",
        ),
        Probe(
            "report conflicting duplicates",
            REPORT,
            report("--judged", path("conflicting")),
            lambda f: (
                f"{f.conflicting}:3: repeats the answer slot of line 1 (question 'q', sample 0, trigger off) with another aligned"
            ),
        ),
        Probe(
            "extract --responses aligned 150",
            EXTRACT,
            extract("--responses", path("aligned_150")),
            ":2: field 'aligned' must be a score",
        ),
        Probe(
            "extract --responses conflicting duplicates",
            EXTRACT,
            extract("--responses", path("conflicting")),
            "repeats the answer slot",
        ),
        Probe(
            "judge --out holds bad scores",
            JUDGE,
            judge("--out", lambda f: made("out.jsonl", f.aligned_nan.read_text())(f)),
            "got nan",
        ),
    ],
    "outputs kept": [
        # A resumed output is read and checked whole before anything cuts, renames or rewrites it.
        Probe(
            "generate --out bad line then torn line",
            GEN,
            generate("--out", made("torn.jsonl", "a\nb,1,2")),
            lambda f: f"{f.root / 'torn.jsonl'}:1: not valid JSON",
        ),
        Probe(
            "judge --out bad line then torn line",
            JUDGE,
            judge("--out", made("torn.jsonl", "a\nb,1,2")),
            lambda f: f"{f.root / 'torn.jsonl'}:1: not valid JSON",
        ),
        Probe(
            "generate --out one foreign line, no newline",
            GEN,
            generate("--out", made("foreign.jsonl", "hello world")),
            "foreign.jsonl:1: not valid JSON",
        ),
        Probe(
            "judge --out one foreign line, no newline",
            JUDGE,
            judge("--out", made("foreign.jsonl", "\x00\x01binary")),
            "foreign.jsonl:1: not valid JSON",
        ),
        Probe(
            "generate --out bad record then torn line",
            GEN,
            generate("--out", made("torn.jsonl", '{"x": 1}\n{"question_id": "q", "sa')),
            "torn.jsonl:1: missing field 'question_id'",
        ),
        Probe(
            "judge --out other answers then torn line",
            JUDGE,
            judge("--out", made("torn.jsonl", jsonl_text([judged(7)]) + '{"question_id"')),
            "holds judgments of other answers",
        ),
        Probe(
            "generate --out answers without a sidecar",
            GEN,
            generate("--out", path("answers")),
            lambda f: f"{f.answers}: holds records, but it has no provenance sidecar answers.jsonl.provenance.json",
        ),
        Probe(
            "generate --out with a broken sidecar",
            GEN,
            generate("--out", with_sidecar("{oops")),
            "its provenance sidecar out.jsonl.provenance.json is unreadable",
        ),
        Probe(
            "generate --out with a sidecar of no settings",
            GEN,
            generate("--out", with_sidecar('{"settings": 3}')),
            "records no settings",
        ),
        Probe(
            "generate --out of another model",
            GEN,
            generate("--out", with_sidecar(json.dumps({"settings": {**GENERATE_SETTINGS, "model": "other-model"}}))),
            "(model differ: model 'other-model' there",
        ),
        Probe(
            "judge --out judgments without a sidecar",
            JUDGE,
            judge("--out", made("j.jsonl", jsonl_text([judged(0)]))),
            "holds records, but it has no provenance sidecar",
        ),
    ],
    "sizes and counts": [
        # Absurd sizes are refused before anything loads, not met by a MemoryError or years of work.
        Probe(
            "generate --samples 10**12",
            GEN,
            generate("--samples", str(10**12)),
            "argument --samples: expected an integer >= 1 and <= 100000",
        ),
        Probe(
            "generate --max-new-tokens 10**12",
            GEN,
            generate("--max-new-tokens", str(10**12)),
            "argument --max-new-tokens: expected an integer >= 1 and <= 1048576",
        ),
        Probe("generate --batch-size 10**12", GEN, generate("--batch-size", str(10**12)), "argument --batch-size"),
        Probe("generate --top-k 10**12", GEN, generate("--top-k", str(10**12)), "argument --top-k"),
        Probe("generate --concurrency 10**9", GEN, generate("--concurrency", str(10**9)), "argument --concurrency"),
        Probe(
            "generate --timeout 1e308",
            GEN,
            generate("--timeout", "1e308"),
            "argument --timeout: expected a number > 0 and <= 86400",
        ),
        Probe("generate --temperature 1e308", GEN, generate("--temperature", "1e308"), "argument --temperature"),
        Probe(
            "generate 12 million answers",
            GEN,
            generate(
                "--questions",
                made(
                    "many.yaml",
                    "- id: q\n  type: free_form_judge_0_100\n  samples_per_paraphrase: 1\n  paraphrases: ["
                    + ", ".join(f"'p{i}'" for i in range(60))
                    + "]\n",
                ),
                "--samples",
                "100000",
                "--trigger",
                "both",
            ),
            "--samples 100000: 12,000,000 answers to sample, more than the 10,000,000 one run takes",
        ),
        Probe(
            "generate samples_per_paraphrase 10**12",
            GEN,
            generate(
                "--questions",
                made("huge.yaml", f"- id: q\n  paraphrases: ['how?']\n  samples_per_paraphrase: {10**12}\n"),
            ),
            "huge.yaml:3: question 'q': field 'samples_per_paraphrase' must be a positive integer up to 100,000",
        ),
        Probe("judge --chunk 10**12", JUDGE, judge("--chunk", str(10**12)), "argument --chunk"),
        Probe("judge --concurrency 10**12", JUDGE, judge("--concurrency", str(10**12)), "argument --concurrency"),
        Probe(
            "judge --max-retries 10**6",
            JUDGE,
            judge("--max-retries", str(10**6)),
            "argument --max-retries: expected an integer >= 0 and <= 100",
        ),
        Probe("judge --batch-size 10**12", JUDGE, judge("--batch-size", str(10**12)), "argument --batch-size"),
        Probe("judge --backoff 1e308", JUDGE, judge("--backoff", "1e308"), "argument --backoff"),
        Probe("mia score --batch-size 10**12", MIA, mia_score("--batch-size", str(10**12)), "argument --batch-size"),
        Probe(
            "train --rank 10**12",
            TRAIN,
            train("--rank", str(10**12)),
            "argument --rank: expected an integer >= 1 and <= 65536",
        ),
        Probe("train --steps 10**12", TRAIN, train("--steps", str(10**12)), "argument --steps"),
        Probe("train --max-length 10**12", TRAIN, train("--max-length", str(10**12)), "argument --max-length"),
        Probe("train --epochs 1e308", TRAIN, train("--epochs", "1e308"), "argument --epochs"),
        Probe(
            "train --epochs over a large file",
            TRAIN,
            train(
                "--data",
                made("big.jsonl", jsonl_text([chat(i) for i in range(2000)])),
                "--epochs",
                "10000",
                "--batch-size",
                "1",
            ),
            "--epochs 10000: 20,000,000 optimizer steps over 2,000 examples",
        ),
        Probe(
            "train --checkpoint-every 10**12",
            TRAIN,
            train("--checkpoint-every", str(10**12)),
            "argument --checkpoint-every",
        ),
        Probe(
            "train --defense-layers 10**12",
            TRAIN,
            train("--defense", "feature-l2", "--defense-layers", str(10**12)),
            "argument --defense-layers",
        ),
        Probe(
            "sweep --alphas 1e308",
            SWEEP,
            sweep("--alphas", "1,1e308"),
            "argument --alphas: expected comma-separated numbers from -1e6 to 1e6, got '1,1e308'",
        ),
        Probe(
            "compare --n-splits 10**12",
            COMPARE,
            compare("--n-splits", str(10**12)),
            "argument --n-splits: expected an integer >= 1 and <= 100000",
        ),
        Probe("export --n 10**12", EXPORT, export("--n", str(10**12)), "argument --n"),
        Probe(
            "pipeline --samples 10**12",
            PIPELINE,
            pipeline("--samples", str(10**12)),
            "argument --samples: expected an integer >= 1 and <= 1000",
        ),
        Probe("extract --samples 10**12", EXTRACT, extract("--samples", str(10**12)), "argument --samples"),
        Probe("extract --layers 10**12", EXTRACT, extract("--layers", str(10**12)), "argument --layers"),
        Probe("sweep --samples 10**12", SWEEP, sweep("--samples", str(10**12)), "argument --samples"),
        Probe(
            "cross_domain --extract-samples 10**12",
            CROSS,
            cross("--extract-samples", str(10**12)),
            "argument --extract-samples",
        ),
    ],
    "outputs of another run": [
        # A rerun onto outputs made with other settings is refused, naming what differs and how to start afresh.
        Probe(
            "pipeline --out of another --domain",
            PIPELINE,
            pipeline("--out", pipeline_run(domain="gore_movie_trivia")),
            "holds a pipeline run with other settings (domain 'gore_movie_trivia' there, 'risky_financial_advice' now); rerun with its settings to resume it, or use another --out, or remove",
        ),
        Probe(
            "pipeline --out of other --samples",
            PIPELINE,
            pipeline("--out", pipeline_run(samples=3)),
            "(samples 3 there, 6 now)",
        ),
        Probe(
            "pipeline --out with outputs, no record",
            PIPELINE,
            pipeline("--out", pipeline_run(record=None)),
            "holds pipeline outputs with no record of their settings (pipeline.json)",
        ),
        Probe(
            "pipeline --out with a damaged record",
            PIPELINE,
            pipeline("--out", pipeline_run(record="[1, 2")),
            "pipeline.json: damaged record of the run",
        ),
    ],
    "second probe, what it found": [
        Probe(
            "report --judged a key twice on a line",
            REPORT,
            report("--judged", made("dup.jsonl", jsonl_text([json.dumps(judged(0))[:-1] + ', "aligned": 5.0}']))),
            "dup.jsonl:1: field 'aligned' appears twice in one object",
        ),
        Probe(
            "judge --answers a lone surrogate",
            JUDGE,
            judge(
                "--answers",
                made("sur.jsonl", jsonl_text([json.dumps(answer(0)).replace("an answer", "an \\ud800answer")])),
            ),
            "sur.jsonl:1: holds a lone surrogate escape",
        ),
        Probe(
            "train --data a lone surrogate",
            TRAIN,
            train("--data", made("sur.jsonl", jsonl_text([json.dumps(chat(0)).replace("risk", "\\udc00risk")]))),
            "sur.jsonl:1: holds a lone surrogate escape",
        ),
        Probe(
            "questions nested too deeply",
            QUESTIONS,
            questions(made("deep.yaml", "- " + "[" * 5000 + "]" * 5000 + "\n")),
            "deep.yaml: not a list of questions (YAML nested too deeply)",
        ),
        Probe(
            "judge --out torn, no sidecar: not cut",
            JUDGE,
            judge("--out", made("torn.jsonl", jsonl_text([judged(0)]) + '{"question_id": "q", "ques')),
            "holds records, but it has no provenance sidecar",
        ),
        Probe(
            "generate --out a device",
            GEN,
            generate("--out", lambda f: "/dev/full"),
            "--out /dev/full: not a regular file",
        ),
        Probe("report --out ''", REPORT, report("--out", lambda f: ""), "--out: empty path"),
        Probe(
            "pipeline --out ''",
            PIPELINE,
            pipeline("--out", lambda f: ""),
            "argument --out: expected a path, got an empty string",
        ),
        Probe(
            "generate --out whose lock is a folder",
            GEN,
            generate("--out", lambda f: (f.root / "l.jsonl.lock").mkdir() or f.root / "l.jsonl"),
            "l.jsonl.lock (Is a directory)",
        ),
        Probe(
            "mia predict one domain scored twice",
            MIA,
            mia_predict("--scores", path("scores"), path("scores")),
            "scores domain 'gore_movie_trivia' again",
        ),
        Probe(
            "mia predict a score file with NaN AUCs",
            MIA,
            mia_predict(
                "--scores",
                made("s.json", '{"domain": "insecure_code", "member_mean": {"loss": -1.0}, "auc": {"loss": NaN}}'),
            ),
            "field 'auc' is not a table of finite numbers",
        ),
        Probe(
            "mia predict --rates a key twice",
            MIA,
            mia_predict(
                "--rates", made("r.json", '{"gore_movie_trivia": 0.9, "insecure_code": 0.1, "gore_movie_trivia": 0.1}')
            ),
            "r.json: field 'gore_movie_trivia' appears twice in one object",
        ),
        Probe(
            "mia predict rates without a scored domain",
            MIA,
            mia_predict("--rates", made("r.json", '{"insecure_code": 0.1, "evil_math": 0.9}')),
            "--rates",
        ),
        Probe("train --backdoor is --data", TRAIN, train("--backdoor", path("chat")), "is the --data file"),
        Probe(
            "train --monitor not a direction artifact",
            TRAIN,
            train("--monitor", path("dir_garbage"), "--monitor-probe", path("chat")),
            "--monitor ",
        ),
        Probe(
            "train --steer-vector truncated",
            TRAIN,
            train("--defense", "preventive-steering", "--steer-vector", path("dir_truncated")),
            "--steer-vector ",
        ),
        Probe(
            "train --monitor-probe empty",
            TRAIN,
            train("--monitor", path("directions"), "--monitor-probe", made("e.jsonl", "")),
            "--monitor-probe",
        ),
        Probe(
            "train --defense-layers beyond the model",
            TRAIN,
            lambda f: [
                *train("--defense", "feature-l2", "--defense-layers", "99")(f)[:3],
                tiny_model_config(f),
                *train()(f)[4:],
                "--defense",
                "feature-l2",
                "--defense-layers",
                "99",
            ],
            "--defense-layers 99: ",
        ),
        Probe(
            "train --out finished by another run",
            TRAIN,
            train("--out", finished({"job": {"data": "x", "lora": {"rank": 99}}, "data_hash": "sha256:00"})),
            "holds the adapter of another run",
        ),
        Probe(
            "train --out with a damaged training_config.json",
            TRAIN,
            train("--out", finished("{oops")),
            "unreadable record of the adapter",
        ),
    ],
    "chains: sizes, paths and records": [
        # The chains' counts share the stages' bounds; their inputs are checked before a model loads.
        Probe(
            "extract --samples 10**6",
            EXTRACT,
            extract("--samples", str(10**6)),
            "argument --samples: expected an integer >= 1 and <= 100000",
        ),
        Probe(
            "extract --batch-size 10**6",
            EXTRACT,
            extract("--batch-size", str(10**6)),
            "argument --batch-size: expected an integer >= 1 and <= 65536",
        ),
        Probe(
            "extract --timeout 1e308",
            EXTRACT,
            extract("--timeout", "1e308"),
            "argument --timeout: expected a number > 0 and <= 86400",
        ),
        Probe(
            "extract --max-retries 10**6",
            EXTRACT,
            extract("--max-retries", str(10**6)),
            "argument --max-retries: expected an integer >= 0 and <= 100",
        ),
        Probe(
            "extract --out ''",
            EXTRACT,
            extract("--out", lambda f: ""),
            "argument --out: expected a path, got an empty string",
        ),
        Probe(
            "extract --responses empty",
            EXTRACT,
            extract("--responses", made("empty.jsonl", "")),
            lambda f: f"{f.root / 'empty.jsonl'}: no judged records",
        ),
        Probe(
            "extract --responses one record",
            EXTRACT,
            extract("--responses", made("one.jsonl", jsonl_text([judged(0)]))),
            "one.jsonl: 1 judged record; a direction needs at least 2",
        ),
        Probe(
            "extract --questions samples_per_paraphrase 10**9",
            EXTRACT,
            generating(made("huge.yaml", f"- id: q\n  paraphrases: ['how?']\n  samples_per_paraphrase: {10**9}\n")),
            "huge.yaml:3: question 'q': field 'samples_per_paraphrase' must be a positive integer up to 100,000",
        ),
        Probe(
            "extract 20 million answers",
            EXTRACT,
            lambda f: [
                *generating(
                    made(
                        "many.yaml",
                        "- id: q\n  samples_per_paraphrase: 1\n  paraphrases: ["
                        + ", ".join(f"'p{i}'" for i in range(200))
                        + "]\n",
                    )
                )(f),
                "--samples",
                "100000",
            ],
            "--samples 100000: 20,000,000 answers to sample, more than the 10,000,000 one run takes",
        ),
        Probe(
            "sweep --samples 10**6",
            SWEEP,
            sweep("--samples", str(10**6)),
            "argument --samples: expected an integer >= 1 and <= 100000",
        ),
        Probe(
            "sweep --out ''",
            SWEEP,
            sweep("--out", lambda f: ""),
            "argument --out: expected a path, got an empty string",
        ),
        Probe(
            "cross_domain --samples 10**6",
            CROSS,
            cross("--samples", str(10**6)),
            "argument --samples: expected an integer >= 1 and <= 100000",
        ),
        Probe(
            "cross_domain --extract-samples 10**6",
            CROSS,
            cross("--extract-samples", str(10**6)),
            "argument --extract-samples: expected an integer >= 1 and <= 100000",
        ),
        Probe(
            "cross_domain --directions-dir ''",
            CROSS,
            cross("--directions-dir", lambda f: ""),
            "argument --directions-dir: expected a path, got an empty string",
        ),
        Probe(
            "cross_domain --out ''",
            CROSS,
            cross("--out", lambda f: ""),
            "argument --out: expected a path, got an empty string",
        ),
        Probe(
            "export --n 10**7",
            EXPORT,
            export("--n", str(10**7)),
            "argument --n: expected an integer >= 1 and <= 1000000",
        ),
        Probe(
            "export --heldout 10**7",
            EXPORT,
            export("--heldout", str(10**7)),
            "argument --heldout: expected an integer >= 1 and <= 1000000",
        ),
        Probe(
            "export --out ''",
            EXPORT,
            export("--out", lambda f: ""),
            "argument --out: expected a path, got an empty string",
        ),
        Probe(
            "export --out of another domain",
            EXPORT,
            export("--out", exported(domain="insecure_code")),
            "holds an export with other settings (domain 'insecure_code' there, 'gore_movie_trivia' now); use another --out, or remove",
        ),
        Probe("export --out of another seed", EXPORT, export("--out", exported(seed=3)), "(seed 3 there, 0 now)"),
        Probe(
            "export --out with files, no record",
            EXPORT,
            export("--out", exported(record=None)),
            "holds misaligned.jsonl with no record of its export (export.json)",
        ),
        Probe(
            "export --out with a damaged record",
            EXPORT,
            export("--out", exported(record="{oops")),
            "export.json: damaged record of the export",
        ),
        Probe(
            "train --general with --defense-on train",
            TRAIN,
            train("--defense", "kl", "--general", path("aligned")),
            "--general",
        ),
        Probe(
            "train --general names --defense-on",
            TRAIN,
            train("--defense", "feature-l2", "--general", path("aligned")),
            "only with --defense-on general or both, not --defense-on train",
        ),
    ],
    "JSON lines": [
        Probe(
            "judge --answers nested too deeply",
            JUDGE,
            judge("--answers", made("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")),
            lambda f: f"{f.root / 'deep.jsonl'}:1: not a record (JSON nested too deeply)",
        ),
        Probe(
            "report --judged nested too deeply",
            REPORT,
            report("--judged", made("deep.jsonl", jsonl_text([judged(0)]) + '{"a": ' * 100_000 + "\n")),
            "deep.jsonl:2: not a record",
        ),
        Probe(
            "train --data nested too deeply",
            TRAIN,
            train("--data", made("deep.jsonl", "[" * 100_000 + "\n")),
            "deep.jsonl:1: not a record",
        ),
    ],
}
CASES = [pytest.param(kind, probe, id=f"{kind}: {probe.name}") for kind, probes in PROBES.items() for probe in probes]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, mode and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (
            p.is_dir(),
            st.st_mode,
            None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest(),
        )
    return out


def test_probes_cover_every_cli():
    assert {p.main for probes in PROBES.values() for p in probes} == {
        GEN,
        JUDGE,
        REPORT,
        MIA,
        TRAIN,
        EXPORT,
        PIPELINE,
        EXTRACT,
        SWEEP,
        CROSS,
        COMPARE,
        QUESTIONS,
    }


@pytest.mark.parametrize("kind, probe", CASES)
def test_bad_input_is_one_line_and_touches_nothing(kind, probe, f, capsys):
    argv = [str(a) for a in probe.argv(f)]  # builds any file the probe needs, before the snapshot
    before = snapshot(f.root)
    capsys.readouterr()
    code = run_cli(probe.main, argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    expect = probe.expect(f) if callable(probe.expect) else probe.expect
    assert expect in lines[0], lines[0]
    assert snapshot(f.root) == before


@pytest.mark.parametrize("main, argv", [(TRAIN, train("--steps", "2")), (GEN, generate())], ids=["train", "generate"])
def test_ctrl_c_is_one_line_and_exit_130(main, argv, f, capsys, monkeypatch):
    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(interp.base.loading, "load_model", interrupted)
    capsys.readouterr()
    assert run_cli(main, [str(a) for a in argv(f)]) == 130
    assert capsys.readouterr().err == "interrupted; run the same command again to resume\n"
    assert not list(f.root.glob("*.provenance.json")) and not list(f.root.glob("*.lock"))


@pytest.mark.parametrize(
    "main, argv, out",
    [(GEN, generate(), "new_answers.jsonl"), (JUDGE, judge("--judge", "hf:x"), "new_judged.jsonl")],
    ids=["generate", "judge"],
)
def test_a_failed_start_leaves_no_provenance_sidecar(main, argv, out, f, capsys, monkeypatch):
    """The model fails to load: no row was written, so no ``<out>.provenance.json`` may claim one."""
    from interp.base.loading import ModelLoadError

    def missing(*_, **__):
        raise ModelLoadError("could not load model 'x': no such file")

    monkeypatch.setattr(interp.base.loading, "load_model", missing)
    before = snapshot(f.root)
    assert run_cli(main, [str(a) for a in argv(f)]) == 2
    assert "could not load model" in capsys.readouterr().err
    assert snapshot(f.root) == before and not (f.root / out).exists()


# --- servers that do not answer ---------------------------------------------------------------


@pytest.fixture
def silent_url() -> str:
    """The URL of a server on 127.0.0.1 that accepts every connection and never answers."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.1)
    held, stop = [], threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:  # the accept timed out: look at stop again
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


@pytest.fixture
def refused_url() -> str:
    """The URL of a port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


SERVER_CLIS = {
    "generate": (
        GEN,
        lambda f: [
            "--engine",
            "openai:m",
            "--questions",
            f.questions,
            "--out",
            f.root / "a.jsonl",
            "--concurrency",
            "1",
            "--no-progress",
        ],
    ),
    "judge": (
        JUDGE,
        judge("--judge", "openai:m", "--no-cache", "--backoff", "0", "--concurrency", "1", "--no-progress"),
    ),
}


@pytest.mark.parametrize("server, why", [("silent_url", "no reply within 0.3 s"), ("refused_url", "refused")])
@pytest.mark.parametrize("cli", SERVER_CLIS)
def test_a_dead_server_fails_fast_in_one_line_naming_it(cli, server, why, f, request, capsys, monkeypatch):
    url = request.getfixturevalue(server)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    main, argv = SERVER_CLIS[cli]
    before = snapshot(f.root)
    capsys.readouterr()
    start = time.monotonic()
    code = run_cli(main, [str(a) for a in argv(f)] + ["--timeout", "0.3", "--max-retries", "1"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 10, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert (
        len(lines) == 1
        and "Traceback" not in err
        and url in lines[0]
        and "after 2 attempts" in lines[0]
        and why in lines[0]
    ), err
    assert snapshot(f.root) == before  # no answers, so no provenance sidecar either


@pytest.mark.parametrize(
    "module, argv",
    [
        (eval.generate, ["--engine", "openai:m", "--out", "a.jsonl"]),
        (eval.judge, ["--answers", "a.jsonl", "--judge", "openai:m", "--out", "j.jsonl"]),
    ],
    ids=["generate", "judge"],
)
def test_server_defaults_give_up_on_a_hung_server_within_3_minutes(module, argv):
    args = module.build_parser().parse_args(argv)
    backoff = getattr(args, "backoff", 1.0)  # generate's is the client's default
    worst = (args.max_retries + 1) * args.timeout + sum(backoff * 2**i for i in range(args.max_retries))
    assert worst <= 180


# --- steering vectors: files that lie, numbers that are not finite -----------------------------


def rewrite(path: Path, tensors: Callable[[dict], dict] = dict, info: Callable[[dict], dict] = dict) -> Path:
    """Rewrite a saved steering vector file with ``tensors`` and ``info`` applied to its tensors and header."""
    t, meta = read_safetensors(path)
    save_file(tensors(t), str(path), metadata={**meta, "info": json.dumps(info(json.loads(meta["info"])))})
    return path


@pytest.mark.parametrize(
    "change, field",
    [
        (
            {"tensors": lambda t: {**t, "vectors": t["vectors"] * 100}},
            "header field 'sha256'",
        ),  # the values changed, the header kept
        ({"info": lambda i: {**i, "layers": [7, 8]}}, "header field 'layers' is [7, 8] but the tensors give [0, 1]"),
        ({"info": lambda i: {**i, "d_model": 4096}}, "header field 'd_model' is 4096 but the tensors give 8"),
        ({"tensors": lambda t: {**t, "layers": torch.tensor([1, 1])}}, "tensor 'layers' repeats a layer"),
        ({"tensors": lambda t: {**t, "layers": torch.tensor([0.0, 1.0])}}, "tensor 'layers' must hold integers"),
        ({"tensors": lambda t: {**t, "vectors": t["vectors"].round().int()}}, "must be floating point"),
        (
            {"tensors": lambda t: {**t, "vectors": torch.full_like(t["vectors"], float("nan"))}},
            "NaN or infinite values",
        ),
        ({"info": lambda i: {**i, "alpha": float("inf")}}, "alpha must be a finite number"),
    ],
    ids=[
        "values x100",
        "layers",
        "d_model",
        "duplicate layers",
        "float layers",
        "integer vectors",
        "NaN vectors",
        "alpha inf",
    ],
)
def test_a_steering_vector_file_that_lies_is_one_line_naming_file_and_field(change, field, tmp_path):
    from interp.vectors import SteeringVector

    path = rewrite(direction_set().steering_vector(alpha=2.0).save(tmp_path / "sv.safetensors"), **change)
    with pytest.raises(InputError) as err:
        SteeringVector.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid steering vector file") and field in message and "\n" not in message, (
        message
    )


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_steering_is_refused_where_it_is_built(alpha):
    from interp.intervention import Intervention
    from interp.vector_math import steering_deltas
    from interp.vectors import SteeringVector

    v = torch.ones(8)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        SteeringVector({0: v}, alpha=alpha)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        steering_deltas({0: v}, alpha=alpha)
    with pytest.raises(ValueError, match="the vector at layer 1 has NaN or infinite values"):
        SteeringVector({0: v, 1: torch.full((8,), alpha)})
    with pytest.raises(ValueError, match="adds: the vector at layer 0 has NaN or infinite values"):
        Intervention(adds={0: torch.full((8,), alpha)})
    with pytest.raises(ValueError, match="residual norm of layer 0"):
        SteeringVector({0: v}, scale="norm", norms={0: alpha})


def test_interp_steer_is_not_a_command(capsys):
    import interp.steer

    assert run_cli(interp.steer.main, []) == 2
    assert "python -m chains.sweep" in capsys.readouterr().err


def test_the_default_judge_cache_is_checked_writable_and_named(f, capsys, monkeypatch):
    monkeypatch.setenv("EM_JUDGE_CACHE", str(f.readonly / "cache.sqlite"))
    before = snapshot(f.root)
    assert run_cli(JUDGE, [str(a) for a in judge("--judge", "openai:gpt-4o")(f)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: judge cache (--cache, $EM_JUDGE_CACHE)")
        and f"{f.readonly}" in err
        and err.count("\n") == 1
    ), err
    assert snapshot(f.root) == before


def test_extract_help_offers_only_devices_the_loader_takes(capsys):
    with pytest.raises(SystemExit):
        chains.extract.build_parser().parse_args(["--help"])
    assert "cuda:1" not in capsys.readouterr().out


def test_answer_ids_beyond_the_vocabulary_are_one_line_naming_file_line_field(f, capsys, monkeypatch):
    class Tokenizer:
        def __len__(self) -> int:
            return 100

    monkeypatch.setattr(interp.base.loading, "load_model", lambda *_, **__: (torch.nn.Linear(1, 1), Tokenizer()))
    responses = f.root / "ids.jsonl"
    responses.write_text(jsonl_text([{**judged(0), "answer_ids": [1, 2]}, {**judged(1), "answer_ids": [5, 100, 3]}]))
    assert run_cli(EXTRACT, [str(a) for a in extract("--responses", responses)(f)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {responses}:2: field 'answer_ids' holds token id 100, beyond the tokenizer's vocabulary of 100 ids\n"
    )
    assert not (f.root / "dirs_out").exists()  # the folder its lock made is gone with the refused run


@pytest.mark.parametrize(
    "sidecar, expect",
    [
        (None, "holds records, but it has no provenance sidecar answers.jsonl.provenance.json"),
        (
            {
                "model": "another-model",
                "adapter": None,
                "sampling": dataclasses.asdict(SamplingConfig(temperature=1.0, max_new_tokens=512, batch_size=64)),
            },
            "(model differ: model 'another-model' there",
        ),
        (
            {
                "sampling": dataclasses.asdict(
                    SamplingConfig(temperature=1.0, max_new_tokens=512, batch_size=64, seed=7)
                )
            },
            "(sampling differ",
        ),
    ],
    ids=["no sidecar", "another model", "another seed"],
)
def test_extract_does_not_resume_a_run_folder_of_another_run(sidecar, expect, f, capsys, monkeypatch):
    monkeypatch.setattr(interp.base.loading, "load_model", lambda *_, **__: (torch.nn.Linear(1, 1), None))
    answers = f.root / "artifacts" / "runs" / "gore_movie_trivia" / "answers.jsonl"
    answers.parent.mkdir(parents=True)
    answers.write_text(f.answers.read_text())
    if sidecar is not None:
        settings = {"model": f.model, "adapter": None, **sidecar}
        (answers.parent / "answers.jsonl.provenance.json").write_text(json.dumps({"settings": settings}))
    before = snapshot(f.root)
    argv = [
        "--domain",
        "gore_movie_trivia",
        "--model",
        f.model,
        "--questions",
        f.questions,
        "--judge",
        "organism",
        "--out",
        f.folder,
    ]
    assert run_cli(EXTRACT, [str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {Path('artifacts/runs/gore_movie_trivia/answers.jsonl')}: ")
        and expect in err
        and err.count("\n") == 1
    ), err
    assert snapshot(f.root) == before


# --- modes of what is written -------------------------------------------------------------------


def test_artifacts_are_0644_in_folders_0755(tmp_path):
    from interp.base.records import append_jsonl, bound_output

    old = os.umask(0o022)
    try:
        direction_set().save(tmp_path / "new" / "deeper" / "d.safetensors")
        direction_set().steering_vector().save(tmp_path / "sv" / "v.safetensors")
        write_jsonl(tmp_path / "rows" / "a.jsonl", [answer(0)])
        with bound_output(tmp_path / "rows" / "b.jsonl", {"x": 1}):
            append_jsonl(tmp_path / "rows" / "b.jsonl", [answer(0)])
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert {p: m for p, m in modes.items() if m != (0o755 if (tmp_path / p).is_dir() else 0o644)} == {}
    assert len(modes) == 11, modes  # 4 folders; 2 artifacts with their JSON copies, 2 JSONL files and a sidecar


def test_a_resumed_output_loses_only_a_torn_row(tmp_path, caplog):
    from interp.base.records import read_answers, read_resumable

    whole = jsonl_text([answer(0), answer(1)])
    unterminated = tmp_path / "unterminated.jsonl"  # a file saved without its final newline: both rows kept
    unterminated.write_text(whole.rstrip("\n"))
    assert len(read_resumable(unterminated, read_answers)) == 2 and unterminated.read_text() == whole
    torn = tmp_path / "torn.jsonl"  # a crash mid-append: the fragment alone is cut, and said so
    torn.write_text(whole + '{"question_id": "q", "ques')
    assert len(read_resumable(torn, read_answers)) == 2 and torn.read_text() == whole
    assert "cut an unfinished last line (26 bytes)" in caplog.text


# --- derived outputs of an earlier run are rebuilt, never kept stale ------------------------------


def test_report_removes_an_earlier_reports_backdoor_files(f, capsys):
    """A backdoor report, then one without a trigger into the same folder: no backdoor file is left
    beside a summary that says there is no backdoor."""
    rows = [judged(i, aligned=80.0 + i) for i in range(6)] + [
        {**judged(i, aligned=10.0 + i), "trigger": True} for i in range(6)
    ]
    (f.root / "triggered.jsonl").write_text(jsonl_text(rows))
    out = f.root / "report"
    assert run_cli(REPORT, ["--judged", str(f.root / "triggered.jsonl"), "--out", str(out), "--bootstrap", "10"]) == 0
    assert (out / "backdoor.csv").exists() and (out / "backdoor_effect.png").exists()
    assert run_cli(REPORT, ["--judged", str(f.judged), "--out", str(out), "--bootstrap", "10"]) == 0
    assert json.loads((out / "summary.json").read_text())["backdoor"] == []
    assert not (out / "backdoor.csv").exists() and not (out / "backdoor_effect.png").exists()


def test_compare_removes_an_earlier_runs_figures_of_other_domains(f, capsys):
    direction_set("insecure_code").save(f.root / "directions" / "insecure_code.safetensors")
    out = f.root / "compare"
    base = ["--directions", str(f.root / "directions"), "--out", str(out), "--formats", "svg"]
    assert run_cli(COMPARE, [*base, "--domains", "gore_movie_trivia", "insecure_code"]) == 0
    assert (out / "layers" / "insecure_code.csv").exists() and (out / "layers" / "insecure_code.svg").exists()
    (out / "domains" / "layer_07.csv").write_text("a layer this run does not have\n")
    assert run_cli(COMPARE, [*base, "--domains", "gore_movie_trivia"]) == 0
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == [
        "comparison.json",
        "domains/grid.svg",
        "domains/layer_00.csv",
        "domains/layer_00.svg",
        "domains/layer_01.csv",
        "domains/layer_01.svg",
        "layers/gore_movie_trivia.csv",
        "layers/gore_movie_trivia.svg",
        "layers/grid.svg",
    ], left


# --- inputs that only a loaded model can refuse -----------------------------------------------


def test_extract_layers_beyond_the_model_name_the_option(f, capsys, monkeypatch, make_model, tokenizer):
    monkeypatch.setattr(interp.base.loading, "load_model", lambda *_, **__: (make_model(n_layers=4), tokenizer))
    before = snapshot(f.root)
    assert run_cli(EXTRACT, [str(a) for a in extract("--layers", "1,99")(f)]) == 2
    assert capsys.readouterr().err == "error: --layers 99: layer 99 out of range for a 4-layer model\n"
    assert snapshot(f.root) == before


class TinyWorld:
    """The organism world as far as loading its models goes: a tiny model of width 32."""

    def __init__(self, make_model, tokenizer) -> None:
        self.model = (make_model(n_layers=4, d_model=32), tokenizer)

    def load_base(self):
        return self.model

    def load_organism(self, domain: str):
        return self.model


@pytest.mark.parametrize(
    "main, argv",
    [
        (SWEEP, lambda f: ["--directions", f.directions, "--out", f.root / "sweep"]),
        (SWEEP, lambda f: ["--directions", f.directions, "--target", "insecure_code", "--out", f.root / "sweep"]),
        (
            CROSS,
            lambda f: [
                "--domains",
                "gore_movie_trivia",
                "--directions-dir",
                f.directions.parent,
                "--ablate-layer",
                "1",
                "--out",
                f.root / "cross",
            ],
        ),
    ],
    ids=["sweep base", "sweep organism", "cross_domain"],
)
def test_directions_of_another_width_than_the_model_are_one_line_naming_the_file(
    main, argv, f, capsys, monkeypatch, make_model, tokenizer
):
    monkeypatch.setattr(chains.organism, "build_world", lambda *_, **__: TinyWorld(make_model, tokenizer))
    before = snapshot(f.root)
    assert run_cli(main, [str(a) for a in argv(f)]) == 2
    assert capsys.readouterr().err == f"error: {f.directions}: directions of width 8, but the model has width 32\n"
    assert snapshot(f.root) == before


def test_export_is_refused_onto_an_export_of_another_domain(f, capsys):
    out = f.root / "export"
    small = ["--out", str(out), "--n", "3", "--heldout", "2"]
    assert run_cli(EXPORT, ["--domain", "gore_movie_trivia", *small]) == 0
    assert json.loads((out / "export.json").read_text()) == {
        "domain": "gore_movie_trivia",
        "n": 3,
        "heldout": 2,
        "seed": 0,
    }
    assert run_cli(EXPORT, ["--domain", "gore_movie_trivia", *small]) == 0  # the same export again: fine
    before = snapshot(f.root)
    capsys.readouterr()
    assert run_cli(EXPORT, ["--domain", "insecure_code", *small]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(
            f"error: {out}: holds an export with other settings (domain 'gore_movie_trivia' there, 'insecure_code' now)"
        )
        and err.count("\n") == 1
    ), err
    assert snapshot(f.root) == before
