"""Steered forward passes and generation through any backend (:mod:`interp.backends`).

:func:`interp.generation.generate` (``intervention=``) is the way to generate with an
intervention; :func:`steered_generate` is the same call through a backend of your choice and
returns the same thing, the generated tokens [batch, new] (with ``backend="hooks"``, the
default, it is that call). :func:`steered_logits` runs one steered forward pass. nnsight and
TransformerLens do the same edits in their own idiom; same inputs, same outputs:
``tests/test_steer_backends.py`` checks every backend against the native hooks::

    iv = steering(model, {12: direction}, alpha=4.0, positions="generated")
    logits = steered_logits(model, ids, mask, iv, backend="nnsight")
    new = steered_generate(model, ids, mask, iv, Decoding(max_new_tokens=64, temperature=0), backend="transformer_lens")

Build the :class:`~interp.intervention.Intervention` with :func:`interp.intervention.steering`
or :func:`interp.intervention.ablation`; its ``positions`` mean what they mean for the native
hooks. A backend built once with :func:`interp.backends.make_backend` can be passed instead of
a name to avoid rebuilding it on every call. Logits at padding positions are not comparable
across backends (attention over a fully masked row differs between implementations).
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
from interp.intervention import Intervention

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
    """Generated tokens [batch, new] of left-padded prompts, steered, padding after each row's
    first EOS: what :func:`interp.generation.generate` returns.

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
    return resolve_backend(backend, model).generate(ids, mask, intervention, settings)[:, ids.shape[1] :]
