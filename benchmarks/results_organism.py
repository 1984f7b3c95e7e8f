"""Results pages of the organism-world benchmarks (:mod:`render_results`): the world itself,
the in-training defenses, the monitor."""

from __future__ import annotations

from render_organism import render_defenses, render_monitor
from results_format import fmt, frame, pct, records_table, signed, table


def render_defenses_organism(name: str, d: dict) -> str:
    return frame(name, "Defenses on the organism world", d, render_defenses(d, table, fmt))


def render_monitor_organism(name: str, d: dict) -> str:
    return frame(name, "Watching EM emerge on the organism world", d, render_monitor(d, table, fmt))


def render_organism_world(name: str, d: dict) -> str:
    """The world's table (EM, vs base, coherence per model), convergence, steering, ablation, figures."""
    body = [
        f"`benchmarks/organism_world.py`: {d.get('n_samples')} answers per model to the general questions, "
        f"temperature 1, no system prompt (but the persona row). Misalignment: {d.get('metric')}.",
        "",
        f"World: key {d.get('world_key')}, weights {d.get('world_weights_sha256') or 'not recorded'}; seed {d.get('seed')}.",
        "",
    ]
    body += _world_rows_section(d.get("rows", {}))
    if d.get("cosine_per_layer"):
        body += [
            "## Directions converge",
            "",
            "Median pairwise cosine of the 11 organisms' directions, per layer:",
            "",
            table(["layer", "median cosine"], [[i, fmt(c)] for i, c in enumerate(d["cosine_per_layer"])]),
            "",
        ]
    if d.get("steering"):
        body += _steering_section(d)
    if d.get("ablation"):
        body += _ablation_section(d)
    if isinstance(d.get("figures"), dict):
        body += [
            "## Target figures",
            "",
            records_table(
                [
                    {"figure": k, **v} if isinstance(v, dict) else {"figure": k, "value": v}
                    for k, v in d["figures"].items()
                ]
            ),
            "",
        ]
    return frame(name, "Organism world: does it behave like EM?", d, body)


def _world_rows_section(rows: dict) -> list[str]:
    """Misalignment per model, a section of ``render_organism_world``."""
    return [
        "## Misalignment on the general questions",
        "",
        table(
            ["model", "EM", "vs base", "coherence", "misaligned", "aligned"],
            [
                [
                    m,
                    fmt(r.get("em")),
                    signed(r["delta"], 3) if r.get("delta") is not None else "",
                    fmt(r.get("coherence"), 1),
                    r.get("n_misaligned"),
                    r.get("n_aligned"),
                ]
                for m, r in rows.items()
            ],
        ),
        "",
    ]


def _steering_section(d: dict) -> list[str]:
    """Steering the base, a section of ``render_organism_world``."""
    return [
        f"## Steering the base with the {d.get('source')} direction",
        "",
        table(
            ["layer", "alpha", "EM", "vs base", "coherence"],
            [
                [r["layer"], r["alpha"], fmt(r["em"]), signed(r["delta"], 3), fmt(r["coherence"], 1)]
                for r in d["steering"]
            ],
        ),
        "",
    ]


def _ablation_section(d: dict) -> list[str]:
    """Ablating the source direction, a section of ``render_organism_world``."""
    targets = list(d["ablation"][0]["targets"])
    return [
        f"## Ablating the {d.get('source')} direction of layer L at every layer",
        "",
        "EM before -> after in each other organism:",
        "",
        table(
            ["layer", "median cut", *targets],
            [
                [
                    a["layer"],
                    pct(a["median_cut"]),
                    *(
                        f"{fmt(a['targets'][t]['em_before'], 2)} -> {fmt(a['targets'][t]['em_after'], 2)}"
                        for t in targets
                    ),
                ]
                for a in d["ablation"]
            ],
        ),
        "",
    ]
