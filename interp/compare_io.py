"""The inputs of :mod:`interp.compare`: direction artifacts of a folder, their per-sample activations.

**Per-sample convention** (written by the extraction step): beside
``<dir>/<domain>.safetensors`` a folder ``<dir>/<domain>.per_sample/`` holds two
:func:`interp.cache.cache_means` ``per_sample_dir`` folders, ``misaligned/`` and
``aligned/``, cached over exactly the answers (after balancing) the direction was computed
from, over the same layers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from interp.base.cli import InputError
from interp.base.domains import DOMAINS
from interp.base.paths import read_text
from interp.directions import DirectionSet
from interp.shards import load_per_sample

PER_SAMPLE_SUFFIX = ".per_sample"
CLASSES = ("misaligned", "aligned")


class CompareError(InputError):
    """A problem with the inputs, reported as one line by the CLI."""


def check_compatible(sets: Mapping[str, DirectionSet]) -> None:
    """Raise CompareError unless all sets cover the same layers with the same width."""
    if not sets:
        raise CompareError("no direction sets to compare")
    (first, ref), *rest = sets.items()
    for name, ds in rest:
        if ds.layers != ref.layers:
            raise CompareError(f"mismatched layers: {first} has {ref.layers}, {name} has {ds.layers}")
        if ds.directions.shape[-1] != ref.directions.shape[-1]:
            raise CompareError(
                f"mismatched d_model: {first} has {ref.directions.shape[-1]}, {name} has {ds.directions.shape[-1]}"
            )


def ordered_domains(names: Sequence[str]) -> list[str]:
    """The paper's domain order first, any other names after, alphabetically."""
    known = [d for d in DOMAINS if d in names]
    return known + sorted(n for n in names if n not in DOMAINS)


def load_direction_sets(directions_dir: str | Path, domains: Sequence[str] | None = None) -> dict[str, DirectionSet]:
    """``{domain: DirectionSet}`` from ``<dir>/<domain>.safetensors``, in :func:`ordered_domains` order."""
    root = Path(directions_dir)
    if not root.is_dir():
        raise CompareError(f"{root}: no such folder")
    paths = {p.stem: p for p in root.glob("*.safetensors")}
    if domains is not None:
        if missing := [d for d in domains if d not in paths]:
            raise CompareError(f"{root}: no direction artifact for {', '.join(missing)}")
        paths = {d: paths[d] for d in domains}
    if not paths:
        raise CompareError(f"{root}: no direction artifacts (*.safetensors)")
    # Each file is named for its domain; one whose metadata names another would mislabel a row.
    sets = {name: DirectionSet.load(paths[name], domain=name) for name in ordered_domains(list(paths))}
    check_compatible(sets)
    return sets


def load_labelled_samples(folder: str | Path, layers: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Both classes' per-sample tensors concatenated, and labels (True = misaligned)."""
    folder = Path(folder)
    parts = []
    for cls in CLASSES:
        sub = folder / cls
        manifest = sub / "manifest.json"
        if not manifest.is_file():
            raise CompareError(f"{sub}: no per-sample manifest.json")
        try:
            info = json.loads(read_text(manifest))
        except (json.JSONDecodeError, RecursionError):
            raise CompareError(
                f"{manifest}: not valid JSON; the per-sample folder is damaged (extract again with --per-sample)"
            ) from None
        if not isinstance(info, dict):
            raise CompareError(f"{manifest}: expected a JSON object")
        if (found := info.get("layers")) != list(layers):
            raise CompareError(f"{sub}: per-sample layers {found} differ from the artifact's {list(layers)}")
        parts.append(load_per_sample(sub))
    tensors = {k: torch.cat([p[k] for p in parts]) for k in ("response_mean", "last_prompt", "n_tokens")}
    labels = torch.cat([torch.full((len(p["index"]),), cls == "misaligned") for p, cls in zip(parts, CLASSES)])
    return tensors, labels


def artifact_sha256(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()
