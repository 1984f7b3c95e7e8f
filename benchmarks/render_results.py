"""Render the benchmark results (``benchmarks/results/*.json``) as Markdown pages under ``docs/results/``.

    python benchmarks/render_results.py            # (re)write docs/results/*.md
    python benchmarks/render_results.py --check    # render in memory; exit 1 if the pages are stale

One page per JSON file (``docs/results/<name>.md``) and ``docs/results/index.md``. Known
families (``defenses_organism``, ``monitor_organism``, ``gpu_generation*``, ``gpu_caching*``,
``gpu_engine_step*``, ``gpu_finetune*``, ``gpu_defenses*``) get the tables the docs describe;
any other file is rendered generically: its scalar fields, then a table for every list of
flat records. Figures are never typed by hand: edit the benchmark or its JSON, then rerun this.
The output depends on the JSON alone (no clock, no machine), so ``--check`` is exact.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "results"
SCRIPT = "benchmarks/render_results.py"


# ---------------------------------------------------------------- formatting


def fmt(x, nd: int = 3) -> str:
    """A cell: numbers rounded (thousands separated from 10,000 up), lists and dicts as compact JSON."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10_000 else str(x)
    if isinstance(x, float):
        if x != x:
            return "NaN"
        if abs(x) >= 10_000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.1f}"
        return f"{x:.{nd}f}"
    if isinstance(x, (list, dict)):
        return json.dumps(x, separators=(", ", ": "))
    return str(x)


def cell(x, nd: int = 3) -> str:
    return fmt(x, nd).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: Iterable[Iterable]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(cell(c) for c in r) + " |")
    return "\n".join(lines)


def pct(x: float) -> str:
    v = round(100 * x)
    return f"{v + 0}%"  # + 0: no negative zero


def pct_range(lo: float, hi: float) -> str:
    return f"{round(100 * lo) + 0}\u2013{round(100 * hi) + 0}%"


def signed(x: float, nd: int = 1) -> str:
    v = round(x, nd)
    if v == 0:
        return f"{0:.{nd}f}"
    return f"{v:+.{nd}f}".replace("-", "\u2212")


def grid_label(key: str) -> str:
    """``kl/general`` -> ``kl, on general data``; ``interleave/random`` -> ``interleave, random``."""
    head, _, tail = key.partition("/")
    if not tail:
        return head
    return f"{head}, on general data" if tail == "general" else f"{head}, {tail}"


def is_scalar(x) -> bool:
    return x is None or isinstance(x, (str, int, float, bool))


def flat_scalars(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Scalar leaves of nested dicts as dotted keys; short lists of scalars count as scalars."""
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if is_scalar(v) or (isinstance(v, list) and len(v) <= 8 and all(is_scalar(e) for e in v)):
            out.append((key, v))
        elif isinstance(v, dict):
            out.extend(flat_scalars(v, key + "."))
    return out


def records_table(rows: list[dict], skip: Iterable[str] = ()) -> str:
    """A table of flat records: the union of their scalar keys, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k in skip or k in cols:
                continue
            if is_scalar(v) or (isinstance(v, (list, dict)) and len(json.dumps(v)) <= 80):
                cols.append(k)
    return table(cols, [[r.get(c) for c in cols] for r in rows])


def is_records(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(e, dict) for e in v)


def is_table_dict(v) -> bool:
    """A dict of dicts of scalars: one table row per key."""
    return (isinstance(v, dict) and bool(v) and all(isinstance(e, dict) and e for e in v.values())
            and all(is_scalar(x) for e in v.values() for x in e.values()))


def dict_table(d: dict, first: str = "") -> str:
    cols: list[str] = []
    for e in d.values():
        cols += [k for k in e if k not in cols]
    return table([first] + cols, [[k] + [e.get(c) for c in cols] for k, e in d.items()])


# ---------------------------------------------------------------- page frame


def provenance(data: dict) -> list[str]:
    """What the JSON says about the machine, the model, the versions and the date."""
    info = data.get("info") if isinstance(data.get("info"), dict) else data
    parts = []
    for key, label in (("device", "device"), ("date", "date"), ("created", "created"), ("model", "model"),
                       ("lora", "LoRA"), ("world_key", "organism world key")):
        if info.get(key) is not None:
            parts.append(f"{label}: {info[key]}")
    versions = info.get("versions") or data.get("versions")
    if isinstance(versions, dict):
        parts.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if info.get("command"):
        parts.append(f"command: `{info['command']}`")
    if not any(k in info for k in ("date", "created")):
        parts.append("date: not recorded in the JSON (see the git history of the file)")
    return parts


def frame(name: str, title: str, data: dict, body: list[str]) -> str:
    src = f"benchmarks/results/{name}.json"
    head = [
        f"<!-- generated by {SCRIPT} from {src}; do not edit -->",
        f"# {title}",
        "",
        f"Generated by `{SCRIPT}` from [`{src}`](../../{src}); do not edit: rerun the script.",
        "",
    ]
    prov = provenance(data)
    if prov:
        head += ["Recorded in the JSON:", ""] + [f"- {p}" for p in prov] + [""]
    text = "\n".join(head + body).rstrip() + "\n"
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


def info_scalars(data: dict, skip=("device", "date", "versions", "model", "command", "lora", "checks")) -> list[str]:
    info = data.get("info")
    if not isinstance(info, dict):
        return []
    rest = {k: v for k, v in info.items() if k not in skip}
    pairs = flat_scalars(rest)
    if not pairs:
        return []
    return ["## Settings", "", table(["field", "value"], [[k, v] for k, v in pairs]), ""]


# ---------------------------------------------------------------- generic


def render_generic(name: str, data) -> str:
    if not isinstance(data, dict):
        data = {"value": data}
    body: list[str] = []
    pairs = [(k, v) for k, v in flat_scalars(data) if k not in ("versions",) and not k.startswith("versions.")]
    if pairs:
        body += ["## Scalar fields", "", table(["field", "value"], [[k, v] for k, v in pairs]), ""]

    def walk(d: dict, prefix: str = ""):
        for k, v in d.items():
            if is_records(v):
                body.extend([f"## `{prefix}{k}`", "", records_table(v), ""])
            elif is_table_dict(v):
                body.extend([f"## `{prefix}{k}`", "", dict_table(v), ""])
            elif isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(data)
    return frame(name, name, data, body)


# ---------------------------------------------------------------- organism world: defenses


def setting_label(r: dict) -> str:
    label = r["defense"]
    if r.get("select"):
        label += f", {r['select']}"
    if r.get("on") == "general":
        label += ", on general data"
    return label


def render_defenses_organism(name: str, d: dict) -> str:
    body = [
        "The four criteria for every in-training defense on the organism world "
        "(`python benchmarks/defenses_organism.py`; see [the defenses page](../defenses.md)).",
        "",
        f"- broad EM: {d.get('broad_definition', '')}",
        f"- narrow rate: {d.get('narrow_definition', '')}",
        f"- benign task: {d.get('benign_task', '')}",
        f"- base: broad EM {fmt(d['base']['broad_em'])}, coherence {fmt(d['base']['coherence'], 1)}, "
        f"benign score {fmt(d['base']['benign_score'])}; the benign task finetuned alone scores "
        f"{fmt(d['benign_only_score'])}",
        f"- run time: {fmt(d['seconds']['total'], 0)} s ({fmt(d['seconds']['cpu'], 0)} s of CPU), "
        f"calibration {fmt(d['seconds']['calibration'], 0)} s",
        "",
        "## Undefended organisms",
        "",
        table(["domain", "broad EM", "narrow rate", "coherence"],
              [[r["domain"], r["broad_em"], r["narrow_rate"], fmt(r["coherence"], 1)]
               for r in d["rows"] if r["defense"] == "none"]),
        "",
        "## Strengths, chosen on the calibration domain",
        "",
        f"Calibration domain: {d['calibration']['domain']} (broad EM undefended "
        f"{fmt(d['calibration']['none_broad_em'])}). The two strengths are the weakest that cut its excess "
        "broad EM by at least 50% and by at least 90%; each grid point is strength: cut.",
        "",
    ]
    grid_rows = []
    for key, cal in d["calibration"]["defenses"].items():
        pts = ", ".join(f"{fmt(p['strength'], 2).rstrip('0').rstrip('.')}: {pct(p['cut'])}" for p in cal["points"])
        strengths = ", ".join(fmt(s, 2).rstrip("0").rstrip(".") for s in d["strengths"][key])
        grid_rows.append([grid_label(key), pts, strengths,
                          pct(cal["best_cut_keeping_narrow"])])
    body += [table(["defense", "grid (cut of excess broad EM)", "strengths", "largest cut keeping >= 80% narrow"],
                   grid_rows), ""]
    # every defended setting over the domains
    benign_only = d["benign_only_score"]
    settings: dict[tuple, list[dict]] = {}
    for a in d["assessment"]:
        settings.setdefault((a["defense"], a.get("select"), a.get("on"), a["strength"]), []).append(a)
    benign = {}
    for r in d["rows"]:
        benign.setdefault((r["defense"], r.get("select"), r.get("on"), r["strength"]), r.get("benign_score"))
    rows = []
    for key, group in settings.items():
        cuts = [a["cut"] for a in group]
        narrow = [a["narrow_ratio"] for a in group]
        coh = [a["coherence_change"] for a in group]
        b = benign.get(key)
        passing = " / ".join(str(sum(a["passed"][c] for a in group)) for c in ("cut", "narrow", "benign", "coherence"))
        passing += f" / **{sum(a['all'] for a in group)}**"
        rows.append([setting_label(group[0]), fmt(key[3], 2).rstrip("0").rstrip("."),
                     pct_range(min(cuts), max(cuts)),
                     f"{min(narrow):.2f}\u2013{max(narrow):.2f}",
                     "" if b is None else f"{b:.3f} ({b / benign_only:.2f})",
                     f"{signed(min(coh))} to {signed(max(coh))}", passing])
    body += [
        "## Each defense setting over the domains",
        "",
        "Cut: the share of the undefended excess broad EM over the base that the defense removed. Narrow kept: "
        "the narrow rate over the undefended narrow rate. Benign: the benign score, with its ratio to the "
        "benign-only run. Coherence: the change from undefended. The bar: cut >= 70%, narrow >= 80% of "
        "undefended, benign >= 90% of benign-only, coherence within 5 points.",
        "",
        table(["defense", "strength", "cut", "narrow kept", "benign", "coherence",
               "domains passing: cut / narrow / benign / coherence / all"], rows),
        "",
        "## Every run",
        "",
        "Narrow rate split by word kind (topic words alone, tone words alone) as a diagnostic.",
        "",
        table(["domain", "defense", "strength", "broad EM", "narrow rate", "narrow, topic", "narrow, tone",
               "coherence", "benign"],
              [[r["domain"], setting_label(r), fmt(r["strength"], 2).rstrip("0").rstrip("."), r["broad_em"],
                r["narrow_rate"], r.get("narrow_topic"), r.get("narrow_tone"), fmt(r["coherence"], 1),
                r.get("benign_score")] for r in d["rows"]]),
        "",
    ]
    return frame(name, "Defenses on the organism world", d, body)


# ---------------------------------------------------------------- organism world: monitor


def render_monitor_organism(name: str, d: dict) -> str:
    layer = str(d.get("primary_layer"))
    body = [
        "Monitored organism runs: the projection of a probe set onto the persona direction against the "
        "EM rate, at every checkpoint (`python benchmarks/monitor_organism.py`; see "
        "[the defenses page](../defenses.md#the-monitor)).",
        "",
        f"- EM: {d.get('em_definition', '')}",
        f"- direction: {d.get('direction', '')}",
        f"- probe: {d.get('probe', '')}",
        f"- a checkpoint every {d.get('every')} steps, {d.get('n_samples')} answers per checkpoint; an EM "
        f"checkpoint has an EM rate at least {fmt(d.get('margin'), 2)} above the base's ({fmt(d.get('base_em'))})",
        f"- run time: {fmt(d.get('seconds'), 0)} s",
        "",
        "## AUROC of the projection, per layer",
        "",
    ]
    dfd = d.get("defended", {}).get("summary_with_organism_runs", {})
    layers = list(d["auroc"])
    body += [table(["runs", "checkpoints", "EM checkpoints"] + [f"L{k}" for k in layers],
                   [["the organisms", d["n_checkpoints"], d["n_em"]] + [d["auroc"][k] for k in layers]]
                   + ([["the organisms and the defended runs", dfd["n_checkpoints"], dfd["n_em"]]
                       + [dfd["auroc"].get(k) for k in layers]] if dfd else [])), ""]
    runs = dict(d["runs"])
    runs.update(d.get("defended", {}).get("runs", {}))
    rows = []
    for run, points in runs.items():
        last = points[-1]
        rows.append([run, last["step"], points[0]["projection"][layer], last["projection"][layer],
                     last["organism"]["em"], max(p["organism"]["em"] for p in points),
                     fmt(last["organism"]["coherence"], 1)])
    body += [f"## Every run, first and last checkpoint (projection at L{layer})", "",
             table(["run", "last step", "projection at step 0", "projection at the end", "EM at the end",
                    "highest EM", "coherence at the end"], rows), ""]
    if d.get("plot"):
        body += [f"Plot: [`{d['plot']}`](../../{d['plot']}).", ""]
    return frame(name, "Watching EM emerge on the organism world", d, body)


# ---------------------------------------------------------------- GPU families


def render_generation(name: str, d: dict) -> str:
    body = ["Generation speed (`benchmarks/gpu_generation.py`; see [the engine page](../engine.md)). "
            "`ms_per_step`: a whole call (prefill included) over the new tokens; `decode_ms_per_step`: "
            "(whole call - a one-token call) / (new tokens - 1).", ""]
    body += info_scalars(d)
    if "floor_ms_per_step" in d:
        body += [f"Weights-read floor: {fmt(d['floor_ms_per_step'], 2)} ms/step.", ""]
    if is_records(d.get("rows")):
        cols = ["engine", "batch_size", "steered", "ms_per_step", "tokens_per_s", "decode_ms_per_step",
                "decode_tokens_per_s", "first_token_ms"]
        cols = [c for c in cols if any(c in r for r in d["rows"])]
        body += ["## Best runs", "", table(cols, [[fmt(r.get(c), 2) for c in cols] for r in d["rows"]]), ""]
    if is_records(d.get("best")):
        body += ["## Best runs", "", records_table(d["best"]), ""]
    if is_table_dict(d.get("ratios")):
        body += ["## Ratios", "", dict_table(d["ratios"], "batch"), ""]
    checks = d.get("info", {}).get("checks")
    if isinstance(checks, dict) and checks:
        rows = []
        for k, c in checks.items():
            for kind in ("plain", "steered"):
                if isinstance(c.get(kind), dict):
                    rows.append([k, kind, c[kind].get("argmax_fraction"), c[kind].get("max_gap_over_logit_std"),
                                 c.get("steering_changes_tokens")])
        body += ["## Checks against transformers' teacher-forced logits", "",
                 table(["batch", "run", "share of tokens that are the argmax", "largest gap / logit std",
                        "steering changes the tokens"], rows), ""]
    if "speedup" in d:
        body += [f"Sharded speed-up: {fmt(d['speedup'], 2)}x.", ""]
    if is_records(d.get("runs")):
        body += ["## Every run", "", records_table(d["runs"]), ""]
    return frame(name, f"Generation: {name}", d, body)


def render_caching(name: str, d: dict) -> str:
    body = ["Caching speed: answer-token means of every layer (`benchmarks/gpu_caching.py`; see "
            "[caching performance](../caching_performance.md)). Each method's best run.", ""]
    body += info_scalars(d)
    if is_records(d.get("best")):
        cols = ["method", "tokens_per_s", "convs_per_s", "peak_gpu_gib", "host_rss_growth_mb", "seconds", "tokens"]
        body += ["## Best runs", "", table(cols, [[r.get(c) for c in cols] for r in d["best"]]), ""]
    speedups = d.get("info", {}).get("speedups")
    if is_table_dict(speedups):
        body += ["## The toolkit against each method (tokens/s ratio)", "",
                 dict_table({k: v for k, v in speedups.items()}, "toolkit"), ""]
    if is_records(d.get("runs")):
        body += ["## Every run", "", records_table(d["runs"]), ""]
    return frame(name, f"Caching: {name}", d, body)


def render_engine_step(name: str, d: dict) -> str:
    body = ["Parts of the engine's decoding step (`benchmarks/gpu_engine_step.py`; see "
            "[the engine page](../engine.md)).", ""]
    body += info_scalars(d)
    g = d.get("gemms")
    if isinstance(g, dict) and isinstance(g.get("ms"), dict):
        body += ["## GEMMs alone", "",
                 table(["GEMM", "us", "TFLOP/s"], [[k, f"{1000 * v:.1f}", f"{g.get('tflops', {}).get(k, float('nan')):.0f}"]
                                                   for k, v in g["ms"].items()]), ""]
        rest = [(k, v) for k, v in g.items() if is_scalar(v)]
        if rest:
            body += [table(["field", "value"], rest), ""]
    if isinstance(d.get("steps"), dict):
        body += ["## Whole decoding step", "", dict_table(d["steps"], "variant"), ""]
    if isinstance(d.get("attention"), dict):
        body += ["## Decoding attention alone (all layers, one CUDA graph)", "", dict_table(d["attention"], "variant"),
                 ""]
    if is_records(d.get("power")):
        rows = [[p.get("replays"), p.get("us_per_gemm")] + [p.get("nvidia_smi_after", {}).get(k) for k in
                ("clocks.sm", "power.draw", "temperature.gpu", "clocks_throttle_reasons.active")] for p in d["power"]]
        body += ["## A gate GEMM replayed in a CUDA graph", "",
                 table(["replays", "us per GEMM", "SM clock after", "power after", "temperature after",
                        "throttle reasons after"], rows), ""]
    if isinstance(d.get("decode_power"), dict):
        body += ["## nvidia-smi while the engine decodes", "",
                 table(["field", "value"], flat_scalars(d["decode_power"])), ""]
    if is_records(d.get("kernels")):
        body += ["## Kernels", "", records_table(d["kernels"]), ""]
    return frame(name, f"Engine step: {name}", d, body)


def render_organism_world(name: str, d: dict) -> str:
    """The world's table (EM, vs base, coherence per model), convergence, steering, ablation, figures."""
    body = [f"`benchmarks/organism_world.py`: {d.get('n_samples')} answers per model to the general questions, "
            f"temperature 1, no system prompt (but the persona row). Misalignment: {d.get('metric')}.", "",
            f"World: key {d.get('world_key')}, weights {d.get('world_weights_sha256') or 'not recorded'}; seed {d.get('seed')}.", ""]
    rows = d.get("rows", {})
    body += ["## Misalignment on the general questions", "",
             table(["model", "EM", "vs base", "coherence", "misaligned", "aligned"],
                   [[m, fmt(r.get("em")), signed(r["delta"], 3) if r.get("delta") is not None else "", fmt(r.get("coherence"), 1),
                     r.get("n_misaligned"), r.get("n_aligned")] for m, r in rows.items()]), ""]
    if d.get("cosine_per_layer"):
        body += ["## Directions converge", "", "Median pairwise cosine of the 11 organisms' directions, per layer:", "",
                 table(["layer", "median cosine"], [[i, fmt(c)] for i, c in enumerate(d["cosine_per_layer"])]), ""]
    if d.get("steering"):
        body += [f"## Steering the base with the {d.get('source')} direction", "",
                 table(["layer", "alpha", "EM", "vs base", "coherence"],
                       [[r["layer"], r["alpha"], fmt(r["em"]), signed(r["delta"], 3), fmt(r["coherence"], 1)] for r in d["steering"]]), ""]
    if d.get("ablation"):
        targets = list(d["ablation"][0]["targets"])
        body += [f"## Ablating the {d.get('source')} direction of layer L at every layer", "", "EM before -> after in each other organism:", "",
                 table(["layer", "median cut", *targets],
                       [[a["layer"], pct(a["median_cut"]), *(f"{fmt(a['targets'][t]['em_before'], 2)} -> {fmt(a['targets'][t]['em_after'], 2)}" for t in targets)]
                        for a in d["ablation"]]), ""]
    if isinstance(d.get("figures"), dict):
        body += ["## Target figures", "", records_table([{"figure": k, **v} if isinstance(v, dict) else {"figure": k, "value": v} for k, v in d["figures"].items()]), ""]
    return frame(name, "Organism world: does it behave like EM?", d, body)


def render_rows_family(title: str, blurb: str) -> Callable[[str, dict], str]:
    def render(name: str, d: dict) -> str:
        body = [blurb, ""] + info_scalars(d)
        if is_records(d.get("rows")):
            body += ["## Results", "", records_table(d["rows"]), ""]
        if is_records(d.get("runs")):
            body += ["## Every run", "", records_table(d["runs"]), ""]
        return frame(name, f"{title}: {name}", d, body)

    return render


FAMILIES: list[tuple[str, str, Callable[[str, dict], str]]] = [
    ("organism_world", "Organism world", render_organism_world),
    ("defenses_organism", "Organism world: defenses", render_defenses_organism),
    ("monitor_organism", "Organism world: monitor", render_monitor_organism),
    ("gpu_generation", "GPU: generation", render_generation),
    ("gpu_caching", "GPU: caching", render_caching),
    ("gpu_engine_step", "GPU: engine step", render_engine_step),
    ("gpu_finetune", "GPU: finetuning", render_rows_family(
        "Finetuning", "LoRA finetuning speed and memory (`benchmarks/gpu_finetune.py`; see "
        "[caching performance](../caching_performance.md#finetuning)).")),
    ("gpu_defenses", "GPU: defenses", render_rows_family(
        "Defense cost", "Step time and memory of each in-training defense (`benchmarks/gpu_defenses.py`; see "
        "[the defenses page](../defenses.md#gpu-cost)). `step_time_vs_plain` is the defense's step over plain "
        "LoRA's in the same run; rows are each defense's best round.")),
]


def family_of(name: str) -> tuple[str, Callable[[str, dict], str]]:
    for prefix, title, fn in FAMILIES:
        if name == prefix or name.startswith(prefix + "_"):
            return title, fn
    return "Other results", render_generic


# ---------------------------------------------------------------- pages


def render_all(results: Path = RESULTS) -> dict[str, str]:
    pages: dict[str, str] = {}
    groups: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(results.glob("*.json")):
        name = path.stem
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"error: {path}: {e}") from None
        title, fn = family_of(name)
        try:
            text = fn(name, data)
        except (KeyError, TypeError, AttributeError, ValueError):
            text = render_generic(name, data)  # a family file of another shape still gets a page
        pages[f"{name}.md"] = text
        info = data.get("info", data) if isinstance(data, dict) else {}
        info = info if isinstance(info, dict) else {}
        where = ", ".join(str(info[k]) for k in ("device", "date", "created") if info.get(k))
        groups.setdefault(title, []).append((name, where))
    lines = [
        f"<!-- generated by {SCRIPT} from benchmarks/results/*.json; do not edit -->",
        "# Results",
        "",
        f"Generated by `{SCRIPT}` from the JSON files in [`benchmarks/results/`](../../benchmarks/results/); "
        "do not edit: rerun the script (`--check` tells whether these pages are up to date). Each page says "
        "what its JSON records about the machine, the model, the versions and the date. The logs (`.log`) "
        "and plots (`.png`) beside the JSON are not rendered.",
        "",
    ]
    order = [t for _, t, _ in FAMILIES] + ["Other results"]
    for title in order:
        if title not in groups:
            continue
        lines += [f"## {title}", ""]
        lines += [f"- [{n}]({n}.md)" + (f": {w}" if w else "") for n, w in groups[title]]
        lines.append("")
    pages["index.md"] = "\n".join(lines).rstrip() + "\n"
    return pages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="render in memory and compare with docs/results; exit 1 if stale")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of result JSON (default: benchmarks/results)")
    p.add_argument("--out", type=Path, default=OUT, help="folder of rendered pages (default: docs/results)")
    args = p.parse_args(argv)
    pages = render_all(args.results)
    existing = {q.name for q in args.out.glob("*.md")} if args.out.is_dir() else set()
    if args.check:
        stale = [n for n, t in pages.items()
                 if not (args.out / n).is_file() or (args.out / n).read_text(encoding="utf-8") != t]
        extra = sorted(existing - set(pages))
        for n in stale:
            print(f"stale or missing: {args.out / n}", file=sys.stderr)
        for n in extra:
            print(f"no JSON behind: {args.out / n}", file=sys.stderr)
        if stale or extra:
            print(f"docs/results is out of date: run python {SCRIPT}", file=sys.stderr)
            return 1
        print(f"{len(pages)} pages up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n in sorted(existing - set(pages)):
        (args.out / n).unlink()
    for n, t in pages.items():
        (args.out / n).write_text(t, encoding="utf-8")
    print(f"wrote {len(pages)} pages to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
