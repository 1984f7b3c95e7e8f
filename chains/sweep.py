"""Steering sweeps on the organism world or your own models: misalignment and coherence as a
direction is added (or ablated) at each layer and strength.

    python -m chains.sweep --domain gore_movie_trivia --target base --mode add --layers 0,1,2,3 --alphas 0.5,1,2,4
    python -m chains.sweep --directions D.safetensors --target insecure_code --mode ablate --random-control

A **sweep** evaluates a model (generate answers to the evaluation questions, judge them) with
one direction applied at each (layer, alpha): ``add`` adds ``alpha`` times the layer's
direction to resid_post of that layer (alpha in the units of ``scale``, see
:mod:`interp.steer`); ``ablate`` projects the layer's direction out of resid_post at every
layer (alpha is not used: one point per layer). It reports the misalignment rate and mean
coherence per point, beside the unsteered baseline, and plots both curves, so you see where
steering works before coherence collapses. ``random_control`` repeats every point with a
norm-matched random direction.

The Python functions take an ``evaluate(model, tokenizer) -> judged records`` callable, so they
run on real models with your own generation and judge; the CLI targets the organism world.
This module is a chain: it reaches the organism world and the eval stage.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from chains.extract import DEFAULT_OUT
from eval.rates import MisalignmentDefinition, misalignment_rate
from interp.base.atomic import json_safe, write_json_atomic, write_text_atomic
from interp.base.chat import tokenize_record
from interp.base.cli import (
    ArgumentParser,
    InputError,
    domain_name,
    float_list,
    int_list,
    number,
    path_arg,
    run_cli,
    seed_int,
)
from interp.base.domains import DOMAINS
from interp.base.models import d_model, n_layers
from interp.base.paths import output_dir
from interp.base.provenance import provenance
from interp.base.records import JudgedRecord
from interp.directions import DirectionSet
from interp.norms import residual_norms
from interp.steer import ablate, steer
from interp.vector_math import random_like
from interp.vectors import SCALES, Scale

Mode = Literal["add", "ablate"]
MODES: tuple[Mode, ...] = ("add", "ablate")
Evaluate = Callable[[nn.Module, Any], Sequence[JudgedRecord]]
DEFAULT_ALPHAS = (0.5, 1.0, 2.0, 4.0)
answers_per_point = number(int, 1, 100_000)  # answers generated and judged per evaluation
MAX_POINTS = 10_000  # (layer, alpha) points in one sweep: past this, days of CPU for a plot no one reads


def check_width(
    path: str | Path, directions: DirectionSet, model: nn.Module, layers: Sequence[int] | None = None
) -> None:
    """``directions`` (read from ``path``) fit ``model``'s residual stream, and the ``layers`` used
    (default: all of the artifact's) are the model's; else one line naming the file."""
    width, d = directions.directions.shape[-1], d_model(model)
    if width != d:
        raise InputError(f"{path}: directions of width {width}, but the model has width {d}")
    depth = n_layers(model)
    if beyond := [l for l in (layers or directions.layers) if l >= depth]:
        raise InputError(
            f"{path}: a direction at layer {beyond[0]} (--layers), but the model has {depth} layers (0 to {depth - 1})"
        )


def summarize(
    records: Sequence[JudgedRecord], definition: MisalignmentDefinition = MisalignmentDefinition()
) -> dict[str, float | None]:
    """Misalignment rate (``definition``), mean coherence, the number of answers and how many of
    them the definition counts. A rate over no counted answer (a steering strength that left
    nothing coherent, say) is not assessable: ``em`` is None, never NaN."""
    coherence = [r["coherent"] for r in records if r.get("coherent") is not None]
    counted = sum(definition.classify(r) is not None for r in records)
    return {
        "em": misalignment_rate(records, definition) if counted else None,
        "coherence": statistics.mean(coherence) if coherence else None,
        "n": len(records),
        "counted": counted,
    }


def rate_delta(em: float | None, baseline: float | None) -> float | None:
    """``em - baseline``, None when either is not assessable."""
    return None if em is None or baseline is None else em - baseline


def shown(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec`` for a progress line, or why there is none."""
    return "n/a (nothing coherent to count)" if value is None else format(value, spec)


def sweep(
    model: nn.Module,
    tokenizer: Any,
    directions: DirectionSet,
    evaluate: Evaluate,
    layers: Sequence[int] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    mode: Mode = "add",
    scale: Scale = "raw",
    norms: Mapping[int, float] | None = None,
    random_control: bool = False,
    seed: int = 0,
    definition: MisalignmentDefinition = MisalignmentDefinition(),
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` unsteered and at every (layer, alpha); returns ``{"baseline", "points"}``.

    Each point has layer, alpha (None for ablate), em, coherence, n, delta (em - baseline em)
    and, with ``random_control``, ``random_em`` / ``random_coherence`` / ``random_delta`` for
    a norm-matched random direction (seed ``seed + layer``) at the same point.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    layers = list(directions.layers if layers is None else layers)
    if missing := [l for l in layers if l not in directions.layers]:
        raise ValueError(f"no direction at layers {missing}; the artifact has layers {directions.layers}")
    grid = [(l, a) for l in layers for a in alphas] if mode == "add" else [(l, None) for l in layers]

    def measure(vector: torch.Tensor, layer: int, alpha: float | None) -> dict[str, float]:
        ctx = steer(model, {layer: vector}, alpha, scale, norms) if mode == "add" else ablate(model, vector)
        with ctx:
            return summarize(evaluate(model, tokenizer), definition)

    t0 = time.perf_counter()
    baseline = summarize(evaluate(model, tokenizer), definition)
    points = []
    for layer, alpha in grid:
        v = directions.at(layer)
        point = {"layer": layer, "alpha": alpha, **measure(v, layer, alpha)}
        point["delta"] = rate_delta(point["em"], baseline["em"])
        if random_control:
            r = measure(random_like(v, seed + layer), layer, alpha)
            point.update(
                random_em=r["em"], random_coherence=r["coherence"], random_delta=rate_delta(r["em"], baseline["em"])
            )
        points.append(point)
        if progress:
            _print_point(point, random_control, t0)
    return {
        "mode": mode,
        "scale": scale,
        "layers": layers,
        "alphas": list(alphas) if mode == "add" else [],
        "baseline": baseline,
        "points": points,
    }


def _print_point(point: Mapping[str, Any], random_control: bool, t0: float) -> None:
    """One progress line for a sweep point, with the time since ``t0``."""
    layer, alpha = point["layer"], point["alpha"]
    what = f"x{alpha:g}" if alpha is not None else "ablated"
    control = (
        f"; random direction: EM {shown(point['random_em'], '.3f')}, coherence {shown(point['random_coherence'], '.1f')}"
        if random_control
        else ""
    )
    print(
        f"  L{layer} {what}: EM {shown(point['em'], '.3f')} ({shown(point['delta'], '+.3f')}), coherence {shown(point['coherence'], '.1f')}{control}  [{time.perf_counter() - t0:.0f} s]",
        flush=True,
    )


def sweep_figure(result: Mapping[str, Any], title: str = ""):
    """Misalignment rate and coherence against alpha (one line per layer) or, for ablate, against layer."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_em, ax_coh = fig.subplots(1, 2)

    # Not assessable points (None) become gaps in the lines.
    def value(v: float | None) -> float:
        return float("nan") if v is None else v

    base = {k: value(v) for k, v in result["baseline"].items() if k in ("em", "coherence")}
    points = [
        {k: value(v) if k.startswith(("em", "coherence", "random_")) else v for k, v in p.items()}
        for p in result["points"]
    ]
    for ax, key, label in ((ax_em, "em", "misalignment rate"), (ax_coh, "coherence", "mean coherence")):
        if result["mode"] == "add":
            for layer in result["layers"]:
                pts = [p for p in points if p["layer"] == layer]
                ax.plot([p["alpha"] for p in pts], [p[key] for p in pts], marker="o", label=f"layer {layer}")
                if f"random_{key}" in pts[0]:
                    ax.plot(
                        [p["alpha"] for p in pts],
                        [p[f"random_{key}"] for p in pts],
                        ls=":",
                        color=ax.lines[-1].get_color(),
                        label=f"layer {layer}, random",
                    )
            ax.set_xlabel(f"alpha ({result['scale']})")
        else:
            ax.plot([p["layer"] for p in points], [p[key] for p in points], marker="o", label="direction ablated")
            if points and f"random_{key}" in points[0]:
                ax.plot(
                    [p["layer"] for p in points],
                    [p[f"random_{key}"] for p in points],
                    marker="x",
                    ls=":",
                    label="random direction ablated",
                )
            ax.set_xlabel("layer of the ablated direction (projected out at every layer)")
        ax.axhline(base[key], color="grey", ls="--", label="unsteered")
        ax.set_ylabel(label)
    ax_em.set_ylim(-0.02, 1.02)
    ax_coh.axhline(50, color="red", lw=0.8, ls=":", label="coherence 50")
    ax_coh.legend(fontsize=7)
    fig.suptitle(title or f"steering sweep ({result['mode']})")
    return fig


def write_sweep(
    result: Mapping[str, Any], out_dir: str | Path, formats: Sequence[str] = ("png",), title: str = "", **meta: Any
) -> list[Path]:
    """Write ``sweep.json`` (with provenance ``meta``), ``sweep.csv`` and the plot, atomically."""
    from interp.plots import save_figure

    out = Path(out_dir)
    write_json_atomic(out / "sweep.json", json_safe({**provenance(stage="chains.sweep", **meta), **result}))
    keys = [
        "layer",
        "alpha",
        "em",
        "coherence",
        "n",
        "counted",
        "delta",
        "random_em",
        "random_coherence",
        "random_delta",
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(result["points"])
    write_text_atomic(out / "sweep.csv", buf.getvalue())
    return [out / "sweep.json", out / "sweep.csv", *save_figure(sweep_figure(result, title), out / "sweep", formats)]


# --- CLI ----------------------------------------------------------------------------------------


def _target(text: str) -> str:
    """argparse type: ``base`` or a domain (its organism)."""
    return text if text == "base" else domain_name(text)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m chains.sweep",
        description="Steering sweep over layers and alphas on the organism world: misalignment and coherence at each point.",
        epilog="The source x target experiment is python -m chains.cross_domain. domains: " + ", ".join(DOMAINS),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--directions", type=path_arg, help="direction artifact (.safetensors) from interp.extract")
    src.add_argument("--domain", type=domain_name, help=f"use {DEFAULT_OUT}/<domain>.safetensors")
    p.add_argument(
        "--target",
        type=_target,
        default="base",
        help="organism-world model to steer: base or a domain's organism (default base)",
    )
    p.add_argument(
        "--mode", choices=MODES, default="add", help="add the direction (induce) or ablate it at every layer (suppress)"
    )
    p.add_argument("--layers", type=int_list, help="layers whose direction is used (default: all in the artifact)")
    p.add_argument(
        "--alphas",
        type=float_list,
        help="steering strengths, add mode (default 0.5,1,2,4)",
    )
    p.add_argument("--scale", choices=SCALES, default="raw", help="units of alpha (see interp.steer; default raw)")
    p.add_argument("--samples", type=answers_per_point, default=96, help="answers per point, 1 to 100,000 (default 96)")
    p.add_argument(
        "--random-control", action="store_true", help="repeat every point with a norm-matched random direction"
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", type=path_arg, default=Path("artifacts/steering/sweep"), help="output folder")
    return p


def _checked_directions(args: argparse.Namespace) -> tuple[Path, DirectionSet]:
    """The directions file of the sweep and its directions, refused before any model loads when
    the options do not fit it (``args.alphas`` gets its default here)."""
    if args.alphas is not None and args.mode == "ablate":
        raise InputError("--alphas: an ablation has no strength; drop --alphas with --mode ablate")
    args.alphas = list(DEFAULT_ALPHAS) if args.alphas is None else args.alphas
    path = args.directions if args.directions is not None else DEFAULT_OUT / f"{args.domain}.safetensors"
    # A file named for a domain must hold that domain's direction.
    directions = DirectionSet.load(path, domain=args.domain or (path.stem if path.stem in DOMAINS else None))
    if missing := sorted(set(args.layers or ()) - set(directions.layers)):
        raise InputError(
            f"--layers: {path} has no direction at layer(s) {', '.join(map(str, missing))}; it has {', '.join(map(str, directions.layers))}"
        )
    points = len(args.layers or directions.layers) * (len(args.alphas) if args.mode == "add" else 1)
    if points > MAX_POINTS:
        raise InputError(
            f"--alphas and --layers: {points:,} points to evaluate, more than the {MAX_POINTS:,} one sweep takes; ask for fewer"
        )
    return path, directions


def _run_sweep(args: argparse.Namespace) -> int:
    from chains.organism import build_world

    path, directions = _checked_directions(args)
    output_dir(args.out)
    world = build_world(progress=False)
    model, tokenizer = world.load_base() if args.target == "base" else world.load_organism(args.target)
    check_width(path, directions, model, args.layers)
    questions = world.general_questions()
    norms = None
    if args.scale == "norm":
        records = world.eval_misalignment(model, tokenizer, questions, 64, seed=args.seed)
        norms = residual_norms(model, tokenizer, [tokenize_record(tokenizer, r) for r in records])

    def evaluate(m: nn.Module, tok: Any) -> Sequence[JudgedRecord]:
        return world.eval_misalignment(m, tok, questions, args.samples, seed=args.seed)

    t0 = time.perf_counter()
    print(f"sweep: {path} on {args.target} ({args.mode}), {args.samples} answers per point")
    result = sweep(
        model,
        tokenizer,
        directions,
        evaluate,
        args.layers,
        args.alphas,
        args.mode,
        args.scale,
        norms,
        args.random_control,
        args.seed,
        progress=True,
    )
    result["seconds"] = time.perf_counter() - t0
    b = result["baseline"]
    print(f"unsteered: EM {shown(b['em'], '.3f')}, coherence {shown(b['coherence'], '.1f')}; {result['seconds']:.0f} s")
    paths = write_sweep(
        result,
        args.out,
        title=f"{path.stem} direction, {args.mode}, target {args.target}",
        directions=str(path),
        target=args.target,
        samples=args.samples,
        seed=args.seed,
        **world.identity,
    )
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chains.sweep ...``; returns the exit status."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)  # tiny matrices; see chains.organism.build
    return _run_sweep(args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
