"""The Markdown pages of the organism world's defenses and monitor results (used by
``benchmarks/render_results.py``; the output depends on the JSON alone)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Formatter = Callable[..., str]


def _ms(stat: dict[str, Any] | None, nd: int = 2, percent: bool = False) -> str:
    """``mean ± sd`` of a ``{"mean", "sd", "n"}`` record; "n/a" when not assessable."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    scale, unit = (100, "%") if percent else (1, "")
    nd = 0 if percent else nd
    text = f"{scale * stat['mean'] + 0:.{nd}f}{unit}"
    return text if stat.get("sd") is None else text + f" ± {scale * stat['sd'] + 0:.{nd}f}{unit}"


def _arm(r: dict[str, Any]) -> str:
    return "none" if r["defense"] == "none" else f"{r['defense']} {r['strength']:g}"


def _marks(passed: dict[str, bool | None]) -> str:
    return " ".join(
        {True: "+", False: "\u2212", None: "?"}[passed[k]] for k in ("cut", "narrow", "benign", "coherence")
    )


def render_defenses(d: dict[str, Any], table: Formatter, fmt: Formatter) -> list[str]:
    """The body of ``docs/results/defenses_organism.md``."""
    bases = d["base"]
    benign = [r for r in d["runs"] if r["kind"] == "benign"]
    only = [r for r in benign if r["defense"] == "none"]
    body = [
        "The four criteria for the in-training defenses on the organism world, over training steps, LoRA ranks and "
        "seeds (`python benchmarks/defenses_organism.py`; see [the defenses page](../defenses.md#on-the-organism-world-the-four-criteria)).",
        "",
        f"- world: key `{d.get('world_key')}`, weights `{d.get('world_weights_sha256')}`",
        f"- domains: {', '.join(d['domains'])}; steps {d['steps']}; ranks {d['ranks']}; seeds {d['seeds']}; "
        f"arms: {', '.join(_arm({'defense': a['label'], 'strength': a['strength']}) for a in d['arms'])}",
        f"- broad EM: {d['broad_definition']}; narrow rate: {d['narrow_definition']}",
        f"- general data: {d['general_data']}",
        f"- benign task: {d['benign_task']}; {d['benign_general_task']}",
        f"- base over seeds: broad EM {', '.join(fmt(b['broad_em']) for b in bases)}; benign {', '.join(fmt(b['benign_score']) for b in bases)}; "
        f"benign-only runs: {', '.join(fmt(r['benign_score']) for r in only)} (general-question diagnostic "
        f"{', '.join(fmt(r['benign_general_score']) for r in only)})",
        f"- the bar: cut >= {d['bar']['cut']:.0%} of the undefended excess broad EM over the base (not assessable when that "
        f"excess is below {d['min_excess']}), narrow kept >= {d['bar']['narrow_ratio']:.0%}, benign >= {d['bar']['benign_ratio']:.0%} "
        f"of benign-only, coherence dropped by at most {d['bar']['coherence_drop']:g} points; on the means over seeds",
        f"- run time: {fmt(d['seconds']['total'], 0)} s ({fmt(d['seconds']['cpu'], 0)} s of CPU, {d['seconds'].get('workers', 1)} worker processes)",
        "",
    ]
    body += _defenses_budget(d, table) + _defenses_undefended(d, table) + _defenses_cells(d, table)
    body += _defenses_settings(d, table) + _defenses_benign(benign, table)
    return body


def _defenses_budget(d: dict[str, Any], table: Formatter) -> list[str]:
    """The training-budget section of ``render_defenses``."""
    return [
        "## Training budget",
        "",
        "Per rank, each undefended run at the most steps reaches its loss plateau (95% of its drop, 10-step means) at the step "
        "given; the budget is the fewest steps of the grid at or past the latest plateau.",
        "",
        table(
            ["rank", "latest plateau", "budget", "plateaus"],
            [
                [rank, p["latest"], p["budget"], ", ".join(f"{k}: {v}" for k, v in p["plateaus"].items())]
                for rank, p in d["budget"].items()
            ],
        ),
        "",
    ]


def _defenses_undefended(d: dict[str, Any], table: Formatter) -> list[str]:
    """The undefended organisms' section of ``render_defenses``."""
    return [
        "## Undefended organisms (mean ± sd over seeds)",
        "",
        table(
            ["rank", "steps", "domain", "broad EM", "excess over base", "narrow rate", "coherence"],
            [
                [
                    u["rank"],
                    u["steps"],
                    u["domain"],
                    _ms(u["broad_em"], 3),
                    _ms(u["excess"], 3),
                    _ms(u["narrow_rate"], 3),
                    _ms(u["coherence"], 1),
                ]
                for u in d["undefended"]
            ],
        ),
        "",
    ]


def _defenses_cells(d: dict[str, Any], table: Formatter) -> list[str]:
    """The four criteria per cell, a section of ``render_defenses``."""
    return [
        "## The four criteria per cell (mean ± sd over seeds)",
        "",
        "Marks: cut / narrow / benign / coherence; + passes, \u2212 fails, ? not assessable. Benign, general questions: the "
        "older task's ratio, a diagnostic outside the bar.",
        "",
        table(
            [
                "rank",
                "steps",
                "domain",
                "defense",
                "cut",
                "narrow kept",
                "benign",
                "benign, general questions",
                "coherence change",
                "marks",
                "all four",
            ],
            [
                [
                    c["rank"],
                    c["steps"],
                    c["domain"],
                    _arm(c),
                    _ms(c["cut"], percent=True),
                    _ms(c["narrow_ratio"]),
                    _ms(c["benign_ratio"], 3),
                    _ms(c["benign_general_ratio"]),
                    _ms(c["coherence_change"], 1),
                    _marks(c["passed"]),
                    "n/a" if c["all"] is None else c["all"],
                ]
                for c in d["cells"]
            ],
        ),
        "",
    ]


def _defenses_settings(d: dict[str, Any], table: Formatter) -> list[str]:
    """The settings per cell, a section of ``render_defenses``."""
    return [
        "## Each setting per cell: domains meeting all four criteria",
        "",
        table(
            ["rank", "steps", "defense", "assessable domains", "meeting all four", "every assessable domain"],
            [
                [
                    s["rank"],
                    s["steps"],
                    _arm(s),
                    len(s["assessable_in"]),
                    ", ".join(s["meets_bar_in"]) or "none",
                    s["meets_bar_everywhere"],
                ]
                for s in d["summary"]
            ],
        ),
        "",
    ]


def _defenses_benign(benign: list[dict[str, Any]], table: Formatter) -> list[str]:
    """The benign runs' section of ``render_defenses``."""
    return [
        "## Benign runs",
        "",
        table(
            ["seed", "defense", "benign (own prompts)", "benign, general questions"],
            [[r["seed"], _arm(r), r["benign_score"], r["benign_general_score"]] for r in benign],
        ),
        "",
    ]


def render_monitor(d: dict[str, Any], table: Formatter, fmt: Formatter) -> list[str]:
    """The body of ``docs/results/monitor_organism.md``."""
    layer = str(d.get("primary_layer"))
    body = [
        "Monitored finetunes: the projection of a probe set onto the persona direction against the EM rate, at every "
        "checkpoint, and the same checkpoints scored by baselines (`python benchmarks/monitor_organism.py`; see "
        "[the defenses page](../defenses.md#watching-em-emerge-on-the-organism-world)).",
        "",
        f"- world: key `{d.get('world_key')}`, weights `{d.get('world_weights_sha256')}`",
        f"- EM: {d.get('em_definition', '')}",
        f"- direction: {d.get('direction', '')}",
        f"- probe: {d.get('probe', '')}",
        f"- baselines: {d.get('baselines_measured', '')}",
        f"- a checkpoint every {d.get('every')} steps, {d.get('n_samples')} answers per checkpoint; an EM checkpoint has an EM rate "
        f"at least {fmt(d.get('margin'), 2)} above the base's ({fmt(d.get('base_em'))}); a checkpoint with no coherent answer has no "
        "EM rate and is in neither class",
        f"- run time: {fmt(d.get('seconds'), 0)} s",
        "",
        "## AUROC per score and layer",
        "",
    ]
    body += _monitor_auroc(d, table, fmt)
    body += _monitor_runs(d, table, fmt, layer)
    if d.get("plot"):
        body += [f"Plot: [`{d['plot']}`](../../{d['plot']}).", ""]
    return body


def _monitor_auroc(d: dict[str, Any], table: Formatter, fmt: Formatter) -> list[str]:
    """The AUROC table of ``render_monitor``: per score and layer, with the defended runs where measured."""
    both = [("the organisms", d)]
    if d.get("defended", {}).get("summary_with_organism_runs"):
        both.append(("the organisms, defended and negative runs", d["defended"]["summary_with_organism_runs"]))
    layers = list(d["auroc"])
    rows = []
    for what, s in both:
        rows.append(
            [what, s["n_checkpoints"], s["n_em"], s.get("n_not_assessable"), "persona projection"]
            + [s["auroc"][k] for k in layers]
        )
        b = s.get("baselines")
        if b:
            rows.append([what, "", "", "", "step count"] + [b["step"]] * len(layers))
            rows.append([what, "", "", "", "distance moved"] + [b["distance"][k] for k in layers])
            rows.append(
                [what, "", "", "", "random directions, mean [min, max]"]
                + [
                    f"{fmt(b['random'][k]['mean'])} [{fmt(b['random'][k]['min'])}, {fmt(b['random'][k]['max'])}]"
                    if b["random"].get(k)
                    else None
                    for k in layers
                ]
            )
    return [
        table(
            ["runs", "checkpoints", "EM checkpoints", "without an EM rate", "score"] + [f"L{k}" for k in layers], rows
        ),
        "",
    ]


def _monitor_runs(d: dict[str, Any], table: Formatter, fmt: Formatter, layer: str) -> list[str]:
    """Every run's first and last checkpoint, a section of ``render_monitor``."""
    runs = {**d["runs"], **d.get("defended", {}).get("runs", {}), **d.get("negatives", {}).get("runs", {})}
    return [
        f"## Every run, first and last checkpoint (projection at L{layer})",
        "",
        table(
            [
                "run",
                "last step",
                "projection at step 0",
                "projection at the end",
                "EM at the end",
                "highest EM",
                "coherence at the end",
            ],
            [
                [
                    run,
                    p[-1]["step"],
                    p[0]["projection"][layer],
                    p[-1]["projection"][layer],
                    p[-1]["organism"]["em"],
                    max((x["organism"]["em"] for x in p if x["organism"]["em"] is not None), default=None),
                    fmt(p[-1]["organism"]["coherence"], 1),
                ]
                for run, p in runs.items()
            ],
        ),
        "",
    ]
