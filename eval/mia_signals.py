"""Membership-inference signals of one answer, pure functions of its per-token log-probabilities.

All signals are computed over the **assistant answer tokens** only (the prompt is context),
from per-token log-probabilities; the functions over those arrays are pure and separate from
the model pass (:func:`eval.mia.answer_token_scores`). Natural directions: a lower ``loss`` or ``zlib``
and a higher ``min_k`` or ``min_k_pp`` point to a member; :func:`membership_score` turns
every signal into "higher = more member-like" for ROC-AUC.

- ``loss``: mean negative log-likelihood of the answer tokens.
- ``min_k``: Min-K% Prob (Shi et al., 2024, *Detecting Pretraining Data from Large Language
  Models*): the mean log-prob of the ``k`` fraction of least likely tokens.
- ``min_k_pp``: Min-K%++ (Zhang et al., 2024, *Min-K%++: Improved Baseline for Detecting
  Pre-Training Data from Large Language Models*): each token's log-prob standardised by the
  mean and standard deviation of the log-prob under the model's own next-token distribution
  at that position, then the mean of the ``k`` fraction of lowest values.
- ``zlib``: the zlib ratio of Carlini et al., 2021 (*Extracting Training Data from Large
  Language Models*): log-perplexity divided by the zlib entropy, the length in bytes of the
  zlib-compressed UTF-8 text (here the answer text).
- ``*_adj``: base-model-adjusted (PREMIA-style): the finetuned model's signal minus the base
  model's on the same text, which removes how plain the text is for any model.

ROC-AUC is reported (a) for members vs non-members, and (b) across domains, for predicting
which domains' finetunes misalign from a per-domain statistic of the signal.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

SIGNALS = ("loss", "min_k", "min_k_pp", "zlib")
MEMBER_SIGN = {"loss": -1.0, "min_k": 1.0, "min_k_pp": 1.0, "zlib": -1.0}
DEFAULT_K = 0.2


@dataclass(frozen=True)
class TokenScores:
    """Per answer token: its log-prob, and the mean and std of the log-prob under the model's
    next-token distribution at that position (for Min-K%++)."""

    logprobs: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray


def _lowest_k(values: np.ndarray, k: float) -> np.ndarray:
    """The ``k`` fraction of lowest values, at least one (``floor(k * T)``, min 1)."""
    if values.size == 0:
        raise ValueError("no answer tokens")
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    n = max(1, int(k * values.size))
    return np.partition(values, n - 1)[:n]


def loss(logprobs: np.ndarray) -> float:
    """Mean negative log-likelihood of the tokens."""
    if len(logprobs) == 0:
        raise ValueError("no answer tokens")
    return float(-np.mean(logprobs))


def min_k_prob(logprobs: np.ndarray, k: float = DEFAULT_K) -> float:
    """Min-K% Prob: mean log-prob of the ``k`` fraction of least likely tokens."""
    return float(np.mean(_lowest_k(np.asarray(logprobs, np.float64), k)))


def min_k_plus_plus(logprobs: np.ndarray, mu: np.ndarray, sigma: np.ndarray, k: float = DEFAULT_K) -> float:
    """Min-K%++: mean of the ``k`` fraction of lowest ``(logprob - mu) / sigma``.

    A position whose distribution is one-hot (sigma 0) contributes 0.
    """
    lp, mu, sigma = (np.asarray(a, np.float64) for a in (logprobs, mu, sigma))
    z = np.divide(lp - mu, sigma, out=np.zeros_like(lp), where=sigma > 0)
    return float(np.mean(_lowest_k(z, k)))


def zlib_ratio(logprobs: np.ndarray, text: str) -> float:
    """Log-perplexity over the zlib entropy (compressed UTF-8 length in bytes), Carlini et al. 2021."""
    return loss(logprobs) / len(zlib.compress(text.encode("utf-8")))


def signals(scores: TokenScores, text: str, k: float = DEFAULT_K) -> dict[str, float]:
    """Every signal of one answer."""
    return {
        "loss": loss(scores.logprobs),
        "min_k": min_k_prob(scores.logprobs, k),
        "min_k_pp": min_k_plus_plus(scores.logprobs, scores.mu, scores.sigma, k),
        "zlib": zlib_ratio(scores.logprobs, text),
    }


def adjusted(finetuned: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    """Base-adjusted signals ``<name>_adj`` = finetuned minus base."""
    return {f"{name}_adj": finetuned[name] - base[name] for name in SIGNALS}


def membership_score(name: str, value: float) -> float:
    """``value`` of signal ``name`` (or ``name_adj``) oriented so that higher = more member-like."""
    return MEMBER_SIGN[name.removesuffix("_adj")] * value


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """ROC-AUC of ``scores`` for ``labels`` (ties count one half): the Mann-Whitney U over n+ n-."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"ROC-AUC needs one score per label, got {y.size} labels and {s.size} scores")
    if not np.isfinite(s).all():
        raise ValueError("ROC-AUC: a score is NaN or infinite")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs both classes")
    ranks = rankdata(s)  # average ranks handle ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def membership_aucs(
    members: Sequence[Mapping[str, float]], nonmembers: Sequence[Mapping[str, float]]
) -> dict[str, float]:
    """(a) ROC-AUC of each signal for members vs non-members."""
    names = [n for n in members[0] if n.removesuffix("_adj") in MEMBER_SIGN]
    labels = [True] * len(members) + [False] * len(nonmembers)
    return {n: roc_auc(labels, [membership_score(n, r[n]) for r in (*members, *nonmembers)]) for n in names}


def misaligned_domains(rates: Mapping[str, float | bool], threshold: float | None = None) -> dict[str, bool]:
    """Per-domain misalignment labels: booleans as given, rates above ``threshold`` (default: the median rate)."""
    if all(isinstance(v, bool) for v in rates.values()):
        return dict(rates)
    if outside := [d for d, v in rates.items() if not isinstance(v, bool) and not 0 <= float(v) <= 1]:
        raise ValueError(f"rate of {outside[0]!r} is {rates[outside[0]]!r}; a rate is a fraction from 0 to 1")
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a rate from 0 to 1, got {threshold}")
    cut = float(np.median([float(v) for v in rates.values()])) if threshold is None else threshold
    return {d: float(v) > cut for d, v in rates.items()}


def misalignment_auc(domain_scores: Mapping[str, float], misaligned: Mapping[str, bool]) -> float:
    """(b) ROC-AUC of a per-domain score for predicting the misaligning domains (higher score = misaligns)."""
    common = sorted(set(domain_scores) & set(misaligned))
    return roc_auc([misaligned[d] for d in common], [domain_scores[d] for d in common])
