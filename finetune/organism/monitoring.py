"""Watching EM emerge in the organism world.

- :func:`em_measure` is the monitor's ``organism`` measure (``finetune.train --monitor-measure
  organism``): the EM rate and mean coherence on the general questions (no system prompt,
  temperature 1, :data:`finetune.organism.defenses.BROAD`) at each checkpoint.
- :func:`monitor_organisms` retrains organisms exactly as the world built them, with a
  :class:`finetune.monitor.Monitor` (the persona directions, the general-question probe set
  and the EM measure) every few steps; :func:`summarize` asks how well the projection tells
  EM checkpoints (EM at least ``margin`` above the base model's) from the rest (AUROC per
  layer), and :func:`plot_runs` draws projection and EM against the step, one panel per run.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eval.report import misalignment_rate
from finetune.defenses import Defense
from finetune.functional import auroc
from finetune.lora import train_lora
from finetune.monitor import Measure, Monitor, draw_monitor
from finetune.organism.build import build_world
from finetune.organism.defenses import BROAD
from finetune.organism.tasks import probe_set
from finetune.organism.world import World
from interp.base.atomic import atomic_path
from interp.directions import DirectionSet

MEASURE = "organism"


def world_measure(world: World, tokenizer, n_samples: int = 320, seed: int = 0) -> Measure:
    """EM rate (:data:`BROAD`) and mean coherence of ``n_samples`` answers to the general questions."""
    def measure(model) -> dict[str, float]:
        records = world.eval_misalignment(model, tokenizer, world.general_questions(), n_samples, seed=seed)
        return {"em": misalignment_rate(records, BROAD), "coherence": statistics.mean(r["coherent"] for r in records)}

    return measure


def em_measure(tokenizer) -> Measure:
    """The ``organism`` measure of :data:`finetune.monitor.MEASURES`, on the default world."""
    return world_measure(build_world(progress=False), tokenizer)


def monitor_organisms(
    world: World,
    domains: Sequence[str],
    directions: DirectionSet,
    every: int = 3,
    n_samples: int = 320,
    steps: int | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = True,
    defense: Callable[[], Defense] | None = None,
    name: str = "",
) -> dict[str, list[dict[str, Any]]]:
    """Domain -> monitor rows of its organism retrained (the world's data and adapter) with a
    monitor every ``every`` steps, under ``defense()`` when given (runs that train but should
    not turn misaligned); rows also go to ``out_dir/<name><domain>.jsonl`` as they come."""
    base, tokenizer = world.load_base()
    probe = probe_set(seed=seed)
    measure = world_measure(world, tokenizer, n_samples, seed)
    config = world.organism_config(steps)
    runs = {}
    for domain in tqdm(domains, desc="monitored organisms", disable=not progress, unit="run"):
        path = Path(out_dir) / f"{name}{domain}.jsonl" if out_dir is not None else None
        monitor = Monitor(tokenizer, probe, directions, every, {MEASURE: measure}, path)
        if not any(r["step"] == config.steps for r in monitor.rows):  # else finished in an earlier call
            train_lora(copy.deepcopy(base), tokenizer, world.organism_data(domain), config, progress=False, callbacks=[monitor],
                       defense=defense() if defense is not None else None)
        runs[domain] = sorted(monitor.rows, key=lambda r: r["step"])
    return runs


def summarize(runs: Mapping[str, Sequence[Mapping[str, Any]]], margin: float = 0.2) -> dict[str, Any]:
    """AUROC of the projection at each layer for telling EM checkpoints (EM >= base + ``margin``)
    from the rest. The base is every run's step 0 (the adapter starts at zero), counted once."""
    first = next(iter(runs.values()))[0]
    if first["step"] != 0:
        raise ValueError("runs must start with their step-0 checkpoint (the base model)")
    base_em = first[MEASURE]["em"]
    points = [first] + [r for rows in runs.values() for r in rows if r["step"] > 0]
    labels = [r[MEASURE]["em"] >= base_em + margin for r in points]
    layers = list(first["projection"])
    return {
        "base_em": base_em,
        "margin": margin,
        "n_checkpoints": len(points),
        "n_em": sum(labels),
        "auroc": {layer: auroc([r["projection"][layer] for r in points], labels) for layer in layers},
    }


def plot_runs(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, layers: Sequence[str] | None = None, columns: int = 4) -> Path:
    """One panel per run: projection (``layers``) and EM rate against the step, on the same
    scales in every panel so that runs compare at a glance; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = layers or list(next(iter(runs.values()))[0]["projection"])
    projections = [r["projection"][l] for rows in runs.values() for r in rows for l in shown]
    ems = [r[MEASURE]["em"] for rows in runs.values() for r in rows]
    pad = 0.05 * (max(projections) - min(projections) or 1.0)
    rows_n = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(4.2 * columns, 2.8 * rows_n), squeeze=False)
    for ax, (name, rows) in zip(axes.flat, runs.items()):
        right = draw_monitor(ax, rows, layers=shown, measure=MEASURE, title=name)
        ax.set_ylim(min(projections) - pad, max(projections) + pad)
        right.set_ylim(0, max(ems) * 1.05)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=70)
    plt.close(fig)
    return Path(path)
