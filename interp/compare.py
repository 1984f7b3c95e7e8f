"""Compare misalignment directions by cosine similarity, with nulls that say what is large.

Matrices (all cosines computed in float64; signed by default, ``absolute=True`` for |cos|):

- :func:`domain_matrices`: domain x domain at each layer, from ``{domain: DirectionSet}``;
- :func:`layer_matrix`: layer x layer within one domain, or across two.

Nulls and reliability:

- :func:`random_null`: the exact cosine distribution of two random Gaussian (isotropic)
  directions in ``d`` dimensions (``cos^2 ~ Beta(1/2, (d-1)/2)``, standard deviation
  ``1/sqrt(d)``). Residual streams are far from isotropic, so this null is lenient;
- :func:`shuffled_label_null`: directions from permuted misaligned/aligned labels of the
  same per-sample activations, which keeps the activations' geometry: their cosine with the
  true direction, and with each other (what two label-free "directions" share anyway);
- :func:`split_half_reliability`: cosine between directions from two disjoint halves of the
  answers, per layer. Each half has half the samples, so this understates the reliability
  of the full-sample direction.

**Per-sample convention** (written by the extraction step, read by the CLI): beside
``<dir>/<domain>.safetensors`` a folder ``<dir>/<domain>.per_sample/`` holds two
:func:`interp.cache.cache_means` ``per_sample_dir`` folders, ``misaligned/`` and
``aligned/``, cached over exactly the answers (after balancing) the direction was computed
from, over the same layers. Their per-sample activations are pooled as the artifact's
``pooling`` says: ``responses`` averages the per-answer means, ``tokens`` weights them by
answer length, ``last_prompt`` uses the last prompt token.

CLI: ``python -m interp.compare --directions artifacts/directions --out artifacts/figures/compare``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from scipy import stats
from scipy.special import gammaln

from interp.base.atomic import write_json_atomic, write_text_atomic
from interp.base.cli import ArgumentParser, InputError, number, positive_int, run_cli, seed_int
from interp.base.domains import DOMAINS
from interp.base.paths import input_dir, output_dir, read_text
from interp.base.provenance import provenance
from interp.directions import DirectionSet
from interp.shards import load_per_sample

PER_SAMPLE_SUFFIX = ".per_sample"
CLASSES = ("misaligned", "aligned")
CONSISTENCY_MIN = 0.999  # per-sample files must reproduce the artifact's direction this well


class CompareError(InputError):
    """A problem with the inputs, reported as one line by the CLI."""


# --- cosine matrices ------------------------------------------------------------------------


def cosine_matrix(a: torch.Tensor, b: torch.Tensor | None = None, absolute: bool = False) -> torch.Tensor:
    """[m, n] float64 cosines between the rows of ``a`` [m, d] and ``b`` [n, d] (default ``a``).

    A zero row has no direction: its cosines are NaN.
    """
    a = a.detach().double()
    b = a if b is None else b.detach().double()
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"vectors of different widths: {a.shape[-1]} and {b.shape[-1]}")
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    out = (a / na) @ (b / nb).T
    out[(na == 0).squeeze(-1)] = math.nan
    out[:, (nb == 0).squeeze(-1)] = math.nan
    return out.abs() if absolute else out


def check_compatible(sets: Mapping[str, DirectionSet]) -> None:
    """Raise CompareError unless all sets cover the same layers with the same width."""
    if not sets:
        raise CompareError("no direction sets to compare")
    (first, ref), *rest = sets.items()
    for name, ds in rest:
        if ds.layers != ref.layers:
            raise CompareError(f"mismatched layers: {first} has {ref.layers}, {name} has {ds.layers}")
        if ds.directions.shape[-1] != ref.directions.shape[-1]:
            raise CompareError(f"mismatched d_model: {first} has {ref.directions.shape[-1]}, {name} has {ds.directions.shape[-1]}")


def domain_matrices(sets: Mapping[str, DirectionSet], absolute: bool = False) -> torch.Tensor:
    """[n_layers, n_domains, n_domains] cosines, domains in the mapping's order."""
    check_compatible(sets)
    stacked = torch.stack([ds.directions for ds in sets.values()], 1)  # [n_layers, n_domains, d]
    return torch.stack([cosine_matrix(at_layer, absolute=absolute) for at_layer in stacked])


def layer_matrix(a: DirectionSet, b: DirectionSet | None = None, absolute: bool = False) -> torch.Tensor:
    """[len(a.layers), len(b.layers)] cosines between ``a``'s and ``b``'s (default ``a``) layers."""
    return cosine_matrix(a.directions, None if b is None else b.directions, absolute=absolute)


# --- nulls ----------------------------------------------------------------------------------


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
    return RandomNull(d=d, mean=0.0, std=1 / math.sqrt(d), mean_abs=mean_abs, p95=abs_quantile(0.90), p95_abs=abs_quantile(0.95), p99_abs=abs_quantile(0.99))


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


def _contrast(labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
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
        raise ValueError(f"per_sample must be [n, n_layers, d] with n = {labels.shape[0]} labels, got {tuple(per_sample.shape)}")
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
    rows = [_contrast(labels, weights)]
    for _ in range(n_perm):
        perm = torch.randperm(len(labels), generator=g)
        rows.append(_contrast(labels[perm], weights))  # labels move, samples keep their weights
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
        rows += [_contrast(labels, weights * h) for h in halves]
    cos = _cosines_per_layer(x, torch.stack(rows))  # [n_layers, 2 n_splits, 2 n_splits]
    k = torch.arange(n_splits)
    return cos[:, 2 * k, 2 * k + 1].T.contiguous()


# --- artifacts ------------------------------------------------------------------------------


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
            raise CompareError(f"{manifest}: not valid JSON; the per-sample folder is damaged (extract again with --per-sample)") from None
        if not isinstance(info, dict):
            raise CompareError(f"{manifest}: expected a JSON object")
        if (found := info.get("layers")) != list(layers):
            raise CompareError(f"{sub}: per-sample layers {found} differ from the artifact's {list(layers)}")
        parts.append(load_per_sample(sub))
    tensors = {k: torch.cat([p[k] for p in parts]) for k in ("response_mean", "last_prompt", "n_tokens")}
    labels = torch.cat([torch.full((len(p["index"]),), cls == "misaligned") for p, cls in zip(parts, CLASSES)])
    return tensors, labels


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


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
    recomputed = torch.einsum("n,nld->ld", _contrast(labels[kept], weights[kept]), x[kept].double())
    consistency = torch.nn.functional.cosine_similarity(recomputed, ds.directions.double(), dim=-1)
    return {
        "per_sample": str(folder),
        "n_samples": {"misaligned": int(labels.sum()), "aligned": int((~labels).sum())},
        "consistency_min_cos": float(consistency.min()),
        "shuffled_label": {"n_perm": n_perm, **null.summary()},
        "split_half": {"n_splits": n_splits, "mean": halves.mean(0).tolist(), "std": halves.std(0).tolist() if n_splits > 1 else None},
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
    from interp.plots import (  # matplotlib only when drawing
        grid_figure,
        heatmap_figure,
        save_figure,
    )

    directions_dir, out = Path(directions_dir), Path(out_dir)
    sets = load_direction_sets(directions_dir, domains)
    for a, b in cross:
        if a not in sets or b not in sets:
            raise CompareError(f"--cross {a}:{b}: no such domain among {', '.join(sets)}")
    names = list(sets)
    ref = next(iter(sets.values()))
    layers, d = ref.layers, ref.directions.shape[-1]
    layer_labels = [str(l) for l in layers]
    kind = "|cos|" if absolute else "cos"
    null = random_null(d)
    note = f"random-direction |cos| p95 = {null.p95_abs:.3f}"

    # The per-sample folders are inputs too: read (and refused) before any output is written.
    per_domain_nulls = {}
    for name in names:
        folder = directions_dir / f"{name}{PER_SAMPLE_SUFFIX}"
        if folder.is_dir():
            per_domain_nulls[name] = _null_summary(sets[name], folder, n_perm, n_splits, seed)

    def emit(stem: Path, m: torch.Tensor, rows: Sequence[str], cols: Sequence[str], title: str, xlabel: str = "", ylabel: str = "") -> None:
        write_csv(f"{stem}.csv", m, rows, cols)
        save_figure(heatmap_figure(m.numpy(), rows, cols, title, xlabel, ylabel), stem, formats)

    by_layer = domain_matrices(sets, absolute=absolute)
    for k, layer in enumerate(layers):
        emit(out / "domains" / f"layer_{layer:02d}", by_layer[k], names, names, f"{kind} between domains, layer {layer}\n{note}")
    save_figure(grid_figure([m.numpy() for m in by_layer], [f"layer {l}" for l in layers], names, names, f"{kind} between domains per layer ({note})"), out / "domains" / "grid", formats)

    within = {name: layer_matrix(ds, absolute=absolute) for name, ds in sets.items()}
    for name, m in within.items():
        emit(out / "layers" / name, m, layer_labels, layer_labels, f"{kind} between layers: {name}", "layer", "layer")
    save_figure(grid_figure([m.numpy() for m in within.values()], names, layer_labels, layer_labels, f"{kind} between layers, per domain"), out / "layers" / "grid", formats)

    across = {}
    for a, b in cross:
        across[f"{a}__vs__{b}"] = m = layer_matrix(sets[a], sets[b], absolute=absolute)
        emit(out / "layers" / f"{a}__vs__{b}", m, layer_labels, layer_labels, f"{kind} between layers\n{a} (rows) vs {b} (columns)", f"{b} layer", f"{a} layer")

    poolings = sorted({ds.pooling for ds in sets.values()})
    spans = sorted({ds.span for ds in sets.values()})
    warnings = [f"directions pooled differently: {', '.join(poolings)}"] if len(poolings) > 1 else []
    warnings += [f"directions averaged over different spans: {', '.join(spans)}"] if len(spans) > 1 else []
    warnings += [
        f"{name}: per-sample files give a direction at cos {s['consistency_min_cos']:.4f} to the artifact's; do they belong to it?"
        for name, s in per_domain_nulls.items()
        if s["consistency_min_cos"] < CONSISTENCY_MIN
    ]
    result = provenance(
        stage="interp.compare",
        absolute=absolute,
        layers=layers,
        d_model=d,
        domains=names,
        warnings=warnings,
        artifacts={
            name: {"path": str(directions_dir / f"{name}.safetensors"), "sha256": _sha256(directions_dir / f"{name}.safetensors"), "layers": ds.layers, "pooling": ds.pooling, "span": ds.span, "counts": ds.counts, "metadata": ds.metadata}
            for name, ds in sets.items()
        },
        domain_matrices={str(l): _json_matrix(by_layer[k]) for k, l in enumerate(layers)},
        layer_matrices={name: _json_matrix(m) for name, m in within.items()},
        cross_layer_matrices={name: _json_matrix(m) for name, m in across.items()},
        random_null=null.to_dict(),
        per_sample_nulls=per_domain_nulls,
    )
    write_json_atomic(out / "comparison.json", result)
    return result


# --- CLI ------------------------------------------------------------------------------------


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"expected DOMAIN_A:DOMAIN_B, got {text!r}")
    return a, b


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m interp.compare", description="Cosine-similarity matrices, nulls and heatmaps for direction artifacts.")
    parser.add_argument("--directions", default="artifacts/directions", help="folder of <domain>.safetensors (default: %(default)s)")
    parser.add_argument("--out", default="artifacts/figures/compare", help="output folder (default: %(default)s)")
    parser.add_argument("--domains", nargs="+", help="only these domains (default: every artifact in the folder)")
    parser.add_argument("--cross", type=_pair, action="append", default=[], metavar="A:B", help="also a layer x layer matrix of A's against B's directions (repeatable)")
    parser.add_argument("--absolute", action="store_true", help="|cos| instead of signed cosines")
    parser.add_argument("--n-perm", type=number(int, 2, 100_000), default=100, help="label permutations for the shuffled null, 2 to 100,000 (default: %(default)s; each costs one pass over the per-sample activations)")
    parser.add_argument("--n-splits", type=positive_int, default=20, help="random halvings for split-half reliability (default: %(default)s)")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--formats", nargs="+", default=["png", "svg"], choices=["png", "svg", "pdf"])
    args = parser.parse_args(argv)
    input_dir(args.directions, "--directions")
    output_dir(args.out)
    result = run(args.directions, args.out, args.domains, args.cross, args.absolute, args.n_perm, args.n_splits, args.seed, args.formats)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    nulls = f", per-sample nulls for {', '.join(result['per_sample_nulls'])}" if result["per_sample_nulls"] else ""
    print(f"compared {len(result['domains'])} domains over {len(result['layers'])} layers{nulls}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
