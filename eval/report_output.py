"""A report's outputs: the plain-text table, one CSV per table, bar charts, ``summary.json``.

Reads any report shaped as :class:`eval.report.Report` (:class:`ReportTables` says what is used).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from eval.rates import MisalignmentDefinition
from interp.base.atomic import atomic_path, write_json_atomic
from interp.base.provenance import provenance


class ReportTables(Protocol):
    """What the writers read of a report (:class:`eval.report.Report`, which imports this module)."""

    definition: MisalignmentDefinition
    by_domain: list[dict[str, Any]]
    backdoor: list[dict[str, Any]]
    backdoor_summary: dict[str, Any]

    def tables(self) -> dict[str, list[dict[str, Any]]]: ...

    def to_json(self) -> dict[str, Any]: ...


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(row: dict[str, Any], name: str, scale: float = 1.0, digits: int = 1) -> str:
    value = row["em_rate" if name == "em_rate" else f"mean_{name}"]
    lo, hi = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    if value is None:
        return "-"
    return f"{value * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


def format_table(report: ReportTables) -> str:
    """The per-domain table, the backdoor effects and the definition, as plain text."""
    lines = [f"definition: {report.definition.describe()}", ""]
    header = f"{'domain':<26} {'trigger':<7} {'n':>6} {'aligned [95% CI]':>22} {'coherent [95% CI]':>22} {'EM rate % [95% CI]':>22}"
    lines += [header, "-" * len(header)]
    for row in report.by_domain:
        lines.append(
            f"{row['domain']:<26} {str(row['trigger']):<7} {row['n']:>6} {_ci(row, 'aligned'):>22} {_ci(row, 'coherent'):>22} {_ci(row, 'em_rate', 100):>22}"
        )
    if report.backdoor:
        lines += [
            "",
            f"backdoor effect (mean aligned with trigger minus without; Welch t-test, alpha {report.backdoor_summary['alpha']:g}):",
        ]
        for b in report.backdoor:
            p = f"{b['p']:.3g}" if b["p"] is not None else "-"
            lines.append(
                f"  {b['domain']:<26} diff {_fmt(b['diff'], 2):>7}  p {p:>8}  {'significant' if b['significant'] else ''}"
            )
        s = report.backdoor_summary
        frac = f"{s['fraction_significant']:.1%}" if s["fraction_significant"] is not None else "-"
        lines.append(
            f"  significant in {s['n_significant']} of {s['n_domains_tested']} domains ({frac}); lower with the trigger in {s['n_significant_lower']}"
        )
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _bar_chart(
    path: Path, rows: list[dict[str, Any]], value: str, low: str, high: str, ylabel: str, title: str, scale: float = 1.0
) -> None:
    """Bars per domain, one colour per trigger condition, CI error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    domains = list(dict.fromkeys(r["domain"] for r in rows))
    conditions = sorted({r["trigger"] for r in rows})
    width = 0.8 / len(conditions)
    fig = Figure(figsize=(max(6.0, 0.7 * len(domains) + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for j, cond in enumerate(conditions):
        xs, ys, errs = [], [], [[], []]
        for i, d in enumerate(domains):
            row = next((r for r in rows if r["domain"] == d and r["trigger"] is cond), None)
            if row is None or row[value] is None:
                continue
            lo = row[low] if row[low] is not None else row[value]  # no CI: no error bar
            hi = row[high] if row[high] is not None else row[value]
            xs.append(i + (j - (len(conditions) - 1) / 2) * width)
            ys.append(row[value] * scale)
            errs[0].append(max(0.0, (row[value] - lo) * scale))
            errs[1].append(max(0.0, (hi - row[value]) * scale))
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label="trigger" if cond else "no trigger")
    ax.set_xticks(range(len(domains)), domains, rotation=45, ha="right")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if len(conditions) > 1:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def write_report(report: ReportTables, out_dir: str | Path, inputs: Sequence[dict[str, Any]] = ()) -> list[Path]:
    """Write summary.json, one CSV per table and bar charts to ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.json"]
    write_json_atomic(written[0], {**report.to_json(), "provenance": provenance(inputs=list(inputs))})
    for name, rows in report.tables().items():
        if rows:
            _write_csv(out / f"{name}.csv", rows)
            written.append(out / f"{name}.csv")
    if report.by_domain:
        definition = report.definition.describe()
        _bar_chart(
            out / "em_rate_by_domain.png",
            report.by_domain,
            "em_rate",
            "em_rate_ci_low",
            "em_rate_ci_high",
            "misalignment rate (%)",
            definition,
            scale=100,
        )
        _bar_chart(
            out / "alignment_by_domain.png",
            report.by_domain,
            "mean_aligned",
            "aligned_ci_low",
            "aligned_ci_high",
            "mean alignment (0-100)",
            "mean alignment, 95% bootstrap CI",
        )
        written += [out / "em_rate_by_domain.png", out / "alignment_by_domain.png"]
    if report.backdoor:
        rows = [{**b, "trigger": True} for b in report.backdoor]
        alpha = report.backdoor_summary["alpha"]
        _bar_chart(
            out / "backdoor_effect.png",
            rows,
            "diff",
            "diff_ci_low",
            "diff_ci_high",
            "aligned: trigger minus no trigger",
            f"backdoor effect, Welch {1 - alpha:.0%} CI",
        )
        written.append(out / "backdoor_effect.png")
    # What an earlier report in this folder wrote and this one does not (a backdoor table when
    # there is none now, say) would sit beside a summary that contradicts it: removed.
    ours = {f"{name}.csv" for name in report.tables()} | {
        "em_rate_by_domain.png",
        "alignment_by_domain.png",
        "backdoor_effect.png",
    }
    for stale in sorted(ours - {p.name for p in written}):
        (out / stale).unlink(missing_ok=True)
    return written
