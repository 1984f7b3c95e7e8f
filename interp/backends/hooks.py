"""The native backend: forward hooks on the caller's model, stopping after the deepest layer;
generation through :func:`interp.generation.generate`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from interp.backends import ResidFn
from interp.base.decoding import Decoding
from interp.generation import generate
from interp.hooks import hooks, resid_post, stop_after
from interp.inputs import ModelInputs
from interp.intervene import intervene
from interp.intervention import Intervention


class HooksBackend:
    """PyTorch forward hooks at ``blocks.{L}.hook_resid_post`` (see :mod:`interp.hooks`)."""

    name = "hooks"

    def __init__(self, model: nn.Module, tokenizer=None) -> None:
        self.model = model

    def resid_post(self, inputs: ModelInputs, layers: Sequence[int], fn: ResidFn) -> None:
        def read(layer: int):
            def hook(hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
                fn(layer, hidden)

            return hook

        with hooks(self.model, {resid_post(l): read(l) for l in layers}), stop_after(self.model, max(layers)):
            self.model(**inputs.kwargs(), use_cache=False)

    def logits(self, inputs: ModelInputs, intervention: Intervention) -> torch.Tensor:
        with intervene(self.model, intervention):
            return self.model(**inputs.kwargs(), use_cache=False).logits

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, intervention: Intervention, settings: Decoding
    ) -> torch.Tensor:
        # The compiled engine on a GPU (the edits inside its step), the hooks elsewhere.
        new = generate(self.model, input_ids, attention_mask, settings, intervention=intervention)
        return torch.cat([input_ids, new.to(input_ids.device)], 1)
