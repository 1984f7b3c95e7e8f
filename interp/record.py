"""Record activations at named hook points: ``with record(model, names) as acts``.

The toolkit's answer to baukit's ``TraceDict``, TransformerLens' ``run_with_cache`` and
steering-vectors' ``record_activations``, on the model itself (plain, PEFT-wrapped or merged),
through the hook registry of :mod:`interp.hooks` (whose module doc defines the points)::

    with record(model, ["blocks.12.hook_resid_post", "blocks.12.hook_attn_out"], device="cpu") as acts:
        model(**batch)
    acts["blocks.12.hook_resid_post"]          # [batch, seq, d_model], detached, on the CPU

``blocks.{L}.hook_resid_post`` equals ``output_hidden_states``' ``hidden_states[L + 1]`` (for
the last layer, the value before the final norm), and every point equals TransformerLens'
``run_with_cache`` on the same model (``tests/test_record.py``). A recording sees the edits of
the hooks registered before it: inside ``steer(...)`` it records the steered stream.
(``hidden_states`` comes from a hook that transformers installs the first time a model runs
with ``output_hidden_states``, so it misses the edits of every hook added after that.)

Every forward call in the block is kept: the value at a point is the calls' activations
concatenated along the sequence, so around a KV-cached ``generate`` it is the prompt followed
by one position per decoding step, and :meth:`Activations.calls` gives them one by one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from interp.hooks import HookFn, hooks

# Which positions of each call to keep: an index (kept as a length-1 sequence dimension), a
# slice, or a list / 1-D tensor of indices; None keeps them all.
PositionIndex = int | slice | Sequence[int] | torch.Tensor | None


class Activations(Mapping[str, torch.Tensor]):
    """Hook point name -> activations [batch, positions, d_model] of the calls recorded so far."""

    def __init__(self, names: Sequence[str]) -> None:
        self._calls: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def calls(self, name: str) -> list[torch.Tensor]:
        """The activations at ``name``, one tensor per forward call, in call order."""
        return list(self._calls[name])

    def __getitem__(self, name: str) -> torch.Tensor:
        parts = self._calls[name]
        if not parts:
            raise KeyError(f"{name} has not run: run the model inside the record() block")
        if len(parts) == 1:
            return parts[0]
        if len({p.shape[0] for p in parts}) > 1:
            raise ValueError(
                f"{name} ran in {len(parts)} forward calls of different batch sizes; read them with .calls({name!r})"
            )
        return torch.cat(parts, dim=1)

    def __iter__(self) -> Iterator[str]:
        return (name for name, parts in self._calls.items() if parts)

    def __len__(self) -> int:
        return sum(1 for parts in self._calls.values() if parts)

    def __repr__(self) -> str:
        def shape(parts: list[torch.Tensor]) -> str:
            return str(list(parts[0].shape)) if len(parts) == 1 else f"{len(parts)} calls"

        shapes = ", ".join(f"{name}: {shape(parts)}" for name, parts in self._calls.items() if parts)
        return f"Activations({shapes or 'nothing recorded yet'})"


@contextmanager
def record(
    model: nn.Module,
    names: str | Sequence[str],
    positions: PositionIndex = None,
    detach: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[Activations]:
    """Record the activations at hook points ``names`` during every forward call in the block.

    ``positions`` picks sequence positions of each call (``-1``: the last token of each call;
    ``slice(s, e)``: a span); ``detach=False`` keeps the autograd graph; ``device`` and
    ``dtype`` move and cast each recorded tensor (``device="cpu"`` frees accelerator memory at
    the price of one copy per point and call). The hooks are removed when the block ends.
    """
    names = [names] if isinstance(names, str) else list(names)
    acts = Activations(names)
    index = [positions] if isinstance(positions, int) else positions

    def keep(name: str) -> HookFn:
        def hook(hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
            t = (
                hidden
                if index is None
                else hidden[:, index.to(hidden.device) if isinstance(index, torch.Tensor) else index]
            )
            if detach:
                t = t.detach()
            if device is not None or dtype is not None:
                t = t.to(device=device, dtype=dtype)
            acts._calls[name].append(t)

        return hook

    with hooks(model, {name: keep(name) for name in names}):
        yield acts
