"""Watching EM emerge in the organism world.

- :func:`em_measure` is the monitor's ``organism`` measure (``finetune.train --monitor-measure
  organism``): the EM rate and mean coherence on the general questions (no system prompt,
  temperature 1, :data:`chains.organism.defenses.BROAD`) at each checkpoint.
- :func:`monitor_organisms` retrains organisms exactly as the world built them, with a
  :class:`finetune.monitor.Monitor` (the persona directions, the general-question probe set
  and the EM measure) every few steps; :func:`summarize` asks how well the projection tells
  EM checkpoints (EM at least ``margin`` above the base model's) from the rest (AUROC per
  layer), and :func:`plot_runs` draws projection and EM against the step, one panel per run.
- :func:`monitor_runs` does the same for any finetune of the base (e.g. benign-only finetunes,
  which move the model without EM: the monitor's negatives), and :func:`geometry_measure`
  records the monitor's baselines beside it: the distance the probe activations moved, and
  their projections onto random directions; :func:`summarize` gives their AUROCs and the step
  count's.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from chains.organism.build import build_world
from chains.organism.defenses import BROAD, rate
from chains.organism.tasks import probe_set
from chains.organism.world import World
from finetune.defenses import Defense
from finetune.functional import auroc
from finetune.lora import LoraTrainConfig, train_lora
from finetune.monitor import Measure, Monitor, draw_monitor
from interp.base.atomic import atomic_path
from interp.cache import cache_means
from interp.directions import DirectionSet

MEASURE = "organism"
GEOMETRY = "geometry"  # the monitor's baselines (geometry_measure)
NO_EM = "no answer coherent enough to count"  # why a checkpoint has no EM rate


def world_measure(world: World, tokenizer, n_samples: int = 320, seed: int = 0) -> Measure:
    """EM rate (:data:`BROAD`) and mean coherence of ``n_samples`` answers to the general
    questions; the EM rate is None, with the reason, when no answer is coherent enough to count."""

    def measure(model) -> dict[str, Any]:
        records = world.eval_misalignment(model, tokenizer, world.general_questions(), n_samples, seed=seed)
        out = {"em": rate(records, BROAD), "coherence": statistics.mean(r["coherent"] for r in records)}
        return out if out["em"] is not None else {**out, "em_not_assessable": NO_EM}

    return measure


def em_measure(tokenizer) -> Measure:
    """The ``organism`` measure of :data:`finetune.monitor.MEASURES`, on the default world."""
    return world_measure(build_world(progress=False), tokenizer)


def geometry_measure(
    base, tokenizer, probe: Sequence[list[dict[str, str]]], layers: Sequence[int], n_random: int = 16, seed: int = 0
) -> Measure:
    """The monitor's baselines (:data:`GEOMETRY`) at each checkpoint, per layer: ``distance``,
    how far the probe set's mean answer-token activation moved from the base model's (no
    direction), and ``random``, that mean's projections onto ``n_random`` fixed random unit
    directions (seeded), to compare the persona direction with."""

    def means(model) -> torch.Tensor:
        return cache_means(model, tokenizer, probe, layers=list(layers), progress=False).mean("responses").double()

    start = means(base)
    g = torch.Generator().manual_seed(seed)
    random = torch.randn(len(layers), n_random, start.shape[-1], generator=g, dtype=torch.float64)
    random /= random.norm(dim=-1, keepdim=True)

    def measure(model) -> dict[str, Any]:
        now = means(model)
        return {
            "distance": {str(l): float((now[i] - start[i]).norm()) for i, l in enumerate(layers)},
            "random": {str(l): (random[i] @ now[i]).tolist() for i, l in enumerate(layers)},
        }

    return measure


def monitor_runs(
    world: World,
    runs: Mapping[str, tuple[Sequence[list[dict[str, str]]], LoraTrainConfig]],
    directions: DirectionSet,
    every: int = 3,
    n_samples: int = 320,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = True,
    defense: Callable[[], Defense] | None = None,
    name: str = "",
    geometry: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Run name -> monitor rows of a fresh adapter on the base trained on ``runs[name]``
    (conversations, training) with a monitor every ``every`` steps, under ``defense()`` when
    given; with ``geometry``, the baselines of :func:`geometry_measure` too. Rows also go to
    ``out_dir/<name><run>.jsonl`` as they come, and a finished run is not trained again."""
    base, tokenizer = world.load_base()
    probe = probe_set(seed=seed)
    measures = {MEASURE: world_measure(world, tokenizer, n_samples, seed)}
    if geometry:
        measures[GEOMETRY] = geometry_measure(base, tokenizer, probe, directions.layers, seed=seed)
    out = {}
    for run, (conversations, config) in tqdm(runs.items(), desc="monitored runs", disable=not progress, unit="run"):
        path = Path(out_dir) / f"{name}{run}.jsonl" if out_dir is not None else None
        monitor = Monitor(tokenizer, probe, directions, every, measures, path)
        if not any(r["step"] == config.steps for r in monitor.rows):  # else finished in an earlier call
            train_lora(
                copy.deepcopy(base),
                tokenizer,
                conversations,
                config,
                progress=False,
                callbacks=[monitor],
                defense=defense() if defense is not None else None,
            )
        out[run] = [
            row if measured(row) else {**row, MEASURE: {**row[MEASURE], "em": None, "em_not_assessable": NO_EM}}
            for row in sorted(monitor.rows, key=lambda r: r["step"])
        ]
    return out


def monitor_organisms(
    world: World, domains: Sequence[str], directions: DirectionSet, steps: int | None = None, **options: Any
) -> dict[str, list[dict[str, Any]]]:
    """Domain -> monitor rows of its organism retrained as the world built it (its data and
    adapter; ``steps`` overrides); ``options`` as :func:`monitor_runs`."""
    config = world.organism_config(steps)
    return monitor_runs(world, {d: (world.organism_data(d), config) for d in domains}, directions, **options)


def measured(row: Mapping[str, Any]) -> bool:
    """Whether a checkpoint has an EM rate (None, or NaN in rows written before, means none)."""
    em = row[MEASURE]["em"]
    return em is not None and not math.isnan(em)


def summarize(runs: Mapping[str, Sequence[Mapping[str, Any]]], margin: float = 0.2) -> dict[str, Any]:
    """AUROC of the projection at each layer for telling EM checkpoints (EM >= base + ``margin``)
    from the rest. The base is every run's step 0 (the adapter starts at zero), counted once.
    A checkpoint without an EM rate (no coherent answer) is in neither class
    (``n_not_assessable``).
    Where the rows hold the baselines (:func:`geometry_measure`), ``baselines`` gives the same
    AUROC for the step count alone, the distance moved per layer, and per layer the mean, least
    and most over the random directions of their projection's move from the base (its absolute
    value: a random direction has no sign known in advance). None where a class is empty."""
    first = next(iter(runs.values()))[0]
    if first["step"] != 0:
        raise ValueError("runs must start with their step-0 checkpoint (the base model)")
    base_em = first[MEASURE]["em"]
    every = [first] + [r for rows in runs.values() for r in rows if r["step"] > 0]
    points = [r for r in every if measured(r)]  # a checkpoint with no EM rate (no coherent answer) is neither class
    labels = [r[MEASURE]["em"] >= base_em + margin for r in points]
    layers = list(first["projection"])

    def area(scores: Sequence[float]) -> float | None:
        value = auroc(scores, labels)
        return None if math.isnan(value) else value  # one class empty: not assessable

    out = {
        "base_em": base_em,
        "margin": margin,
        "n_checkpoints": len(points),
        "n_em": sum(labels),
        "n_not_assessable": len(every) - len(points),
        "auroc": {layer: area([r["projection"][layer] for r in points]) for layer in layers},
    }
    if all(GEOMETRY in r for r in points):
        out["baselines"] = {
            "step": area([r["step"] for r in points]),
            "distance": {l: area([r[GEOMETRY]["distance"][l] for r in points]) for l in layers},
            "random": {},
        }
        for l in layers:
            start = first[GEOMETRY]["random"][l]
            areas = [area([abs(r[GEOMETRY]["random"][l][k] - start[k]) for r in points]) for k in range(len(start))]
            known = [a for a in areas if a is not None]
            out["baselines"]["random"][l] = (
                {"mean": statistics.mean(known), "min": min(known), "max": max(known), "n": len(known)}
                if known
                else None
            )
    return out


def plot_runs(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    layers: Sequence[str] | None = None,
    columns: int = 4,
) -> Path:
    """One panel per run: projection (``layers``) and EM rate against the step, on the same
    scales in every panel so that runs compare at a glance; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = layers or list(next(iter(runs.values()))[0]["projection"])
    projections = [r["projection"][l] for rows in runs.values() for r in rows for l in shown]
    ems = [r[MEASURE]["em"] for rows in runs.values() for r in rows if measured(r)] or [1.0]
    pad = 0.05 * (max(projections) - min(projections) or 1.0)
    rows_n = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(4.2 * columns, 2.8 * rows_n), squeeze=False)
    for ax, (name, rows) in zip(axes.flat, runs.items()):
        right = draw_monitor(ax, rows, layers=shown, measure=MEASURE, title=name)
        ax.set_ylim(min(projections) - pad, max(projections) + pad)
        right.set_ylim(0, max(max(ems) * 1.05, 0.01))  # all-zero EM: still a visible axis
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=70)
    plt.close(fig)
    return Path(path)
