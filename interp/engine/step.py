"""The functions one engine step runs, compiled or eagerly: the decoding step's inputs from
the static buffers, the decoder layer (:mod:`interp.engine.body`), and the tail that chooses
each row's next token and advances its bookkeeping on the device."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from interp.engine.body import decode_layer, head_logits, prefill_layer
from interp.engine.sampler import choose
from interp.engine.slots import Slots, Variant


def step_tail(
    variant: Variant,
    keep_logits: bool,
    norm: nn.Module,
    head: nn.Module,
    last: torch.Tensor,
    s: Slots,
    eos: torch.Tensor,
) -> torch.Tensor | None:
    """From the last hidden state ``last`` [B, d]: choose each row's next token and advance the
    row's bookkeeping, all on the device. The logits are returned only if ``keep_logits``: in
    the compiled step they are never written out in float32 (greedy reads the head's bf16)."""
    logits = head_logits(norm, head, last)
    nxt = choose(variant.sampler, logits, s.keys, s.step, s.seen, s.codes)
    nxt = torch.where(s.finished, variant.pad, nxt)
    s.out.index_copy_(1, s.step, nxt[:, None])
    s.finished |= torch.isin(nxt, eos)
    if variant.sampler.tracks_seen:
        s.seen.scatter_(1, nxt[:, None], True)
    s.tokens.copy_(nxt[:, None])
    s.step += 1
    return logits if keep_logits else None


def decode_inputs(embed: nn.Module, rotary: nn.Module, s: Slots, span: int) -> tuple[torch.Tensor, ...]:
    """A decoding step's input [B, 1, d], rotary cos and sin, the attention bias [B, 1, 1, span]
    (0 where a row may attend, -inf elsewhere) and the edit gate [B, 1], from the static buffers."""
    x = embed(s.tokens)
    cos, sin = rotary(x, s.positions)
    valid = s.valid[:, :span]
    columns = torch.arange(span, device=x.device)
    bias = torch.zeros(valid.shape, device=x.device).masked_fill(~(valid & (columns <= s.column)), float("-inf"))[
        :, None, None
    ]
    gate = (s.positions >= s.lo[:, None]) & (s.positions < s.hi[:, None])
    return x, cos, sin, bias, gate


@dataclass(frozen=True)
class StepCode:
    """The functions a step runs: compiled, or the same functions eagerly."""

    prefill_layer: Callable
    decode_inputs: Callable
    decode_layer: Callable
    tails: dict = field(default_factory=dict)  # Variant -> compiled tail
    backend: str | Callable | None = None

    def tail(self, variant: Variant) -> Callable:
        if variant not in self.tails:
            if self.backend is None:  # eager: the logits are kept for the engine's self-check
                self.tails[variant] = functools.partial(step_tail, variant, True)
            else:
                self.tails[variant] = torch.compile(
                    functools.partial(step_tail, variant, False), backend=self.backend, fullgraph=True
                )
        return self.tails[variant]

    @classmethod
    def build(cls, backend: str | Callable | None, options: dict | None = None) -> StepCode:
        if backend is None:
            return cls(prefill_layer, decode_inputs, decode_layer)
        allow_recompiles()
        # One compiled layer serves every layer (its weights are inputs). The prefill turns to
        # dynamic shapes once a second prompt width comes; the decoding step is compiled per shape,
        # and only it takes ``options``: the step is where a run spends its time.
        step = functools.partial(torch.compile, backend=backend, dynamic=False, fullgraph=True, options=options)
        return cls(
            torch.compile(prefill_layer, backend=backend, fullgraph=True),
            step(decode_inputs),
            step(decode_layer),
            backend=backend,
        )


def allow_recompiles() -> None:
    """One compiled layer is specialised per shape, attention span and edit kind: far more
    than dynamo's default 8, and with ``fullgraph`` going past the limit is an error."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 1024))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4096)
