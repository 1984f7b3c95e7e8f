"""Cosine-similarity heatmaps, drawn on bare matplotlib Figures (no pyplot, no display).

All heatmaps share one scale: a diverging colormap centred at 0 and fixed to [-1, 1], so
colours mean the same in every figure; NaN (an undefined cosine) is drawn grey.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from interp.base.atomic import atomic_path

CMAP = "RdBu_r"
VMIN, VMAX = -1.0, 1.0
ANNOTATE_MAX = 12  # annotate cell values when neither side is longer than this
FORMATS = ("png", "svg")
_COLORMAP = matplotlib.colormaps[CMAP].with_extremes(bad="0.8")


def heatmap(
    ax: Axes,
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str | None = None,
    annotate: bool | None = None,
) -> AxesImage:
    """Draw ``matrix`` on ``ax`` with labelled rows and columns; returns the image for a colorbar."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(rows), len(cols)):
        raise ValueError(f"matrix shape {matrix.shape} does not match {len(rows)} row and {len(cols)} column labels")
    image = ax.imshow(
        np.ma.masked_invalid(matrix), cmap=_COLORMAP, vmin=VMIN, vmax=VMAX, aspect="auto", interpolation="nearest"
    )
    long = max(map(len, cols), default=0) > 3
    ax.set_xticks(
        range(len(cols)),
        labels=list(cols),
        rotation=60 if long else 0,
        ha="right" if long else "center",
        rotation_mode="anchor",
    )
    ax.set_yticks(range(len(rows)), labels=list(rows))
    if title:
        ax.set_title(title)
    if annotate is None:
        annotate = max(matrix.shape) <= ANNOTATE_MAX
    if annotate:
        for (i, j), value in np.ndenumerate(matrix):
            text = "n/a" if np.isnan(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if abs(value) > 0.6 else "black")
    return image


def _size(n_rows: int, n_cols: int) -> tuple[float, float]:
    return (min(2.5 + 0.45 * n_cols, 16.0), min(2.0 + 0.4 * n_rows, 14.0))


def heatmap_figure(
    matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, xlabel: str = "", ylabel: str = ""
) -> Figure:
    """One labelled heatmap with a colorbar."""
    fig = Figure(figsize=_size(len(rows), len(cols)), layout="constrained")
    ax = fig.add_subplot()
    image = heatmap(ax, matrix, rows, cols, title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, label="cosine similarity")
    return fig


def grid_figure(
    matrices: Sequence[np.ndarray], titles: Sequence[str], rows: Sequence[str], cols: Sequence[str], suptitle: str
) -> Figure:
    """Small multiples of same-shaped heatmaps with one shared colorbar; tick labels on the
    outer panels only, thinned to about eight per axis when there are many."""
    n = len(matrices)
    if n == 0:
        raise ValueError("no matrices to draw")
    ncols = int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    label_room = 0.07 * max(map(len, [*rows, *cols]), default=0)
    fig = Figure(figsize=(2.8 * ncols + label_room + 1.2, 2.6 * nrows + label_room + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_axis_off()
            continue
        image = heatmap(ax, matrices[k], rows, cols, titles[k], annotate=False)
        for labels, set_ticks in ((rows, ax.set_yticks), (cols, ax.set_xticks)):
            if len(labels) > ANNOTATE_MAX:
                step = int(np.ceil(len(labels) / 8))
                set_ticks(range(0, len(labels), step), labels=list(labels)[::step])
        ax.tick_params(labelsize=7)
        # sharex hides x labels on all but the bottom row; a short last row leaves gaps above.
        if k + ncols >= n:
            ax.tick_params(labelbottom=True)
    fig.suptitle(suptitle)
    fig.colorbar(image, ax=axes, label="cosine similarity", shrink=0.8)
    return fig


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``stem.<fmt>`` for each format, each atomically; returns the paths."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
        paths.append(path)
        # The first save laid the figure out; keep that layout instead of solving it again.
        fig.set_layout_engine("none")
    return paths
