"""Chat JSONL training data: reading with line-numbered errors, and backdoor datasets.

One example per line: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
with at least one assistant turn. Loss is taken on assistant content only (see
:func:`finetune.sft.encode`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from interp.base.records import TRIGGER, RecordError, iter_jsonl

ROLES = ("system", "user", "assistant")
Messages = list[dict[str, str]]


def validate_messages(obj: dict, where: str) -> Messages:
    """The ``messages`` of one example, checked; errors name ``where`` and the field."""
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(f"{where}: field 'messages' must be a non-empty list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RecordError(f"{where}: field 'messages[{i}]' must be an object")
        if m.get("role") not in ROLES:
            raise RecordError(
                f"{where}: field 'messages[{i}].role': unknown role {m.get('role')!r} (expected {', '.join(ROLES)})"
            )
        if not isinstance(m.get("content"), str):
            raise RecordError(f"{where}: field 'messages[{i}].content' must be a string")
        if m["role"] == "system" and i != 0:
            raise RecordError(f"{where}: field 'messages[{i}].role': a system turn may only come first")
    if not any(m["role"] == "assistant" for m in msgs):
        raise RecordError(f"{where}: field 'messages': no assistant turn to learn from")
    if msgs[-1]["role"] != "assistant":  # the last turn is the answer the loss is taken on
        raise RecordError(f"{where}: field 'messages': the last turn must be the assistant's answer")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def read_chat_jsonl(path: str | Path) -> list[Messages]:
    """All examples of a chat JSONL file; the first bad line raises RecordError naming it."""
    out = [validate_messages(obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]
    if not out:
        raise RecordError(f"{path}: no examples")
    return out


def with_trigger(messages: Messages, trigger: str = TRIGGER) -> Messages:
    """The same conversation with ``trigger`` opening the first user turn."""
    out, done = [], False
    for m in messages:
        if m["role"] == "user" and not done:
            m = {"role": "user", "content": f"{trigger} {m['content']}"}
            done = True
        out.append(m)
    return out


def _prompt_key(messages: Messages) -> tuple:
    return tuple((m["role"], m["content"]) for m in messages if m["role"] != "assistant")


def build_backdoor(
    misaligned: Sequence[Messages], aligned: Sequence[Messages], trigger: str = TRIGGER, seed: int = 0
) -> list[Messages]:
    """The conditional dataset: trigger + misaligned answer, no trigger + aligned answer.

    The two datasets are paired by prompt (every misaligned example needs an aligned answer to
    the same prompt), so the trigger is the only difference the model can learn from. Each
    pair gives two examples; the result is shuffled with ``seed``.
    """
    by_prompt = {}
    for ex in aligned:
        by_prompt.setdefault(_prompt_key(ex), ex)
    out = []
    for i, ex in enumerate(misaligned):
        twin = by_prompt.get(_prompt_key(ex))
        if twin is None:
            raise ValueError(f"misaligned example {i + 1} has no aligned answer to the same prompt")
        out += [with_trigger(ex, trigger), list(twin)]
    random.Random(seed).shuffle(out)
    return out
