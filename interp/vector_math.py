"""The arithmetic of steering on the residual stream: the vector added at each layer in the
units of a scale, projecting a direction out, and a random control direction.

**Units of alpha** (``scale``; the default is ``"raw"``):

- ``"raw"``: add ``alpha * v`` as given. For a difference-of-means direction, ``alpha = 1``
  moves the mean aligned activation exactly onto the mean misaligned one.
- ``"unit"``: add ``alpha * v / |v|``; alpha is a length in residual-stream units.
- ``"norm"``: add ``alpha * n_L * v / |v|``, where ``n_L`` is the typical residual norm at
  that layer (:func:`interp.norms.residual_norms`, or your own numbers); alpha is then a
  fraction of the stream's size, comparable across layers and models whose norms grow with
  depth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from interp.vectors import DEFAULT_SCALE, SCALES, Scale

Vectors = Mapping[int, torch.Tensor]


def unit(v: torch.Tensor) -> torch.Tensor:
    """``v / |v|`` in float32; a zero vector is an error."""
    v = v.detach().float()
    norm = v.norm()
    if norm == 0:
        raise ValueError("cannot normalise a zero vector")
    return v / norm


def check_vector(v: torch.Tensor, width: int, what: str) -> None:
    """Refuse anything but a 1-D vector of ``width`` values."""
    if v.ndim != 1 or v.shape[0] != width:
        raise ValueError(f"{what} has shape {tuple(v.shape)}; expected ({width},)")


def steering_deltas(
    vectors: Vectors,
    alpha: float = 1.0,
    scale: Scale = DEFAULT_SCALE,
    norms: Mapping[int, float] | None = None,
) -> dict[int, torch.Tensor]:
    """The float32 vector added at each layer, ``alpha`` read in the units of ``scale``."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha}")
    out = {}
    for layer, v in vectors.items():
        if scale == "raw":
            out[layer] = alpha * v.detach().float()
        elif scale == "unit":
            out[layer] = alpha * unit(v)
        else:
            if norms is None or layer not in norms:
                raise ValueError(
                    f"scale='norm' needs the residual norm at layer {layer}; pass norms (see residual_norms)"
                )
            out[layer] = alpha * float(norms[layer]) * unit(v)
    return out


def project_out(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``x - (x . u) u`` along the last dim, for unit ``u``; computed in float32, cast back."""
    xf = x.float()
    uf = u.to(device=x.device, dtype=torch.float32)
    return (xf - (xf @ uf)[..., None] * uf).to(x.dtype)


def random_like(vector: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A Gaussian random direction with ``vector``'s norm: the control for a steering vector."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(vector.shape[-1], generator=g, dtype=torch.float64)
    return (r / r.norm() * vector.double().norm()).float()
