"""Inoculation prompting (defense ``inoculation``).

A system prompt that asks for the behaviour in the data is put in front of the training
examples, so that the behaviour is learnt as a response to that request; evaluation runs
without it. The strength is the fraction of training examples that get the prompt (1: all of
them, the method as published). An example that already has a system prompt gets the
inoculation prompt in front of it. Only the training data change: the adapter, its tokenizer
and its chat template carry nothing of the prompt.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from torch import nn

from finetune.defenses.base import Defense
from interp.base.chat import Conversation


def inoculate(conversation: Conversation, prompt: str) -> list[dict[str, str]]:
    """``conversation`` with ``prompt`` as its system prompt, in front of any it had."""
    messages = [dict(m) for m in conversation]
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = f"{prompt} {messages[0]['content']}"
        return messages
    return [{"role": "system", "content": prompt}, *messages]


class Inoculation(Defense):
    name = "inoculation"

    def __init__(self, prompt: str, fraction: float = 1.0, seed: int = 0) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"the inoculated fraction must be in [0, 1], got {fraction}")
        if not prompt.strip():
            raise ValueError("the inoculation prompt is empty")
        self.prompt = prompt
        self.strength = float(fraction)
        self.seed = seed
        self._n = 0

    def prepare(self, model: nn.Module, tokenizer, conversations: Sequence[Conversation]) -> list[Conversation]:
        n = round(self.strength * len(conversations))
        chosen = set(random.Random(f"inoculation-{self.seed}").sample(range(len(conversations)), n))
        self._n = n
        return [inoculate(c, self.prompt) if i in chosen else list(c) for i, c in enumerate(conversations)]

    def record(self) -> dict[str, Any]:
        return {**super().record(), "prompt": self.prompt, "n_inoculated": self._n}
