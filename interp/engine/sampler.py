"""Choosing the next token inside the compiled step, reproducibly per row.

Sampling draws Gumbel noise from a counter-based hash of (row key, step, token id) and takes
``argmax(logits / temperature + noise)`` over the tokens that survive top-k and top-p: a draw
from ``softmax(logits / temperature)`` restricted to those tokens, as transformers samples,
but with no random-number generator state. A row's tokens therefore depend only on its key,
its prompt and the model's logits: not on the other rows of its batch, their padding, the
batch size or the order rows are run in, and a CUDA graph can replay it without RNG
bookkeeping. :func:`row_keys` derives the keys from a seed and each row's index.

The hash works on 32-bit values held in int64 tensors, with multipliers below 2**27, so no
product overflows and CPU and GPU give the same bits. The repetition penalty counts a row's
real prompt tokens and the tokens it generated (transformers also counts left padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.base.decoding import Decoding

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) of int64 values in [0, 2**32)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def row_keys(seed: int, rows: int) -> torch.Tensor:
    """int64 [rows] keys for rows ``0..rows-1`` of a generation seeded with ``seed``."""
    s = _mix(torch.tensor([seed & _M32, (seed >> 32) & _M32], dtype=torch.int64))
    index = torch.arange(rows, dtype=torch.int64)
    return _mix((_mix(index * 2 + 1) ^ s[0]) + s[1] & _M32)


def uniform(keys: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """float32 [rows, vocab] in (0, 1), a function of (key, step, token id) alone."""
    per_step = _mix(keys ^ _mix(step + 1 & _M32))  # [rows]
    token = torch.arange(vocab, device=keys.device, dtype=torch.int64) * _GOLDEN & _M32
    bits = _mix(_mix(per_step[:, None] ^ token))
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))


@dataclass(frozen=True)
class SamplerSpec:
    """The static part of a :class:`~interp.base.decoding.Decoding`: one compiled step each."""

    greedy: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float

    @classmethod
    def of(cls, d: Decoding) -> SamplerSpec:
        return cls(d.greedy, d.temperature, d.top_k, d.top_p, d.repetition_penalty)

    @property
    def tracks_seen(self) -> bool:
        return self.repetition_penalty != 1.0


def choose(spec: SamplerSpec, logits: torch.Tensor, keys: torch.Tensor, step: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
    """Next token [rows] from float32 ``logits`` [rows, vocab]; the order of the knobs is transformers':
    repetition penalty, then temperature, top-k, top-p."""
    if spec.tracks_seen:
        penalized = torch.where(logits < 0, logits * spec.repetition_penalty, logits / spec.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if spec.greedy:
        return logits.argmax(-1)
    logits = logits / spec.temperature
    if spec.top_k > 0:
        kth = torch.topk(logits, min(spec.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if spec.top_p < 1.0:
        ordered, index = torch.sort(logits, dim=-1)
        cut = ordered.softmax(-1).cumsum(-1) <= 1 - spec.top_p
        cut[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(cut.scatter(-1, index, cut), float("-inf"))
    gumbel = -torch.log(-torch.log(uniform(keys, step, logits.shape[-1])))
    return (logits + gumbel).argmax(-1)
