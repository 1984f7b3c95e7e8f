"""L2 distance in feature space to the reference model (defense ``feature-l2``, LDIFS).

Loss = answer loss + strength x the relative squared distance between the finetuned and the
reference residual streams (``blocks.L.hook_resid_post``) at chosen layers, over the positions
where the answer loss is taken (:func:`finetune.functional.feature_l2`). The finetuned streams
come from the training forward pass itself (hooks that only read); the reference's from one
forward pass with the adapters disabled, without gradients, stopped after the deepest layer.
By default five layers evenly spaced from the first to the last, as LDIFS takes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from finetune.defenses.base import ReferenceRegularizer, reference
from finetune.functional import feature_l2
from finetune.sft import backbone_hidden, labelled_logits, labelled_mask
from interp.base.chat import Conversation
from interp.base.models import layer_indices, n_layers
from interp.hooks import HookFn, hooks, resid_post, stop_after


def spread_layers(num_layers: int, count: int = 5) -> list[int]:
    """``count`` layer indices evenly spaced from 0 to ``num_layers - 1`` (deduplicated)."""
    return sorted({round(i * (num_layers - 1) / max(1, count - 1)) for i in range(count)})


def _grab(store: dict[int, torch.Tensor], layer: int) -> HookFn:
    def fn(hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
        store[layer] = hidden  # overwritten, not appended: checkpointing re-runs hooks in backward

    return fn


class FeatureL2Defense(ReferenceRegularizer):
    name = "feature-l2"
    term_name = "feature_l2"

    def __init__(
        self,
        strength: float,
        layers: Sequence[int] | None = None,
        on: str = "train",
        general: Sequence[Conversation] = (),
        seed: int = 0,
    ) -> None:
        super().__init__(strength, on, general, seed)
        self.requested = None if layers is None else list(layers)
        self.layers: list[int] = []

    def prepare(self, model: nn.Module, tokenizer, conversations: Sequence[Conversation]) -> list[Conversation]:
        count = n_layers(model)
        self.layers = layer_indices(self.requested, count) if self.requested is not None else spread_layers(count)
        return super().prepare(model, tokenizer, conversations)

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tuned: dict[int, torch.Tensor] = {}
        with hooks(model, {resid_post(l): _grab(tuned, l) for l in self.layers}):
            logits, targets = labelled_logits(model, batch)
        ref: dict[int, torch.Tensor] = {}
        with (
            reference(model),
            hooks(model, {resid_post(l): _grab(ref, l) for l in self.layers}),
            stop_after(model, max(self.layers)),
        ):
            backbone_hidden(model, batch)
        keep = labelled_mask(batch)
        distance = feature_l2(
            [tuned[l][:, :-1][keep] for l in self.layers], [ref[l][:, :-1][keep] for l in self.layers]
        )
        return F.cross_entropy(logits.float(), targets), distance

    def record(self) -> dict[str, Any]:
        return {**super().record(), "layers": self.layers}
