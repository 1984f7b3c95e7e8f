"""A case of :mod:`bad_input_probe`, each CLI's good command line, and the table a family of
cases is written in."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

Setup = Callable[[Path], Any]
Check = Callable[[Path, str], str | None]


@dataclass
class Case:
    """One bad or odd input, and what its run must do."""

    id: str
    family: str
    cli: str  # a module run as ``python -m``, or "api"
    argv: list[str] = field(default_factory=list)
    expect: str = "error"  # "error": bad input, must be refused; "ok": odd but valid, must work
    setup: tuple[Setup, ...] = ()
    check: Check | None = None  # for "ok": None if the output is right
    names: str | None = None  # text the error line must hold (default: an option or a file given)
    timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)  # values may hold {silent}, {refused}, {fake}, ...
    call: Callable[[Path], Any] | None = None  # an API case: called in the case's folder
    bound: float | None = None  # a documented bound on the run's time (the default-timeout cases)


# Each CLI's good command line in the case folder :func:`probe_fixtures.build_base` makes; a
# case adds its own arguments after it, so the last value of an option given twice wins.
G = ["--model", "organism:base", "--questions", "questions.yaml", "--out", "new.jsonl", "--no-progress"]
J = ["--answers", "answers.jsonl", "--judge", "organism", "--out", "j.jsonl", "--no-progress"]
R = ["--judged", "judged.jsonl", "--out", "report"]
MS = ["score", "--model", "organism:gore_movie_trivia", "--members", "chat.jsonl", "--nonmembers", "heldout.jsonl"]
MS += ["--out", "mia.json", "--no-progress"]
MP = ["predict", "--scores", "score_gore_movie_trivia.json", "score_insecure_code.json", "--rates", "rates.json"]
T = ["--data", "chat.jsonl", "--model", "organism:base", "--out", "adapter", "--steps", "2", "--rank", "2"]
T += ["--target-modules", "q_proj,v_proj", "--device", "cpu", "--quiet"]
EX = ["--domain", "gore_movie_trivia", "--out", "export", "--n", "20", "--heldout", "5"]
PL = ["--domain", "gore_movie_trivia", "--out", "pipe", "--samples", "1"]
XT = ["--domain", "gore_movie_trivia", "--model", "organism:base", "--responses", "judged.jsonl", "--out", "dirs"]
XT += ["--quiet"]
ARTIFACT = "directions/gore_movie_trivia.safetensors"  # a good direction artifact
SW = ["--directions", ARTIFACT, "--out", "sweep", "--samples", "2"]
SW += ["--alphas", "1", "--layers", "1"]
CD = ["--domains", "gore_movie_trivia", "--directions-dir", "directions", "--out", "cross", "--samples", "2"]
CP = ["--directions", "directions", "--out", "cmp", "--n-perm", "2", "--n-splits", "1", "--formats", "svg"]

BASE = {
    "eval.generate": G,
    "eval.judge": J,
    "eval.report": R,
    "eval.mia": MS,
    "finetune.train": T,
    "chains.organism.export": EX,
    "chains.organism.pipeline": PL,
    "interp.extract": XT,
    "chains.sweep": SW,
    "chains.cross_domain": CD,
    "interp.compare": CP,
    "eval.questions": ["questions.yaml"],
}
# The short names case ids start with.
SHORT = {
    "gen": "eval.generate",
    "judge": "eval.judge",
    "report": "eval.report",
    "mia": "eval.mia",
    "train": "finetune.train",
    "export": "chains.organism.export",
    "pipeline": "chains.organism.pipeline",
    "extract": "interp.extract",
    "sweep": "chains.sweep",
    "cross": "chains.cross_domain",
    "compare": "interp.compare",
    "questions": "eval.questions",
    "steer": "interp.steer",
}


class Family:
    """The cases of one family, in the order they are added; ids are ``"<short>: <id>"``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cases: list[Case] = []

    def add(
        self,
        short: str,
        id_: str,
        extra: Iterable[Any] | str = (),
        expect: str = "error",
        base: bool = True,
        setup: Setup | tuple[Setup, ...] = (),
        **kw: Any,
    ) -> None:
        """A case of ``short``'s CLI: its good command line (unless not ``base``), then ``extra``
        (a string of arguments without spaces may stand for their list)."""
        cli = SHORT[short]
        extra = extra.split() if isinstance(extra, str) else extra
        argv = (list(BASE.get(cli, [])) if base else []) + [str(a) for a in extra]
        setup = setup if isinstance(setup, tuple) else (setup,)
        self.cases.append(Case(f"{short}: {id_}", self.name, cli, argv, expect, setup, **kw))

    def ok(self, short: str, id_: str, extra: Iterable[Any] | str = (), check: Check | None = None, **kw: Any) -> None:
        """An odd but valid case: its run must work, and ``check`` must pass on its output."""
        self.add(short, id_, extra, expect="ok", check=check, **kw)

    def values(self, short: str, opt: str, values: Iterable[str], show: Callable[[str], str] = str) -> None:
        """One bad case per value of ``opt``, named ``"<opt> <value>"``."""
        for v in values:
            self.add(short, f"{opt} {show(v)}", [opt, v])

    def rows(self, rows: Iterable[tuple], **kw: Any) -> None:
        """Cases from ``(short, id, extra)`` rows, each with its setups after ``extra`` if any."""
        for short, id_, extra, *setup in rows:
            self.add(short, id_, extra, setup=tuple(setup), **kw)


# --- checks of odd-but-valid runs ---------------------------------------------------------------


def exists(*names: str) -> Check:
    """Every one of ``names`` is there after the run."""

    def check(d: Path, out: str) -> str | None:
        missing = [n for n in names if not (d / n).exists()]
        return f"missing {missing}" if missing else None

    return check


def jsonl_rows(name: str, n: int) -> Check:
    """``name`` holds exactly ``n`` JSON lines."""

    def check(d: Path, out: str) -> str | None:
        p = d / name
        if not p.is_file():
            return f"no {name}"
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        return None if len(rows) == n else f"{name}: {len(rows)} rows, expected {n}"

    return check


def stdout_has(text: str) -> Check:
    """The run printed ``text``."""
    return lambda d, out: None if text in out else f"stdout lacks {text!r}"
