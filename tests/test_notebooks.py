"""The narrative notebooks run end to end (fast mode) and save their figures where they are told."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]

FIGURES = {
    "layer_similarity_heatmaps.ipynb": [
        "domains_per_layer.png",
        "layers_insecure_code.png",
        "layers_insecure_code__vs__bad_medical_advice.png",
    ],
    "cross_domain_steering.ipynb": ["steering_sweep.png", "ablation_sweep.png", "cross_domain_matrix.png"],
}


def test_notebooks_are_committed_without_outputs():
    for name in FIGURES:
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_saves_figures(name, world, tmp_path, monkeypatch):
    monkeypatch.setenv("EM_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("EM_NOTEBOOK_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("EM_NOTEBOOK_DIRECTIONS", str(tmp_path / "directions"))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    # cwd = the repository root: the notebooks find the cached organism world under artifacts/.
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    for fig in FIGURES[name]:
        assert (tmp_path / "figures" / fig).stat().st_size > 0, fig
