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


CUDA_WIDTH_MULTIPLE = 16


def pad_right(
    items: Sequence[TokenizedConversation], pad_id: int, device: torch.device, span: Span = DEFAULT_SPAN
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded token ids [B, T], mask of the ``span`` tokens [B, T] (float32) and last-prompt index [B].

    On a CUDA device the batch is built in pinned memory and copied without blocking, so the
    host never waits for the GPU to drain its queue between batches, and ``T`` is rounded up to
    a multiple of :data:`CUDA_WIDTH_MULTIPLE`: a run meets a few batch shapes instead of one per
    batch, each of which costs a first-use warm-up (kernel selection and loading, allocator
    growth). Right padding is exact under the causal mask (:func:`right_padded_inputs`).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    width = max(len(it.input_ids) for it in items)
    if cuda:
        width = -(-width // CUDA_WIDTH_MULTIPLE) * CUDA_WIDTH_MULTIPLE
    ids = torch.full((len(items), width), pad_id, dtype=torch.long, pin_memory=cuda)
    answer = torch.zeros((len(items), width), dtype=torch.float32, pin_memory=cuda)
    for row, it in enumerate(items):
        ids[row, : len(it.input_ids)] = torch.tensor(it.input_ids)
        start, end = it.span(span)
        answer[row, start:end] = 1.0
    last_prompt = torch.tensor([max(it.answer_start - 1, 0) for it in items], pin_memory=cuda)
    return tuple(t.to(device, non_blocking=True) for t in (ids, answer, last_prompt))


def right_padded_inputs(ids: torch.Tensor) -> ModelInputs:
    """Model inputs for a right-padded batch: positions 0.. and the causal mask alone.

    A real token of a right-padded row only ever attends to real tokens before it, so the
    causal mask alone is exact there, and without a padding mask attention takes the fused
    causal kernel (no [batch, 1, seq, seq] mask, no copies of the grouped KV heads). Pad
    positions compute garbage that callers mask out.
    """
    return ModelInputs(ids, None, torch.arange(ids.shape[1], device=ids.device).expand_as(ids))
