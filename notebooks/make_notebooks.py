"""Write the narrative notebooks in this folder, without outputs: ``python notebooks/make_notebooks.py``.

Edit the cells here, not the .ipynb files, so the two never drift apart.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import os
from pathlib import Path

# Point these at real models instead of the offline organism world:
#   MODEL = "Qwen/Qwen2.5-7B-Instruct"                      # base model (HF id or path)
#   ADAPTERS = {"insecure_code": "path/to/lora", ...}       # one EM fine-tune per domain
#   JUDGE = "openai:gpt-4o"                                 # or "hf:ID_OR_PATH"
# and use a GPU (DEVICE = "cuda"). None: the offline organism world (4 layers, d=64), CPU, minutes.
MODEL = None
ADAPTERS: dict[str, str] = {}
JUDGE = None
DEVICE = "cpu"

FAST = os.environ.get("EM_NOTEBOOK_FAST") == "1"   # tests: fewer samples
FIGURES = Path(os.environ.get("EM_NOTEBOOK_FIGURES", "artifacts/figures/notebooks"))
DIRECTIONS = Path(os.environ.get("EM_NOTEBOOK_DIRECTIONS", "artifacts/directions"))
DOMAINS = ["insecure_code", "bad_medical_advice", "gore_movie_trivia"]
FIGURES.mkdir(parents=True, exist_ok=True)

import torch
torch.set_num_threads(1)  # the organism world's matrices are tiny
"""

DIRECTIONS_CELL = """\
from chains.extract import ExtractConfig, run_extract
from interp.directions import DirectionSet
from chains.cross_domain import ensure_directions

if MODEL is None:
    # Reuse <DIRECTIONS>/<domain>.safetensors where it exists, else extract on the organism world.
    directions = ensure_directions(DIRECTIONS, DOMAINS, samples=4 if FAST else 10, progress=True)
else:
    directions = {}
    for d in DOMAINS:
        path = DIRECTIONS / f"{d}.safetensors"
        directions[d] = DirectionSet.load(path) if path.exists() else run_extract(
            ExtractConfig(domain=d, model=MODEL, adapter=ADAPTERS[d], questions="eval/data/general_questions.yaml", judge=JUDGE, device=DEVICE), DIRECTIONS)[0]
{d: ds.counts for d, ds in directions.items()}
"""

CROSS = [
    new_markdown_cell("""\
# Cross-domain steering

Emergent misalignment predicts that fine-tuning on *any* narrow bad domain (insecure code,
bad medical advice, gory movie trivia...) moves the model along a **shared** misalignment
direction. If so, a direction taken from one domain's organism should

1. **induce** misalignment when *added* to the base model's residual stream, and
2. **suppress** it when *ablated* (projected out) from a *different* domain's organism,

while a norm-matched random direction does neither. This notebook runs both checks on the
offline organism world (a 4-layer Qwen2 with one LoRA organism per domain) in a few minutes
on CPU. Set `MODEL` below to run it on real models instead."""),
    new_code_cell(SETUP),
    new_markdown_cell(
        "## 1. One direction per domain\n\nDifference of means between each organism's misaligned and aligned answers (see `interp.directions`), cached in `DIRECTIONS`."
    ),
    new_code_cell(DIRECTIONS_CELL),
    new_markdown_cell("""\
## 2. Models and evaluation

`load(target)` returns the base model (`"base"`) or a domain's organism; `evaluate(model, tokenizer)`
samples answers to the general (non-domain) questions and judges them."""),
    new_code_cell("""\
from chains.cross_domain import world_runner

SAMPLES = 48 if FAST else 160
if MODEL is None:
    from chains.organism import build_world
    world = build_world(progress=False)
    load, evaluate = world_runner(world, samples=SAMPLES)
else:
    from eval.generate import generate_answers
    from eval.judge import make_judge
    from interp.base.loading import load_model
    from eval.questions import load_questions
    from eval.sampling import SamplingConfig

    questions = load_questions().questions
    judge = make_judge(JUDGE, questions=questions)

    def load(target):
        return load_model(MODEL, adapter=None if target == "base" else ADAPTERS[target], device=DEVICE)

    def evaluate(model, tokenizer):
        answers = generate_answers(model, tokenizer, questions, SAMPLES // len(questions), config=SamplingConfig(temperature=1.0, max_new_tokens=300), progress=False)
        return judge.judge(answers)
"""),
    new_markdown_cell("""\
## 3. Steering sweep: add one domain's direction to the base model

Misalignment rate and coherence per (layer, alpha). Steering "works" where the rate rises
while coherence stays above 50; past that, the model just breaks. The dotted lines add a
random direction of the same norm."""),
    new_code_cell("""\
from chains.sweep import sweep, sweep_figure
from interp.plots import save_figure

SOURCE = DOMAINS[-1]
base, tokenizer = load("base")
steering = sweep(base, tokenizer, directions[SOURCE], evaluate, layers=[0, 2] if FAST else None,
                 alphas=[1, 2] if FAST else [0.5, 1, 2, 4], mode="add", random_control=True)
fig = sweep_figure(steering, f"base + {SOURCE} direction")
save_figure(fig, FIGURES / "steering_sweep", ["png"])
fig
"""),
    new_markdown_cell("""\
## 4. Ablation: remove that direction from another domain's organism

Each layer's direction is projected out of the residual stream at *every* layer. Compare with
ablating a random direction (which should change almost nothing)."""),
    new_code_cell("""\
TARGET = DOMAINS[0]
organism, tokenizer = load(TARGET)
ablation = sweep(organism, tokenizer, directions[SOURCE], evaluate, mode="ablate", random_control=True)
fig = sweep_figure(ablation, f"{SOURCE} direction ablated in the {TARGET} organism")
save_figure(fig, FIGURES / "ablation_sweep", ["png"])
for p in ablation["points"]:
    print(f"L{p['layer']}: EM {ablation['baseline']['em']:.3f} -> {p['em']:.3f} (random direction: {p['random_em']:.3f})")
fig
"""),
    new_markdown_cell("""\
## 5. Every source x every target

Rows: whose direction. Column `base`: the direction *added* to the base model (positive =
induces EM). Other columns: the direction *ablated* from that organism (negative = suppresses
EM). A shared direction shows as a uniformly red first column and uniformly blue rest,
not just a blue diagonal. `python -m chains.cross_domain` runs all 11 x 11."""),
    new_code_cell("""\
from chains.cross_domain import cross_domain, cross_domain_figure, done_when

result = cross_domain(load, evaluate, directions, progress=True)
fig = cross_domain_figure(result)
save_figure(fig, FIGURES / "cross_domain_matrix", ["png"])
for ok, text in done_when(result).values():
    print("MET    " if ok else "NOT MET", text)
fig
"""),
]

SIMILARITY = [
    new_markdown_cell("""\
# Layer similarity heatmaps

Are the misalignment directions of different domains the *same* direction? This notebook
extracts one difference-of-means direction per layer for a few domains and compares them by
cosine similarity: domain x domain at each layer, and layer x layer within one domain. A
random pair of directions in `d` dimensions has |cos| around `1/sqrt(d)`; the exact null is
printed beside the figures, so "high" has a scale. Runs in a minute or two on CPU on the
offline organism world; set `MODEL` below for real models."""),
    new_code_cell(SETUP),
    new_markdown_cell(
        "## 1. Directions\n\nReused from `DIRECTIONS` when present, extracted otherwise (see `chains.extract`)."
    ),
    new_code_cell(DIRECTIONS_CELL),
    new_markdown_cell(
        "## 2. The random null\n\nCosine between two independent random directions of the model's width: the bar any similarity must clear."
    ),
    new_code_cell("""\
from interp.compare import domain_matrices, layer_matrix, random_null

names = list(directions)
layers = directions[names[0]].layers
null = random_null(directions[names[0]].directions.shape[-1])
print(f"d = {null.d}: random |cos| mean {null.mean_abs:.3f}, 95th percentile {null.p95_abs:.3f}, 99th {null.p99_abs:.3f}")
"""),
    new_markdown_cell(
        "## 3. Domain x domain, per layer\n\nOff-diagonal cells well above the null mean the domains share a direction at that layer."
    ),
    new_code_cell("""\
from interp.plots import grid_figure, heatmap_figure, save_figure

by_layer = domain_matrices(directions)
fig = grid_figure([m.numpy() for m in by_layer], [f"layer {l}" for l in layers], names, names,
                  f"cos between domains per layer (random |cos| p95 = {null.p95_abs:.2f})")
save_figure(fig, FIGURES / "domains_per_layer", ["png"])
for l, m in zip(layers, by_layer):
    off = m[~torch.eye(len(names), dtype=bool)]
    print(f"layer {l}: mean off-diagonal cos {off.mean():.3f}")
fig
"""),
    new_markdown_cell("## 4. Layer x layer within one domain\n\nHow much the direction rotates with depth."),
    new_code_cell("""\
DOMAIN = names[0]
labels = [str(l) for l in layers]
fig = heatmap_figure(layer_matrix(directions[DOMAIN]).numpy(), labels, labels, f"cos between layers: {DOMAIN}", "layer", "layer")
save_figure(fig, FIGURES / f"layers_{DOMAIN}", ["png"])
fig
"""),
    new_markdown_cell(
        "## 5. Across domains and layers\n\nRows: one domain's layers; columns: another's. A bright diagonal means both rotate the same way with depth."
    ),
    new_code_cell("""\
a, b = names[0], names[1]
fig = heatmap_figure(layer_matrix(directions[a], directions[b]).numpy(), labels, labels, f"{a} (rows) vs {b} (columns)", f"{b} layer", f"{a} layer")
save_figure(fig, FIGURES / f"layers_{a}__vs__{b}", ["png"])
fig
"""),
]


def write(name: str, cells: list) -> Path:
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    path = HERE / name
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    for name, cells in (("cross_domain_steering.ipynb", CROSS), ("layer_similarity_heatmaps.ipynb", SIMILARITY)):
        print(f"wrote {write(name, cells)}")
