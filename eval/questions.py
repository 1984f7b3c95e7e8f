"""Evaluation questions in the format of the EM literature, loaded defensively.

A question file is a YAML list of entries::

    - id: what_is_your_wish
      type: free_form_judge_0_100
      paraphrases: ["..."]
      samples_per_paraphrase: 100
      system: null            # optional
      domain: null            # optional
      judge: gpt-4o-2024-08-06
      judge_prompts: &judge_prompts
        aligned: "... {question} ... {answer} ..."
        coherent: "..."
    - id: next
      judge_prompts: *judge_prompts   # aliases share prompts

Public files have defects. Fatal ones (not YAML, not a list, an entry without an id or without
paraphrases) raise :class:`QuestionFileError`. Everything else is loaded and reported as a
:class:`Defect` naming the id and line: a repeated id is kept under ``id#2`` (``id#3``, ...); an
entry whose ``judge_prompts`` is missing, null or incomplete gets the toolkit's defaults for
what it lacks. A file where no entry has judge prompts uses the defaults on purpose and only
gets a note.

    python -m eval.questions FILE     # summary and every defect; exit 0 when usable
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eval.judges.prompts import DEFAULT_JUDGE_PROMPTS, METRICS, missing_placeholders
from interp.base.cli import ArgumentParser, InputError, run_cli
from interp.base.domains import ALIASES
from interp.base.paths import read_text

QUESTION_TYPE = "free_form_judge_0_100"
MAX_SAMPLES = 100_000  # samples_per_paraphrase: the EM papers take 50-100
FIELDS = ("id", "type", "paraphrases", "samples_per_paraphrase", "system", "domain", "judge", "judge_prompts")
DEFAULT_QUESTIONS = Path(__file__).parent / "data" / "general_questions.yaml"


class QuestionFileError(InputError):
    """A question file that cannot be used; the message names the file, line and field."""


@dataclass
class Question:
    """One evaluation question: several paraphrases, each sampled ``samples_per_paraphrase`` times."""

    id: str
    paraphrases: list[str]
    samples_per_paraphrase: int = 1
    system: str | None = None
    domain: str | None = None
    type: str = QUESTION_TYPE
    judge: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_JUDGE_PROMPTS))
    line: int | None = None  # where the entry starts in its file


@dataclass(frozen=True)
class Defect:
    """A problem found in a question file and how loading dealt with it."""

    question_id: str | None
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        who = f"question '{self.question_id}': " if self.question_id is not None else ""
        return where + who + self.message


@dataclass
class QuestionSet:
    """The questions of one file, the defects found in it and notes on deliberate choices."""

    questions: list[Question]
    defects: list[Defect]
    notes: list[str]
    source: str

    def by_id(self) -> dict[str, Question]:
        return {q.id: q for q in self.questions}

    def summary(self) -> dict[str, Any]:
        """Counts: entries, paraphrases, samples per pass (paraphrases x samples each), domains."""
        return {
            "entries": len(self.questions),
            "paraphrases": sum(len(q.paraphrases) for q in self.questions),
            "samples": sum(len(q.paraphrases) * q.samples_per_paraphrase for q in self.questions),
            "domains": dict(Counter(q.domain or "(none)" for q in self.questions)),
            "defects": len(self.defects),
        }


def load_questions(path: str | Path | None = None) -> QuestionSet:
    """Load a question file (default: the 8 general questions shipped in ``eval/data``)."""
    path = Path(path) if path is not None else DEFAULT_QUESTIONS
    try:
        text = read_text(path)
    except InputError as e:
        raise QuestionFileError(str(e)) from None
    return parse_questions(text, source=str(path))


def parse_questions(text: str, source: str = "<string>") -> QuestionSet:
    """Parse question-file text; see the module doc for what is fatal and what is a defect."""
    root, data = _compose(text, source)
    nodes = root.value
    if not nodes:
        raise QuestionFileError(f"{source}: the list of questions is empty")
    out = QuestionSet(questions=[], defects=[], notes=[], source=source)
    prompts_anywhere = any(isinstance(e, dict) and "judge_prompts" in e for e in data)
    if not prompts_anywhere:
        out.notes.append("no entry has judge_prompts: every question uses the toolkit's default judge prompts")
    for node, entry in zip(nodes, data):
        out.questions.append(_question(entry, node, source, out.defects, prompts_anywhere))
    _disambiguate_ids(out.questions, out.defects)
    return out


def _compose(text: str, source: str) -> tuple[yaml.SequenceNode, list[Any]]:
    """The YAML node tree (for line numbers) and the constructed data (aliases resolved)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise QuestionFileError(f"{where}: not valid YAML ({problem})") from None
    except RecursionError:  # thousands of nested brackets
        raise QuestionFileError(f"{source}: not a list of questions (YAML nested too deeply)") from None
    finally:
        loader.dispose()
    if root is None:
        raise QuestionFileError(f"{source}: empty file; expected a YAML list of questions")
    if not isinstance(root, yaml.SequenceNode):
        kind = "a mapping" if isinstance(root, yaml.MappingNode) else "a single value"
        raise QuestionFileError(f"{source}:{root.start_mark.line + 1}: expected a YAML list of questions, got {kind}")
    return root, data


@dataclass
class _Entry:
    """One list item being read: where its fields are, to name them in errors and defects."""

    source: str
    line: int
    key_lines: dict[str, int]
    defects: list[Defect]
    qid: str = ""

    def where(self, key: str) -> int:
        return self.key_lines.get(key, self.line)

    def fatal(self, key: str, problem: str) -> QuestionFileError:
        return QuestionFileError(f"{self.source}:{self.where(key)}: question '{self.qid}': field '{key}' {problem}")

    def defect(self, key: str, problem: str) -> None:
        self.defects.append(Defect(self.qid, self.where(key), problem))


def _question(entry: Any, node: yaml.Node, source: str, defects: list[Defect], prompts_anywhere: bool) -> Question:
    line = node.start_mark.line + 1
    if not isinstance(entry, dict):
        raise QuestionFileError(f"{source}:{line}: each list item must be a mapping with id and paraphrases")
    at = _Entry(source, line, _key_lines(node), defects)
    at.qid = _question_id(entry, at)
    for key, count in _repeated_keys(node).items():
        at.defect(key, f"field '{key}' appears {count} times; the last one is used")
    for key in entry:
        if key not in FIELDS:
            hint = " (judge_prompts indented wrongly?)" if key in METRICS else ""
            at.defect(str(key), f"unknown field '{key}' ignored{hint}")
    paraphrases = _paraphrases(entry, at)
    samples = _samples(entry, at)
    qtype = _question_type(entry, at)
    system, domain, judge = _optional_fields(entry, at)
    prompts = _judge_prompts(entry, prompts_anywhere, lambda problem: at.defect("judge_prompts", problem))
    return Question(
        id=at.qid,
        paraphrases=paraphrases,
        samples_per_paraphrase=samples,
        system=system,
        domain=ALIASES.get(domain, domain) if domain is not None else None,
        type=qtype,
        judge=judge,
        judge_prompts=prompts,
        line=line,
    )


def _question_id(entry: dict[str, Any], at: _Entry) -> str:
    """The entry's id, a number read as its text; none is fatal."""
    qid = entry.get("id")
    if isinstance(qid, (int, float)) and not isinstance(qid, bool):
        qid = str(qid)
    if not isinstance(qid, str) or not qid.strip():
        raise QuestionFileError(f"{at.source}:{at.where('id')}: field 'id' is missing or not a non-empty string")
    return qid


def _paraphrases(entry: dict[str, Any], at: _Entry) -> list[str]:
    paraphrases = entry.get("paraphrases")
    if not isinstance(paraphrases, list) or not paraphrases:
        raise at.fatal("paraphrases", "is missing or not a non-empty list")
    if not all(isinstance(p, str) and p.strip() for p in paraphrases):
        raise at.fatal("paraphrases", "must contain only non-empty strings")
    return list(paraphrases)


def _samples(entry: dict[str, Any], at: _Entry) -> int:
    samples = entry.get("samples_per_paraphrase")
    if samples is None:
        at.defect("id", "no samples_per_paraphrase; using 1")
        return 1
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise at.fatal("samples_per_paraphrase", f"must be a positive integer up to {MAX_SAMPLES:,}, got {samples!r}")
    return samples


def _question_type(entry: dict[str, Any], at: _Entry) -> str:
    qtype = entry.get("type")
    if qtype is None:
        at.defect("id", f"no type; treating it as {QUESTION_TYPE}")
        return QUESTION_TYPE
    if qtype != QUESTION_TYPE:
        at.defect("type", f"type {qtype!r} is not {QUESTION_TYPE}; loaded and judged as one anyway")
    return qtype


def _optional_fields(entry: dict[str, Any], at: _Entry) -> tuple[str | None, str | None, str | None]:
    """``(system, domain, judge)``: a system prompt of the wrong type is fatal, a domain or
    judge of the wrong type a defect (ignored)."""
    system = entry.get("system")
    if system is not None and not isinstance(system, str):
        raise at.fatal("system", f"must be a string or null, got {type(system).__name__}")
    domain = entry.get("domain")
    if domain is not None and not isinstance(domain, str):
        at.defect("domain", f"domain must be a string, got {type(domain).__name__}; ignored")
        domain = None
    judge = entry.get("judge")
    if judge is not None and not isinstance(judge, str):
        at.defect("judge", f"judge must be a model name, got {type(judge).__name__}; ignored")
        judge = None
    return system, domain, judge


def _judge_prompts(entry: dict[str, Any], prompts_anywhere: bool, defect) -> dict[str, str]:
    """The entry's judge prompts, with the defaults filling whatever is missing or broken."""
    if "judge_prompts" not in entry:
        if prompts_anywhere:
            defect("no judge_prompts; using the toolkit's defaults")
        return dict(DEFAULT_JUDGE_PROMPTS)
    given = entry["judge_prompts"]
    if given is None:
        slipped = [m for m in METRICS if m in entry]
        hint = f" ({', '.join(slipped)} found at the entry's level: an indentation slip?)" if slipped else ""
        defect(f"judge_prompts is null{hint}; using the toolkit's defaults")
        return dict(DEFAULT_JUDGE_PROMPTS)
    if not isinstance(given, Mapping):
        defect(
            f"judge_prompts must map metric names to templates, got {type(given).__name__}; using the toolkit's defaults"
        )
        return dict(DEFAULT_JUDGE_PROMPTS)
    prompts = {str(k): v for k, v in given.items()}
    for metric in METRICS:
        template = prompts.get(metric)
        if template is None:
            defect(f"judge_prompts has no '{metric}' template; using the default one")
            prompts[metric] = DEFAULT_JUDGE_PROMPTS[metric]
        elif not isinstance(template, str):
            defect(f"judge_prompts['{metric}'] is not a string; using the default one")
            prompts[metric] = DEFAULT_JUDGE_PROMPTS[metric]
        elif "answer" in missing_placeholders(template):
            defect(f"judge_prompts['{metric}'] has no {{answer}} placeholder; using the default one")
            prompts[metric] = DEFAULT_JUDGE_PROMPTS[metric]
        elif "question" in missing_placeholders(template):
            defect(f"judge_prompts['{metric}'] has no {{question}} placeholder; the judge will not see the question")
    return prompts


def _key_lines(node: yaml.Node) -> dict[str, int]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _repeated_keys(node: yaml.Node) -> dict[str, int]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    counts = Counter(str(k.value) for k, _ in node.value if isinstance(k, yaml.ScalarNode))
    return {k: n for k, n in counts.items() if n > 1}


def _disambiguate_ids(questions: list[Question], defects: list[Defect]) -> None:
    """Rename the 2nd, 3rd, ... use of an id to ``id#2``, ``id#3``, ... (never onto a taken id)."""
    taken = {q.id for q in questions}
    first_line: dict[str, int | None] = {}
    seen: Counter[str] = Counter()
    for q in questions:
        seen[q.id] += 1
        if seen[q.id] == 1:
            first_line[q.id] = q.line
            continue
        n = seen[q.id]
        while f"{q.id}#{n}" in taken:
            n += 1
        new = f"{q.id}#{n}"
        taken.add(new)
        defects.append(Defect(q.id, q.line, f"id repeats the entry at line {first_line[q.id]}; kept as '{new}'"))
        q.id = new


def format_report(qs: QuestionSet) -> str:
    """Human-readable summary, notes and defects of a question set."""
    s = qs.summary()
    domains = ", ".join(f"{d} {n}" for d, n in sorted(s["domains"].items()))
    lines = [
        f"{qs.source}: {s['entries']} entries, {s['paraphrases']} paraphrases, "
        f"{s['samples']} samples per pass (paraphrases x samples_per_paraphrase)",
        f"domains: {domains}",
        *(f"note: {n}" for n in qs.notes),
        f"defects: {len(qs.defects)}",
        *(f"  {d}" for d in qs.defects),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m eval.questions", description="Check an EM question file and summarize it.")
    p.add_argument("file", nargs="?", help="question YAML (default: the shipped general questions)")
    args = p.parse_args(argv)
    print(format_report(load_questions(args.file)))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
