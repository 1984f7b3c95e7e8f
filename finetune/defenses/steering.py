"""Preventive steering with a persona vector (defense ``preventive-steering``).

During training only, ``strength x v`` is added to the residual stream after one decoder
layer (``blocks.L.hook_resid_post``, every position) by :func:`interp.steer.intervene`: the
model is pushed toward the persona while it learns, so the adapter has no need to move it
there itself. The hooks live inside each training step's forward pass and nothing stays on
the model: generation after training is untouched. ``interp.steer`` raises if an edit does
not run (a compiled model), so the defense can never silently do nothing.

``v`` is a direction at that layer: from an :mod:`chains.extract` artifact
(:class:`interp.directions.DirectionSet`), or made by :func:`persona_directions` from
persona-prompted versus plain activations on the same conversations. With the default
``scale="raw"``, strength 1 adds the whole difference of means.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from finetune.defenses.base import Defense, with_system
from finetune.sft import plain_objective
from interp.base.chat import Conversation
from interp.base.models import layer_index, n_layers
from interp.base.provenance import data_hash
from interp.directions import DirectionSet, extract_directions
from interp.intervene import intervene
from interp.intervention import Intervention, steering
from interp.vectors import Scale


def persona_directions(
    model: nn.Module,
    tokenizer,
    conversations: Sequence[Conversation],
    prompt: str,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
) -> DirectionSet:
    """Per layer, the mean answer-token activation with ``prompt`` as the system prompt minus
    the mean on the same conversations as given: the shift the persona prompt makes while the
    model reads the very same answers."""
    prompted = [with_system(c, prompt) for c in conversations]
    return extract_directions(
        model,
        tokenizer,
        prompted,
        list(conversations),
        layers=layers,
        batch_size=batch_size,
        progress=False,
        metadata={
            "source": "persona prompt",
            "persona_prompt": prompt,
            "n_conversations": len(conversations),
            "data_hash": data_hash(list(conversations)),
        },
    )


def vector_hash(v: torch.Tensor) -> str:
    return "sha256:" + hashlib.sha256(v.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


class PreventiveSteering(Defense):
    """Add ``strength x directions.at(layer)`` at ``layer`` during training forward passes only.

    Give ``directions`` (e.g. ``DirectionSet.load(path)``, with ``source`` naming the file for
    the record) or ``persona_prompt``: then :meth:`prepare` makes the direction on the reference
    model from the first ``n_persona`` training conversations. ``layer`` defaults to the middle
    layer.
    """

    name = "preventive-steering"

    def __init__(
        self,
        strength: float,
        directions: DirectionSet | None = None,
        persona_prompt: str | None = None,
        layer: int | None = None,
        scale: Scale = "raw",
        source: Mapping[str, Any] | None = None,
        n_persona: int = 256,
    ) -> None:
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        if (directions is None) == (persona_prompt is None):
            raise ValueError("give either a direction artifact or a persona prompt")
        self.strength = float(strength)
        self.directions = directions
        self.persona_prompt = persona_prompt
        self.requested_layer = layer
        self.scale = scale
        self.source = dict(source or {})
        self.n_persona = n_persona
        self.layer: int | None = None
        self.vector: torch.Tensor | None = None
        self.intervention: Intervention | None = None

    def prepare(self, model: nn.Module, tokenizer, conversations: Sequence[Conversation]) -> list[Conversation]:
        count = n_layers(model)
        self.layer = layer_index(self.requested_layer, count) if self.requested_layer is not None else count // 2
        if self.directions is None:
            self.directions = persona_directions(
                model, tokenizer, conversations[: self.n_persona], self.persona_prompt, layers=[self.layer]
            )
            self.source = {
                "made_from": "persona-prompted vs plain answer-token means of the training conversations",
                **self.directions.metadata,
            }
        if self.layer not in self.directions.layers:
            raise ValueError(f"the direction artifact has no layer {self.layer} (it has {self.directions.layers})")
        self.vector = self.directions.at(self.layer).float()
        self.intervention = steering(model, {self.layer: self.vector}, alpha=self.strength, scale=self.scale)
        return list(conversations)

    def objective(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.intervention is None:
            raise RuntimeError("prepare() makes the steering vector; call it first")
        with intervene(model, self.intervention):
            return plain_objective(model, batch, step)

    def record(self) -> dict[str, Any]:
        out = {**super().record(), "layer": self.layer, "scale": self.scale, "positions": "all", "source": self.source}
        if self.vector is not None:
            out.update(vector_norm=float(self.vector.norm()), vector_hash=vector_hash(self.vector))
        return out
