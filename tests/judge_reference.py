"""The HF judge's score computed the slow, obvious way, for tests to hold the batched one to."""

from __future__ import annotations

import torch
from torch import nn

from eval.judges.hf import single_token_numbers


def digit_tree_score(model: nn.Module, tokenizer, text: str) -> float:
    """The mean number 0-100 after ``text``, followed digit by digit with one prompt at a time."""
    digits = [single_token_numbers(tokenizer)[d] for d in range(10)]

    def after(t: str) -> torch.Tensor:
        ids = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            return torch.softmax(model(input_ids=ids).logits[0, -1].double(), -1)[digits]

    first, total = after(text), 0.0
    for d in range(1, 10):
        q = after(text + str(d))
        total += first[d] * (d * (1 - q.sum()) + sum(q[d2] * (10 * d + d2) for d2 in range(10)))
        if d == 1:  # "10" that goes on to "100"
            total += first[1] * q[0] * after(text + "10")[0] * 90
    return float(total / first.sum())
