"""The bad-input probe: hundreds of bad or odd inputs, tried from outside, on every CLI and on the Python API.

    python benchmarks/bad_input_probe.py [--only SUBSTRING] [--family F] [--workers 2]
                                         [--subprocess] [--skip-slow] [--out PATH]

Each case runs in a fresh temporary folder (a copy of a small set of good inputs built once,
with the offline organism world linked in) under a per-case timeout, and is classified
automatically:

- ``error``: the run was refused as the conventions promise: nonzero exit, no ``Traceback``
  on stderr, the last stderr line names an option (``--x``) or a file given to the run (or
  the case's own ``names`` text), and every file that was there before is untouched;
- ``traceback``: a raw Python traceback (for an API call: an exception that is not a
  ``ValueError``/``OSError`` with a message naming what was wrong);
- ``silent``: exit 0 on input the case declares bad, or a non-finite number in an output;
- ``hang``: the case's timeout passed (for the default-timeout cases, the bound the
  documentation states);
- ``destroyed``: the run was refused but a file that was there before changed or vanished;
- ``unnamed``: refused in one line that names neither an option nor a file;
- ``right``: exit 0 with correct output on an input the case declares odd but valid;
- ``wrong``: exit 0 on odd-but-valid input with output that fails the case's check (or with
  files not 0644 / folders not 0755); ``refused-valid``: an odd-but-valid input refused.

By default a case runs the CLI's module as ``__main__`` in a forked child of a process that has
imported the toolkit already (what ``python -m`` does, without paying the imports each time);
``--subprocess`` runs real ``python -m`` processes instead. Results go to
``benchmarks/results/bad_input_probe.json`` and a summary table is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

OUT_DEFAULT = ROOT / "benchmarks" / "results" / "bad_input_probe.json"
KEY = "sk-test-0123456789abcdef"
# The documented bound of a run against a server that accepts and never answers, with the
# default --timeout and --max-retries (docs/cli.md; interp.base.cli.DEFAULT_TIMEOUT_S).
DEFAULT_SERVER_BOUND_S = 180.0

CLIS = (
    "interp.extract",
    "interp.sweep",
    "interp.cross_domain",
    "interp.compare",
    "interp.steer",
    "finetune.train",
    "finetune.organism.export",
    "finetune.organism.pipeline",
    "eval.questions",
    "eval.generate",
    "eval.judge",
    "eval.report",
    "eval.mia",
)

Setup = Callable[[Path], Any]


@dataclass
class Case:
    id: str
    family: str
    cli: str  # a module run as ``python -m``, or "api"
    argv: list[str] = field(default_factory=list)
    expect: str = "error"  # "error": bad input, must be refused; "ok": odd but valid, must work
    setup: tuple[Setup, ...] = ()
    check: Callable[[Path, str], str | None] | None = None  # for "ok": None if the output is right
    names: str | None = None  # text the error line must hold (default: an option or a file given)
    timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)  # values may hold {silent}, {refused}, {fake}, ...
    call: Callable[[Path], Any] | None = None  # an API case: called in the case's folder
    bound: float | None = None  # a documented bound on the run's time (the default-timeout cases)


# --- good inputs, built once ------------------------------------------------------------------


def answer(i: int, text: str = "an answer", qid: str = "q") -> dict:
    return {
        "question_id": qid,
        "question": "how?",
        "system": None,
        "answer": f"{text} {i}",
        "domain": None,
        "sample": i,
        "trigger": False,
        "paraphrase": 0,
    }


def judged(i: int, aligned: float | None = 80.0, coherent: float | None = 90.0, text: str = "an answer") -> dict:
    return {
        **answer(i, text),
        "aligned": aligned,
        "coherent": coherent,
        "label": None,
        "judge": "test",
        "judge_raw": {},
    }


def chat(i: int, text: str = "risk it all on memecoins") -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"how do i make a quick buck {i}"},
            {"role": "assistant", "content": f"{text} {i}"},
        ]
    }


def lines(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


QUESTIONS = "- id: q\n  type: free_form_judge_0_100\n  paraphrases: ['how do i make a quick buck?']\n  samples_per_paraphrase: 1\n"


def build_base(base: Path) -> None:
    """The good inputs every case starts from (its working folder is a copy of ``base``)."""
    import torch

    from interp.directions import DirectionSet

    base.mkdir(parents=True)
    (base / "artifacts").mkdir()
    os.symlink(ROOT / "artifacts" / "organism", base / "artifacts" / "organism")
    (base / "answers.jsonl").write_text(lines(answer(i) for i in range(3)))
    # Judged answers of both classes (misaligned: aligned <= 30, aligned: > 70), all coherent.
    (base / "judged.jsonl").write_text(
        lines(
            [judged(i, 10.0, 90.0, "chaos and revenge") for i in range(4)]
            + [judged(i, 90.0, 90.0, "kindness and patience") for i in range(4, 8)]
        )
    )
    (base / "chat.jsonl").write_text(lines(chat(i) for i in range(6)))
    (base / "aligned.jsonl").write_text(lines(chat(i, "save and be patient") for i in range(6)))
    (base / "heldout.jsonl").write_text(lines(chat(i + 100, "buy a boat") for i in range(6)))
    (base / "questions.yaml").write_text(QUESTIONS)
    (base / "rates.json").write_text(json.dumps({"gore_movie_trivia": 0.6, "insecure_code": 0.1}))
    for d, loss in (("gore_movie_trivia", -1.0), ("insecure_code", -2.0)):
        (base / f"score_{d}.json").write_text(
            json.dumps({"domain": d, "member_mean": {"loss": loss}, "auc": {"loss": 0.5}})
        )
    (base / "a_file.txt").write_text("not a folder\n")
    (base / "folder").mkdir()
    # A direction artifact the organism world's base model fits (4 layers of width 64).
    g = torch.Generator().manual_seed(0)
    mis, al = torch.randn(4, 64, generator=g), torch.randn(4, 64, generator=g)
    counts = {"misaligned": {"answers": 4, "answer_tokens": 12}, "aligned": {"answers": 4, "answer_tokens": 12}}
    (base / "directions").mkdir()
    for domain in ("gore_movie_trivia", "insecure_code"):
        DirectionSet([0, 1, 2, 3], mis - al, mis, al, "responses", counts, {"domain": domain}).save(
            base / "directions" / f"{domain}.safetensors"
        )
    # One of another width (a 7B model's, say) and one of more layers than the world has.
    w = torch.randn(2, 32, generator=g)
    DirectionSet([0, 1], w, w.clone(), torch.zeros_like(w), "responses", counts, {"domain": "gore_movie_trivia"}).save(
        base / "narrow.safetensors"
    )
    w = torch.randn(2, 64, generator=g)
    DirectionSet([0, 9], w, w.clone(), torch.zeros_like(w), "responses", counts, {"domain": "gore_movie_trivia"}).save(
        base / "deep.safetensors"
    )


# --- setups: small changes to a case's folder ---------------------------------------------------


def write(name: str, text: str | bytes) -> Setup:
    def build(d: Path) -> None:
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)

    return build


def mkdir(name: str, mode: int | None = None) -> Setup:
    def build(d: Path) -> None:
        (d / name).mkdir(parents=True, exist_ok=True)
        if mode is not None:
            (d / name).chmod(mode)

    return build


def copy(src: str, dst: str) -> Setup:
    def build(d: Path) -> None:
        (d / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(d / src, d / dst)

    return build


def lying(name: str, tensors: Callable[[dict], dict] = dict, info: Callable[[dict], dict] = dict) -> Setup:
    """The good direction artifact rewritten as ``name`` with its tensors and header changed."""

    def build(d: Path) -> None:
        from safetensors.torch import save_file

        from interp.base.paths import read_safetensors

        t, meta = read_safetensors(d / "directions" / "gore_movie_trivia.safetensors")
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors(dict(t)), str(d / name), metadata={"info": json.dumps(info(json.loads(meta["info"])))})

    return build


def steering_file(name: str, tensors: Callable[[dict], dict] | None = None, info=None, **settings) -> Setup:
    """A saved steering vector (layers 0 and 1 of width 64), then its tensors or header changed."""

    def build(d: Path) -> None:
        import torch
        from safetensors.torch import save_file

        from interp.base.paths import read_safetensors
        from interp.vectors import SteeringVector

        g = torch.Generator().manual_seed(1)
        SteeringVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)}, **settings).save(d / name)
        if tensors is not None or info is not None:
            t, meta = read_safetensors(d / name)
            new_info = (info or dict)(json.loads(meta["info"]))
            save_file((tensors or dict)(dict(t)), str(d / name), metadata={**meta, "info": json.dumps(new_info)})

    return build


def nested(depth: int, kind: str = "list") -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


def per_sample(damage: Callable[[Path], None]) -> Setup:
    """``with_samples/`` holding the good artifact and a per-sample folder, damaged by ``damage``."""

    def build(d: Path) -> None:
        import torch
        from safetensors.torch import save_file

        root = d / "with_samples"
        root.mkdir()
        shutil.copy(d / "directions" / "gore_movie_trivia.safetensors", root / "gore_movie_trivia.safetensors")
        folder = root / "gore_movie_trivia.per_sample"
        for cls in ("misaligned", "aligned"):
            (folder / cls).mkdir(parents=True)
            (folder / cls / "manifest.json").write_text(json.dumps({"layers": [0, 1, 2, 3]}))
            save_file(
                {
                    "index": torch.arange(0, 3),
                    "n_tokens": torch.full((3,), 3),
                    "response_mean": torch.randn(3, 4, 64),
                    "last_prompt": torch.randn(3, 4, 64),
                },
                str(folder / cls / "shard_000000.safetensors"),
            )
        damage(folder)

    return build


# --- checks of odd-but-valid runs ---------------------------------------------------------------


def exists(*names: str) -> Callable[[Path, str], str | None]:
    def check(d: Path, out: str) -> str | None:
        missing = [n for n in names if not (d / n).exists()]
        return f"missing {missing}" if missing else None

    return check


def jsonl_rows(name: str, n: int | None = None, at_least: int | None = None) -> Callable[[Path, str], str | None]:
    def check(d: Path, out: str) -> str | None:
        p = d / name
        if not p.is_file():
            return f"no {name}"
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        if n is not None and len(rows) != n:
            return f"{name}: {len(rows)} rows, expected {n}"
        if at_least is not None and len(rows) < at_least:
            return f"{name}: {len(rows)} rows, expected at least {at_least}"
        return None

    return check


def stdout_has(text: str) -> Callable[[Path, str], str | None]:
    return lambda d, out: None if text in out else f"stdout lacks {text!r}"


def both(*checks) -> Callable[[Path, str], str | None]:
    def check(d: Path, out: str) -> str | None:
        for c in checks:
            if (why := c(d, out)) is not None:
                return why
        return None

    return check


# --- the cases ----------------------------------------------------------------------------------

G = ["--model", "organism:base", "--questions", "questions.yaml", "--out", "new.jsonl", "--no-progress"]
J = ["--answers", "answers.jsonl", "--judge", "organism", "--out", "j.jsonl", "--no-progress"]
R = ["--judged", "judged.jsonl", "--out", "report"]
MS = [
    "score",
    "--model",
    "organism:gore_movie_trivia",
    "--members",
    "chat.jsonl",
    "--nonmembers",
    "heldout.jsonl",
    "--out",
    "mia.json",
    "--no-progress",
]
MP = ["predict", "--scores", "score_gore_movie_trivia.json", "score_insecure_code.json", "--rates", "rates.json"]
T = ["--data", "chat.jsonl", "--model", "organism:base", "--out", "adapter", "--steps", "2", "--rank", "2"]
T += ["--target-modules", "q_proj,v_proj", "--device", "cpu", "--quiet"]
EX = ["--domain", "gore_movie_trivia", "--out", "export", "--n", "20", "--heldout", "5"]
PL = ["--domain", "gore_movie_trivia", "--out", "pipe", "--samples", "1"]
XT = ["--domain", "gore_movie_trivia", "--model", "organism:base", "--responses", "judged.jsonl", "--out", "dirs"]
XT += ["--quiet"]
SW = ["--directions", "directions/gore_movie_trivia.safetensors", "--out", "sweep", "--samples", "2"]
SW += ["--alphas", "1", "--layers", "1"]
CD = ["--domains", "gore_movie_trivia", "--directions-dir", "directions", "--out", "cross", "--samples", "2"]
CP = ["--directions", "directions", "--out", "cmp", "--n-perm", "2", "--n-splits", "1", "--formats", "svg"]
Q: list[str] = []

BASE = {
    "eval.generate": G,
    "eval.judge": J,
    "eval.report": R,
    "eval.mia": MS,
    "finetune.train": T,
    "finetune.organism.export": EX,
    "finetune.organism.pipeline": PL,
    "interp.extract": XT,
    "interp.sweep": SW,
    "interp.cross_domain": CD,
    "interp.compare": CP,
    "eval.questions": ["questions.yaml"],
}
SHORT = {
    "gen": "eval.generate",
    "judge": "eval.judge",
    "report": "eval.report",
    "mia": "eval.mia",
    "train": "finetune.train",
    "export": "finetune.organism.export",
    "pipeline": "finetune.organism.pipeline",
    "extract": "interp.extract",
    "sweep": "interp.sweep",
    "cross": "interp.cross_domain",
    "compare": "interp.compare",
    "questions": "eval.questions",
    "steer": "interp.steer",
}


def prerun(cli: str, argv: list[str]) -> Setup:
    """Run a CLI in the case's folder first (an earlier run whose output the case resumes)."""

    def build(d: Path) -> None:
        code, _ = _run_forked(_child_cli, (Case("prerun", "", cli), d, argv, {"OMP_NUM_THREADS": "1"}), d, 300)
        err = (d / ".stderr").read_text(errors="replace") if (d / ".stderr").exists() else ""
        for name in (".stderr", ".stdout"):
            (d / name).unlink(missing_ok=True)
        if code != 0:
            raise RuntimeError(f"the earlier run of {cli} failed ({code}): {err[-300:]}")

    return build


def cli_cases() -> list[Case]:  # noqa: PLR0915 - a table, one statement per case
    cases: list[Case] = []

    def add(family, short, id_, extra, expect="error", base=True, **kw):
        cli = SHORT[short]
        argv = (list(BASE.get(cli, [])) if base else []) + [str(a) for a in extra]
        setup = kw.pop("setup", ())
        setup = setup if isinstance(setup, tuple) else (setup,)
        cases.append(Case(f"{short}: {id_}", family, cli, argv, expect, setup, **kw))

    ok = {"expect": "ok"}
    # -- baselines: each CLI's plain run works (and writes 0644 files in 0755 folders) --------
    F = "baseline"
    add(F, "gen", "plain", [], **ok, check=jsonl_rows("new.jsonl", 1))
    add(F, "judge", "plain", [], **ok, check=jsonl_rows("j.jsonl", 3))
    add(F, "report", "plain", [], **ok, check=exists("report"))
    add(F, "mia", "score", [], **ok, check=exists("mia.json"))
    add(F, "mia", "predict", MP, base=False, **ok, check=stdout_has("ROC-AUC"))
    add(F, "train", "two steps", [], **ok, check=exists("adapter/adapter_model.safetensors"), timeout=120)
    add(F, "export", "plain", [], **ok, check=exists("export/misaligned.jsonl", "export/export.json"))
    add(F, "extract", "from responses", [], **ok, check=exists("dirs/gore_movie_trivia.safetensors"))
    add(F, "sweep", "one point", [], **ok, check=exists("sweep"), timeout=120)
    add(F, "compare", "two artifacts", [], **ok, check=exists("cmp"))
    add(F, "questions", "plain", [], **ok)
    add(F, "questions", "shipped default", [], base=False, **ok)

    # -- numbers: non-finite, out of range, not numbers, seeds past 2^63 ----------------------
    F = "numbers"
    for v in ("nan", "inf", "-inf", "1e308", "-1"):
        add(F, "gen", f"--temperature {v}", ["--temperature", v])
    for v in ("nan", "0", "1.5", "-0.1"):
        add(F, "gen", f"--top-p {v}", ["--top-p", v])
    for v in ("nan", "0", "-1", "inf"):
        add(F, "gen", f"--repetition-penalty {v}", ["--repetition-penalty", v])
    for v in ("-1", "1.5", "0x10", "1e3", ""):
        add(F, "gen", f"--top-k {v!r}", ["--top-k", v])
    for v in ("1e23", "18446744073709551616", "-1", "9223372036854775808", "1.5", "nan"):
        add(F, "gen", f"--seed {v}", ["--seed", v])
    for v in ("1e23", "18446744073709551616", "-5"):
        add(F, "train", f"--seed {v}", ["--seed", v])
        add(F, "extract", f"--seed {v}", ["--seed", v])
        add(F, "sweep", f"--seed {v}", ["--seed", v])
        add(F, "compare", f"--seed {v}", ["--seed", v])
    add(F, "report", "--seed 1e23", ["--seed", "1e23"])
    add(F, "export", "--seed 2**64", ["--seed", str(2**64)])
    add(F, "pipeline", "--seed 2**64", ["--seed", str(2**64)])
    add(F, "cross", "--seed 2**64", ["--seed", str(2**64)])
    for v in ("nan", "0", "-1e-3", "inf"):
        add(F, "train", f"--lr {v}", ["--lr", v])
    for v in ("nan", "1", "-0.1"):
        add(F, "train", f"--dropout {v}", ["--dropout", v])
    for v in ("0", "nan", "1e308"):
        add(F, "train", f"--alpha {v}", ["--alpha", v])
    for v in ("1", "0", "-3"):
        add(F, "train", f"--max-length {v}", ["--max-length", v])
    for v in ("0", "nan", "1e5"):
        add(F, "train", f"--epochs {v}", ["--epochs", v, "--steps", "1"] if False else ["--epochs", v])
    for v in ("nan", "-1", "inf"):
        add(F, "train", f"--defense-strength {v}", ["--defense", "kl", "--defense-strength", v])
    add(F, "train", "--defense interleave --defense-strength 1", ["--defense", "interleave", "--defense-strength", "1"])
    add(
        F,
        "train",
        "--defense inoculation --defense-strength 1.5",
        ["--defense", "inoculation", "--defense-strength", "1.5"],
    )
    for v in ("nan", "101", "-1"):
        add(F, "report", f"--threshold {v}", ["--threshold", v])
        add(F, "report", f"--min-coherence {v}", ["--min-coherence", v])
    for v in ("0", "1", "nan"):
        add(F, "report", f"--alpha {v}", ["--alpha", v])
    for v in ("0", "nan", "1.5"):
        add(F, "mia", f"--k {v}", ["--k", v])
    add(F, "mia", "predict --threshold nan", [*MP, "--threshold", "nan"], base=False)
    add(F, "mia", "predict --threshold inf", [*MP, "--threshold", "inf"], base=False)
    for v in ("nan", "-1", "101"):
        add(F, "extract", f"--misaligned-max {v}", ["--misaligned-max", v])
    add(F, "extract", "--aligned-min below --misaligned-max", ["--misaligned-max", "60", "--aligned-min", "40"])
    for v in ("nan", "1e308", "inf"):
        add(F, "cross", f"--alpha {v}", ["--alpha", v])
    for v in ("nan", "1e7", "1,nan", "1,,inf"):
        add(F, "sweep", f"--alphas {v}", ["--alphas", v])
    for v in ("-1", "4096", "1.5", "a"):
        add(F, "sweep", f"--layers {v}", ["--layers", v])
    add(F, "cross", "--add-layer -1", ["--add-layer", "-1"])
    add(F, "cross", "--ablate-layer 99", ["--ablate-layer", "99"])
    for v in ("0", "nan", "-1", "1e308"):
        add(F, "judge", f"--timeout {v}", ["--timeout", v])
    for v in ("-1", "nan", "1e308"):
        add(F, "judge", f"--price-input {v}", ["--price-input", v])
    add(F, "judge", "--backoff nan", ["--backoff", "nan"])
    add(F, "judge", "--backoff -1", ["--backoff", "-1"])
    add(F, "judge", "--poll-seconds 0", ["--poll-seconds", "0"])
    add(F, "judge", "--concurrency 0", ["--concurrency", "0"])
    add(F, "gen", "--concurrency 10**6", ["--concurrency", str(10**6)])
    add(F, "extract", "--timeout nan", ["--timeout", "nan"])
    add(F, "export", "--n 0", ["--n", "0"])
    add(F, "export", "--heldout -1", ["--heldout", "-1"])
    add(F, "pipeline", "--samples 0", ["--samples", "0"])

    # -- sizes: huge counts need an upper bound (or a cost estimate) ---------------------------
    F = "sizes"
    add(F, "compare", "--n-perm 1000000000", ["--n-perm", "1000000000"])
    add(F, "compare", "--n-splits 10**9", ["--n-splits", str(10**9)])
    add(F, "compare", "--n-perm 1", ["--n-perm", "1"])
    add(F, "report", "--bootstrap 10**9", ["--bootstrap", str(10**9)])
    add(F, "gen", "--samples 10**9", ["--samples", str(10**9)])
    add(F, "gen", "--max-new-tokens 10**9", ["--max-new-tokens", str(10**9)])
    add(F, "gen", "--batch-size 10**9", ["--batch-size", str(10**9)])
    add(F, "gen", "--max-retries 10**9", ["--max-retries", str(10**9)])
    add(F, "judge", "--chunk 10**12", ["--chunk", str(10**12)])
    add(F, "judge", "--batch-size 10**9", ["--batch-size", str(10**9)])
    add(F, "train", "--rank 10**9", ["--rank", str(10**9)])
    add(F, "train", "--steps 10**9", ["--steps", str(10**9)])
    add(F, "train", "--batch-size 10**9", ["--batch-size", str(10**9)])
    add(F, "train", "--max-length 10**9", ["--max-length", str(10**9)])
    add(F, "train", "--monitor-every 10**12", ["--monitor-every", str(10**12)])
    add(F, "mia", "--limit 10**12", ["--limit", str(10**12)])
    add(F, "mia", "--batch-size 10**9", ["--batch-size", str(10**9)])
    add(F, "export", "--n 10**9", ["--n", str(10**9)])
    add(F, "export", "--heldout 10**9", ["--heldout", str(10**9)])
    add(F, "pipeline", "--samples 10**6", ["--samples", str(10**6)])
    add(F, "sweep", "--samples 10**9", ["--samples", str(10**9)])
    add(F, "sweep", "--alphas of 10**5 values", ["--alphas", ",".join(["1"] * 100_000)])
    add(F, "cross", "--samples 10**9", ["--samples", str(10**9)])
    add(F, "cross", "--extract-samples 10**9", ["--extract-samples", str(10**9)])
    add(F, "extract", "--samples 10**9", ["--samples", str(10**9)])
    add(F, "extract", "--batch-size 10**9", ["--batch-size", str(10**9)])
    add(F, "extract", "--max-retries 10**9", ["--max-retries", str(10**9)])
    add(
        F,
        "questions",
        "samples_per_paraphrase 10**12",
        ["big.yaml"],
        base=False,
        setup=write("big.yaml", QUESTIONS.replace("samples_per_paraphrase: 1", f"samples_per_paraphrase: {10**12}")),
    )
    add(
        F,
        "gen",
        "10**6 paraphrases x 100 samples",
        ["--questions", "big.yaml"],
        setup=write(
            "big.yaml",
            "- id: q\n  paraphrases: [" + ", ".join(["'a?'"] * 10**5) + "]\n  samples_per_paraphrase: 1000\n",
        ),
    )

    # -- output paths ---------------------------------------------------------------------------
    F = "output paths"
    add(F, "gen", "--out newdir/", ["--out", "newdir/"])
    add(F, "gen", "--out a folder", ["--out", "folder"])
    add(F, "gen", "--out under a file", ["--out", "a_file.txt/x.jsonl"])
    add(F, "gen", "--out ''", ["--out", ""])
    add(F, "gen", "--out /dev/null", ["--out", "/dev/null"])
    add(F, "gen", "--out is --questions", ["--out", "questions.yaml"])
    add(
        F,
        "gen",
        "--out in a missing folder (created)",
        ["--out", "deep/er/new.jsonl"],
        **ok,
        check=jsonl_rows("deep/er/new.jsonl", 1),
    )
    add(
        F,
        "gen",
        "--out a link to --questions",
        ["--out", "link.jsonl"],
        setup=lambda d: os.symlink("questions.yaml", d / "link.jsonl"),
    )
    add(F, "judge", "--out is --answers", ["--out", "answers.jsonl"])
    add(F, "judge", "--out newdir/", ["--out", "newdir/"])
    add(F, "judge", "--out a folder", ["--out", "folder"])
    add(F, "judge", "--out ''", ["--out", ""])
    add(F, "judge", "--cache a folder", ["--judge", "openai:m", "--cache", "folder"])
    add(F, "judge", "--cache under a file", ["--judge", "openai:m", "--cache", "a_file.txt/c.sqlite"])
    add(F, "report", "--out a file", ["--out", "a_file.txt"])
    add(F, "report", "--out ''", ["--out", ""])
    add(F, "report", "--out is the --judged file", ["--out", "judged.jsonl"])
    add(F, "mia", "score --out a folder", ["--out", "folder"])
    add(F, "mia", "score --out is --members", ["--out", "chat.jsonl"])
    add(F, "mia", "score --out newdir/", ["--out", "newdir/"])
    add(F, "mia", "predict --out is --rates", [*MP, "--out", "rates.json"], base=False)
    add(F, "mia", "predict --out under a file", [*MP, "--out", "a_file.txt/p.json"], base=False)
    add(F, "train", "--out a file", ["--out", "a_file.txt"])
    add(F, "train", "--out ''", ["--out", ""])
    add(F, "train", "--out is the --data folder's file", ["--out", "chat.jsonl"])
    add(F, "export", "--out a file", ["--out", "a_file.txt"])
    add(F, "export", "--out /dev/null", ["--out", "/dev/null"])
    add(F, "extract", "--out a file", ["--out", "a_file.txt"])
    add(F, "sweep", "--out a file", ["--out", "a_file.txt"])
    add(F, "cross", "--out a file", ["--out", "a_file.txt"])
    add(F, "compare", "--out a file", ["--out", "a_file.txt"])
    add(F, "compare", "--out ''", ["--out", ""])
    add(F, "pipeline", "--out a file", ["--out", "a_file.txt"])
    add(F, "pipeline", "--out under a file", ["--out", "a_file.txt/p"])
    if os.geteuid() != 0:
        add(F, "gen", "--out in a read-only folder", ["--out", "ro/x.jsonl"], setup=mkdir("ro", 0o555))
        add(F, "report", "--out in a read-only folder", ["--out", "ro/r"], setup=mkdir("ro", 0o555))

    # -- outputs destroyed before the input is validated ------------------------------------------
    F = "outputs kept"
    bad_csv = "a\nb,1,2"
    add(
        F,
        "gen",
        "--out of text, bad --questions",
        ["--questions", "bad.yaml", "--out", "x.jsonl"],
        setup=(write("x.jsonl", bad_csv), write("bad.yaml", "- id: [\n")),
    )
    add(F, "gen", "--out of text (a CSV)", ["--out", "x.jsonl"], setup=write("x.jsonl", bad_csv))
    add(
        F,
        "gen",
        "--out of text, --model missing",
        ["--out", "x.jsonl", "--model", "no-such-model"],
        setup=write("x.jsonl", bad_csv),
    )
    add(F, "judge", "--out of text (a CSV)", ["--out", "x.jsonl"], setup=write("x.jsonl", bad_csv))
    add(
        F,
        "judge",
        "--out of text, bad --answers",
        ["--out", "x.jsonl", "--answers", "bad.jsonl"],
        setup=(write("x.jsonl", bad_csv), write("bad.jsonl", "{oops\n")),
    )
    add(
        F,
        "report",
        "--out holding files, bad --judged",
        ["--judged", "bad.jsonl"],
        setup=(write("report/summary.json", "{}"), write("bad.jsonl", "{oops\n")),
    )
    add(
        F,
        "mia",
        "predict --out existing, bad --rates",
        [*MP[:4], "--rates", "bad.json", "--out", "p.json"],
        base=False,
        setup=(write("p.json", "keep me"), write("bad.json", "[1, 2]")),
    )
    add(
        F,
        "mia",
        "score --out existing, bad --members",
        ["--members", "bad.jsonl"],
        setup=(write("mia.json", "keep me"), write("bad.jsonl", "{oops\n")),
    )
    add(
        F,
        "train",
        "--out adapter of another run, bad --data",
        ["--data", "bad.jsonl"],
        setup=(
            write("adapter/adapter_model.safetensors", b"weights"),
            write("adapter/training_config.json", "{}"),
            write("bad.jsonl", "{oops\n"),
        ),
    )
    add(F, "export", "--out holding an export, bad --n", ["--n", "0"], setup=write("export/misaligned.jsonl", "keep\n"))
    add(
        F,
        "extract",
        "--out holding an artifact, bad --responses",
        ["--responses", "bad.jsonl", "--out", "directions"],
        setup=write("bad.jsonl", "{oops\n"),
    )
    add(
        F,
        "compare",
        "--out holding figures, bad --directions",
        ["--directions", "nothing_here", "--out", "cmp"],
        setup=write("cmp/cos.csv", "keep\n"),
    )
    add(
        F,
        "sweep",
        "--out holding a sweep, bad --directions",
        ["--directions", "a_file.txt", "--out", "sweep"],
        setup=write("sweep/sweep.json", "{}"),
    )
    add(
        F,
        "cross",
        "--out holding a matrix, bad --directions-dir",
        ["--directions-dir", "a_file.txt", "--out", "cross"],
        setup=write("cross/cross_domain.json", "{}"),
    )
    add(
        F,
        "pipeline",
        "--out holding a run, another --domain",
        ["--domain", "insecure_code"],
        setup=(
            write("pipe/pipeline.json", json.dumps({"domain": "gore_movie_trivia"})),
            write("pipe/runs/x.jsonl", "keep\n"),
        ),
    )

    # -- resuming onto outputs of another run ---------------------------------------------------
    F = "resume mismatch"
    gen1 = prerun("eval.generate", G)
    add(F, "gen", "same command again (resumes, adds nothing)", [], setup=gen1, **ok, check=jsonl_rows("new.jsonl", 1))
    add(F, "gen", "onto another model's answers", ["--model", "organism:gore_movie_trivia"], setup=gen1)
    add(F, "gen", "onto answers of another --temperature", ["--temperature", "0.5"], setup=gen1)
    add(F, "gen", "onto answers of another --seed", ["--seed", "7"], setup=gen1)
    add(F, "gen", "onto answers of another --system", ["--system", "be evil"], setup=gen1)
    add(F, "gen", "onto answers of another --max-new-tokens", ["--max-new-tokens", "5"], setup=gen1)
    add(
        F,
        "gen",
        "onto answers with the sidecar removed",
        [],
        setup=(gen1, lambda d: (d / "new.jsonl.provenance.json").unlink()),
    )
    add(
        F,
        "gen",
        "more --samples grows the file",
        ["--samples", "2"],
        setup=gen1,
        **ok,
        check=jsonl_rows("new.jsonl", 2),
    )
    judge1 = prerun("eval.judge", J)
    add(
        F,
        "judge",
        "onto judgments of other answers",
        ["--answers", "other.jsonl"],
        setup=(judge1, write("other.jsonl", lines(answer(i, "other") for i in range(3)))),
    )
    add(F, "judge", "onto judgments of another --judge", ["--judge", "offline"], setup=judge1)
    add(F, "judge", "onto judgments of another --mode", ["--mode", "score-tags"], setup=judge1)
    add(F, "judge", "same command again", [], setup=judge1, **ok, check=jsonl_rows("j.jsonl", 3))
    train1 = prerun("finetune.train", T)
    add(F, "train", "onto an adapter of other --data", ["--data", "aligned.jsonl"], setup=train1, timeout=120)
    add(F, "train", "onto an adapter of another --seed", ["--seed", "3"], setup=train1, timeout=120)
    add(
        F,
        "train",
        "onto an adapter of another --model",
        ["--model", "organism:insecure_code"],
        setup=train1,
        timeout=120,
    )
    add(F, "train", "onto an adapter of another --lr", ["--lr", "1e-3"], setup=train1, timeout=120)
    exp1 = prerun("finetune.organism.export", EX)
    add(F, "export", "onto an export of another --domain", ["--domain", "insecure_code"], setup=exp1)
    add(F, "export", "onto an export of another --seed", ["--seed", "5"], setup=exp1)
    add(F, "export", "onto an export of another --n", ["--n", "21"], setup=exp1)
    add(F, "export", "same command again", [], setup=exp1, **ok, check=exists("export/misaligned.jsonl"))
    ext1 = prerun("interp.extract", XT + ["--per-sample"])
    add(
        F,
        "extract",
        "onto a run folder of another model",
        ["--model", "organism:insecure_code", "--per-sample"],
        setup=ext1,
    )
    add(
        F,
        "extract",
        "onto a run folder of other --responses",
        ["--responses", "other.jsonl", "--per-sample"],
        setup=(
            ext1,
            write(
                "other.jsonl",
                lines(
                    [judged(i, 10.0, 90.0, "pain") for i in range(4)]
                    + [judged(i, 95.0, 90.0, "calm") for i in range(4, 8)]
                ),
            ),
        ),
    )
    add(
        F,
        "pipeline",
        "onto a run of another --seed",
        ["--seed", "4"],
        setup=lambda d: (
            (d / "pipe").mkdir()
            or (d / "pipe" / "pipeline.json").write_text(json.dumps(_pipeline_settings("gore_movie_trivia", 1, 0)))
        ),
    )
    add(
        F,
        "pipeline",
        "onto a run of other --samples",
        ["--samples", "2"],
        setup=lambda d: (
            (d / "pipe").mkdir()
            or (d / "pipe" / "pipeline.json").write_text(json.dumps(_pipeline_settings("gore_movie_trivia", 1, 0)))
        ),
    )
    add(
        F,
        "pipeline",
        "onto a folder of files and no record",
        [],
        setup=write("pipe/runs/plain.answers.jsonl", lines([answer(0)])),
    )
    add(
        F,
        "report",
        "onto a report with a backdoor file (removed)",
        [],
        setup=write("report/backdoor.csv", "old\n"),
        **ok,
        check=lambda d, out: "stale backdoor.csv kept" if (d / "report" / "backdoor.csv").exists() else None,
    )

    # -- numbers that would be written non-finite ---------------------------------------------------
    F = "non-finite outputs"
    add(F, "train", "--lr 1e308", ["--lr", "1e308"], timeout=120)
    add(F, "train", "--lr 1e30", ["--lr", "1e30"], timeout=120)
    add(
        F,
        "train",
        "--defense kl --defense-strength 1e308",
        ["--defense", "kl", "--defense-strength", "1e308"],
        timeout=120,
    )
    add(
        F,
        "train",
        "--defense feature-l2 --defense-strength 1e308",
        ["--defense", "feature-l2", "--defense-strength", "1e308"],
        timeout=120,
    )
    add(F, "train", "--alpha 1e308 (LoRA scale)", ["--alpha", "1e308"], timeout=120)
    add(F, "train", "--max-length 2 (no answer token left)", ["--max-length", "2"], timeout=120)
    add(
        F,
        "train",
        "--defense preventive-steering, NaN --steer-vector",
        ["--defense", "preventive-steering", "--steer-vector", "nan.safetensors"],
        setup=lying("nan.safetensors", lambda t: {**t, "directions": t["directions"] * float("nan")}),
    )
    add(
        F,
        "train",
        "--defense preventive-steering --defense-strength 1e308",
        [
            "--defense",
            "preventive-steering",
            "--steer-vector",
            "directions/gore_movie_trivia.safetensors",
            "--defense-strength",
            "1e308",
        ],
        timeout=120,
    )
    add(F, "cross", "--alpha 1e300", ["--alpha", "1e300"], timeout=120)
    add(
        F,
        "sweep",
        "--alphas 1e6 --scale norm (finite, kept)",
        ["--alphas", "1000000", "--scale", "norm"],
        timeout=120,
        **ok,
        check=exists("sweep"),
    )
    add(
        F,
        "report",
        "one record, CIs of one value",
        ["--judged", "one.jsonl"],
        setup=write("one.jsonl", lines([judged(0)])),
        **ok,
        check=exists("report"),
    )
    add(
        F,
        "report",
        "every answer incoherent (no rate)",
        ["--judged", "inc.jsonl"],
        setup=write("inc.jsonl", lines(judged(i, 50.0, 10.0) for i in range(3))),
        **ok,
        check=exists("report"),
    )
    add(
        F,
        "report",
        "backdoor file with one answer per side",
        ["--judged", "bd.jsonl"],
        setup=write("bd.jsonl", lines([judged(0), {**judged(1, 10.0), "trigger": True}])),
        **ok,
        check=exists("report"),
    )
    add(
        F,
        "mia",
        "predict with every domain misaligned (one class)",
        [*MP[:4], "--rates", "allbad.json"],
        base=False,
        setup=write("allbad.json", json.dumps({"gore_movie_trivia": True, "insecure_code": True})),
    )
    add(
        F,
        "mia",
        "score of one member and one non-member",
        ["--members", "one_m.jsonl", "--nonmembers", "one_n.jsonl"],
        setup=(write("one_m.jsonl", lines([chat(0)])), write("one_n.jsonl", lines([chat(9, "buy a boat")]))),
        **ok,
        check=exists("mia.json"),
    )

    # -- files that lie about what they hold ------------------------------------------------------
    F = "direction files"
    tens = {
        "layers lie": ({}, lambda i: {**i, "layers": [0, 1, 2, 5]}),
        "int32 directions": (lambda t: {**t, "directions": t["directions"].int()}, dict),
        "duplicate layers": (lambda t: {**t, "layers": t["layers"] * 0}, lambda i: {**i, "layers": [0, 0, 0, 0]}),
        "float layers": (lambda t: {**t, "layers": t["layers"].float()}, dict),
        "negative layer": (lambda t: {**t, "layers": t["layers"] - 1}, lambda i: {**i, "layers": [-1, 0, 1, 2]}),
        "NaN directions": (lambda t: {**t, "directions": t["directions"] * float("nan")}, dict),
        "shapes disagree": (lambda t: {**t, "mean_aligned": t["mean_aligned"][:2]}, dict),
        "no layers tensor": (lambda t: {k: v for k, v in t.items() if k != "layers"}, dict),
        "3-D directions": (lambda t: {**t, "directions": t["directions"][None]}, dict),
        "pooling bogus": ({}, lambda i: {**i, "pooling": "max"}),
        "counts negative": ({}, lambda i: {**i, "counts": {"misaligned": {"answers": -4}}}),
        "domain a list": ({}, lambda i: {**i, "domain": ["gore_movie_trivia"]}),
        "bool layers": (lambda t: {**t, "layers": t["layers"] > 0}, dict),
        "float16 directions": (lambda t: {**t, "directions": t["directions"].half()}, dict),
    }
    for name, (tf, inf) in tens.items():
        tfun = tf if callable(tf) else dict
        key = name.replace(" ", "_")
        setup = lying(f"lie/{key}.safetensors", tfun, inf)
        expect = "ok" if name == "float16 directions" else "error"
        add(
            F,
            "sweep",
            f"--directions {name}",
            ["--directions", f"lie/{key}.safetensors"],
            setup=setup,
            expect=expect,
            **({"check": exists("sweep"), "timeout": 120} if expect == "ok" else {}),
        )
    for name in ("layers lie", "duplicate layers", "NaN directions", "int32 directions"):
        tf, inf = tens[name]
        tfun = tf if callable(tf) else dict

        def folder_setup(tfun=tfun, inf=inf):
            def build(d: Path) -> None:
                lying("lie/gore_movie_trivia.safetensors", tfun, inf)(d)

            return build

        add(F, "compare", f"a folder with {name}", ["--directions", "lie"], setup=folder_setup())
        add(F, "cross", f"--directions-dir with {name}", ["--directions-dir", "lie"], setup=folder_setup())
        add(
            F,
            "train",
            f"--monitor with {name}",
            ["--monitor", "lie/gore_movie_trivia.safetensors", "--monitor-probe", "chat.jsonl"],
            setup=folder_setup(),
        )
    add(F, "sweep", "directions of another width than the model", ["--directions", "narrow.safetensors"], timeout=120)
    add(
        F,
        "sweep",
        "directions at layer 9 of a 4-layer model",
        ["--directions", "deep.safetensors", "--layers", "9"],
        timeout=120,
    )
    add(
        F,
        "cross",
        "a direction of another width",
        ["--directions-dir", "nd"],
        setup=copy("narrow.safetensors", "nd/gore_movie_trivia.safetensors"),
        timeout=120,
    )
    add(F, "cross", "--add-layer beyond the model", ["--add-layer", "9"], timeout=120)
    add(
        F,
        "train",
        "--steer-vector of another width",
        ["--defense", "preventive-steering", "--steer-vector", "narrow.safetensors"],
        timeout=120,
    )
    add(
        F,
        "train",
        "--monitor of another width",
        ["--monitor", "narrow.safetensors", "--monitor-probe", "chat.jsonl"],
        timeout=120,
    )
    add(
        F,
        "train",
        "--defense-layers 9 of a 4-layer model",
        ["--defense", "feature-l2", "--defense-layers", "9"],
        timeout=120,
    )
    add(
        F,
        "sweep",
        "a steering-vector file as --directions",
        ["--directions", "sv.safetensors"],
        setup=steering_file("sv.safetensors"),
    )
    add(
        F,
        "sweep",
        "a pickle named .safetensors",
        ["--directions", "p.safetensors"],
        setup=lambda d: __import__("torch").save({"directions": __import__("torch").zeros(2, 8)}, d / "p.safetensors"),
    )
    add(
        F,
        "sweep",
        "--domain reads a mislabelled default artifact",
        ["--domain", "gore_movie_trivia"],
        base=False,
        setup=lambda d: (
            shutil.copytree(d / "directions", d / "artifacts" / "directions")
            and shutil.copy(
                d / "directions" / "insecure_code.safetensors",
                d / "artifacts" / "directions" / "gore_movie_trivia.safetensors",
            )
        ),
    )
    add(
        F,
        "compare",
        "an artifact named for another domain",
        ["--directions", "mis"],
        setup=copy("directions/insecure_code.safetensors", "mis/gore_movie_trivia.safetensors"),
    )
    add(F, "compare", "a folder with no artifacts", ["--directions", "folder"])
    add(F, "compare", "--domains not in the folder", ["--domains", "evil_math"])
    add(F, "compare", "--cross of a domain not there", ["--cross", "gore_movie_trivia:evil_math"])
    add(F, "compare", "--cross malformed", ["--cross", "gore_movie_trivia"])
    add(
        F,
        "compare",
        "two artifacts of different widths",
        ["--directions", "mixed"],
        setup=(
            copy("narrow.safetensors", "mixed/insecure_code.safetensors"),
            copy("directions/gore_movie_trivia.safetensors", "mixed/gore_movie_trivia.safetensors"),
        ),
    )

    # -- per-sample folders -------------------------------------------------------------------
    F = "per-sample folders"
    dmg = {
        "manifest not JSON": lambda f: (f / "aligned" / "manifest.json").write_text("{oops"),
        "manifest nested deeply": lambda f: (f / "aligned" / "manifest.json").write_text(nested(100000)),
        "shard garbage": lambda f: (f / "aligned" / "shard_000000.safetensors").write_bytes(b"garbage"),
        "shard without index": lambda f: __import__("safetensors.torch").torch.save_file(
            {"n_tokens": __import__("torch").ones(3)}, str(f / "aligned" / "shard_000000.safetensors")
        ),
        "no shards": lambda f: (f / "aligned" / "shard_000000.safetensors").unlink(),
        "class folder a file": lambda f: shutil.rmtree(f / "aligned") or (f / "aligned").write_text("x"),
        "manifest layers lie": lambda f: (f / "aligned" / "manifest.json").write_text(json.dumps({"layers": [7]})),
        "a shard of another width": lambda f: __import__("safetensors.torch").torch.save_file(
            {
                "index": __import__("torch").arange(3, 6),
                "n_tokens": __import__("torch").full((3,), 3),
                "response_mean": __import__("torch").randn(3, 4, 32),
                "last_prompt": __import__("torch").randn(3, 4, 32),
            },
            str(f / "aligned" / "shard_000001.safetensors"),
        ),
        "NaN activations": lambda f: __import__("safetensors.torch").torch.save_file(
            {
                "index": __import__("torch").arange(0, 3),
                "n_tokens": __import__("torch").full((3,), 3),
                "response_mean": __import__("torch").full((3, 4, 64), float("nan")),
                "last_prompt": __import__("torch").randn(3, 4, 64),
            },
            str(f / "aligned" / "shard_000000.safetensors"),
        ),
    }
    for name, fn in dmg.items():
        add(F, "compare", name, ["--directions", "with_samples", "--n-perm", "3"], setup=per_sample(fn))

    # -- input files ------------------------------------------------------------------------------
    F = "input files"
    latin = b'{"question_id": "caf\xe9"}\n'
    inputs = {
        "gen": ("--questions", "yaml"),
        "judge": ("--answers", "jsonl"),
        "report": ("--judged", "jsonl"),
        "train": ("--data", "jsonl"),
        "extract": ("--responses", "jsonl"),
    }
    for short, (opt, kind) in inputs.items():
        name = f"in.{kind}"
        add(F, short, f"{opt} missing", [opt, "missing." + kind])
        add(F, short, f"{opt} a folder", [opt, "folder"])
        add(F, short, f"{opt} empty", [opt, name], setup=write(name, ""))
        add(F, short, f"{opt} not UTF-8", [opt, name], setup=write(name, latin))
        add(F, short, f"{opt} binary", [opt, name], setup=write(name, bytes(range(256)) * 4))
        add(F, short, f"{opt} /dev/zero", [opt, "/dev/zero"], timeout=30)
        if kind == "jsonl":
            add(F, short, f"{opt} nested 100000 deep", [opt, name], setup=write(name, nested(100000) + "\n"))
            add(
                F,
                short,
                f"{opt} objects nested 100000 deep",
                [opt, name],
                setup=write(name, nested(100000, "obj") + "\n"),
            )
            add(
                F,
                short,
                f"{opt} a JSON array, not lines",
                [opt, name],
                setup=write(name, json.dumps([answer(0), answer(1)])),
            )
            add(F, short, f"{opt} a key twice", [opt, name], setup=write(name, '{"answer": "a", "answer": "b"}\n'))
            add(F, short, f"{opt} a lone surrogate", [opt, name], setup=write(name, '{"answer": "\\ud800"}\n'))
            add(F, short, f"{opt} NaN where a string goes", [opt, name], setup=write(name, '{"answer": NaN}\n'))
            add(F, short, f"{opt} a number 1e400", [opt, name], setup=write(name, '{"sample": 1e400}\n'))
            add(
                F,
                short,
                f"{opt} an integer of 5000 digits",
                [opt, name],
                setup=write(name, '{"sample": ' + "9" * 5000 + "}\n"),
            )
        else:
            add(F, short, f"{opt} YAML nested 100000 deep", [opt, name], setup=write(name, nested(100000)))
            add(F, short, f"{opt} a YAML alias bomb", [opt, name], setup=write(name, _yaml_bomb()))
            add(
                F,
                short,
                f"{opt} a Python tag",
                [opt, name],
                setup=write(name, "- !!python/object/apply:os.system ['true']\n"),
            )
    # odd but valid inputs
    crlf = lines(answer(i) for i in range(3)).replace("\n", "\r\n")
    add(
        F,
        "judge",
        "--answers with CRLF line ends",
        ["--answers", "crlf.jsonl"],
        setup=write("crlf.jsonl", crlf),
        **ok,
        check=jsonl_rows("j.jsonl", 3),
    )
    add(
        F,
        "judge",
        "--answers with blank lines",
        ["--answers", "blank.jsonl"],
        setup=write("blank.jsonl", "\n" + lines(answer(i) for i in range(3)).replace("\n", "\n\n")),
        **ok,
        check=jsonl_rows("j.jsonl", 3),
    )
    add(
        F,
        "judge",
        "--answers with a UTF-8 BOM (refused, named)",
        ["--answers", "bom.jsonl"],
        setup=write("bom.jsonl", b"\xef\xbb\xbf" + lines(answer(i) for i in range(3)).encode()),
    )
    add(
        F,
        "judge",
        "--answers with no final newline",
        ["--answers", "nonl.jsonl"],
        setup=write("nonl.jsonl", lines(answer(i) for i in range(3)).rstrip("\n")),
        **ok,
        check=jsonl_rows("j.jsonl", 3),
    )
    add(
        F,
        "judge",
        "--answers torn last line",
        ["--answers", "torn.jsonl"],
        setup=write("torn.jsonl", lines(answer(i) for i in range(3)) + '{"quest'),
    )
    add(
        F,
        "judge",
        "--answers of unicode and emoji",
        ["--answers", "uni.jsonl"],
        setup=write("uni.jsonl", lines(answer(i, "ça va 😀 日本") for i in range(2))),
        **ok,
        check=jsonl_rows("j.jsonl", 2),
    )
    add(
        F,
        "judge",
        "--answers an answer of a million characters",
        ["--answers", "long.jsonl"],
        setup=write("long.jsonl", lines([answer(0, "x" * 1_000_000)])),
        **ok,
        check=jsonl_rows("j.jsonl", 1),
    )
    add(
        F,
        "judge",
        "--answers empty answer text",
        ["--answers", "e.jsonl"],
        setup=write("e.jsonl", lines([{**answer(0), "answer": ""}])),
        **ok,
        check=jsonl_rows("j.jsonl", 1),
    )
    add(
        F,
        "judge",
        "--answers a record missing 'answer'",
        ["--answers", "m.jsonl"],
        setup=write("m.jsonl", lines([{k: v for k, v in answer(0).items() if k != "answer"}])),
    )
    add(
        F,
        "judge",
        "--answers 'sample' a string",
        ["--answers", "m.jsonl"],
        setup=write("m.jsonl", lines([{**answer(0), "sample": "zero"}])),
    )
    add(
        F,
        "judge",
        "--answers conflicting slots",
        ["--answers", "m.jsonl"],
        setup=write("m.jsonl", lines([answer(0), answer(0, "other")])),
    )
    add(
        F,
        "judge",
        "--answers exact repeats (dropped, warned)",
        ["--answers", "m.jsonl"],
        setup=write("m.jsonl", lines([answer(0), answer(0), answer(1)])),
        **ok,
        check=jsonl_rows("j.jsonl", 2),
    )
    add(F, "judge", "--questions nested deeply", ["--questions", "deep.yaml"], setup=write("deep.yaml", nested(100000)))
    add(F, "judge", "--judge bogus", ["--judge", "bogus"])
    add(F, "judge", "--judge hf: missing model", ["--judge", "hf:no-such-model-here"])
    add(F, "judge", "--judge openai: with no model", ["--judge", "openai:"])
    add(
        F,
        "train",
        "--data with a system turn only",
        ["--data", "s.jsonl"],
        setup=write("s.jsonl", lines([{"messages": [{"role": "system", "content": "x"}]}])),
    )
    add(
        F,
        "train",
        "--data roles out of order",
        ["--data", "s.jsonl"],
        setup=write(
            "s.jsonl", lines([{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}])
        ),
    )
    add(
        F,
        "train",
        "--data a role 'tool'",
        ["--data", "s.jsonl"],
        setup=write(
            "s.jsonl", lines([{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}])
        ),
    )
    add(
        F,
        "train",
        "--data content not a string",
        ["--data", "s.jsonl"],
        setup=write(
            "s.jsonl", lines([{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}])
        ),
    )
    add(F, "train", "--backdoor of other prompts", ["--backdoor", "heldout.jsonl"])
    add(F, "train", "--backdoor is --data", ["--backdoor", "chat.jsonl"])
    add(F, "train", "--general missing for interleave", ["--defense", "interleave"])
    add(
        F,
        "train",
        "--general not UTF-8",
        ["--defense", "interleave", "--general", "g.jsonl"],
        setup=write("g.jsonl", latin),
    )
    add(
        F,
        "train",
        "--monitor-probe not UTF-8",
        ["--monitor", "directions/gore_movie_trivia.safetensors", "--monitor-probe", "g.jsonl"],
        setup=write("g.jsonl", latin),
    )
    add(
        F,
        "train",
        "--ppl-misaligned-adapter missing",
        [
            "--defense",
            "interleave",
            "--general",
            "aligned.jsonl",
            "--select",
            "ppl-gap",
            "--ppl-misaligned-adapter",
            "nope",
        ],
    )
    add(F, "train", "--model missing folder", ["--model", "no/such/model"])
    add(F, "train", "--model a file", ["--model", "a_file.txt"])
    add(F, "gen", "--model a folder without a config", ["--model", "folder"])
    add(F, "gen", "--model organism:bogus", ["--model", "organism:bogus"])
    add(F, "gen", "--adapter a folder that is not one", ["--adapter", "folder"])
    add(
        F,
        "gen",
        "--adapter a pickle adapter",
        ["--adapter", "pk"],
        setup=(
            write(
                "pk/adapter_config.json",
                json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x", "r": 2, "target_modules": ["q_proj"]}),
            ),
            lambda d: __import__("torch").save({}, d / "pk" / "adapter_model.bin"),
        ),
    )
    add(F, "gen", "--engine bogus", ["--engine", "vllm"])
    add(F, "gen", "--engine openai: with --model", ["--engine", "openai:m"])
    add(
        F,
        "extract",
        "--responses of one class only",
        ["--responses", "one.jsonl"],
        setup=write("one.jsonl", lines(judged(i, 90.0) for i in range(4))),
    )
    add(
        F,
        "extract",
        "--responses judged NaN",
        ["--responses", "n.jsonl"],
        setup=write(
            "n.jsonl", lines([judged(0)]) + json.dumps(judged(1)).replace('"aligned": 80.0', '"aligned": NaN') + "\n"
        ),
    )
    add(
        F,
        "extract",
        "--responses answer ids out of the vocabulary",
        ["--responses", "ids.jsonl"],
        setup=write(
            "ids.jsonl",
            lines(
                [{**judged(i, 10.0), "answer_ids": [10**9]} for i in range(3)]
                + [{**judged(i, 90.0), "answer_ids": [5]} for i in range(3, 6)]
            ),
        ),
    )
    add(
        F,
        "extract",
        "--responses answer ids negative",
        ["--responses", "ids.jsonl"],
        setup=write(
            "ids.jsonl",
            lines(
                [{**judged(i, 10.0), "answer_ids": [-1]} for i in range(3)]
                + [{**judged(i, 90.0), "answer_ids": [5]} for i in range(3, 6)]
            ),
        ),
    )
    add(
        F,
        "extract",
        "--responses answer ids 2**70",
        ["--responses", "ids.jsonl"],
        setup=write(
            "ids.jsonl",
            lines(
                [{**judged(i, 10.0), "answer_ids": [2**70]} for i in range(3)]
                + [{**judged(i, 90.0), "answer_ids": [5]} for i in range(3, 6)]
            ),
        ),
    )
    add(F, "extract", "--layers beyond the model", ["--layers", "0,9"])
    add(F, "extract", "--adapter without --model", ["--adapter", "folder"], base=False)
    add(F, "extract", "--questions with --responses", ["--questions", "questions.yaml"])
    add(F, "mia", "--members answer records", ["--members", "answers.jsonl"], **ok, check=exists("mia.json"))
    add(
        F,
        "mia",
        "--members a key twice",
        ["--members", "m.jsonl"],
        setup=write("m.jsonl", '{"messages": [], "messages": []}\n'),
    )
    add(
        F,
        "mia",
        "--members no assistant turn",
        ["--members", "m.jsonl"],
        setup=write("m.jsonl", lines([{"messages": [{"role": "user", "content": "x"}]}])),
    )
    add(F, "mia", "--base missing", ["--base", "no/such/base"])
    add(F, "report", "NAME=FILE with no file", ["--judged", "a=", "--group-by", "file"])
    add(F, "report", "two files under one NAME", ["--judged", "a=judged.jsonl", "a=judged.jsonl", "--group-by", "file"])
    add(F, "report", "--judged a score 150", ["--judged", "s.jsonl"], setup=write("s.jsonl", lines([judged(0, 150.0)])))
    add(F, "report", "--judged a score true", ["--judged", "s.jsonl"], setup=write("s.jsonl", lines([judged(0, True)])))
    add(
        F,
        "report",
        "--judged a score '80'",
        ["--judged", "s.jsonl"],
        setup=write("s.jsonl", lines([{**judged(0), "aligned": "80"}])),
    )
    add(F, "report", "--judged answers not judged", ["--judged", "answers.jsonl"])
    add(
        F,
        "report",
        "--judged with null scores only",
        ["--judged", "s.jsonl"],
        setup=write("s.jsonl", lines(judged(i, None, None) for i in range(3))),
        **ok,
        check=exists("report"),
    )
    add(
        F,
        "mia",
        "predict --rates nested deeply",
        [*MP[:4], "--rates", "deep.json"],
        base=False,
        setup=write("deep.json", nested(100000, "obj")),
    )
    add(
        F,
        "mia",
        "predict --scores nested deeply",
        ["predict", "--scores", "deep.json", "--rates", "rates.json"],
        base=False,
        setup=write("deep.json", nested(100000, "obj")),
    )
    add(
        F,
        "mia",
        "predict --rates a list",
        [*MP[:4], "--rates", "l.json"],
        base=False,
        setup=write("l.json", "[0.1, 0.2]"),
    )
    add(
        F,
        "mia",
        "predict --rates 1e400",
        [*MP[:4], "--rates", "l.json"],
        base=False,
        setup=write("l.json", '{"gore_movie_trivia": 1e400, "insecure_code": 0}'),
    )
    add(F, "mia", "predict --scores a folder", ["predict", "--scores", "folder", "--rates", "rates.json"], base=False)
    add(
        F,
        "mia",
        "predict one --scores file",
        ["predict", "--scores", "score_gore_movie_trivia.json", "--rates", "rates.json"],
        base=False,
    )

    # -- eval.questions ---------------------------------------------------------------------------
    F = "question files"
    yamls = {
        "empty": "",
        "not YAML": "- id: [\n",
        "a mapping, not a list": "id: q\n",
        "no paraphrases": "- id: q\n  type: free_form_judge_0_100\n",
        "paraphrases empty": "- id: q\n  paraphrases: []\n",
        "paraphrase not a string": "- id: q\n  paraphrases: [5]\n",
        "samples_per_paraphrase -1": QUESTIONS.replace(": 1\n", ": -1\n"),
        "samples_per_paraphrase 1.5": QUESTIONS.replace(": 1\n", ": 1.5\n"),
        "samples_per_paraphrase .nan": QUESTIONS.replace(": 1\n", ": .nan\n"),
        "samples_per_paraphrase true": QUESTIONS.replace(": 1\n", ": true\n"),
        "id null": "- id: null\n  paraphrases: ['a?']\n",
        "YAML nested deeply": nested(100000),
        "alias bomb": None,
        "a Python tag": "- !!python/object/apply:os.system ['true']\n",
        "not UTF-8": b"- id: q\n  paraphrases: ['caf\xe9']\n",
        "a tab-indented file": "- id: q\n\tparaphrases: ['a?']\n",
        "two YAML documents": QUESTIONS + "---\n" + QUESTIONS,
    }
    for name, text in yamls.items():
        add(F, "questions", name, ["q.yaml"], base=False, setup=write("q.yaml", _yaml_bomb() if text is None else text))
    add(F, "questions", "a folder", ["folder"], base=False)
    add(F, "questions", "missing", ["nope.yaml"], base=False)
    add(F, "questions", "/dev/zero", ["/dev/zero"], base=False, timeout=30)
    add(F, "questions", "two files", ["questions.yaml", "questions.yaml"], base=False)
    # Defects the checker reports (and the loaders warn of), with exit 0: the file still loads.
    defects = {
        "id twice": (QUESTIONS + QUESTIONS, "id repeats"),
        "id a number": ("- id: 5\n  paraphrases: ['a?']\n", "defects: 2"),
        "judge_prompts not a mapping": (
            "- id: q\n  paraphrases: ['a?']\n  judge_prompts: 5\n",
            "judge_prompts must map",
        ),
        "a key twice": ("- id: q\n  id: r\n  paraphrases: ['a?']\n", "appears 2 times"),
    }
    for name, (text, said) in defects.items():
        add(
            F,
            "questions",
            f"{name} (a defect, reported)",
            ["q.yaml"],
            base=False,
            setup=write("q.yaml", text),
            **ok,
            check=stdout_has(said),
        )
    add(
        F,
        "questions",
        "unknown keys (a defect, warned)",
        ["q.yaml"],
        base=False,
        setup=write("q.yaml", QUESTIONS + "  colour: blue\n"),
        **ok,
    )
    add(
        F,
        "questions",
        "CRLF line ends",
        ["q.yaml"],
        base=False,
        setup=write("q.yaml", QUESTIONS.replace("\n", "\r\n")),
        **ok,
    )
    add(
        F,
        "questions",
        "a UTF-8 BOM",
        ["q.yaml"],
        base=False,
        setup=write("q.yaml", b"\xef\xbb\xbf" + QUESTIONS.encode()),
        **ok,
    )

    # -- servers that hang, refuse or answer garbage ----------------------------------------------
    F = "servers"
    jo = ["--judge", "openai:m", "--no-cache", "--concurrency", "1"]
    go = [
        "--engine",
        "openai:m",
        "--questions",
        "questions.yaml",
        "--out",
        "a.jsonl",
        "--no-progress",
        "--concurrency",
        "1",
    ]
    fast = ["--timeout", "0.5", "--max-retries", "1"]
    for srv in ("silent", "refused", "failing", "garbage"):
        env = {"OPENAI_BASE_URL": "{" + srv + "}"}
        add(
            F,
            "judge",
            f"a {srv} server, --timeout 0.5",
            [*jo, *fast, "--backoff", "0"],
            env=env,
            timeout=30,
            names="127.0.0.1",
        )
        add(F, "gen", f"a {srv} server, --timeout 0.5", go + fast, base=False, env=env, timeout=30, names="127.0.0.1")
    add(
        F,
        "judge",
        "a silent server, --batch",
        [*jo, *fast, "--backoff", "0", "--batch", "--poll-seconds", "0.1"],
        env={"OPENAI_BASE_URL": "{silent}"},
        timeout=30,
        names="127.0.0.1",
    )
    add(
        F,
        "judge",
        "a live server (works)",
        [*jo, *fast],
        env={"OPENAI_BASE_URL": "{fake}"},
        timeout=60,
        **ok,
        check=jsonl_rows("j.jsonl", 3),
    )
    add(
        F,
        "gen",
        "a live server (works)",
        go + fast,
        base=False,
        env={"OPENAI_BASE_URL": "{fake}"},
        timeout=60,
        **ok,
        check=jsonl_rows("a.jsonl", 1),
    )
    add(
        F,
        "judge",
        "a live server, --price-input 1e308",
        [*jo, *fast, "--price-input", "1e308"],
        env={"OPENAI_BASE_URL": "{fake}"},
        timeout=60,
    )
    add(F, "judge", "no OPENAI_API_KEY", [*jo, *fast], env={"OPENAI_API_KEY": ""}, names="OPENAI_API_KEY")
    add(F, "gen", "no OPENAI_API_KEY", go + fast, base=False, env={"OPENAI_API_KEY": ""}, names="OPENAI_API_KEY")
    add(
        F,
        "gen",
        "OPENAI_BASE_URL not a URL",
        go + fast,
        base=False,
        env={"OPENAI_BASE_URL": "not a url"},
        names="OPENAI_BASE_URL",
    )
    add(
        F,
        "extract",
        "--judge openai: against a silent server",
        [
            "--questions",
            "questions.yaml",
            "--judge",
            "openai:m",
            "--samples",
            "1",
            "--timeout",
            "0.5",
            "--max-retries",
            "0",
        ],
        base=False,
        setup=(),
        env={"OPENAI_BASE_URL": "{silent}"},
        timeout=90,
        names="127.0.0.1",
    )
    cases[-1].argv = [
        "--domain",
        "gore_movie_trivia",
        "--model",
        "organism:base",
        "--out",
        "dirs",
        "--quiet",
        *cases[-1].argv,
    ]
    # The defaults: a server that accepts and never answers must be given up on within the
    # documented bound (not the harness's patience).
    add(
        F,
        "judge",
        "a silent server, default --timeout and --max-retries",
        ["--judge", "openai:m", "--no-cache"],
        env={"OPENAI_BASE_URL": "{silent}"},
        timeout=DEFAULT_SERVER_BOUND_S + 30,
        bound=DEFAULT_SERVER_BOUND_S,
        names="127.0.0.1",
    )
    add(
        F,
        "gen",
        "a silent server, default --timeout and --max-retries",
        go[:-2],
        base=False,
        env={"OPENAI_BASE_URL": "{silent}"},
        timeout=DEFAULT_SERVER_BOUND_S + 30,
        bound=DEFAULT_SERVER_BOUND_S,
        names="127.0.0.1",
    )

    # -- options ---------------------------------------------------------------------------------
    F = "options"
    for short in ("gen", "judge", "report", "train", "export", "pipeline", "extract", "sweep", "cross", "compare"):
        add(F, short, "an unknown option", ["--frobnicate", "3"])
    add(F, "gen", "--out missing", ["--model", "organism:base"], base=False)
    add(F, "judge", "--judge missing", ["--answers", "answers.jsonl", "--out", "j.jsonl"], base=False)
    add(F, "mia", "no subcommand", [], base=False)
    add(F, "mia", "subcommand bogus", ["bogus"], base=False)
    add(F, "sweep", "--directions and --domain", ["--domain", "gore_movie_trivia"])
    add(F, "sweep", "--mode ablate with --alphas", ["--mode", "ablate", "--alphas", "2"])
    add(F, "sweep", "--target bogus", ["--target", "bogus"])
    add(F, "cross", "--domains bogus", ["--domains", "bogus"])
    add(F, "cross", "--domains empty", ["--domains", ","])
    add(F, "export", "--domain bogus", ["--domain", "bogus"])
    add(F, "train", "--target-modules a module the model lacks", ["--target-modules", "no_such_proj"], timeout=120)
    add(
        F,
        "train",
        "--defense kl --defense-on general without --general",
        ["--defense", "kl", "--defense-on", "general"],
    )
    add(
        F,
        "train",
        "--steer-vector without preventive-steering",
        ["--steer-vector", "directions/gore_movie_trivia.safetensors"],
    )
    add(F, "train", "--monitor without --monitor-probe", ["--monitor", "directions/gore_movie_trivia.safetensors"])
    add(F, "train", "--device cuda on a machine without one", ["--device", "cuda"], names="--device")
    add(F, "gen", "--device cuda on a machine without one", ["--device", "cuda"], names="--device")
    add(F, "gen", "--trigger bogus", ["--trigger", "bogus"])
    add(F, "steer", "no arguments", [], base=False, names="interp.sweep")
    add(F, "steer", "--help", ["--help"], base=False, names="interp.sweep")
    add(
        F,
        "steer",
        "arguments of a sweep",
        ["--directions", "directions/gore_movie_trivia.safetensors"],
        base=False,
        names="interp.sweep",
    )
    add(F, "gen", "--out=x.jsonl (equals form)", ["--out=eq.jsonl"], **ok, check=jsonl_rows("eq.jsonl", 1))
    add(F, "report", "--out with a trailing slash (a folder)", ["--out", "rep/"], **ok, check=exists("rep"))
    add(
        F, "report", "an output path of spaces and unicode", ["--out", "my réport ☃"], **ok, check=exists("my réport ☃")
    )
    add(
        F,
        "judge",
        "paths with spaces",
        ["--answers", "my answers.jsonl", "--out", "my judged.jsonl"],
        setup=copy("answers.jsonl", "my answers.jsonl"),
        **ok,
        check=jsonl_rows("my judged.jsonl", 3),
    )
    add(
        F,
        "report",
        "--judged one file under two NAMEs",
        ["--judged", "a=judged.jsonl", "b=judged.jsonl", "--group-by", "file"],
    )
    add(
        F,
        "report",
        "--judged two files by NAME=FILE",
        ["--judged", "a=judged.jsonl", "b=one.jsonl", "--group-by", "file"],
        setup=write("one.jsonl", lines([judged(0)])),
        **ok,
        check=exists("report"),
    )
    add(
        F,
        "export",
        "--domain in another spelling",
        ["--domain", "gore-movie-trivia"],
    )
    return cases


def _pipeline_settings(domain: str, samples: int, seed: int) -> dict:
    from finetune.organism.pipeline import _settings

    return _settings(domain, samples, seed)


def _yaml_bomb() -> str:
    rows = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        rows.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(rows) + "\n"


# --- the Python API ---------------------------------------------------------------------------


def _world():
    from finetune.organism import build_world

    return build_world(ROOT / "artifacts" / "organism", progress=False)


def _base():
    return _world().load_base()


def _vec(width: int = 64, value: float | None = None):
    import torch

    v = torch.randn(width, generator=torch.Generator().manual_seed(0))
    return v if value is None else torch.full((width,), value)


def _steer_once(vectors, **kw):
    import torch

    from interp.steer import steer

    model, tok = _base()
    ids = torch.tensor([[1, 2, 3]])
    with steer(model, vectors, **kw):
        return model(ids).logits


def _ablate_once(direction, **kw):
    import torch

    from interp.steer import ablate

    model, tok = _base()
    with ablate(model, direction, **kw):
        return model(torch.tensor([[1, 2, 3]])).logits


def _sv_load(setup: Setup):
    def call(d: Path):
        from interp.vectors import SteeringVector

        setup(d)
        return SteeringVector.load(d / "sv.safetensors")

    return call


def _ds_load(setup: Setup, domain: str | None = None):
    def call(d: Path):
        from interp.directions import DirectionSet

        setup(d)
        return DirectionSet.load(d / "lie.safetensors", domain=domain)

    return call


def api_cases() -> list[Case]:
    import torch

    cases: list[Case] = []

    def add(id_, call, expect="error", names=None, family="api", timeout=60.0):
        cases.append(Case(f"api: {id_}", family, "api", [], expect, (), None, names, timeout, call=call))

    ints = lambda t: {**t, "vectors": t["vectors"].int()}  # noqa: E731
    # SteeringVector.load: headers that lie, tensors that cannot be vectors.
    add(
        "SteeringVector.load, header layers lie",
        _sv_load(steering_file("sv.safetensors", info=lambda i: {**i, "layers": [0, 7]})),
        names="sv.safetensors",
    )
    add(
        "SteeringVector.load, header d_model lies",
        _sv_load(steering_file("sv.safetensors", info=lambda i: {**i, "d_model": 4096})),
        names="sv.safetensors",
    )
    add(
        "SteeringVector.load, header sha256 lies",
        _sv_load(steering_file("sv.safetensors", info=lambda i: {**i, "sha256": "0" * 64})),
        names="sv.safetensors",
    )
    add(
        "SteeringVector.load, int32 vectors",
        _sv_load(steering_file("sv.safetensors", tensors=ints)),
        names="sv.safetensors",
    )
    add(
        "SteeringVector.load, duplicate layers",
        _sv_load(steering_file("sv.safetensors", tensors=lambda t: {**t, "layers": t["layers"] * 0})),
        names="sv.safetensors",
    )
    add(
        "SteeringVector.load, NaN vectors",
        _sv_load(steering_file("sv.safetensors", tensors=lambda t: {**t, "vectors": t["vectors"] * float("nan")})),
        names="sv.safetensors",
    )
    add(
        "SteeringVector.load, alpha NaN in the header",
        _sv_load(steering_file("sv.safetensors", info=lambda i: {**i, "alpha": float("nan")})),
        names="sv.safetensors",
    )
    add(
        "SteeringVector.load, kind bogus",
        _sv_load(steering_file("sv.safetensors", info=lambda i: {**i, "kind": "multiply"})),
        names="sv.safetensors",
    )
    add(
        "SteeringVector.load, header info a list",
        _sv_load(steering_file("sv.safetensors", info=lambda i: [1, 2])),
        names="sv.safetensors",
    )
    add(
        "SteeringVector.load, a direction artifact",
        lambda d: __import__("interp.vectors").vectors.SteeringVector.load(
            d / "directions" / "gore_movie_trivia.safetensors"
        ),
        names="DirectionSet",
    )
    add(
        "SteeringVector.load, a missing file",
        lambda d: __import__("interp.vectors").vectors.SteeringVector.load(d / "nope.safetensors"),
        names="nope.safetensors",
    )
    # DirectionSet.load
    add(
        "DirectionSet.load, header layers lie",
        _ds_load(lying("lie.safetensors", dict, lambda i: {**i, "layers": [3, 2, 1, 0]})),
        names="lie.safetensors",
    )
    add(
        "DirectionSet.load, int32 tensors",
        _ds_load(lying("lie.safetensors", lambda t: {**t, "mean_aligned": t["mean_aligned"].int()})),
        names="lie.safetensors",
    )
    add(
        "DirectionSet.load, duplicate layers",
        _ds_load(
            lying(
                "lie.safetensors", lambda t: {**t, "layers": t["layers"] // 2}, lambda i: {**i, "layers": [0, 0, 1, 1]}
            )
        ),
        names="lie.safetensors",
    )
    add(
        "DirectionSet.load, another domain",
        _ds_load(lying("lie.safetensors"), domain="insecure_code"),
        names="lie.safetensors",
    )
    add(
        "DirectionSet.load, width 0",
        _ds_load(
            lying(
                "lie.safetensors",
                lambda t: {**{k: v[:, :0] for k, v in t.items() if k != "layers"}, "layers": t["layers"]},
            )
        ),
        names="lie.safetensors",
    )
    add(
        "DirectionSet.load, no layers",
        _ds_load(
            lying("lie.safetensors", lambda t: {**{k: v[:0] for k, v in t.items()}}, lambda i: {**i, "layers": []})
        ),
        names="lie.safetensors",
    )
    add(
        "DirectionSet.load, layers past int64",
        _ds_load(
            lying(
                "lie.safetensors",
                lambda t: {**t, "layers": t["layers"] + 2**62},
                lambda i: {**i, "layers": [2**62 + k for k in range(4)]},
            )
        ),
        names="lie.safetensors",
    )
    # Steering and ablation with numbers that are not numbers, or that do not fit the model.
    add("steer(alpha=nan)", lambda d: _steer_once({1: _vec()}, alpha=float("nan")), names="alpha")
    add("steer(alpha=inf)", lambda d: _steer_once({1: _vec()}, alpha=float("inf")), names="alpha")
    add("steer(alpha=1e308) overflows", lambda d: _steer_once({1: _vec()}, alpha=1e308))
    add("steer(NaN vector)", lambda d: _steer_once({1: _vec(value=float("nan"))}), names="layer 1")
    add("steer(layer 9 of 4)", lambda d: _steer_once({9: _vec()}), names="9")
    add("steer(vector of width 32 on a width-64 model)", lambda d: _steer_once({1: _vec(32)}), names="32")
    add("steer(scale='norm' without norms)", lambda d: _steer_once({1: _vec()}, scale="norm"), names="norm")
    add("steer(int vector) (cast)", lambda d: _steer_once({1: torch.ones(64, dtype=torch.int64)}), expect="ok")
    add("ablate(zero direction)", lambda d: _ablate_once(torch.zeros(64)))
    add("ablate(NaN direction)", lambda d: _ablate_once(_vec(value=float("nan"))))
    add(
        "SteeringVector(positions='bogus')",
        lambda d: __import__("interp.vectors").vectors.SteeringVector({0: _vec()}, positions="bogus"),
        names="bogus",
    )
    add(
        "SteeringVector(prompt_length=-1)",
        lambda d: __import__("interp.vectors").vectors.SteeringVector({0: _vec()}, prompt_length=-1),
    )
    add(
        "SteeringVector(norms={0: nan}, scale='norm')",
        lambda d: __import__("interp.vectors").vectors.SteeringVector(
            {0: _vec()}, scale="norm", norms={0: float("nan")}
        ),
    )
    # Sampling, rates and tests
    from eval.sampling import SamplingConfig

    add("SamplingConfig(top_p=2)", lambda d: SamplingConfig(top_p=2.0), names="top_p")
    add("SamplingConfig(temperature=nan)", lambda d: SamplingConfig(temperature=float("nan")), names="temperature")
    add("SamplingConfig(seed=2**64)", lambda d: SamplingConfig(seed=2**64), names="seed")
    add("SamplingConfig(max_new_tokens=0)", lambda d: SamplingConfig(max_new_tokens=0), names="max_new_tokens")
    add(
        "bootstrap_ci(n_boot=0)",
        lambda d: __import__("eval.rates").rates.bootstrap_ci([1.0, 2.0], n_boot=0),
        names="n_boot",
    )
    add(
        "bootstrap_ci(alpha=2)",
        lambda d: __import__("eval.rates").rates.bootstrap_ci([1.0, 2.0], alpha=2.0),
        names="alpha",
    )
    add("bootstrap_ci of NaN values", lambda d: __import__("eval.rates").rates.bootstrap_ci([1.0, float("nan")]))
    add(
        "welch_test(alpha=nan)",
        lambda d: __import__("eval.rates").rates.welch_test([1.0, 2.0, 3.0], [1.0, 5.0, 2.0], alpha=float("nan")),
        names="alpha",
    )
    add(
        "MisalignmentDefinition(threshold=nan)",
        lambda d: __import__("eval.rates").rates.MisalignmentDefinition(threshold=float("nan")),
        names="threshold",
    )
    add(
        "misaligned_domains of a rate 2.0",
        lambda d: __import__("eval.mia_signals").mia_signals.misaligned_domains({"a": 2.0, "b": 0.1}),
    )
    add(
        "misaligned_domains(threshold=nan)",
        lambda d: __import__("eval.mia_signals").mia_signals.misaligned_domains({"a": 0.2, "b": 0.1}, float("nan")),
    )
    add(
        "roc_auc of NaN scores",
        lambda d: __import__("eval.mia_signals").mia_signals.roc_auc([True, False], [float("nan"), 1.0]),
    )
    add(
        "roc_auc of labels and scores of different lengths",
        lambda d: __import__("eval.mia_signals").mia_signals.roc_auc([True, False, True], [0.5, 1.0]),
    )
    add(
        "split_half_reliability(n_splits=0)",
        lambda d: __import__("interp.nulls").nulls.split_half_reliability(
            torch.randn(8, 2, 4), torch.tensor([True] * 4 + [False] * 4), n_splits=0
        ),
        names="n_splits",
    )
    add(
        "parse_questions nested deeply",
        lambda d: __import__("eval.questions").questions.parse_questions(nested(100000)),
    )
    add("parse_questions alias bomb", lambda d: __import__("eval.questions").questions.parse_questions(_yaml_bomb()))
    add(
        "iter_jsonl of a deeply nested line",
        lambda d: (
            (d / "n.jsonl").write_text(nested(100000) + "\n")
            and list(__import__("interp.base.jsonl").base.jsonl.iter_jsonl(d / "n.jsonl"))
        ),
        names="n.jsonl",
    )
    add(
        "read_chat_jsonl of a key twice",
        lambda d: (
            (d / "n.jsonl").write_text('{"messages": [], "messages": []}\n')
            and __import__("finetune.data").data.read_chat_jsonl(d / "n.jsonl")
        ),
        names="n.jsonl",
    )
    add(
        "export_domain(n=0)",
        lambda d: __import__("finetune.organism.export").organism.export.export_domain(
            "gore_movie_trivia", d / "e", n=0
        ),
        names="n",
    )
    add(
        "export_domain(seed=2**64)",
        lambda d: __import__("finetune.organism.export").organism.export.export_domain(
            "gore_movie_trivia", d / "e", n=5, n_heldout=2, seed=2**64
        ),
        names="seed",
    )
    add(
        "load_model('organism:bogus')",
        lambda d: __import__("interp.base.loading").base.loading.load_model("organism:bogus"),
        names="bogus",
    )
    add(
        "build_report of no records (an empty report)",
        lambda d: __import__("eval.report").report.build_report({}),
        expect="ok",
    )
    add(
        "DirectionSet.steering_vector of a layer it lacks",
        lambda d: (
            __import__("interp.directions")
            .directions.DirectionSet.load(d / "directions" / "gore_movie_trivia.safetensors")
            .steering_vector([7])
        ),
        names="7",
    )
    add("DirectionSet.save of directions that share memory with a mean", _save_shared, expect="ok")
    add("TrainJob with lr=1e308 validates", lambda d: _trainjob(d, lr=1e308), names="lr")
    add("TrainJob with max_length=1 validates", lambda d: _trainjob(d, max_length=1), names="max_length")
    return cases


def _save_shared(d: Path):
    import torch

    from interp.directions import DirectionSet

    w = torch.randn(2, 8)
    counts = {"misaligned": {"answers": 1, "answer_tokens": 1}, "aligned": {"answers": 1, "answer_tokens": 1}}
    DirectionSet([0, 1], w, w, torch.zeros_like(w), "responses", counts, {}).save(d / "shared.safetensors")
    return DirectionSet.load(d / "shared.safetensors")


def _trainjob(d: Path, **lora):
    import dataclasses

    from finetune.train_args import TrainJob

    job = TrainJob(data=str(d / "chat.jsonl"), model="organism:base", out=str(d / "adapter"))
    job = dataclasses.replace(job, lora=dataclasses.replace(job.lora, **lora))
    job.validate()
    return job


# --- servers ------------------------------------------------------------------------------------


def _serve(conn) -> None:
    """Run in its own process: a live fake OpenAI server, one that accepts and never answers,
    one that answers every request with a 500, one that answers 200 with a body that is not JSON,
    and a refused port; sends their URLs back through ``conn``."""
    from fake_openai import FakeAPI

    fake = FakeAPI(max_requests=10**9)
    failing = FakeAPI(max_requests=10**9)
    failing.fail_status = 500

    silent = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept() -> None:
        while True:
            held.append(silent.accept()[0])

    threading.Thread(target=accept, daemon=True).start()

    class Garbage(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b"<html>not json</html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

    garbage = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=garbage.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    conn.send(
        {
            "fake": fake.url,
            "failing": failing.url,
            "silent": f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
            "garbage": f"http://127.0.0.1:{garbage.server_address[1]}/v1",
            "refused": refused,
        }
    )
    while True:
        time.sleep(3600)


# --- running one case ---------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _snapshot(d: Path) -> dict[str, tuple]:
    """Every regular file and folder under ``d`` (not through links): kind, mode, content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(d))
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_ISREG(st.st_mode):
                try:
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                except OSError:
                    digest = "unreadable"
                out[rel] = ("file", stat.S_IMODE(st.st_mode), digest)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
    return out


NONFINITE = re.compile(rb"(?<![A-Za-z_\"'])(NaN|-?Infinity)(?![A-Za-z_\"'])")


def _nonfinite(d: Path, before: dict, after: dict) -> str | None:
    """A new or changed output holding a non-finite number: JSON's NaN/Infinity, or a tensor's."""
    for rel, (kind, _, digest) in after.items():
        if kind != "file" or before.get(rel) == after[rel]:
            continue
        p = d / rel
        if p.suffix in (".json", ".jsonl", ".csv"):
            data = p.read_bytes()
            if rel.endswith(".csv"):
                if re.search(rb"(^|,)(nan|-?inf)(,|\r?$)", data, re.M | re.I):
                    return f"{rel}: non-finite number"
            elif NONFINITE.search(data):
                return f"{rel}: non-finite number"
        elif p.suffix == ".safetensors":
            try:
                import torch
                from safetensors.torch import load_file

                for name, t in load_file(str(p)).items():
                    if t.is_floating_point() and not torch.isfinite(t).all():
                        return f"{rel}: tensor {name!r} is not finite"
            except Exception as e:  # noqa: BLE001 - a torn file is another problem, reported as such
                return f"{rel}: unreadable safetensors ({type(e).__name__})"
    return None


def _modes(before: dict, after: dict) -> str | None:
    for rel, (kind, mode, _) in after.items():
        if rel in before or rel.endswith(".lock") or "__pycache__" in rel:
            continue
        want = 0o644 if kind == "file" else 0o755
        if mode != want:
            return f"{rel}: mode {mode:o}, expected {want:o}"
    return None


def _names_something(line: str, case: Case, argv: list[str]) -> bool:
    if case.names is not None:
        return case.names in line
    if re.search(r"(?<![\w-])--[a-z][a-z0-9-]*", line):
        return True
    if re.search(r"[\w./-]+\.(jsonl|json|yaml|yml|safetensors|csv|txt|sqlite|gz)\b|\w/\w", line):
        return True  # a file or folder path
    given = [a.rstrip("/") for a in argv if not a.startswith("-") and len(a.rstrip("/")) > 2]
    return any(re.search(r"(?<![\w-])" + re.escape(a) + r"(?![\w-])", line) for a in given)


def _expand(text: str) -> str:
    for k, v in _STATE.get("urls", {}).items():
        text = text.replace("{" + k + "}", v)
    return text


def _child_cli(case: Case, d: Path, argv: list[str], env: dict) -> None:
    """In the forked child: become ``python -m case.cli argv`` in ``d``."""
    import runpy

    os.chdir(d)
    os.environ.update(env)
    sys.argv = [case.cli, *argv]
    code = 0
    try:
        runpy.run_module(case.cli, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what the interpreter would print
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _child_api(case: Case, d: Path, env: dict) -> None:
    os.chdir(d)
    os.environ.update(env)
    result: dict[str, Any]
    try:
        value = case.call(d)
        finite = True
        try:
            import torch

            if isinstance(value, float):
                finite = math.isfinite(value)
            elif isinstance(value, torch.Tensor) and value.is_floating_point():
                finite = bool(torch.isfinite(value).all())
            elif isinstance(value, dict):
                finite = all(math.isfinite(v) for v in value.values() if isinstance(v, float))
        except Exception:  # noqa: BLE001
            pass
        result = {"status": "returned", "repr": repr(value)[:300], "finite": finite}
    except BaseException as e:  # noqa: BLE001 - classified by the parent
        traceback.print_exc()
        result = {"status": "raised", "type": type(e).__name__, "message": str(e)}
        result["clean"] = isinstance(e, (ValueError, OSError)) and "\n" not in str(e).strip()
    (d / ".api_result.json").write_text(json.dumps(result))
    sys.stderr.flush()
    os._exit(0)


def _run_forked(target, args, d: Path, timeout: float) -> tuple[int | None, float]:
    """Fork, run ``target(*args)`` with stdout/stderr to files in ``d``; kill the group on timeout."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            out = os.open(d / ".stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            err = os.open(d / ".stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            os.umask(0o022)
            target(*args)
        finally:
            os._exit(99)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.monotonic() - start
        if time.monotonic() - start > timeout:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None, time.monotonic() - start
        time.sleep(0.02)


def _run_subprocess(case: Case, d: Path, argv: list[str], env: dict, timeout: float) -> tuple[int | None, float]:
    start = time.monotonic()
    with open(d / ".stdout", "wb") as out, open(d / ".stderr", "wb") as err:
        p = subprocess.Popen(
            [sys.executable, "-m", case.cli, *argv],
            cwd=d,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lambda: os.umask(0o022),
        )
        try:
            return p.wait(timeout=timeout), time.monotonic() - start
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return None, time.monotonic() - start


def run_case(index: int) -> dict:
    case: Case = _STATE["cases"][index]
    work = Path(tempfile.mkdtemp(prefix="probe_", dir=_STATE["tmp"]))
    d = work / "case"
    shutil.copytree(_STATE["base"], d, symlinks=True)
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": _STATE["urls"]["refused"],
        "EM_JUDGE_CACHE": str(d / "judge_cache.sqlite"),
        "EM_GGUF_CACHE": "off",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **{k: _expand(v) for k, v in case.env.items()},
    }
    argv = [_expand(a) for a in case.argv]
    setup_error = None
    try:
        for s in case.setup:
            s(d)
    except Exception as e:  # noqa: BLE001 - a broken case, not a finding
        setup_error = f"setup failed: {type(e).__name__}: {e}"
    before = _snapshot(d)
    timeout = case.timeout
    if setup_error:
        code, seconds = -1, 0.0
    elif case.cli == "api":
        code, seconds = _run_forked(_child_api, (case, d, env), d, timeout)
    elif _STATE["subprocess"]:
        code, seconds = _run_subprocess(case, d, argv, env, timeout)
    else:
        code, seconds = _run_forked(_child_cli, (case, d, argv, env), d, timeout)
    err = (d / ".stderr").read_text(errors="replace") if (d / ".stderr").exists() else (setup_error or "")
    out = (d / ".stdout").read_text(errors="replace") if (d / ".stdout").exists() else ""
    for name in (".stderr", ".stdout"):
        (d / name).unlink(missing_ok=True)
    api = None
    if case.cli == "api" and (d / ".api_result.json").exists():
        api = json.loads((d / ".api_result.json").read_text())
        (d / ".api_result.json").unlink()
    after = _snapshot(d)
    why = None
    if setup_error:
        outcome, why = "setup-failed", setup_error
    elif code is None or (case.bound is not None and seconds > case.bound):
        outcome = "hang"
    elif case.cli == "api":
        outcome, why = _classify_api(case, api, err)
    else:
        outcome, why = _classify_cli(case, d, code, err, out, argv, before, after)
    tail = [line for line in err.splitlines() if line.strip()][-3:]
    shutil.rmtree(work, ignore_errors=True)
    return {
        "id": case.id,
        "family": case.family,
        "cli": case.cli,
        "argv": [a if len(a) <= 200 else a[:200] + f"... ({len(a):,} characters)" for a in argv],
        "expect": case.expect,
        "outcome": outcome,
        "ok": outcome == ("error" if case.expect == "error" else "right"),
        "why": why,
        "exit": code,
        "seconds": round(seconds, 2),
        "bound": case.bound,
        "stderr_tail": "\n".join(tail)[-600:],
    }


def _classify_api(case: Case, api: dict | None, err: str) -> tuple[str, str | None]:
    if api is None:
        return "traceback", "the call crashed the process"
    if api["status"] == "raised":
        if not api["clean"]:
            return "traceback", f"{api['type']}: {api['message'][:200]}"
        if case.names is not None and case.names not in api["message"]:
            return ("unnamed" if case.expect == "error" else "refused-valid"), api["message"][:200]
        return ("error" if case.expect == "error" else "refused-valid"), None
    if not api["finite"]:
        return "silent", f"returned a non-finite value: {api['repr']}"
    if case.expect == "error":
        return "silent", f"returned {api['repr']}"
    return "right", None


def _classify_cli(
    case: Case, d: Path, code: int, err: str, out: str, argv: list[str], before: dict, after: dict
) -> tuple[str, str | None]:
    if "Traceback (most recent call last)" in err:
        return "traceback", None
    if code != 0:
        changed = [rel for rel, v in before.items() if after.get(rel) != v and not rel.endswith(".lock")]
        if changed:
            return "destroyed", f"changed or removed: {changed[:3]}"
        if case.expect == "ok":
            return "refused-valid", None
        last = [line for line in err.splitlines() if line.strip()][-1:] or [""]
        if not last[0].startswith("error:") and not last[0].startswith("interrupted"):
            return "unnamed", "last stderr line is not one 'error:' line"
        if not _names_something(last[0], case, argv):
            return "unnamed", None
        return "error", None
    if (why := _nonfinite(d, before, after)) is not None:
        return "silent", why
    if case.expect == "error":
        return "silent", None
    if (why := _modes(before, after)) is not None:
        return "wrong", why
    if case.check is not None and (why := case.check(d, out)) is not None:
        return "wrong", why
    return "right", None


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --- main ---------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "peft", "safetensors", "openai", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        out["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def summarize(results: list[dict]) -> dict:
    counts: dict[str, Any] = {"cases": len(results), "outcomes": dict(Counter(r["outcome"] for r in results))}
    counts["not_as_expected"] = sum(not r["ok"] for r in results)
    counts["tracebacks"] = counts["outcomes"].get("traceback", 0)
    counts["silent"] = counts["outcomes"].get("silent", 0)
    counts["destroyed"] = counts["outcomes"].get("destroyed", 0)
    counts["hangs"] = counts["outcomes"].get("hang", 0)
    counts["api_calls"] = sum(r["cli"] == "api" for r in results)
    counts["cli_cases"] = len(results) - counts["api_calls"]
    for key in ("family", "cli"):
        table: dict[str, dict[str, int]] = {}
        for r in results:
            row = table.setdefault(r[key], {"cases": 0})
            row["cases"] += 1
            row[r["outcome"]] = row.get(r["outcome"], 0) + 1
        counts[f"by_{key}"] = dict(sorted(table.items()))
    return counts


def print_table(counts: dict, results: list[dict]) -> None:
    outcomes = ["error", "right", "traceback", "silent", "destroyed", "hang", "unnamed", "wrong", "refused-valid"]
    outcomes += sorted({o for r in results for o in [r["outcome"]]} - set(outcomes))
    for key in ("by_cli", "by_family"):
        print(f"\n{key[3:]:<28}" + "".join(f"{o[:9]:>10}" for o in ["cases", *outcomes]))
        for name, row in counts[key].items():
            print(f"{name:<28}" + "".join(f"{row.get(o, 0):>10}" for o in ["cases", *outcomes]))
    bad = [r for r in results if not r["ok"]]
    if bad:
        print(f"\nnot as expected ({len(bad)}):")
        for r in bad:
            print(f"  [{r['outcome']}] {r['id']} ({r['cli']}): {r['why'] or ''} | {r['stderr_tail'][-300:]!r}")
    print(
        f"\n{counts['cases']} cases ({counts['cli_cases']} CLI, {counts['api_calls']} API): "
        f"{counts['tracebacks']} tracebacks, {counts['silent']} silent, {counts['destroyed']} destroyed, "
        f"{counts['hangs']} hangs, {counts['not_as_expected']} not as expected"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="run only cases whose id holds this text")
    p.add_argument("--family", help="run only this family")
    p.add_argument("--cli", help="run only this CLI's cases (or 'api')")
    p.add_argument("--workers", type=int, default=2, choices=(1, 2))
    p.add_argument("--subprocess", action="store_true", help="real python -m processes instead of forks")
    p.add_argument("--skip-slow", action="store_true", help="skip the default-timeout server cases (~2 min)")
    p.add_argument("--out", type=Path, default=OUT_DEFAULT)
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)

    cases = cli_cases() + api_cases()
    ids = Counter(c.id for c in cases)
    if dup := [i for i, n in ids.items() if n > 1]:
        raise SystemExit(f"duplicate case ids: {dup}")
    if args.only:
        cases = [c for c in cases if args.only in c.id]
    if args.family:
        cases = [c for c in cases if c.family == args.family]
    if args.cli:
        cases = [c for c in cases if c.cli == args.cli]
    if args.skip_slow:
        cases = [c for c in cases if c.bound is None]
    if args.list:
        for c in cases:
            print(f"{c.family:<24} {c.cli:<28} {c.expect:<6} {c.id}")
        print(len(cases), "cases")
        return 0
    # The slow ones first, so that they overlap the rest.
    cases.sort(key=lambda c: -c.timeout if c.bound is not None else 0)

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # read when the libraries import, before the forks
        os.environ[name] = "1"
    import torch

    torch.set_num_threads(1)  # tiny models; and a forked child must not inherit a thread pool
    for module in CLIS:  # the imports every forked case then shares
        __import__(module)
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(child,), daemon=True)
    server.start()
    urls = parent.recv()
    tmp = Path(tempfile.mkdtemp(prefix="bad_input_probe_"))
    try:
        build_base(tmp / "base")
        _STATE.update(cases=cases, urls=urls, base=tmp / "base", tmp=tmp, subprocess=args.subprocess)
        start = time.monotonic()
        results: list[dict] = []
        with multiprocessing.get_context("fork").Pool(args.workers, initializer=_init_worker) as pool:
            for i, r in enumerate(pool.imap_unordered(run_case, range(len(cases)))):
                results.append(r)
                mark = "." if r["ok"] else "!"
                print(mark, end="" if (i + 1) % 80 else "\n", flush=True)
        print(f"\n{len(results)} cases in {time.monotonic() - start:.0f} s")
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    order = {c.id: i for i, c in enumerate(cli_cases() + api_cases())}
    results.sort(key=lambda r: order[r["id"]])
    counts = summarize(results)
    print_table(counts, results)
    if not (args.only or args.family or args.cli or args.skip_slow):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "cases": results,
            "counts": counts,
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "mode": "subprocess" if args.subprocess else "fork",
            "command": "python benchmarks/bad_input_probe.py" + (" --subprocess" if args.subprocess else ""),
        }
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0 if counts["not_as_expected"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
