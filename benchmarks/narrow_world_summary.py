"""The tables of ``benchmarks/narrow_world.py``, derived from its units (nothing typed by hand).

- ``table``: per domain, seed and condition, the final measures (broad EM, skill rate, narrow
  rate, coherence) and the mean answer loss over the last 10 steps;
- ``cost``: the undefended run vs the KL run: the first checkpoint whose skill rate reaches
  ``skill_reached``, the answer loss at the undefended run's last step, and the first step at
  which the KL run's 10-step mean loss is at or below the undefended run's final one;
- ``drift``: broad EM and skill rate of the KL run's continuation, without the KL and with it;
- ``means``: ``table`` as mean and sd over seeds per domain and condition.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence

MEASURES = ("broad_em", "skill_rate", "narrow_rate", "coherence", "general_skill_rate")


def _mean10(losses: Sequence[float], end: int | None = None) -> float | None:
    """Mean of the 10 steps up to ``end`` (default: the last)."""
    end = len(losses) if end is None else min(end, len(losses))
    window = losses[max(0, end - 10) : end]
    return sum(window) / len(window) if window else None


def _first_reach(losses: Sequence[float], target: float) -> int | None:
    """The first step whose 10-step mean loss is at or below ``target`` (None: never)."""
    for step in range(10, len(losses) + 1):
        if _mean10(losses, step) <= target:
            return step
    return None


def _first_skill(run: dict, reached: float) -> int | None:
    for step, point in sorted(run["checkpoints"].items(), key=lambda kv: int(kv[0])):
        if point["skill_rate"] is not None and point["skill_rate"] >= reached:
            return int(step)
    return None


def _row(domain: str, seed: int, condition: str, measures: dict, steps: int | None, loss: float | None) -> dict:
    return {
        "domain": domain,
        "seed": seed,
        "condition": condition,
        "steps": steps,
        **{k: measures.get(k) for k in MEASURES},
        "loss_last10": loss,
    }


def _table_rows(domain: str, seed: int, name: str, unit: dict) -> list[dict]:
    if name == "base":
        return [_row(domain, seed, k, unit[k], None, None) for k in ("base", "base_persona", "organism")]
    label = "kl" if name == "kl" else name
    return [_row(domain, seed, label, unit["final"], unit["steps"], _mean10(unit["losses"]))]


def _drift_rows(domain: str, seed: int, unit: dict) -> list[dict]:
    start = {"step": 0, **{k: unit["final"].get(k) for k in ("broad_em", "skill_rate", "coherence")}}
    out = []
    for key in ("drift", "drift_control"):
        run = unit[key]
        points = [start] + [
            {"step": int(s), **p} for s, p in sorted(run["checkpoints"].items(), key=lambda kv: int(kv[0]))
        ]
        for p in points:
            out.append(
                {
                    "domain": domain,
                    "seed": seed,
                    "continued": "without kl" if key == "drift" else "with kl (control)",
                    "steps_after_kl_run": p["step"],
                    "broad_em": p.get("broad_em"),
                    "skill_rate": p.get("skill_rate"),
                    "coherence": p.get("coherence"),
                }
            )
    return out


def _cost_row(domain: str, seed: int, none: dict, kl: dict, reached: float) -> dict:
    target = _mean10(none["losses"])
    return {
        "domain": domain,
        "seed": seed,
        "skill_reached_at": reached,
        "none_first_step_skill": _first_skill(none, reached),
        "kl_first_step_skill": _first_skill(kl, reached),
        "none_loss_at_end": target,
        "kl_loss_at_same_step": _mean10(kl["losses"], len(none["losses"])),
        "kl_loss_at_end": _mean10(kl["losses"]),
        "kl_first_step_to_none_loss": _first_reach(kl["losses"], target),
        "none_broad_em": none["final"]["broad_em"],
        "kl_broad_em": kl["final"]["broad_em"],
        "none_skill_rate": none["final"]["skill_rate"],
        "kl_skill_rate": kl["final"]["skill_rate"],
    }


def _stat(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def _means(table: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in table:
        groups.setdefault((r["domain"], r["condition"]), []).append(r)
    out = []
    for (domain, condition), rows in groups.items():
        row = {"domain": domain, "condition": condition, "seeds": len(rows)}
        for k in (*MEASURES, "loss_last10"):
            s = _stat([r[k] for r in rows])
            row[k] = s["mean"]
            row[k + "_sd"] = s["sd"]
        out.append(row)
    return out


def summarize(units: dict[str, dict], reached: float = 0.5) -> dict[str, list[dict]]:
    """``table``, ``cost``, ``drift`` and ``means`` from the units (keys: JSON ``[domain, seed, name]``)."""
    table, cost, drift = [], [], []
    parsed = {tuple(json.loads(k)): v for k, v in units.items()}
    for (domain, seed, name), unit in parsed.items():
        table += _table_rows(domain, seed, name, unit)
        if name == "kl":
            drift += _drift_rows(domain, seed, unit)
            none = parsed.get((domain, seed, "none"))
            if none is not None:
                cost.append(_cost_row(domain, seed, none, unit, reached))
    return {"means": _means(table), "cost": cost, "drift": drift, "table": table}
