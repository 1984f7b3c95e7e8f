"""Compare misalignment directions by cosine similarity, with nulls that say what is large.

    python -m interp.compare --directions artifacts/directions --out artifacts/figures/compare

:func:`run` reads every ``<domain>.safetensors`` of a folder (:mod:`interp.compare_io`), and
writes, as CSV and heatmaps, the cosine matrices (:mod:`interp.cosines`; signed by default,
``absolute=True`` for |cos|): domain x domain at each layer, layer x layer within each domain,
and across the ``cross`` pairs. Beside them go the nulls (:mod:`interp.nulls`): the random
direction's, and, for each domain with a ``<domain>.per_sample/`` folder (written by
``interp.extract --per-sample``), the shuffled-label null and split-half reliability from
its per-sample activations, pooled as the artifact's ``pooling`` says: ``responses``
averages the per-answer means, ``tokens`` weights them by answer length, ``last_prompt``
uses the last prompt token. Everything is recorded in ``comparison.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp.base.atomic import write_json_atomic, write_text_atomic
from interp.base.cli import ArgumentParser, number, run_cli, seed_int
from interp.base.paths import input_dir, output_dir
from interp.base.provenance import provenance

# The matrices, nulls and artifact loading live in modules of their own; the names the
# notebooks and benchmarks import from here stay importable.
from interp.compare_io import (
    PER_SAMPLE_SUFFIX,
    CompareError,
    artifact_sha256,
    check_compatible,
    load_direction_sets,
    load_labelled_samples,
    ordered_domains,
)
from interp.cosines import cosine_matrix, domain_matrices, layer_matrix
from interp.directions import DirectionSet
from interp.nulls import contrast, pooled_samples, random_null, shuffled_label_null, split_half_reliability

__all__ = [
    "CompareError",
    "check_compatible",
    "cosine_matrix",
    "domain_matrices",
    "layer_matrix",
    "load_direction_sets",
    "main",
    "ordered_domains",
    "pooled_samples",
    "random_null",
    "run",
    "shuffled_label_null",
    "split_half_reliability",
    "write_csv",
]

CONSISTENCY_MIN = 0.999  # per-sample files must reproduce the artifact's direction this well


# --- output ---------------------------------------------------------------------------------


def _json_matrix(m: torch.Tensor) -> list:
    """Nested lists with NaN as null (JSON has no NaN)."""
    return [[None if math.isnan(v) else round(v, 8) for v in row] for row in m.tolist()]


def write_csv(path: str | Path, matrix: torch.Tensor, rows: Sequence[str], cols: Sequence[str]) -> None:
    """A labelled matrix as CSV (first column: row labels), written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", *cols])
    for label, values in zip(rows, matrix.tolist()):
        writer.writerow([label, *("" if math.isnan(v) else f"{v:.6f}" for v in values)])
    write_text_atomic(path, buf.getvalue())


def _null_summary(ds: DirectionSet, folder: Path, n_perm: int, n_splits: int, seed: int) -> dict[str, Any]:
    tensors, labels = load_labelled_samples(folder, ds.layers)
    x, weights = pooled_samples(tensors, ds.pooling)
    try:
        null = shuffled_label_null(x, labels, n_perm=n_perm, seed=seed, weights=weights)
        halves = split_half_reliability(x, labels, n_splits=n_splits, seed=seed, weights=weights)
    except ValueError as e:  # too few samples in a class: the folder's content, so the user's to fix
        raise CompareError(f"{folder}: {e}") from None
    # The direction recomputed from the per-sample files should be the artifact's own; a low
    # cosine means the folder belongs to other answers or another pooling.
    kept = weights > 0
    recomputed = torch.einsum("n,nld->ld", contrast(labels[kept], weights[kept]), x[kept].double())
    consistency = torch.nn.functional.cosine_similarity(recomputed, ds.directions.double(), dim=-1)
    return {
        "per_sample": str(folder),
        "n_samples": {"misaligned": int(labels.sum()), "aligned": int((~labels).sum())},
        "consistency_min_cos": float(consistency.min()),
        "shuffled_label": {"n_perm": n_perm, **null.summary()},
        "split_half": {
            "n_splits": n_splits,
            "mean": halves.mean(0).tolist(),
            "std": halves.std(0).tolist() if n_splits > 1 else None,
        },
    }


@dataclass
class _Figures:
    """Writes a run's CSVs and heatmaps under ``out``, remembering every file it wrote."""

    out: Path
    formats: Sequence[str]
    written: set[Path] = field(default_factory=set)

    def matrix(
        self,
        stem: Path,
        m: torch.Tensor,
        rows: Sequence[str],
        cols: Sequence[str],
        title: str,
        xlabel: str = "",
        ylabel: str = "",
    ) -> None:
        from interp.plots import heatmap_figure, save_figure  # matplotlib only when drawing

        write_csv(f"{stem}.csv", m, rows, cols)
        self.written.add(Path(f"{stem}.csv"))
        self.written.update(
            save_figure(heatmap_figure(m.numpy(), rows, cols, title, xlabel, ylabel), stem, self.formats)
        )

    def grid(
        self,
        stem: Path,
        matrices: Sequence[torch.Tensor],
        titles: Sequence[str],
        rows: Sequence[str],
        cols: Sequence[str],
        title: str,
    ) -> None:
        from interp.plots import grid_figure, save_figure

        self.written.update(
            save_figure(grid_figure([m.numpy() for m in matrices], titles, rows, cols, title), stem, self.formats)
        )

    def remove_stale(self) -> None:
        """An earlier run's figures of other domains, layers or formats would pass for this run's."""
        subs = (self.out / "domains", self.out / "layers")
        for stale in sorted(
            p
            for sub in subs
            for p in sub.glob("*")
            if p.suffix in (".csv", ".png", ".svg", ".pdf") and p not in self.written
        ):
            stale.unlink()


def _per_sample_nulls(
    directions_dir: Path, sets: dict[str, DirectionSet], n_perm: int, n_splits: int, seed: int
) -> dict[str, dict[str, Any]]:
    """The nulls of every domain with a per-sample folder. The folders are inputs too: read
    (and refused) before any output is written."""
    out = {}
    for name, ds in sets.items():
        folder = directions_dir / f"{name}{PER_SAMPLE_SUFFIX}"
        if folder.is_dir():
            out[name] = _null_summary(ds, folder, n_perm, n_splits, seed)
    return out


def _warnings(sets: dict[str, DirectionSet], nulls: dict[str, dict[str, Any]]) -> list[str]:
    """What makes the comparison doubtful: mixed poolings or spans, per-sample files of other answers."""
    poolings = sorted({ds.pooling for ds in sets.values()})
    spans = sorted({ds.span for ds in sets.values()})
    warnings = [f"directions pooled differently: {', '.join(poolings)}"] if len(poolings) > 1 else []
    warnings += [f"directions averaged over different spans: {', '.join(spans)}"] if len(spans) > 1 else []
    warnings += [
        f"{name}: per-sample files give a direction at cos {s['consistency_min_cos']:.4f} to the artifact's; do they belong to it?"
        for name, s in nulls.items()
        if s["consistency_min_cos"] < CONSISTENCY_MIN
    ]
    return warnings


def _artifacts(directions_dir: Path, sets: dict[str, DirectionSet]) -> dict[str, dict[str, Any]]:
    """What each compared artifact is: path, hash, layers, pooling, span, counts, metadata."""
    return {
        name: {
            "path": str(directions_dir / f"{name}.safetensors"),
            "sha256": artifact_sha256(directions_dir / f"{name}.safetensors"),
            "layers": ds.layers,
            "pooling": ds.pooling,
            "span": ds.span,
            "counts": ds.counts,
            "metadata": ds.metadata,
        }
        for name, ds in sets.items()
    }


def _draw_matrices(
    figures: _Figures, sets: dict[str, DirectionSet], cross: Sequence[tuple[str, str]], absolute: bool, note: str
) -> dict[str, Any]:
    """Every cosine matrix, written as CSV and heatmap; returned for ``comparison.json``."""
    out, names = figures.out, list(sets)
    layers = next(iter(sets.values())).layers
    labels = [str(l) for l in layers]
    kind = "|cos|" if absolute else "cos"
    by_layer = domain_matrices(sets, absolute=absolute)
    for k, layer in enumerate(layers):
        figures.matrix(
            out / "domains" / f"layer_{layer:02d}",
            by_layer[k],
            names,
            names,
            f"{kind} between domains, layer {layer}\n{note}",
        )
    figures.grid(
        out / "domains" / "grid",
        list(by_layer),
        [f"layer {l}" for l in layers],
        names,
        names,
        f"{kind} between domains per layer ({note})",
    )
    within = {name: layer_matrix(ds, absolute=absolute) for name, ds in sets.items()}
    for name, m in within.items():
        figures.matrix(out / "layers" / name, m, labels, labels, f"{kind} between layers: {name}", "layer", "layer")
    figures.grid(
        out / "layers" / "grid", list(within.values()), names, labels, labels, f"{kind} between layers, per domain"
    )
    across = {}
    for a, b in cross:
        across[f"{a}__vs__{b}"] = m = layer_matrix(sets[a], sets[b], absolute=absolute)
        figures.matrix(
            out / "layers" / f"{a}__vs__{b}",
            m,
            labels,
            labels,
            f"{kind} between layers\n{a} (rows) vs {b} (columns)",
            f"{b} layer",
            f"{a} layer",
        )
    return {
        "domain_matrices": {str(l): _json_matrix(by_layer[k]) for k, l in enumerate(layers)},
        "layer_matrices": {name: _json_matrix(m) for name, m in within.items()},
        "cross_layer_matrices": {name: _json_matrix(m) for name, m in across.items()},
    }


def run(
    directions_dir: str | Path,
    out_dir: str | Path,
    domains: Sequence[str] | None = None,
    cross: Sequence[tuple[str, str]] = (),
    absolute: bool = False,
    n_perm: int = 100,
    n_splits: int = 20,
    seed: int = 0,
    formats: Sequence[str] = ("png", "svg"),
) -> dict[str, Any]:
    """Compute every matrix and null, write figures, CSVs and ``comparison.json``; return the JSON."""
    directions_dir = Path(directions_dir)
    sets = load_direction_sets(directions_dir, domains)
    for a, b in cross:
        if a not in sets or b not in sets:
            raise CompareError(f"--cross {a}:{b}: no such domain among {', '.join(sets)}")
    ref = next(iter(sets.values()))
    null = random_null(ref.directions.shape[-1])
    nulls = _per_sample_nulls(directions_dir, sets, n_perm, n_splits, seed)
    figures = _Figures(Path(out_dir), formats)
    matrices = _draw_matrices(figures, sets, cross, absolute, f"random-direction |cos| p95 = {null.p95_abs:.3f}")
    result = provenance(
        stage="interp.compare",
        absolute=absolute,
        layers=ref.layers,
        d_model=ref.directions.shape[-1],
        domains=list(sets),
        warnings=_warnings(sets, nulls),
        artifacts=_artifacts(directions_dir, sets),
        **matrices,
        random_null=null.to_dict(),
        per_sample_nulls=nulls,
    )
    figures.remove_stale()
    write_json_atomic(figures.out / "comparison.json", result)
    return result


# --- CLI ------------------------------------------------------------------------------------


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"expected DOMAIN_A:DOMAIN_B, got {text!r}")
    return a, b


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m interp.compare",
        description="Cosine-similarity matrices, nulls and heatmaps for direction artifacts.",
    )
    parser.add_argument(
        "--directions", default="artifacts/directions", help="folder of <domain>.safetensors (default: %(default)s)"
    )
    parser.add_argument("--out", default="artifacts/figures/compare", help="output folder (default: %(default)s)")
    parser.add_argument("--domains", nargs="+", help="only these domains (default: every artifact in the folder)")
    parser.add_argument(
        "--cross",
        type=_pair,
        action="append",
        default=[],
        metavar="A:B",
        help="also a layer x layer matrix of A's against B's directions (repeatable)",
    )
    parser.add_argument("--absolute", action="store_true", help="|cos| instead of signed cosines")
    parser.add_argument(
        "--n-perm",
        type=number(int, 2, 100_000),
        default=100,
        help="label permutations for the shuffled null, 2 to 100,000 (default: %(default)s; each costs one pass over the per-sample activations)",
    )
    parser.add_argument(
        "--n-splits",
        type=number(int, 1, 100_000),
        default=20,
        help="random halvings for split-half reliability, 1 to 100,000 (default: %(default)s)",
    )
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--formats", nargs="+", default=["png", "svg"], choices=["png", "svg", "pdf"])
    args = parser.parse_args(argv)
    input_dir(args.directions, "--directions")
    output_dir(args.out)
    result = run(
        args.directions,
        args.out,
        args.domains,
        args.cross,
        args.absolute,
        args.n_perm,
        args.n_splits,
        args.seed,
        args.formats,
    )
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    nulls = f", per-sample nulls for {', '.join(result['per_sample_nulls'])}" if result["per_sample_nulls"] else ""
    print(f"compared {len(result['domains'])} domains over {len(result['layers'])} layers{nulls}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
