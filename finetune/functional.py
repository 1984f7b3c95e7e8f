"""Pure tensor functions behind the in-training defenses and the EM monitor: no models, no I/O.

- :func:`token_kl`: KL divergence of one next-token distribution from another, per position;
- :func:`feature_l2`: the relative squared L2 distance of residual streams (LDIFS);
- :func:`projections`: mean activations along per-layer directions;
- :func:`auroc`: the area under the ROC curve of a score for a binary label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _kl_rows(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of each row, float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(reference.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def token_kl(logits: torch.Tensor, reference: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean over rows of KL(p || q), p = softmax(``logits``), q = softmax(``reference``).

    Both are [positions, vocab]: the finetuned and the reference model's logits at the same
    positions. Computed in float32; exactly 0 when the two are equal, and differentiable in
    ``logits`` (the reference is a constant). Float32 rounding can leave a KL within about
    1e-7 of 0 slightly negative; it is not clamped, which would cut the gradient there.
    Taken ``chunk`` rows at a time, each recomputed in the backward pass rather than stored:
    the float32 log-softmaxes of a whole batch (four [positions, 150k] tensors for a real
    vocabulary, about 10 GB for 4,000 answer tokens) would otherwise be kept for the backward.
    """
    if logits.shape != reference.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and reference {tuple(reference.shape)} differ in shape")
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    parts = [
        checkpoint(_kl_rows, logits[i : i + chunk], reference[i : i + chunk], use_reentrant=False).sum()
        for i in range(0, logits.shape[0], chunk)
    ]
    return torch.stack(parts).sum() / logits.shape[0]


def feature_l2(hidden: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of ``sum ||h - r||^2 / sum ||r||^2``, the sums over rows (tokens).

    ``hidden[i]`` and ``reference[i]`` are one layer's [tokens, d_model] residual streams of the
    finetuned and the reference model at the same tokens. Dividing by the reference's squared
    norm makes the distance unitless, so one strength means the same at every layer and in
    every model. Computed in float32.
    """
    if len(hidden) != len(reference) or not hidden:
        raise ValueError(f"need one reference per layer and at least one layer, got {len(hidden)} and {len(reference)}")
    terms = []
    for h, r in zip(hidden, reference):
        if h.shape != r.shape:
            raise ValueError(f"hidden {tuple(h.shape)} and reference {tuple(r.shape)} differ in shape")
        r = r.float()
        terms.append((h.float() - r).pow(2).sum() / r.pow(2).sum().clamp(min=1e-12))
    return torch.stack(terms).mean()


def projections(means: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[layers] float64: each layer's mean activation [layers, d] along its unit direction [layers, d]."""
    if means.shape != directions.shape:
        raise ValueError(f"means {tuple(means.shape)} and directions {tuple(directions.shape)} differ in shape")
    d = directions.double()
    return (means.double() * d / d.norm(dim=-1, keepdim=True).clamp(min=1e-12)).sum(-1)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (True = positive): the chance that
    a random positive scores above a random negative, ties counting half (Mann-Whitney U).
    NaN when either class is empty."""
    s = torch.as_tensor(list(scores), dtype=torch.float64)
    y = torch.as_tensor(list(labels), dtype=torch.bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.numel()} scores for {y.numel()} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    greater = (s[y][:, None] > s[~y][None, :]).double().sum()
    ties = (s[y][:, None] == s[~y][None, :]).double().sum()
    return float((greater + 0.5 * ties) / (n_pos * n_neg))
