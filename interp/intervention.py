"""What an edit of the residual stream is, as data, and how one is built from vectors.

An :class:`Intervention` holds, for some decoder layers, the vector added to the layer's
output (``blocks.{L}.hook_resid_post``) and the unit direction projected out of it, plus the
tokens it applies to (``positions``, ``prompt_length``: :mod:`interp.positions`).
:func:`steering` builds an addition (``alpha`` in the units of a scale:
:mod:`interp.vector_math`), :func:`ablation` a projection; both accept a
:class:`~interp.vectors.SteeringVector` in place of vectors, and :func:`as_intervention` turns
one into an Intervention. Applying one is elsewhere: with native hooks around any code by
:func:`interp.intervene.intervene` (and :func:`interp.steer.steer` / :func:`~interp.steer.ablate`),
to a generation by :func:`interp.generation.generate` (``intervention=``), and through nnsight
or TransformerLens by :mod:`interp.steer_backends`. Vectors are kept in float32 and cast to
the hidden states' dtype and device where they are applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from interp.base.models import d_model, layer_index, n_layers
from interp.positions import PositionGate, Positions
from interp.vector_math import Vectors, check_vector, project_out, steering_deltas, unit
from interp.vectors import DEFAULT_SCALE, Scale, SteeringVector


class InterventionError(RuntimeError):
    """An intervention's hooks did not run where they had to (e.g. inside compiled code)."""


@dataclass(frozen=True, eq=False, repr=False)
class Intervention:
    """Edits of resid_post at some decoder layers, as data, and the tokens they apply to.

    ``adds[L]`` is the float32 vector added to the output of decoder layer ``L``;
    ``ablations[L]`` the float32 unit direction projected out of it (normalised here; where a
    layer has both, the projection comes first). Built by :func:`steering` and
    :func:`ablation`; applied with native hooks by :func:`interp.intervene.intervene` (which
    :func:`interp.steer.steer` and :func:`~interp.steer.ablate` wrap), or through any backend by
    :mod:`interp.steer_backends`. Layers are 0-based and already resolved. Every backend places
    the edits through one :class:`~interp.applied.Applied` (positions: :mod:`interp.positions`).
    """

    adds: Mapping[int, torch.Tensor] = field(default_factory=dict)
    ablations: Mapping[int, torch.Tensor] = field(default_factory=dict)
    positions: Positions = "all"
    prompt_length: int | None = None  # None: the whole prompt (see interp.positions)
    # (edit, layer, device, dtype) -> the vector there: one host-to-device copy, not one per decoding step
    _placed: dict[tuple, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        PositionGate(self.positions, self.prompt_length)  # validates both
        for what, vectors in (("adds", self.adds), ("ablations", self.ablations)):
            for layer, v in vectors.items():
                if not isinstance(layer, int) or layer < 0:
                    raise ValueError(
                        f"{what}: layer {layer!r} is not a resolved 0-based index (steering() and ablation() resolve them)"
                    )
                if v.ndim != 1:
                    raise ValueError(
                        f"{what}: the vector at layer {layer} has shape {tuple(v.shape)}; expected (d_model,)"
                    )
                # Checked here, where every steering path meets: a NaN would make every logit NaN silently.
                if not torch.isfinite(v).all():
                    raise ValueError(f"{what}: the vector at layer {layer} has NaN or infinite values")
        object.__setattr__(self, "adds", {l: v.detach().float() for l, v in sorted(self.adds.items())})
        object.__setattr__(self, "ablations", {l: unit(v) for l, v in sorted(self.ablations.items())})

    @property
    def layers(self) -> list[int]:
        return sorted({*self.adds, *self.ablations})

    def __repr__(self) -> str:
        def norms(vectors: Mapping[int, torch.Tensor]) -> str:
            return "{" + ", ".join(f"{l}: |v| {float(v.norm()):.3g}" for l, v in vectors.items()) + "}"

        return f"Intervention(adds={norms(self.adds)}, ablations={norms(self.ablations)}, positions={self.positions!r}, prompt_length={self.prompt_length})"

    def _at(self, edit: str, layer: int, v: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (edit, layer, device, dtype)
        if key not in self._placed:
            self._placed[key] = v.to(device=device, dtype=dtype)
        return self._placed[key]

    def apply(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``hidden`` [batch, seq, d_model] with layer's edit applied where ``mask`` [batch, seq, 1] is set."""
        new = hidden
        if layer in self.ablations:
            new = project_out(new, self._at("ablate", layer, self.ablations[layer], hidden.device, torch.float32))
        if layer in self.adds:
            new = new + self._at("add", layer, self.adds[layer], hidden.device, hidden.dtype)
        return new if mask is None else torch.where(mask, new, hidden)


def _check_steering_vector(vector: SteeringVector, kind: str, **given: tuple[Any, Any]) -> None:
    """Refuse a steering vector of the other kind, or one passed with settings of its own."""
    if vector.kind != kind:
        use = "steer()/steering()" if vector.kind == "add" else "ablate()/ablation()"
        raise ValueError(f"this steering vector has kind {vector.kind!r}: use {use}, or intervene(model, vector)")
    if changed := [name for name, (value, default) in given.items() if value != default]:
        raise ValueError(f"a SteeringVector carries its own {', '.join(changed)}: change them with vector.replace(...)")


def as_intervention(model: nn.Module, vector: SteeringVector) -> Intervention:
    """The :class:`Intervention` ``vector`` stands for on ``model`` (layers resolved, widths checked)."""
    return steering(model, vector) if vector.kind == "add" else ablation(model, vector)


def steering(
    model: nn.Module,
    vectors: Vectors | SteeringVector,
    alpha: float = 1.0,
    scale: Scale = DEFAULT_SCALE,
    norms: Mapping[int, float] | None = None,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Intervention:
    """Add ``alpha * vectors[L]`` (in the units of ``scale``) to resid_post of each layer L.

    ``vectors`` may be a :class:`~interp.vectors.SteeringVector` of kind ``"add"``, which
    brings the other arguments with it.
    """
    if isinstance(vectors, SteeringVector):
        _check_steering_vector(
            vectors,
            "add",
            alpha=(alpha, 1.0),
            scale=(scale, DEFAULT_SCALE),
            norms=(norms, None),
            positions=(positions, "all"),
            prompt_length=(prompt_length, None),
        )
        sv = vectors
        return steering(model, sv.vectors, sv.alpha, sv.scale, sv.norms, sv.positions, sv.prompt_length)
    num_layers, d = n_layers(model), d_model(model)
    vectors = {layer_index(l, num_layers): v for l, v in vectors.items()}
    if norms is not None:
        norms = {layer_index(l, num_layers): n for l, n in norms.items()}
    for layer, v in vectors.items():
        check_vector(v, d, f"steering vector for layer {layer}")
    return Intervention(
        adds=steering_deltas(vectors, alpha, scale, norms), positions=positions, prompt_length=prompt_length
    )


def ablation(
    model: nn.Module,
    directions: torch.Tensor | Vectors | SteeringVector,
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Intervention:
    """Project the unit direction out of resid_post at ``layers`` (default: all).

    ``directions`` is one vector used at every chosen layer, or ``{layer: vector}`` with each
    layer's own direction (then ``layers`` defaults to its keys), or a
    :class:`~interp.vectors.SteeringVector` of kind ``"ablate"`` (which brings its layers and
    positions). Edits each layer's output, so every later layer reads a stream with no
    component along the direction; the embedding output entering layer 0 is left as it is.
    """
    if isinstance(directions, SteeringVector):
        _check_steering_vector(
            directions,
            "ablate",
            layers=(layers, None),
            positions=(positions, "all"),
            prompt_length=(prompt_length, None),
        )
        return ablation(model, directions.vectors, None, directions.positions, directions.prompt_length)
    num_layers, d = n_layers(model), d_model(model)
    if isinstance(directions, torch.Tensor):
        chosen = range(num_layers) if layers is None else layers
        per_layer = {layer_index(l, num_layers): directions for l in chosen}
    else:
        per_layer = {layer_index(l, num_layers): v for l, v in directions.items()}
        if layers is not None:
            wanted = {layer_index(l, num_layers) for l in layers}
            if missing := wanted - per_layer.keys():
                raise ValueError(f"no direction given for layers {sorted(missing)}")
            per_layer = {l: per_layer[l] for l in sorted(wanted)}
    for layer, v in per_layer.items():
        check_vector(v, d, f"ablation direction for layer {layer}")
    return Intervention(ablations=per_layer, positions=positions, prompt_length=prompt_length)
