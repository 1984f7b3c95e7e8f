"""What the distilled judges' two cards share (``judge_eval.py --train-shipped`` writes v1's,
``judge_finetune.py`` v2's): the held-out figures their weights' metadata records, the labels of
their held-out table and its target cells."""

from __future__ import annotations

from judge_eval_figures import TARGETS, meets

# The held-out figures a card's table shows, with their labels; each card adds its own rows.
FIGURE_LABELS = {
    "auroc_em": "EM AUROC",
    "auprc_em": "EM AUPRC",
    "spearman_aligned": "Spearman with GPT-4o aligned",
    "spearman_coherent": "Spearman with GPT-4o coherent",
    "per_run_em_error_median": "per-run abs. EM-rate error, median (points)",
    "per_run_em_error_max": "per-run abs. EM-rate error, max (points)",
}


def heldout_figures(row: dict) -> dict:
    """The held-out figures of a judge's row that its weights' metadata records."""
    return {k: row[k] for k in FIGURE_LABELS}


def target_cells(figure: str, value: float) -> str:
    """The table's target and met cells for ``figure`` (one of :data:`TARGETS`): ``>= 0.985 | no``."""
    bound, kind = TARGETS[figure]
    return f"{'>=' if kind == 'min' else '<='} {bound:g} | {'yes' if meets(figure, value) else 'no'}"
