"""Steered forward passes and generation through any backend (:mod:`interp.backends`).

The native :func:`interp.steer.steer` / :func:`interp.steer.ablate` context managers edit
whatever runs inside them; these functions run one thing and return its result, so that
nnsight and TransformerLens can do the same edits in their own idiom. Same inputs, same
outputs: ``tests/test_steer_backends.py`` checks every backend against the native hooks::

    iv = steering(model, {12: direction}, alpha=4.0, positions="generated")
    logits = steered_logits(model, ids, mask, iv, backend="nnsight")
    tokens = steered_generate(model, ids, mask, iv, Decoding(max_new_tokens=64, temperature=0), backend="transformer_lens")

Build the :class:`~interp.steer.Intervention` with :func:`interp.steer.steering` or
:func:`interp.steer.ablation`; its ``positions`` mean what they mean for the native hooks. A
backend built once with :func:`interp.backends.make_backend` can be passed instead of a name
to avoid rebuilding it on every call. Logits at padding positions are not comparable across
backends (attention over a fully masked row differs between implementations).
"""

from __future__ import annotations

import torch
from torch import nn

from interp.backends import (
    DEFAULT_BACKEND,
    Backend,
    BackendName,
    resolve_backend,
)
from interp.base.decoding import Decoding
from interp.base.models import input_device
from interp.inputs import ModelInputs
from interp.steer import Intervention

__all__ = ["GREEDY", "steered_generate", "steered_logits"]

GREEDY = Decoding(max_new_tokens=64, temperature=0)


def _on_model(model: nn.Module, *tensors: torch.Tensor) -> list[torch.Tensor]:
    device = input_device(model)
    return [t.to(device) for t in tensors]


@torch.no_grad()
def steered_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    intervention: Intervention,
    backend: BackendName | Backend = DEFAULT_BACKEND,
) -> torch.Tensor:
    """Logits [batch, seq, vocab] of one forward pass of ``model`` with ``intervention`` applied.

    Positions come from the mask (any padding side). With ``positions="prompt"`` or
    ``"generated"`` and no fixed ``prompt_length``, the whole input counts as the prompt.
    """
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    inputs = ModelInputs.from_mask(*_on_model(model, input_ids, mask))
    return resolve_backend(backend, model).logits(inputs, intervention)


@torch.no_grad()
def steered_generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    intervention: Intervention,
    settings: Decoding = GREEDY,
    backend: BackendName | Backend = DEFAULT_BACKEND,
) -> torch.Tensor:
    """Prompt and generated tokens [batch, prompt + new] from left-padded prompts, steered.

    Decoding uses ``settings`` alone (not the model's generation_config), with the KV cache;
    the native backend generates through :func:`interp.generation.generate` (the compiled
    engine on a GPU). Greedy decoding gives the same tokens on every backend; sampled tokens
    are drawn by each library's own sampler (``torch.manual_seed(settings.seed)`` first), so
    they agree in distribution only.
    """
    if attention_mask[:, -1].eq(0).any():
        raise ValueError("generation needs left-padded prompts: some row ends with padding")
    ids, mask = _on_model(model, input_ids, attention_mask)
    torch.manual_seed(settings.seed)
    return resolve_backend(backend, model).generate(ids, mask, intervention, settings)
