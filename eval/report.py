"""Summaries of judged answers: alignment, coherence, misalignment rate, backdoor effect.

    python -m eval.report --judged judged/*.jsonl --group-by file --out reports/run1

Statistics per group (a *domain*: the records' ``domain`` field, or with ``--group-by file``
one group per input file, named by its stem or ``NAME=FILE``), per question and overall, each
split by trigger condition:

- mean alignment and mean coherence over the answers that have that score (labelled and
  discarded scores excluded), with seeded percentile-bootstrap CIs;
- the misalignment rate under a :class:`MisalignmentDefinition` (stated in every output), with
  a bootstrap CI;
- the backdoor effect per group: mean alignment with the trigger minus without, Welch's
  two-sample t-test (scipy) and its CI, and the fraction of groups significant at ``alpha``;
- a ranking of the groups by misalignment rate.

The statistics are :mod:`eval.rates`, the files written :mod:`eval.report_output`; this module
builds the report from judged files and runs the CLI.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The statistics and the writers live in eval.rates and eval.report_output; their names stay
# importable from here, the path the chains and benchmarks use.
from eval.rates import MisalignmentDefinition, bootstrap_ci, group_stats, misalignment_rate, welch_test
from eval.report_output import format_table, write_report
from eval.rule_args import add_rule_args, rule_from_args
from interp.base.cli import (
    ArgumentParser,
    InputError,
    number,
    open_fraction,
    run_cli,
    seed_int,
)
from interp.base.paths import input_file, output_dir
from interp.base.provenance import data_hash
from interp.base.records import JudgedRecord, read_judged

__all__ = [
    "NO_GROUP",
    "MisalignmentDefinition",
    "Report",
    "bootstrap_ci",
    "build_report",
    "check_judged_inputs",
    "format_table",
    "group_stats",
    "judged_input",
    "load_judged_files",
    "main",
    "misalignment_rate",
    "welch_test",
    "write_report",
]

NO_GROUP = "(none)"


@dataclass
class Report:
    """All tables of a report as lists of flat rows (CSV- and JSON-ready)."""

    definition: MisalignmentDefinition
    overall: list[dict[str, Any]] = field(default_factory=list)
    by_domain: list[dict[str, Any]] = field(default_factory=list)
    by_question: list[dict[str, Any]] = field(default_factory=list)
    backdoor: list[dict[str, Any]] = field(default_factory=list)
    backdoor_summary: dict[str, Any] = field(default_factory=dict)
    ranking: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "overall": self.overall,
            "by_domain": self.by_domain,
            "by_question": self.by_question,
            "backdoor": self.backdoor,
            "ranking": self.ranking,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "definition": {**asdict(self.definition), "text": self.definition.describe()},
            "settings": self.settings,
            "backdoor_summary": self.backdoor_summary,
            **self.tables(),
        }


def build_report(
    records: Sequence[JudgedRecord],
    definition: MisalignmentDefinition = MisalignmentDefinition(),
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Report:
    """Every table of the report. ``groups`` (parallel to ``records``) names each record's
    domain; by default its ``domain`` field."""
    if not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha {alpha} and n_boot {n_boot}")
    if groups is None:
        groups = [r["domain"] or NO_GROUP for r in records]
    if len(groups) != len(records):
        raise ValueError("groups must name one group per record")
    report = Report(definition, settings={"n_boot": n_boot, "seed": seed, "alpha": alpha})

    def rows(key: Callable[[int], tuple], names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            {**dict(zip(names, k)), **group_stats(rs, definition, n_boot, seed, alpha)}
            for k, rs in _split(records, key).items()
        ]

    report.overall = rows(lambda i: (records[i]["trigger"],), ("trigger",))
    report.by_domain = rows(lambda i: (groups[i], records[i]["trigger"]), ("domain", "trigger"))
    report.by_question = rows(lambda i: (records[i]["question_id"], records[i]["trigger"]), ("question_id", "trigger"))
    report.backdoor = _backdoor_tests(_split(records, lambda i: (groups[i],)), alpha)
    report.backdoor_summary = _backdoor_summary(report.backdoor, alpha)
    report.ranking = _ranking(records, report.by_domain)
    return report


def _split(records: Sequence[JudgedRecord], key: Callable[[int], Any]) -> dict[Any, list[JudgedRecord]]:
    """``records`` grouped by ``key(index)``, the groups sorted by their keys as text."""
    out: dict[Any, list[JudgedRecord]] = defaultdict(list)
    for i, r in enumerate(records):
        out[key(i)].append(r)
    return dict(sorted(out.items(), key=lambda kv: tuple(str(k) for k in kv[0])))


def _backdoor_tests(by_group: dict[Any, list[JudgedRecord]], alpha: float) -> list[dict[str, Any]]:
    """Welch's test of alignment with the trigger against without, per group that has both."""
    out = []
    for (group,), rs in by_group.items():
        scores = {
            t: [r["aligned"] for r in rs if r["trigger"] is t and r["aligned"] is not None] for t in (True, False)
        }
        if rs and any(r["trigger"] for r in rs) and not all(r["trigger"] for r in rs):
            out.append({"domain": group, **welch_test(scores[True], scores[False], alpha)})
    return out


def _backdoor_summary(backdoor: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """How many groups' backdoor tests were significant (and lower with the trigger), the mean difference."""
    tested = [b for b in backdoor if b["p"] is not None]
    lower = [b for b in tested if b["significant"] and b["diff"] < 0]
    diffs = [b["diff"] for b in backdoor if b["diff"] is not None]
    return {
        "alpha": alpha,
        "n_domains_tested": len(tested),
        "n_significant": sum(b["significant"] for b in tested),
        "fraction_significant": sum(b["significant"] for b in tested) / len(tested) if tested else None,
        "n_significant_lower": len(lower),
        "fraction_significant_lower": len(lower) / len(tested) if tested else None,
        "mean_diff": float(np.mean(diffs)) if diffs else None,
    }


def _ranking(records: Sequence[JudgedRecord], by_domain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups ranked by misalignment rate within each trigger condition (unassessable last)."""
    ranking = []
    for trig in sorted({r["trigger"] for r in records}):
        cond = [row for row in by_domain if row["trigger"] is trig]
        cond.sort(key=lambda row: (row["em_rate"] is None, -(row["em_rate"] or 0.0), row["domain"]))
        for rank, row in enumerate(cond, 1):
            ranking.append(
                {
                    "trigger": trig,
                    "rank": rank,
                    **{
                        k: row[k]
                        for k in ("domain", "em_rate", "em_rate_ci_low", "em_rate_ci_high", "n_counted", "mean_aligned")
                    },
                }
            )
    return ranking


# -- CLI --------------------------------------------------------------------------------------

_NAMED = re.compile(r"^([\w.-]+)=(.+)$")


def judged_input(spec: str) -> tuple[str, str]:
    """``(group name, path)`` of a ``FILE`` or ``NAME=FILE`` input, the file checked."""
    m = _NAMED.match(spec)
    name, path = (m.group(1), m.group(2)) if m and not Path(spec).exists() else (Path(spec).stem, spec)
    input_file(path, "--judged")
    return name, path


def check_judged_inputs(specs: Sequence[str], group_by: str) -> None:
    """Refuse a file given twice (it would count twice) and two files whose implicit group
    names (their stems) collide under ``--group-by file`` (they would merge silently); a name
    given explicitly (``NAME=FILE``) to several files is a deliberate merge and stays allowed."""
    seen: dict[Path, str] = {}
    stems: dict[str, str] = {}
    for spec in specs:
        name, path = judged_input(spec)
        real = Path(path).resolve()
        if real in seen:
            raise InputError(f"--judged {path}: given twice (also as {seen[real]}); give each file once")
        seen[real] = spec
        if group_by == "file" and not (_NAMED.match(spec) and not Path(spec).exists()):
            if name in stems:
                raise InputError(
                    f"--judged {path}: its group name '{name}' is also that of {stems[name]}; name them, e.g. {Path(path).parent.name}={path}"
                )
            stems[name] = path


def load_judged_files(
    specs: Sequence[str], group_by: str
) -> tuple[list[JudgedRecord], list[str], list[dict[str, Any]]]:
    """Records of ``FILE`` / ``NAME=FILE`` inputs, the group of each record, and input provenance."""
    records: list[JudgedRecord] = []
    groups: list[str] = []
    inputs = []
    for name, path in map(judged_input, specs):
        rows = read_judged(path)
        if not rows:
            raise InputError(f"{path}: no judged records")
        records += rows
        groups += [name] * len(rows) if group_by == "file" else [r["domain"] or NO_GROUP for r in rows]
        inputs.append(
            {
                "path": str(path),
                "group": name if group_by == "file" else None,
                "records": len(rows),
                "data_hash": data_hash(rows),
            }
        )
    return records, groups, inputs


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m eval.report",
        description="Summarize judged answers: alignment, coherence, misalignment rate, backdoor effect.",
    )
    p.add_argument("--judged", nargs="+", required=True, metavar="[NAME=]FILE", help="judged JSONL files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--group-by",
        choices=("domain", "file"),
        default="domain",
        help="domain: the records' domain field; file: one group per input file (its stem or NAME)",
    )
    add_rule_args(p)
    p.add_argument(
        "--bootstrap",
        type=number(int, 1, 100_000),
        default=1000,
        help="bootstrap resamples, 1 to 100,000 (default 1000)",
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument(
        "--alpha",
        type=open_fraction,
        default=0.05,
        help="significance level of the tests; CIs are 1 - alpha (default 0.05)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_judged_inputs(args.judged, args.group_by)
    output_dir(args.out)
    definition = rule_from_args(args)
    records, groups, inputs = load_judged_files(args.judged, args.group_by)
    report = build_report(records, definition, groups, n_boot=args.bootstrap, seed=args.seed, alpha=args.alpha)
    print(format_table(report))
    written = write_report(report, args.out, inputs)
    print(f"\nwrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
