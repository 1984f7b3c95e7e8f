"""The summary of a run of :mod:`bad_input_probe`: counts by outcome, family and CLI, the table
it prints, and the versions it records."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import Any

from probe_case import ROOT

OUTCOMES = ["error", "right", "traceback", "silent", "destroyed", "hang", "unnamed", "wrong", "refused-valid"]


def versions() -> dict[str, str]:
    """Python's and the libraries' versions, and the checkout's commit."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "peft", "safetensors", "openai", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        out["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def summarize(results: list[dict]) -> dict:
    """The counts of the results file: outcomes in all, then by family and by CLI."""
    counts: dict[str, Any] = {"cases": len(results), "outcomes": dict(Counter(r["outcome"] for r in results))}
    counts["not_as_expected"] = sum(not r["ok"] for r in results)
    counts["tracebacks"] = counts["outcomes"].get("traceback", 0)
    counts["silent"] = counts["outcomes"].get("silent", 0)
    counts["destroyed"] = counts["outcomes"].get("destroyed", 0)
    counts["hangs"] = counts["outcomes"].get("hang", 0)
    counts["api_calls"] = sum(r["cli"] == "api" for r in results)
    counts["cli_cases"] = len(results) - counts["api_calls"]
    for key in ("family", "cli"):
        table: dict[str, dict[str, int]] = {}
        for r in results:
            row = table.setdefault(r[key], {"cases": 0})
            row["cases"] += 1
            row[r["outcome"]] = row.get(r["outcome"], 0) + 1
        counts[f"by_{key}"] = dict(sorted(table.items()))
    return counts


def print_table(counts: dict, results: list[dict]) -> None:
    """Print the counts by CLI and by family, every case not as expected, and the totals."""
    outcomes = OUTCOMES + sorted({r["outcome"] for r in results} - set(OUTCOMES))
    for key in ("by_cli", "by_family"):
        print(f"\n{key[3:]:<28}" + "".join(f"{o[:9]:>10}" for o in ["cases", *outcomes]))
        for name, row in counts[key].items():
            print(f"{name:<28}" + "".join(f"{row.get(o, 0):>10}" for o in ["cases", *outcomes]))
    bad = [r for r in results if not r["ok"]]
    if bad:
        print(f"\nnot as expected ({len(bad)}):")
        for r in bad:
            print(f"  [{r['outcome']}] {r['id']} ({r['cli']}): {r['why'] or ''} | {r['stderr_tail'][-300:]!r}")
    print(
        f"\n{counts['cases']} cases ({counts['cli_cases']} CLI, {counts['api_calls']} API): "
        f"{counts['tracebacks']} tracebacks, {counts['silent']} silent, {counts['destroyed']} destroyed, "
        f"{counts['hangs']} hangs, {counts['not_as_expected']} not as expected"
    )
