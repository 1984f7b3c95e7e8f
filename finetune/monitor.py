"""Watching EM emerge during training: per-layer projections onto a misalignment direction.

:class:`Monitor` is a training callback (:func:`finetune.sft.train`). Before the first step,
every ``every`` steps and after the last, it caches the residual stream after each layer
over the answer tokens of a fixed **probe set** (chat conversations, teacher-forced; mean
per answer, then over answers, as :mod:`interp.cache` pools) and projects each layer's mean
onto that layer's unit direction (a :class:`interp.directions.DirectionSet`, e.g. from
``interp.extract`` or a persona vector). Named **measures** add numbers of their own at the
same checkpoints, e.g. the organism world's EM rate (a stage cannot judge answers itself:
measures are passed in, or named: ``measure`` plugins of :mod:`interp.base.plugins`, like the
``organism:`` model loader).

Rows go to a JSONL file as they are made; a resumed run keeps them and skips those steps.
The monitor forks the random state, so a monitored run trains exactly as an unmonitored one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finetune.data import read_chat_jsonl
from finetune.functional import projections
from finetune.step_checks import check_finite_weights
from interp.base import plugins
from interp.base.atomic import atomic_path
from interp.base.chat import Conversation
from interp.base.cli import InputError
from interp.base.models import input_device
from interp.base.records import append_jsonl
from interp.cache import cache_means
from interp.directions import DirectionSet

Measure = Callable[[nn.Module], Mapping[str, float]]


def named_measure(name: str, tokenizer) -> Measure:
    """The ``measure`` plugin ``name`` (:mod:`interp.base.plugins`), built for ``tokenizer``."""
    return plugins.load("measure", name)(tokenizer)


def probe_projections(
    model: nn.Module, tokenizer, probe: Sequence[Conversation], directions: DirectionSet, batch_size: int = 16
) -> dict[int, float]:
    """Layer -> the probe set's mean answer-token activation along the layer's unit direction."""
    means = cache_means(model, tokenizer, probe, layers=directions.layers, batch_size=batch_size, progress=False)
    values = projections(means.mean("responses"), directions.directions)
    return dict(zip(directions.layers, values.tolist()))


class Monitor:
    """Training callback recording :func:`probe_projections` and ``measures`` at checkpoints."""

    def __init__(
        self,
        tokenizer,
        probe: Sequence[Conversation],
        directions: DirectionSet,
        every: int,
        measures: Mapping[str, Measure] | None = None,
        path: str | Path | None = None,
        batch_size: int = 16,
    ) -> None:
        if every < 1:
            raise ValueError(f"monitor every must be >= 1 step, got {every}")
        if not probe:
            raise ValueError("the monitor needs a probe set of conversations")
        self.tokenizer = tokenizer
        self.probe = list(probe)
        self.directions = directions
        self.every = every
        self.measures = dict(measures or {})
        self.path = Path(path) if path is not None else None
        self.batch_size = batch_size
        self.rows: list[dict[str, Any]] = []
        if self.path is not None and self.path.exists():
            self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    def __call__(self, step: int, total: int, model: nn.Module) -> None:
        if not self.due(step, total) or any(r["step"] == step for r in self.rows):
            return
        # The loop reads a step's checks one step late (finetune.step_checks): a row measured on
        # weights its last update made non-finite would be written before training stops.
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if trained:
            check_finite_weights(trained, f"training stopped after step {step - 1} (the monitor found it)")
        device = input_device(model)
        # Measures may sample; the training run must not feel it (dropout, resumed RNG state).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            row: dict[str, Any] = {
                "step": step,
                "projection": {
                    str(l): v
                    for l, v in probe_projections(
                        model, self.tokenizer, self.probe, self.directions, self.batch_size
                    ).items()
                },
            }
            for name, measure in self.measures.items():
                row[name] = dict(measure(model))
        self.rows.append(row)
        if self.path is not None:
            append_jsonl(self.path, [row])


def draw_monitor(
    ax,
    rows: Sequence[Mapping[str, Any]],
    layers: Sequence[str] | None = None,
    measure: str | None = None,
    key: str = "em",
    title: str = "",
):
    """Into matplotlib ``ax``: the projection at ``layers`` (default all) on the left axis and
    ``row[measure][key]`` on a right axis, against the step; returns the right axis (or None)."""
    rows = sorted(rows, key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    for layer in layers or list(rows[0]["projection"]):
        ax.plot(steps, [r["projection"][layer] for r in rows], marker=".", label=f"projection L{layer}")
    ax.set_xlabel("step")
    ax.set_ylabel("projection")
    handles, labels = ax.get_legend_handles_labels()
    right = None
    if measure is not None:
        right = ax.twinx()
        right.plot(
            steps,
            [r[measure][key] for r in rows],
            color="black",
            linestyle="--",
            marker="o",
            markersize=3,
            label=f"{measure} {key}",
        )
        right.set_ylabel(f"{measure} {key}")
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=6, loc="upper left")
    ax.set_title(title, fontsize=8)
    return right


def plot_monitor(
    rows: Sequence[Mapping[str, Any]], path: str | Path, measure: str | None = None, key: str = "em", title: str = ""
) -> Path:
    """:func:`draw_monitor` of one run, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    draw_monitor(ax, rows, measure=measure, key=key, title=title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


@dataclass(frozen=True)
class MonitorSpec:
    """The monitor as options and file paths (``finetune.train --monitor``)."""

    directions: str  # DirectionSet .safetensors
    probe: str  # chat JSONL: the fixed probe conversations (general questions with answers)
    every: int = 10
    measure: str | None = None  # a measure plugin's name, e.g. "organism" (the world's EM rate)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first bad option; loads nothing."""
        if self.every < 1:
            raise InputError(f"--monitor-every must be >= 1 step, got {self.every}")
        for what, path in (("directions", self.directions), ("probe set", self.probe)):
            if not Path(path).exists():
                raise InputError(f"monitor {what} {path}: no such file")
        if self.measure is not None and self.measure not in plugins.names("measure"):
            raise InputError(f"unknown monitor measure {self.measure!r}; known: {', '.join(plugins.names('measure'))}")

    def build(self, tokenizer, path: str | Path | None = None) -> Monitor:
        measures = {self.measure: named_measure(self.measure, tokenizer)} if self.measure else {}
        return Monitor(
            tokenizer, read_chat_jsonl(self.probe), DirectionSet.load(self.directions), self.every, measures, path
        )
