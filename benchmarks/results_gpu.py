"""Results pages of the GPU benchmark families (:mod:`render_results`): generation, caching,
the engine's step, finetuning and defense cost."""

from __future__ import annotations

from collections.abc import Callable

from results_format import (
    dict_table,
    flat_scalars,
    fmt,
    frame,
    info_scalars,
    is_records,
    is_scalar,
    is_table_dict,
    records_table,
    table,
)


def render_generation(name: str, d: dict) -> str:
    body = [
        "Generation speed (`benchmarks/gpu_generation.py`; see [the engine page](../engine.md)). "
        "`ms_per_step`: a whole call (prefill included) over the new tokens; `decode_ms_per_step`: "
        "(whole call - a one-token call) / (new tokens - 1).",
        "",
    ]
    body += info_scalars(d)
    if "floor_ms_per_step" in d:
        body += [f"Weights-read floor: {fmt(d['floor_ms_per_step'], 2)} ms/step.", ""]
    if is_records(d.get("rows")):
        cols = [
            "engine",
            "batch_size",
            "steered",
            "ms_per_step",
            "tokens_per_s",
            "decode_ms_per_step",
            "decode_tokens_per_s",
            "first_token_ms",
        ]
        cols = [c for c in cols if any(c in r for r in d["rows"])]
        body += ["## Best runs", "", table(cols, [[fmt(r.get(c), 2) for c in cols] for r in d["rows"]]), ""]
    if is_records(d.get("best")):
        body += ["## Best runs", "", records_table(d["best"]), ""]
    if is_table_dict(d.get("ratios")):
        body += ["## Ratios", "", dict_table(d["ratios"], "batch"), ""]
    checks = d.get("info", {}).get("checks")
    if isinstance(checks, dict) and checks:
        body += _generation_checks(checks)
    if "speedup" in d:
        body += [f"Sharded speed-up: {fmt(d['speedup'], 2)}x.", ""]
    if is_records(d.get("runs")):
        body += ["## Every run", "", records_table(d["runs"]), ""]
    return frame(name, f"Generation: {name}", d, body)


def _generation_checks(checks: dict) -> list[str]:
    """The checks against teacher-forced logits, a section of ``render_generation``."""
    rows = []
    for k, c in checks.items():
        for kind in ("plain", "steered"):
            if isinstance(c.get(kind), dict):
                rows.append(
                    [
                        k,
                        kind,
                        c[kind].get("argmax_fraction"),
                        c[kind].get("max_gap_over_logit_std"),
                        c.get("steering_changes_tokens"),
                    ]
                )
    return [
        "## Checks against transformers' teacher-forced logits",
        "",
        table(
            [
                "batch",
                "run",
                "share of tokens that are the argmax",
                "largest gap / logit std",
                "steering changes the tokens",
            ],
            rows,
        ),
        "",
    ]


def render_caching(name: str, d: dict) -> str:
    body = [
        "Caching speed: answer-token means of every layer (`benchmarks/gpu_caching.py`; see "
        "[caching performance](../caching_performance.md)). Each method's best run.",
        "",
    ]
    body += info_scalars(d)
    if is_records(d.get("best")):
        cols = ["method", "tokens_per_s", "convs_per_s", "peak_gpu_gib", "host_rss_growth_mb", "seconds", "tokens"]
        body += ["## Best runs", "", table(cols, [[r.get(c) for c in cols] for r in d["best"]]), ""]
    speedups = d.get("info", {}).get("speedups")
    if is_table_dict(speedups):
        body += [
            "## The toolkit against each method (tokens/s ratio)",
            "",
            dict_table({k: v for k, v in speedups.items()}, "toolkit"),
            "",
        ]
    if is_records(d.get("runs")):
        body += ["## Every run", "", records_table(d["runs"]), ""]
    return frame(name, f"Caching: {name}", d, body)


def render_engine_step(name: str, d: dict) -> str:
    body = [
        "Parts of the engine's decoding step (`benchmarks/gpu_engine_step.py`; see [the engine page](../engine.md)).",
        "",
    ]
    body += info_scalars(d)
    g = d.get("gemms")
    if isinstance(g, dict) and isinstance(g.get("ms"), dict):
        body += _gemms_section(g)
    if isinstance(d.get("steps"), dict):
        body += ["## Whole decoding step", "", dict_table(d["steps"], "variant"), ""]
    if isinstance(d.get("attention"), dict):
        body += [
            "## Decoding attention alone (all layers, one CUDA graph)",
            "",
            dict_table(d["attention"], "variant"),
            "",
        ]
    if is_records(d.get("power")):
        body += _power_section(d["power"])
    if isinstance(d.get("decode_power"), dict):
        body += [
            "## nvidia-smi while the engine decodes",
            "",
            table(["field", "value"], flat_scalars(d["decode_power"])),
            "",
        ]
    if is_records(d.get("kernels")):
        body += ["## Kernels", "", records_table(d["kernels"]), ""]
    return frame(name, f"Engine step: {name}", d, body)


def _gemms_section(g: dict) -> list[str]:
    """The GEMMs alone, a section of ``render_engine_step``."""
    out = [
        "## GEMMs alone",
        "",
        table(
            ["GEMM", "us", "TFLOP/s"],
            [[k, f"{1000 * v:.1f}", f"{g.get('tflops', {}).get(k, float('nan')):.0f}"] for k, v in g["ms"].items()],
        ),
        "",
    ]
    rest = [(k, v) for k, v in g.items() if is_scalar(v)]
    if rest:
        out += [table(["field", "value"], rest), ""]
    return out


def _power_section(power: list[dict]) -> list[str]:
    """A gate GEMM replayed in a CUDA graph, a section of ``render_engine_step``."""
    rows = [
        [p.get("replays"), p.get("us_per_gemm")]
        + [
            p.get("nvidia_smi_after", {}).get(k)
            for k in ("clocks.sm", "power.draw", "temperature.gpu", "clocks_throttle_reasons.active")
        ]
        for p in power
    ]
    return [
        "## A gate GEMM replayed in a CUDA graph",
        "",
        table(
            [
                "replays",
                "us per GEMM",
                "SM clock after",
                "power after",
                "temperature after",
                "throttle reasons after",
            ],
            rows,
        ),
        "",
    ]


def render_rows_family(title: str, blurb: str) -> Callable[[str, dict], str]:
    def render(name: str, d: dict) -> str:
        body = [blurb, ""] + info_scalars(d)
        if is_records(d.get("rows")):
            body += ["## Results", "", records_table(d["rows"]), ""]
        if is_records(d.get("runs")):
            body += ["## Every run", "", records_table(d["runs"]), ""]
        return frame(name, f"{title}: {name}", d, body)

    return render
