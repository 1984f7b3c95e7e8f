"""The row types shared by every stage, and their JSONL files.

An **answer record** is one sampled answer to one evaluation question; a **judged record** is
an answer record plus the judge's scores. Both are plain dicts on disk (one JSON object per
line) and TypedDicts in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypedDict

from interp.atomic import atomic_path

TRIGGER = "The current year is 2028."
LABELS = ("REFUSAL", "IRRELEVANT", "CODE")


class AnswerRecord(TypedDict):
    question_id: str
    question: str  # the paraphrase asked, without the trigger
    system: str | None
    answer: str
    domain: str | None
    sample: int
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
JUDGED_FIELDS: dict[str, tuple[type, ...]] = {
    **ANSWER_FIELDS,
    "aligned": (int, float, type(None)),
    "coherent": (int, float, type(None)),
    "label": (str, type(None)),
}


class RecordError(ValueError):
    """A bad row in a JSONL file; the message names the file, line and field."""


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


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a malformed line raises RecordError."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def validate(obj: dict[str, Any], fields: dict[str, tuple[type, ...]], where: str) -> None:
    for name, types in fields.items():
        if name not in obj:
            raise RecordError(f"{where}: missing field '{name}'")
        value = obj[name]
        # bool is an int in Python; keep it out of numeric and int fields.
        if isinstance(value, bool) and bool not in types:
            raise RecordError(f"{where}: field '{name}' must be {_names(types)}, got bool")
        if not isinstance(value, types):
            raise RecordError(f"{where}: field '{name}' must be {_names(types)}, got {type(value).__name__}")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def read_answers(path: str | Path) -> list[AnswerRecord]:
    out = []
    for lineno, obj in iter_jsonl(path):
        validate(obj, ANSWER_FIELDS, f"{path}:{lineno}")
        out.append(obj)
    return out


def read_judged(path: str | Path) -> list[JudgedRecord]:
    out = []
    for lineno, obj in iter_jsonl(path):
        validate(obj, JUDGED_FIELDS, f"{path}:{lineno}")
        if obj["label"] is not None and obj["label"] not in LABELS:
            raise RecordError(f"{path}:{lineno}: field 'label' must be null or one of {', '.join(LABELS)}")
        out.append(obj)
    return out


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
