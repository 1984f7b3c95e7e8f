"""Nulls and reliability for a misalignment direction's cosines: what counts as large.

- :func:`random_null`: the exact cosine distribution of two random Gaussian (isotropic)
  directions in ``d`` dimensions (``cos^2 ~ Beta(1/2, (d-1)/2)``, standard deviation
  ``1/sqrt(d)``). Residual streams are far from isotropic, so this null is lenient;
- :func:`shuffled_label_null`: directions from permuted misaligned/aligned labels of the
  same per-sample activations, which keeps the activations' geometry: their cosine with the
  true direction, and with each other (what two label-free "directions" share anyway);
- :func:`split_half_reliability`: cosine between directions from two disjoint halves of the
  answers, per layer. Each half has half the samples, so this understates the reliability
  of the full-sample direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from scipy import stats
from scipy.special import gammaln

from interp.cosines import cosine_matrix


@dataclass(frozen=True)
class RandomNull:
    """Cosine of two independent isotropic random directions in ``d`` dimensions."""

    d: int
    mean: float  # signed: 0
    std: float  # 1/sqrt(d), the analytical scale
    mean_abs: float
    p95: float  # one-sided 95th percentile of the signed cosine
    p95_abs: float
    p99_abs: float

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def random_null(d: int) -> RandomNull:
    """Exact quantiles from ``cos^2 ~ Beta(1/2, (d-1)/2)`` (no sampling)."""
    if d < 2:
        raise ValueError(f"a cosine null needs d >= 2, got {d}")
    beta = stats.beta(0.5, (d - 1) / 2)

    def abs_quantile(q: float) -> float:
        return float(math.sqrt(beta.ppf(q)))

    # E|cos| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)).
    mean_abs = math.exp(gammaln(d / 2) - gammaln((d + 1) / 2)) / math.sqrt(math.pi)
    return RandomNull(
        d=d,
        mean=0.0,
        std=1 / math.sqrt(d),
        mean_abs=mean_abs,
        p95=abs_quantile(0.90),
        p95_abs=abs_quantile(0.95),
        p99_abs=abs_quantile(0.99),
    )


def pooled_samples(per_sample: Mapping[str, torch.Tensor], pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample activations [n, n_layers, d] and weights [n] that reproduce ``pooling``'s mean."""
    n_tokens = per_sample["n_tokens"].double()
    if pooling == "responses":
        return per_sample["response_mean"], (n_tokens > 0).double()
    if pooling == "tokens":
        return per_sample["response_mean"], n_tokens
    if pooling == "last_prompt":
        return per_sample["last_prompt"], torch.ones_like(n_tokens)
    raise ValueError(f"unknown pooling {pooling!r}")


def contrast(labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[n] coefficients c with sum_i c_i x_i = weighted mean(misaligned) - weighted mean(aligned)."""
    mis = weights * labels
    ali = weights * ~labels
    if mis.sum() == 0 or ali.sum() == 0:
        raise ValueError("each class needs at least one sample with weight")
    return mis / mis.sum() - ali / ali.sum()


def _cosines_per_layer(x: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """[n_layers, k, k] cosines among the k directions ``coefficients [k, n] @ x[:, layer]``.

    One layer at a time in float64, so memory stays at one [n, d] slice.
    """
    coefficients = coefficients.double()
    return torch.stack([cosine_matrix(coefficients @ x[:, layer].double()) for layer in range(x.shape[1])])


def _prepare(per_sample: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None):
    labels = torch.as_tensor(labels).bool()
    if per_sample.ndim != 3 or per_sample.shape[0] != labels.shape[0]:
        raise ValueError(
            f"per_sample must be [n, n_layers, d] with n = {labels.shape[0]} labels, got {tuple(per_sample.shape)}"
        )
    weights = torch.ones(labels.shape[0], dtype=torch.float64) if weights is None else weights.double()
    keep = weights > 0
    return per_sample[keep], labels[keep], weights[keep]


@dataclass(frozen=True)
class ShuffledNull:
    """Cosines of permuted-label directions, per layer."""

    true_vs_perm: torch.Tensor  # [n_perm, n_layers]: with the true direction
    perm_vs_perm: torch.Tensor  # [n_perm * (n_perm - 1) / 2, n_layers]: between permutations

    def summary(self) -> dict[str, list[float]]:
        """Per-layer mean and 95th percentile of |cos|, for both comparisons."""
        out = {}
        for name, values in (("true_vs_perm", self.true_vs_perm), ("perm_vs_perm", self.perm_vs_perm)):
            a = values.abs()
            out[f"{name}_mean_abs"] = a.mean(0).tolist()
            out[f"{name}_p95_abs"] = a.quantile(0.95, dim=0).tolist()
        return out


def shuffled_label_null(
    per_sample: torch.Tensor,
    labels: torch.Tensor,
    n_perm: int = 100,
    seed: int = 0,
    weights: torch.Tensor | None = None,
) -> ShuffledNull:
    """Directions from ``n_perm`` label permutations (class sizes kept) of ``per_sample``.

    ``labels`` [n] is True for misaligned; ``weights`` [n] (default 1) weight each sample in
    its class mean (see :func:`pooled_samples`); zero-weight samples are dropped.
    """
    if n_perm < 2:
        raise ValueError("n_perm must be at least 2")
    x, labels, weights = _prepare(per_sample, labels, weights)
    g = torch.Generator().manual_seed(seed)
    rows = [contrast(labels, weights)]
    for _ in range(n_perm):
        perm = torch.randperm(len(labels), generator=g)
        rows.append(contrast(labels[perm], weights))  # labels move, samples keep their weights
    cos = _cosines_per_layer(x, torch.stack(rows))  # [n_layers, 1 + n_perm, 1 + n_perm]
    i, j = torch.triu_indices(n_perm, n_perm, offset=1)
    return ShuffledNull(true_vs_perm=cos[:, 0, 1:].T.contiguous(), perm_vs_perm=cos[:, 1 + i, 1 + j].T.contiguous())


def split_half_reliability(
    per_sample: torch.Tensor,
    labels: torch.Tensor,
    n_splits: int = 20,
    seed: int = 0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """[n_splits, n_layers] cosine between the directions of two disjoint random halves.

    Each class is halved separately, so both halves keep the class balance; average over
    dim 0 for the per-layer reliability.
    """
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    x, labels, weights = _prepare(per_sample, labels, weights)
    classes = [torch.nonzero(labels == c).squeeze(-1) for c in (True, False)]
    if min(len(c) for c in classes) < 2:
        raise ValueError("split-half reliability needs at least 2 samples in each class")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_splits):
        halves = [torch.zeros(len(labels), dtype=torch.bool) for _ in range(2)]
        for members in classes:
            shuffled = members[torch.randperm(len(members), generator=g)]
            cut = len(shuffled) // 2
            halves[0][shuffled[:cut]] = True
            halves[1][shuffled[cut : 2 * cut]] = True  # an odd one out stays out, for equal halves
        rows += [contrast(labels, weights * h) for h in halves]
    cos = _cosines_per_layer(x, torch.stack(rows))  # [n_layers, 2 n_splits, 2 n_splits]
    k = torch.arange(n_splits)
    return cos[:, 2 * k, 2 * k + 1].T.contiguous()
