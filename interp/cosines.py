"""Cosine matrices between misalignment directions, in float64.

- :func:`cosine_matrix`: between the rows of two matrices;
- :func:`domain_matrices`: domain x domain at each layer, from ``{domain: DirectionSet}``;
- :func:`layer_matrix`: layer x layer within one domain, or across two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from interp.compare_io import check_compatible
from interp.directions import DirectionSet


def cosine_matrix(a: torch.Tensor, b: torch.Tensor | None = None, absolute: bool = False) -> torch.Tensor:
    """[m, n] float64 cosines between the rows of ``a`` [m, d] and ``b`` [n, d] (default ``a``).

    A zero row has no direction: its cosines are NaN.
    """
    a = a.detach().double()
    b = a if b is None else b.detach().double()
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"vectors of different widths: {a.shape[-1]} and {b.shape[-1]}")
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    out = (a / na) @ (b / nb).T
    out[(na == 0).squeeze(-1)] = math.nan
    out[:, (nb == 0).squeeze(-1)] = math.nan
    return out.abs() if absolute else out


def domain_matrices(sets: Mapping[str, DirectionSet], absolute: bool = False) -> torch.Tensor:
    """[n_layers, n_domains, n_domains] cosines, domains in the mapping's order."""
    check_compatible(sets)
    stacked = torch.stack([ds.directions for ds in sets.values()], 1)  # [n_layers, n_domains, d]
    return torch.stack([cosine_matrix(at_layer, absolute=absolute) for at_layer in stacked])


def layer_matrix(a: DirectionSet, b: DirectionSet | None = None, absolute: bool = False) -> torch.Tensor:
    """[len(a.layers), len(b.layers)] cosines between ``a``'s and ``b``'s (default ``a``) layers."""
    return cosine_matrix(a.directions, None if b is None else b.directions, absolute=absolute)
