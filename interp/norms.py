"""The typical size of the residual stream at each layer: what ``scale="norm"`` reads alpha
against (:mod:`interp.vector_math`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from interp.backends import make_backend
from interp.base.chat import (
    DEFAULT_SPAN,
    Conversation,
    Span,
    TokenizedConversation,
    as_tokenized,
    check_span,
)
from interp.base.models import input_device, layer_indices, n_layers
from interp.inputs import pad_right, right_padded_inputs


@torch.no_grad()
def residual_norms(
    model: nn.Module,
    tokenizer,
    conversations: Sequence[Conversation] | Sequence[TokenizedConversation],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    span: Span = DEFAULT_SPAN,
) -> dict[int, float]:
    """Mean L2 norm of resid_post at each layer over answer tokens (the typical stream size).

    Answer tokens only, as in :mod:`interp.cache` (``span`` as there; pass answer records
    through :func:`~interp.base.chat.tokenize_record`): the first tokens of real models carry
    outsized norms (attention sinks) that would inflate a mean over all positions.
    """
    layers = layer_indices(layers, n_layers(model))
    check_span(span)
    items = [as_tokenized(tokenizer, c) for c in conversations]
    if not items:
        raise ValueError("no conversations to measure norms on")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = input_device(model)
    sums = dict.fromkeys(layers, 0.0)
    n_tokens = 0
    # The hooks backend's forward, as cache_means runs it: the same hook points, stopped after the last layer.
    runner = make_backend("hooks", model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), batch_size):
            ids, answer, _ = pad_right(items[start : start + batch_size], pad_id, device, span)

            def add(layer: int, hidden: torch.Tensor, answer=answer) -> None:
                sums[layer] += float((hidden.float().norm(dim=-1) * answer.to(hidden.device)).sum())

            runner.resid_post(right_padded_inputs(ids), layers, add)
            n_tokens += int(answer.sum())
    finally:
        model.train(was_training)
    if n_tokens == 0:
        raise ValueError("the conversations have no answer tokens")
    return {l: s / n_tokens for l, s in sums.items()}
