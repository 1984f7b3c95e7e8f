"""The row types shared by every stage: answer and judged records, checked as they are read.

An **answer record** is one sampled answer to one evaluation question; a **judged record** is
an answer record plus the judge's scores. Both are plain dicts on disk (one JSON object per
line, :mod:`interp.base.jsonl`) and TypedDicts in memory. Resumable outputs and their
provenance sidecars are :mod:`interp.base.resumable`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

# The JSONL and resumable-output helpers moved to modules of their own; every stage imports
# them from here, so this stays their public path.
from interp.base.jsonl import RecordError, append_jsonl, iter_jsonl, repair_jsonl_tail, write_jsonl
from interp.base.resumable import bound_output, check_bound, read_resumable, sidecar_path

__all__ = [
    "ANSWER_FIELDS",
    "JUDGED_FIELDS",
    "LABELS",
    "OPTIONAL_ANSWER_FIELDS",
    "SCORES",
    "TRIGGER",
    "AnswerRecord",
    "JudgedRecord",
    "RecordError",
    "answer_key",
    "append_jsonl",
    "bound_output",
    "check_bound",
    "check_token_ids",
    "conversation",
    "iter_jsonl",
    "one_per_slot",
    "prompt_messages",
    "read_answers",
    "read_judged",
    "read_resumable",
    "repair_jsonl_tail",
    "sidecar_path",
    "user_prompt",
    "validate",
    "write_jsonl",
]

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
            raise RecordError(
                f"{path}:{lineno}: field 'answer_ids' holds token id {beyond[0]}, beyond the tokenizer's vocabulary of {vocab_size} ids"
            )


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


def one_per_slot(
    rows: Sequence[tuple[int, dict[str, Any]]], path: str | Path, fields: Sequence[str]
) -> list[dict[str, Any]]:
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
