"""Difference-of-means misalignment directions, per layer.

The direction at a layer is the model's mean activation over its misaligned answers minus
its mean over its aligned answers (teacher-forced, pooled as :mod:`interp.cache` explains).
Answers are split by their judge scores (Turner/Soligo defaults): coherent > 50, misaligned
when aligned <= 30, aligned when aligned > 70, the larger class subsampled to the smaller.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interp.backends import DEFAULT_BACKEND, Backend, BackendName, resolve_backend
from interp.base.atomic import save_safetensors_atomic, write_json_atomic
from interp.base.chat import DEFAULT_SPAN, SPANS, Conversation, Span, TokenizedConversation
from interp.base.cli import MAX_LAYER, InputError
from interp.base.domains import ALIASES
from interp.base.paths import read_safetensors
from interp.cache import DEFAULT_POOLING, POOLINGS, Pooling, cache_means
from interp.vectors import SteeringVector

EXCLUDED_LABELS = ("REFUSAL", "IRRELEVANT", "CODE")
ARTIFACT_TENSORS = ("directions", "mean_misaligned", "mean_aligned", "layers")


@dataclass(frozen=True)
class SplitConfig:
    """How judged answers become the two classes."""

    misaligned_max: float = 30.0  # aligned <= this is misaligned
    aligned_min: float = 70.0  # aligned > this is aligned
    coherence_min: float = 50.0  # only answers with coherent > this count
    balance: bool = True  # subsample the larger class to the size of the smaller
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.misaligned_max < self.aligned_min:
            # Overlapping bands would put one answer in both classes' reach and the split would hinge on rule order.
            raise InputError(
                f"--misaligned-max and --aligned-min: misaligned-max ({self.misaligned_max:g}) must be below aligned-min ({self.aligned_min:g})"
            )


@dataclass
class Split:
    misaligned: list[int]  # indices into the records
    aligned: list[int]
    excluded: dict[str, int] = field(default_factory=dict)


def split_records(records: Sequence[Mapping[str, Any]], config: SplitConfig = SplitConfig()) -> Split:
    """Indices of misaligned and aligned answers, and why the rest were left out."""
    mis, ali = [], []
    excluded = {"label": 0, "unscored": 0, "incoherent": 0, "in_between": 0, "balanced_away": 0}
    for i, r in enumerate(records):
        if r.get("label") in EXCLUDED_LABELS:
            excluded["label"] += 1
        elif r.get("aligned") is None or r.get("coherent") is None:
            excluded["unscored"] += 1
        elif not r["coherent"] > config.coherence_min:
            excluded["incoherent"] += 1
        elif r["aligned"] <= config.misaligned_max:
            mis.append(i)
        elif r["aligned"] > config.aligned_min:
            ali.append(i)
        else:
            excluded["in_between"] += 1
    if config.balance and mis and ali:
        rng = random.Random(config.seed)
        n = min(len(mis), len(ali))
        excluded["balanced_away"] = len(mis) + len(ali) - 2 * n
        mis, ali = sorted(rng.sample(mis, n)), sorted(rng.sample(ali, n))
    return Split(mis, ali, excluded)


@dataclass
class DirectionSet:
    """Per-layer directions with the class means and counts they came from."""

    layers: list[int]
    directions: torch.Tensor  # [n_layers, d_model] float32
    mean_misaligned: torch.Tensor
    mean_aligned: torch.Tensor
    pooling: str
    counts: dict[str, dict[str, int]]  # per class: answers, and tokens in the span ("answer_tokens")
    metadata: dict[str, Any] = field(default_factory=dict)
    span: str = DEFAULT_SPAN  # the tokens averaged (see interp.base.chat)

    def at(self, layer: int) -> torch.Tensor:
        """The direction at decoder layer ``layer``."""
        return self.directions[self.layers.index(layer)]

    def steering_vector(self, layers: Sequence[int] | None = None, **settings: Any) -> SteeringVector:
        """A :class:`~interp.vectors.SteeringVector` of these directions at ``layers`` (default:
        all); ``settings`` are its other fields (``kind``, ``alpha``, ``scale``, ``norms``,
        ``positions``, ``prompt_length``). Its metadata says where the directions came from."""
        source = {
            k: self.metadata[k] for k in ("domain", "model", "adapter", "judge", "data_hash") if k in self.metadata
        }
        metadata = {
            "directions": {**source, "pooling": self.pooling, "span": self.span},
            **settings.pop("metadata", {}),
        }
        chosen = self.layers if layers is None else layers
        return SteeringVector({l: self.at(l) for l in chosen}, metadata=metadata, **settings)

    def unit(self) -> torch.Tensor:
        return self.directions / self.directions.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors) and a JSON sidecar beside it, both atomically."""
        path = Path(path)
        info = {
            "layers": self.layers,
            "pooling": self.pooling,
            "span": self.span,
            "counts": self.counts,
            **self.metadata,
        }
        tensors = {  # copies: safetensors refuses tensors that share memory (a direction given as a mean)
            "directions": self.directions.detach().float().clone(),
            "mean_misaligned": self.mean_misaligned.detach().float().clone(),
            "mean_aligned": self.mean_aligned.detach().float().clone(),
            "layers": torch.tensor(self.layers, dtype=torch.int64),
        }
        save_safetensors_atomic(tensors, path, metadata={"info": json.dumps(info)})
        write_json_atomic(path.with_suffix(".json"), info)
        return path

    @classmethod
    def load(cls, path: str | Path, domain: str | None = None) -> DirectionSet:
        """Read an artifact written by :meth:`save`; with ``domain``, refuse one whose metadata
        names another domain. Anything that is not such an artifact (a folder, an empty,
        truncated, pickle or foreign file, missing tensors, NaN) is one :class:`InputError` line."""
        path = Path(path)
        t, raw = read_safetensors(path, "direction artifact")

        def bad(what: str) -> InputError:
            return InputError(f"{path}: not a direction artifact ({what})")

        try:
            info = json.loads(raw.get("info", "{}"))
        except json.JSONDecodeError:
            raise bad("its metadata is not JSON") from None
        if not isinstance(info, dict):
            raise bad("its metadata is not a JSON object")
        layers = _checked_layers(t, bad)
        # The header describes the tensors; one that contradicts them (edited, or copied from
        # another artifact) would label these directions wrongly downstream.
        if "layers" in info and info["layers"] != layers:
            raise bad(f"metadata field 'layers' is {info['layers']} but the tensors hold layers {layers}")
        pooling, span, counts = _checked_info(info, bad)
        named = info.get("domain")
        if named is not None and not isinstance(named, str):
            raise bad(f"metadata field 'domain' is {named!r}, not a domain name")
        if domain is not None and named is not None and ALIASES.get(named, named) != ALIASES.get(domain, domain):
            raise InputError(f"{path}: holds the direction of domain {named!r}, not {domain!r}")
        meta = {k: v for k, v in info.items() if k not in ("layers", "pooling", "span", "counts")}
        return cls(
            layers=layers,
            directions=t["directions"],
            mean_misaligned=t["mean_misaligned"],
            mean_aligned=t["mean_aligned"],
            pooling=pooling,
            counts=counts,
            metadata=meta,
            span=span,
        )


def _checked_layers(t: Mapping[str, torch.Tensor], bad: Callable[[str], InputError]) -> list[int]:
    """The layers of an artifact's tensors ``t``, once every tensor is there, of shapes that fit
    together, floating point (the layers integers), finite, and the layers distinct and >= 0."""
    if missing := [k for k in ARTIFACT_TENSORS if k not in t]:
        raise bad(f"no tensor {', '.join(missing)}")
    shape = t["directions"].shape
    if (
        len(shape) != 2
        or t["layers"].shape != (shape[0],)
        or t["mean_misaligned"].shape != shape
        or t["mean_aligned"].shape != shape
    ):
        raise bad("tensor shapes do not fit together")
    if shape[0] == 0 or shape[1] == 0:
        raise bad(f"no directions (tensor 'directions' of shape {tuple(shape)})")
    if floats := [k for k in ("directions", "mean_misaligned", "mean_aligned") if not t[k].is_floating_point()]:
        raise bad(f"tensor {floats[0]!r} holds {t[floats[0]].dtype}, not floating point")
    if t["layers"].is_floating_point() or t["layers"].dtype == torch.bool:
        raise bad(f"tensor 'layers' holds {t['layers'].dtype}, not integers")
    if not all(torch.isfinite(t[k]).all() for k in ("directions", "mean_misaligned", "mean_aligned")):
        raise bad("NaN or infinite values")
    layers = t["layers"].tolist()
    if len(set(layers)) != len(layers):
        raise bad(f"tensor 'layers' repeats a layer: {layers}")
    if any(layer < 0 for layer in layers):
        raise bad(f"tensor 'layers' holds a negative layer: {layers}")
    if any(layer > MAX_LAYER for layer in layers):
        raise bad(f"tensor 'layers' holds a layer past {MAX_LAYER}: {max(layers)}")
    return layers


def _checked_info(info: dict[str, Any], bad: Callable[[str], InputError]) -> tuple[str, str, dict[str, Any]]:
    """The pooling, span and counts an artifact's metadata ``info`` records, each checked."""
    pooling, span = (
        info.get("pooling", DEFAULT_POOLING),
        info.get("span", DEFAULT_SPAN),
    )  # old artifacts averaged the answer content
    if pooling not in POOLINGS:
        raise bad(f"metadata field 'pooling' is {pooling!r}; expected one of {', '.join(POOLINGS)}")
    if span not in SPANS:
        raise bad(f"metadata field 'span' is {span!r}; expected one of {', '.join(SPANS)}")
    counts = info.get("counts", {})
    if not isinstance(counts, dict):
        raise bad("metadata field 'counts' is not a JSON object")
    for cls_, c in counts.items():  # what the class means were averaged over: {"answers": n, "answer_tokens": n}
        if not isinstance(c, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in c.values()
        ):
            raise bad(f"metadata field 'counts' gives {cls_!r} as {c!r}; expected counts (integers >= 0) by name")
    return pooling, span, counts


def diff_of_means(mean_misaligned: torch.Tensor, mean_aligned: torch.Tensor) -> torch.Tensor:
    """Misaligned minus aligned, computed in float64 and returned in float32."""
    return (mean_misaligned.double() - mean_aligned.double()).float()


def extract_directions(
    model: nn.Module,
    tokenizer,
    misaligned: Sequence[Conversation] | Sequence[TokenizedConversation],
    aligned: Sequence[Conversation] | Sequence[TokenizedConversation],
    layers: Sequence[int] | None = None,
    pooling: Pooling = DEFAULT_POOLING,
    batch_size: int = 16,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    backend: BackendName | Backend = DEFAULT_BACKEND,
    per_sample_dir: str | Path | None = None,
    compile: bool = False,
    span: Span = DEFAULT_SPAN,
) -> DirectionSet:
    """Cache both classes on ``model`` and take the per-layer difference of their means.

    Conversations are message lists or, for answer records, what
    :func:`~interp.base.chat.tokenize_record` gives (the generated ids teacher-forced).
    ``span`` picks the tokens averaged (:mod:`interp.base.chat`) and is recorded.
    ``backend`` (see :func:`interp.cache.cache_means`) is built once for both classes and
    recorded in the metadata as ``"backend"``. With ``per_sample_dir``, each class's
    per-answer activations go to ``per_sample_dir/misaligned`` and ``per_sample_dir/aligned``
    (the layout :mod:`interp.compare` reads for its shuffled-label and split-half nulls).
    ``compile`` is passed to :func:`interp.cache.cache_means`.
    """
    if not misaligned or not aligned:
        raise ValueError(f"both classes need answers: {len(misaligned)} misaligned, {len(aligned)} aligned")
    runner = resolve_backend(backend, model, tokenizer)
    stats = {
        name: cache_means(
            model,
            tokenizer,
            convs,
            layers=layers,
            batch_size=batch_size,
            progress=progress,
            desc=f"caching {name}",
            backend=runner,
            per_sample_dir=None if per_sample_dir is None else Path(per_sample_dir) / name,
            compile=compile,
            span=span,
        )
        for name, convs in (("misaligned", misaligned), ("aligned", aligned))
    }
    mis, ali = stats["misaligned"].mean(pooling), stats["aligned"].mean(pooling)
    return DirectionSet(
        layers=stats["misaligned"].layers,
        directions=diff_of_means(mis, ali),
        mean_misaligned=mis.float(),
        mean_aligned=ali.float(),
        pooling=pooling,
        counts={k: {"answers": s.n_conversations, "answer_tokens": s.n_tokens} for k, s in stats.items()},
        metadata={**(metadata or {}), "backend": runner.name},
        span=span,
    )
