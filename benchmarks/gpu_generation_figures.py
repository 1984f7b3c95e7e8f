"""The figures of a ``gpu_generation.py`` run: one timed call's row, the best of repeats, the
issue's ratios, and the table of the best rows (moved here from ``gpu_generation.py``)."""

from __future__ import annotations


def row(engine: str, bs: int, steered: bool, sec: float, new_tokens: int, first_sec: float) -> dict:
    """One timed call: ``sec`` for ``new_tokens`` tokens, ``first_sec`` for a call that makes one."""
    decode_ms = 1e3 * (sec - first_sec) / (new_tokens - 1)
    r = {
        "engine": engine,
        "batch_size": bs,
        "steered": steered,
        "ms_per_step": 1e3 * sec / new_tokens,
        "tokens_per_s": bs * new_tokens / sec,
        "first_token_ms": 1e3 * first_sec,
        "decode_ms_per_step": decode_ms,
        "decode_tokens_per_s": 1e3 * bs / decode_ms,
    }
    print(
        f"  {engine:<10} bs={bs:<4} {'steered' if steered else 'plain':<8} {r['ms_per_step']:8.2f} ms/step {r['tokens_per_s']:>10,.0f} tok/s"
        f"   decode {decode_ms:7.2f} ms/step {r['decode_tokens_per_s']:>10,.0f} tok/s (first token {1e3 * first_sec:.1f} ms)",
        flush=True,
    )
    return r


def ratios(rows: list[dict], floor: float | None) -> dict:
    """The issue's figures, whole call and decoding step alone: engine over the floor, engine
    over HF default (tokens/s), steered over unsteered (best of each)."""
    by = {(r["engine"], r["batch_size"], r["steered"]): r for r in rows}
    out = {}
    for (engine, bs, steered), r in by.items():
        if engine != "engine" or steered:
            continue
        entry = {}
        for kind, ms, tps in (
            ("call", "ms_per_step", "tokens_per_s"),
            ("decode", "decode_ms_per_step", "decode_tokens_per_s"),
        ):
            if floor:
                entry[f"{kind}_vs_floor"] = r[ms] / floor
            if ("hf", bs, False) in by:
                entry[f"{kind}_vs_hf_tokens_per_s"] = r[tps] / by[("hf", bs, False)][tps]
            if ("engine", bs, True) in by:
                entry[f"{kind}_steered_vs_plain"] = by[("engine", bs, True)][tps] / r[tps]
        out[f"bs={bs}"] = entry
    return out


def best(rows: list[dict]) -> list[dict]:
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["engine"], r["batch_size"], r["steered"])
        if key not in out or r["ms_per_step"] < out[key]["ms_per_step"]:
            out[key] = r
    return list(out.values())


def print_best(rows: list[dict], floor: float | None) -> None:
    """The best of repeats, whole call and decoding step alone, against the floor where known."""
    print("\nbest of repeats (whole call; decoding step alone):")
    for r in rows:
        vs = f"  {r['ms_per_step'] / floor:5.2f}x / {r['decode_ms_per_step'] / floor:5.2f}x floor" if floor else ""
        print(
            f"  {r['engine']:<8} bs={r['batch_size']:<4} {'steered' if r['steered'] else 'plain':<8} {r['ms_per_step']:8.2f} ms/step {r['tokens_per_s']:>10,.0f} tok/s;"
            f" {r['decode_ms_per_step']:8.2f} ms/step {r['decode_tokens_per_s']:>10,.0f} tok/s{vs}"
        )
