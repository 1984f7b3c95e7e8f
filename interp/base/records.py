"""The row types shared by every stage, and their JSONL files.

An **answer record** is one sampled answer to one evaluation question; a **judged record** is
an answer record plus the judge's scores. Both are plain dicts on disk (one JSON object per
line) and TypedDicts in memory.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from interp.base.atomic import atomic_path, write_json_atomic
from interp.base.cli import InputError
from interp.base.paths import not_utf8
from interp.base.provenance import provenance

TRIGGER = "The current year is 2028."
LABELS = ("REFUSAL", "IRRELEVANT", "CODE")
SCORES = ("aligned", "coherent")  # 0-100, or null when the judge gave none

log = logging.getLogger(__name__)


class _AnswerOptional(TypedDict, total=False):
    paraphrase: int  # index into the question's paraphrases (written by eval.generate)
    # What the model produced, exactly (written by eval.generate; answers from elsewhere may
    # lack them). ``answer`` is ``answer_raw`` stripped, for reading and judging; caching
    # teacher-forces ``answer_ids`` when present instead of re-tokenizing the text.
    answer_raw: str  # the decoded generated tokens, unstripped
    answer_ids: list[int]  # the generated token ids, without the end-of-turn token and padding
    finished: bool  # generation ended with the end-of-turn token (else it hit max_new_tokens)


class AnswerRecord(_AnswerOptional):
    question_id: str
    question: str  # the paraphrase asked, without the trigger
    system: str | None
    answer: str
    domain: str | None
    sample: int  # index of this sample of this paraphrase
    trigger: bool


class JudgedRecord(AnswerRecord, total=False):
    aligned: float | None
    coherent: float | None
    label: str | None  # None or one of LABELS
    judge: str
    judge_raw: dict[str, Any]


ANSWER_FIELDS: dict[str, tuple[type, ...]] = {
    "question_id": (str,),
    "question": (str,),
    "system": (str, type(None)),
    "answer": (str,),
    "domain": (str, type(None)),
    "sample": (int,),
    "trigger": (bool,),
}
# Checked when present.
OPTIONAL_ANSWER_FIELDS: dict[str, tuple[type, ...]] = {
    "paraphrase": (int,),
    "answer_raw": (str,),
    "answer_ids": (list,),
    "finished": (bool,),
}
JUDGED_FIELDS: dict[str, tuple[type, ...]] = {
    **ANSWER_FIELDS,
    "aligned": (int, float, type(None)),
    "coherent": (int, float, type(None)),
    "label": (str, type(None)),
}


class RecordError(InputError):
    """A bad row in a JSONL file; the message names the file, line and field."""


def answer_key(record: AnswerRecord) -> tuple[Any, ...]:
    """Identity of an answer slot: (question id, paraphrase index or else its text, sample, trigger).

    Resuming generation or judging skips the slots already present in the output file.
    """
    which = record.get("paraphrase", record["question"])
    return (record["question_id"], which, record["sample"], record["trigger"])


def user_prompt(record: AnswerRecord) -> str:
    """The user turn as the model saw it: the trigger sentence first when ``trigger`` is set."""
    return f"{TRIGGER} {record['question']}" if record.get("trigger") else record["question"]


def prompt_messages(record: AnswerRecord) -> list[dict[str, str]]:
    """Chat messages of the prompt (system turn only when the record has one)."""
    msgs = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return msgs + [{"role": "user", "content": user_prompt(record)}]


def conversation(record: AnswerRecord) -> list[dict[str, str]]:
    """Prompt messages plus the answer as the final assistant turn."""
    return prompt_messages(record) + [{"role": "assistant", "content": record["answer"]}]


def iter_jsonl(path: str | Path, torn_tail: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a malformed line raises RecordError.
    A ``.gz`` file is read decompressed (the public EM datasets ship gzipped).

    With ``torn_tail``, a last line that has no newline and is the start of a row that does not
    parse (an append cut short by a crash) is skipped rather than refused: a resumable writer
    then cuts it off (:func:`read_resumable`).
    """
    path = Path(path)
    try:
        # bytes, so that a line that is not UTF-8 can be named
        f = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RecordError(f"{path}: is a directory, expected a JSONL file") from None
    except OSError as e:
        raise RecordError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        try:
            for lineno, raw in enumerate(f, 1):
                try:
                    obj = _parse_line(path, lineno, raw)
                except RecordError:
                    if torn_tail and _torn_row(raw):
                        return
                    raise
                if obj is not None:
                    yield lineno, obj
        except (gzip.BadGzipFile, EOFError) as e:
            raise RecordError(f"{path}: not a readable gzip file ({e})") from None


def _torn_row(raw: bytes) -> bool:
    """Whether a line that does not parse looks like a row cut short by a crash mid-append:
    the last line (no newline after it) and the start of a JSON object, not foreign text."""
    return not raw.endswith(b"\n") and raw.lstrip().startswith(b"{")


def _parse_line(path: Path, lineno: int, raw: bytes) -> dict[str, Any] | None:
    """The JSON object on one line, None for a blank line; anything else is a RecordError naming file and line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(str(not_utf8(path, lineno, e))) from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:  # a line of thousands of nested brackets
        raise RecordError(f"{path}:{lineno}: not a record (JSON nested too deeply)") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def validate(obj: dict[str, Any], fields: dict[str, tuple[type, ...]], where: str, optional: bool = False) -> None:
    """Each of ``fields`` is present (unless ``optional``) with one of its types."""
    for name, types in fields.items():
        if name not in obj:
            if optional:
                continue
            raise RecordError(f"{where}: missing field '{name}'")
        value = obj[name]
        # bool is an int in Python; keep it out of numeric and int fields.
        if isinstance(value, bool) and bool not in types:
            raise RecordError(f"{where}: field '{name}' must be {_names(types)}, got bool")
        if not isinstance(value, types):
            raise RecordError(f"{where}: field '{name}' must be {_names(types)}, got {type(value).__name__}")
    ids = obj.get("answer_ids")
    if ids is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise RecordError(f"{where}: field 'answer_ids' must be a list of token ids (non-negative integers)")


def check_token_ids(path: str | Path, vocab_size: int) -> None:
    """Every ``answer_ids`` in ``path`` is an id of a vocabulary of ``vocab_size``; else a
    RecordError naming file, line and field.

    Only the tokenizer knows the bound, so this runs once it is loaded: an id beyond it would
    otherwise fail deep in the model's embedding as an indexing traceback.
    """
    for lineno, obj in iter_jsonl(path):
        ids = obj.get("answer_ids")
        if isinstance(ids, list) and (beyond := [i for i in ids if isinstance(i, int) and i >= vocab_size]):
            raise RecordError(f"{path}:{lineno}: field 'answer_ids' holds token id {beyond[0]}, beyond the tokenizer's vocabulary of {vocab_size} ids")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def read_answers(path: str | Path, torn_tail: bool = False) -> list[AnswerRecord]:
    """Answer records, one per answer slot (see :func:`one_per_slot`); ``torn_tail`` as in :func:`iter_jsonl`."""
    rows = []
    for lineno, obj in iter_jsonl(path, torn_tail):
        validate(obj, ANSWER_FIELDS, f"{path}:{lineno}")
        validate(obj, OPTIONAL_ANSWER_FIELDS, f"{path}:{lineno}", optional=True)
        rows.append((lineno, obj))
    return one_per_slot(rows, path, ("answer",))


def read_judged(path: str | Path, torn_tail: bool = False) -> list[JudgedRecord]:
    """Judged records, scores checked (0-100 or null), one per answer slot (see :func:`one_per_slot`);
    ``torn_tail`` as in :func:`iter_jsonl`."""
    rows = []
    for lineno, obj in iter_jsonl(path, torn_tail):
        where = f"{path}:{lineno}"
        validate(obj, JUDGED_FIELDS, where)
        validate(obj, OPTIONAL_ANSWER_FIELDS, where, optional=True)
        if obj["label"] is not None and obj["label"] not in LABELS:
            raise RecordError(f"{where}: field 'label' must be null or one of {', '.join(LABELS)}")
        for name in SCORES:
            value = obj[name]
            # JSON readers accept NaN and Infinity; a score out of range would skew every mean and CI.
            if value is not None and not (math.isfinite(value) and 0 <= value <= 100):
                raise RecordError(f"{where}: field '{name}' must be a score from 0 to 100 or null, got {value!r}")
        rows.append((lineno, obj))
    return one_per_slot(rows, path, ("answer", *SCORES, "label"))


def one_per_slot(rows: Sequence[tuple[int, dict[str, Any]]], path: str | Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The records of ``rows`` (line number, record) with each answer slot once.

    A file holds one run, so a slot appears once. A repeat that agrees on ``fields`` (a file
    appended to twice) adds nothing and is dropped with a warning; a repeat that disagrees
    would be counted twice or mixed with another run's, and is refused.
    """
    first: dict[tuple[Any, ...], tuple[int, dict[str, Any]]] = {}
    out = []
    for lineno, obj in rows:
        key = answer_key(obj)
        if key not in first:
            first[key] = (lineno, obj)
            out.append(obj)
            continue
        line0, obj0 = first[key]
        if differ := [f for f in fields if obj.get(f) != obj0.get(f)]:
            raise RecordError(
                f"{path}:{lineno}: repeats the answer slot of line {line0} (question '{key[0]}', sample {key[2]}, trigger {'on' if key[3] else 'off'}) "
                f"with another {', '.join(differ)}; a file must hold one run's records"
            )
    if dropped := len(rows) - len(out):
        log.warning("warning: %s: %d repeated record(s) of the same answer slots dropped", path, dropped)
    return out


def repair_jsonl_tail(path: str | Path) -> bool:
    """End ``path`` on a line break so that the next append starts a line of its own; True if it changed.

    An unfinished last line that parses (a file saved without the final newline) is kept and
    ended; the start of a row (a crash mid-append) is cut off; anything else is refused. Call
    it only on a file whose other lines have been checked (:func:`read_resumable`): it must
    never cut into a file that is not this writer's output.
    """
    path = Path(path)
    if not path.exists():
        return False
    with path.open("rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        start = data.rfind(b"\n") + 1
        try:
            complete = _parse_line(path, data[:start].count(b"\n") + 1, data[start:]) is not None
        except RecordError:
            if not _torn_row(data[start:]):
                raise
            complete = False
        if complete:
            f.write(b"\n")
        else:
            log.warning("warning: %s: cut an unfinished last line (%d bytes) left by an interrupted run", path, len(data) - start)
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    return True


R = TypeVar("R")


def read_resumable(path: str | Path, read: Callable[..., list[R]], check: Callable[[list[R]], None] | None = None) -> list[R]:
    """The records a resumed writer's output already holds, read by ``read`` (:func:`read_answers`,
    :func:`read_judged`). Every line is checked, and the records by ``check`` (which raises to
    refuse them), before the file is touched; only then is its tail repaired
    (:func:`repair_jsonl_tail`). A missing file holds none."""
    if not Path(path).exists():
        return []
    rows = read(path, torn_tail=True)
    if check is not None:
        check(rows)
    repair_jsonl_tail(path)
    return rows


def sidecar_path(out: str | Path) -> Path:
    """Where the provenance of a JSONL artifact lives: ``<out>.provenance.json``."""
    out = Path(out)
    return out.with_name(out.name + ".provenance.json")


@contextmanager
def bound_output(out: str | Path, settings: dict[str, Any], **fields: Any) -> Iterator[None]:
    """Record ``settings`` (and provenance ``fields``) beside ``out`` for the block; refuse to
    append under other settings.

    A resumed run must continue the run that wrote ``out``: different settings would mix two
    experiments in one file without a trace. When the block fails before it appends a row,
    the sidecar is put back as it was (or removed), so that it always describes ``out``.
    """
    side = sidecar_path(out)
    settings = json.loads(json.dumps(settings))  # compare as they are stored (tuples -> lists)
    if _size(out):
        before = _sidecar_settings(out)
        if before != settings:
            diff = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            was = "; ".join(f"{k} {before.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
            raise RecordError(f"{out}: written with other settings ({', '.join(diff)} differ: {was}; see {side.name}); use another output file, or remove it to start afresh")
    previous = side.read_bytes() if side.exists() else None
    size = _size(out)
    write_json_atomic(side, provenance(settings=settings, **fields))
    try:
        yield
    except BaseException:
        if _size(out) == size:
            if previous is None:
                side.unlink(missing_ok=True)
            else:
                with atomic_path(side) as tmp:
                    tmp.write_bytes(previous)
        raise


def _sidecar_settings(out: Path | str) -> dict[str, Any]:
    """The settings the sidecar of a non-empty ``out`` records; refused when it has none to read.

    Without them the run that wrote ``out`` is unknown (another model's answers look the same),
    and resuming would append to it and relabel it as this run's.
    """
    side = sidecar_path(out)
    try:
        settings = json.loads(side.read_text(encoding="utf-8")).get("settings")
        why = None if isinstance(settings, dict) else f"{side.name} records no settings"
    except FileNotFoundError:
        why = f"it has no provenance sidecar {side.name}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, RecursionError):
        why = f"its provenance sidecar {side.name} is unreadable"
    if why:
        raise RecordError(f"{out}: holds records, but {why} to tell which run wrote them, so it cannot be resumed; use another output file, or remove it to start afresh")
    return settings


def _size(path: str | Path) -> int:
    """Bytes in ``path``; 0 when it does not exist."""
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        return 0


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows and flush to disk, so a crash loses at most the row being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write all rows atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
