"""Choosing the next token inside the compiled step, reproducibly per row.

Sampling draws Gumbel noise from a counter-based hash of (row key, step, token id) and takes
``argmax(logits / temperature + noise)`` over the tokens that survive top-k and top-p: a draw
from ``softmax(logits / temperature)`` restricted to those tokens, as transformers samples,
but with no random-number generator state. A row's tokens therefore depend only on its key,
its prompt and the model's logits: not on the other rows of its batch, their padding, the
batch size or the order rows are run in, and a CUDA graph can replay it without RNG
bookkeeping. :func:`row_keys` derives the keys from a seed and each row's index.

The hash works on 31-bit values held in int64 tensors, with multipliers below 2**27, so no
product overflows and CPU and GPU give the same bits. Every constant the compiled step sees
fits int32, and the per-token codes are an input tensor (:func:`token_codes`), not an
``arange`` times a constant: inductor folds the latter into an index expression, which
Triton computes in int32 (a constant above 2**31 failed to compile there, and a smaller one
would wrap silently). The repetition penalty counts a row's real prompt tokens and the tokens
it generated (transformers also counts left padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.base.decoding import Decoding

_M31 = 0x7FFFFFFF
_MULT = 0x45D9F3B  # < 2**27: a 31-bit value times it stays below 2**58
_TOKEN = 0x3C6EF35  # odd, < 2**27: spreads consecutive token ids before mixing


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash (two multiply-xorshift rounds) of int64 values in [0, 2**31)."""
    x = ((x >> 15) ^ x) * _MULT & _M31
    x = ((x >> 15) ^ x) * _MULT & _M31
    return (x >> 15) ^ x


def row_keys(seed: int, rows: int) -> torch.Tensor:
    """int64 [rows] keys for rows ``0..rows-1`` of a generation seeded with ``seed``."""
    s = _mix(torch.tensor([seed & _M31, (seed >> 31) & _M31, (seed >> 62) & _M31], dtype=torch.int64))
    index = torch.arange(rows, dtype=torch.int64)
    return _mix(_mix((_mix(index * 2 + 1) ^ s[0]) + s[1] & _M31) ^ s[2])


def token_codes(vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """int64 [vocab] per-token codes that :func:`uniform` mixes with each row's step key."""
    return _mix(torch.arange(vocab, dtype=torch.int64) * _TOKEN & _M31).to(device)


def uniform(keys: torch.Tensor, step: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """float32 [rows, vocab] in (0, 1), a function of (key, step, token id) alone; ``codes`` is
    :func:`token_codes` of the vocabulary."""
    per_step = _mix(keys ^ _mix(step + 1 & _M31))  # [rows]
    bits = _mix(_mix(per_step[:, None] ^ codes))
    return ((bits >> 7).float() + 0.5) * (1.0 / (1 << 24))


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


def choose(
    spec: SamplerSpec,
    logits: torch.Tensor,
    keys: torch.Tensor,
    step: torch.Tensor,
    seen: torch.Tensor | None,
    codes: torch.Tensor,
) -> torch.Tensor:
    """Next token [rows] from float32 ``logits`` [rows, vocab]; the order of the knobs is transformers':
    repetition penalty, then temperature, top-k, top-p. ``codes`` is :func:`token_codes` of the vocabulary."""
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
    gumbel = -torch.log(-torch.log(uniform(keys, step, codes)))
    return (logits + gumbel).argmax(-1)
