"""An :class:`~interp.intervention.Intervention` as tensors the compiled step reads.

The native hooks run an intervention's edits as Python callables; the engine runs the same
edits from data: for an ``add`` plan one vector per decoder layer (zero where a layer is not
edited), for an ``ablate`` plan one float32 unit direction per layer (zero where not
edited). Adding zero and projecting out the zero vector leave the stream bit for bit as it
was, so one compiled step serves every choice of layers and strengths, and a sweep over
layers or alphas never recompiles.

The position gate is :mod:`interp.positions`' rule in tensors: a token is generated when its
position is at or past its row's prompt length in real tokens. Each row gets bounds
``[lo, hi)`` in position space (``all``: everything; ``prompt``: ``[0, P)``; ``generated``:
``[P, inf)``), and the step edits a token where ``lo <= position < hi``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from interp.intervention import Intervention
from interp.positions import PositionError, Positions

Kind = Literal["none", "add", "ablate"]
_FAR = 1 << 40  # a position no sequence reaches


class EditsUnsupported(ValueError):
    """An intervention the engine cannot run from data; the caller falls back to the hooks."""


@dataclass(frozen=True)
class EditPlan:
    """What the compiled step does at each layer, and where."""

    kind: Kind
    vectors: dict[int, torch.Tensor]  # layer -> float32 delta (add) or unit direction (ablate)
    positions: Positions = "all"
    prompt_length: int | None = None  # the intervention's column cut (see interp.positions)

    def layer_vectors(self, n_layers: int, width: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        """One vector per layer as the step uses it: deltas in the model's dtype (the hooks add
        them cast), unit directions in float32 (the hooks project in float32)."""
        dtype = dtype if self.kind == "add" else torch.float32
        out = [torch.zeros(width, dtype=dtype, device=device) for _ in range(n_layers)]
        for layer, v in self.vectors.items():
            out[layer].copy_(v.to(device=device, dtype=dtype))
        return out

    def bounds(self, prompt_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row ``[lo, hi)`` positions to edit, given each row's prompt length in real tokens."""
        zero, far = torch.zeros_like(prompt_lengths), torch.full_like(prompt_lengths, _FAR)
        if self.positions == "prompt":
            return zero, prompt_lengths
        if self.positions == "generated":
            return prompt_lengths, far
        return zero, far


NO_EDITS = EditPlan("none", {})


def plan(interventions: Sequence[Intervention]) -> EditPlan:
    """The plan for ``interventions`` (at most one, adding or ablating, not both); anything else
    raises :class:`EditsUnsupported`."""
    if not interventions:
        return NO_EDITS
    if len(interventions) > 1:
        raise EditsUnsupported(f"{len(interventions)} interventions at once (nested steer/ablate blocks)")
    iv = interventions[0]
    if iv.adds and iv.ablations:
        raise EditsUnsupported("an intervention that both adds and ablates (the step runs one kind of edit)")
    if iv.adds:
        return EditPlan("add", dict(iv.adds), iv.positions, iv.prompt_length)
    if iv.ablations:
        return EditPlan("ablate", dict(iv.ablations), iv.positions, iv.prompt_length)
    return NO_EDITS


def gate_prompt_lengths(plan: EditPlan, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's prompt length for the gate, read as :class:`interp.positions.PositionGate` reads
    it at the entry to ``generate``: real tokens in the first ``prompt_length`` columns (or all)."""
    width = attention_mask.shape[1]
    cut = width if plan.prompt_length is None else plan.prompt_length
    if cut > width:
        raise PositionError(f"prompt_length {cut} is longer than the prompts given to generate ({width} columns)")
    return attention_mask[:, :cut].long().sum(-1)
