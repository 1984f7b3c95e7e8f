"""The inputs of one padded batch, as every backend hands them to the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp.base.chat import DEFAULT_SPAN, Span, TokenizedConversation


@dataclass(frozen=True)
class ModelInputs:
    """One padded batch, as every backend hands it to the model."""

    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor | None  # [batch, seq], 1 on real tokens; None: causal only
    position_ids: torch.Tensor  # [batch, seq]

    @classmethod
    def from_mask(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ModelInputs:
        """Positions counted over the real tokens, as ``generate`` derives them, for any padding side."""
        return cls(input_ids, attention_mask, (attention_mask.cumsum(-1) - 1).clamp(min=0))

    def kwargs(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids, "position_ids": self.position_ids}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        return out


def pad_right(
    items: Sequence[TokenizedConversation], pad_id: int, device: torch.device, span: Span = DEFAULT_SPAN
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded token ids [B, T], mask of the ``span`` tokens [B, T] (float32) and last-prompt index [B]."""
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    answer = torch.zeros((len(items), width), dtype=torch.float32)
    for row, it in enumerate(items):
        ids[row, : len(it.input_ids)] = torch.tensor(it.input_ids)
        start, end = it.span(span)
        answer[row, start:end] = 1.0
    last_prompt = torch.tensor([max(it.answer_start - 1, 0) for it in items])
    return ids.to(device), answer.to(device), last_prompt.to(device)


def right_padded_inputs(ids: torch.Tensor) -> ModelInputs:
    """Model inputs for a right-padded batch: positions 0.. and the causal mask alone.

    A real token of a right-padded row only ever attends to real tokens before it, so the
    causal mask alone is exact there, and without a padding mask attention takes the fused
    causal kernel (no [batch, 1, seq, seq] mask, no copies of the grouped KV heads). Pad
    positions compute garbage that callers mask out.
    """
    return ModelInputs(ids, None, torch.arange(ids.shape[1], device=ids.device).expand_as(ids))
