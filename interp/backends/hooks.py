"""The native backend: forward hooks on the caller's model, stopping after the deepest layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from interp.backends import ModelInputs, ResidFn
from interp.hooks import hooks, resid_post, stop_after


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
