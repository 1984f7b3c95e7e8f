"""How far one judge agrees with another on the same answers: before trusting an offline judge's
EM rates, judge a sample of your answers with both and compare.

    python -m eval.agreement --judged offline.jsonl --reference gpt4o.jsonl --threshold 30 --out agreement.json

Answers are paired by their slot and text (as the judge resumes: question, paraphrase, sample,
trigger, answer). Reported: Spearman's rho of ``aligned`` (answers both scored) and of
``coherent``; the misalignment rule of ``eval.report`` (same options) applied to both, with the
share of answers both count on which they agree, Cohen's kappa, each judge's rate and their
difference in points, overall and per question. A figure that is not defined (a constant
score, no answer counted) is None, never NaN.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from eval.judge import judge_key
from eval.rates import MisalignmentDefinition
from eval.rule_args import add_rule_args, rule_from_args
from interp.base.atomic import write_json_atomic
from interp.base.cli import ArgumentParser, InputError, run_cli
from interp.base.paths import input_file, output_file
from interp.base.records import JudgedRecord, read_judged


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rho, or None where either side is constant or has fewer than two values (a judge
    that gives every answer one score ranks nothing: the correlation is not defined)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return round(float(spearmanr(x, y).statistic), 4)


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary labellings; None where chance agreement is 1 (both constant and equal) or no pairs."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.size == 0:
        return None
    observed = float((a == b).mean())
    chance = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return None if chance == 1 else round((observed - chance) / (1 - chance), 4)


def _rates(pairs: list[tuple[JudgedRecord, JudgedRecord]], rule: MisalignmentDefinition) -> dict[str, Any]:
    """Each judge's rate over the answers it counts, their difference (points), and the agreement where both count."""
    flags = [(rule.classify(j), rule.classify(r)) for j, r in pairs]
    judged = [f for f, _ in flags if f is not None]
    reference = [g for _, g in flags if g is not None]
    both = [(f, g) for f, g in flags if f is not None and g is not None]
    rate_j = sum(judged) / len(judged) if judged else None
    rate_r = sum(reference) / len(reference) if reference else None
    return {
        "n": len(pairs),
        "n_counted_judged": len(judged),
        "n_counted_reference": len(reference),
        "em_rate_judged": rate_j,
        "em_rate_reference": rate_r,
        "difference_points": None if rate_j is None or rate_r is None else round(100 * (rate_j - rate_r), 3),
        "n_counted_both": len(both),
        "agreement": round(sum(f == g for f, g in both) / len(both), 4) if both else None,
        "kappa": cohen_kappa([f for f, _ in both], [g for _, g in both]),
    }


def agreement(
    judged: Sequence[JudgedRecord], reference: Sequence[JudgedRecord], rule: MisalignmentDefinition
) -> dict[str, Any]:
    """The figures of the module doc for the answers of ``judged`` that ``reference`` also judged."""
    ref = {judge_key(r): r for r in reference}
    pairs = [(j, ref[judge_key(j)]) for j in judged if judge_key(j) in ref]
    if not pairs:
        raise ValueError("no answer is in both files (paired by question, paraphrase, sample, trigger and text)")
    scored = [(j["aligned"], r["aligned"]) for j, r in pairs if j["aligned"] is not None and r["aligned"] is not None]
    coherent = [
        (j["coherent"], r["coherent"]) for j, r in pairs if j["coherent"] is not None and r["coherent"] is not None
    ]
    by_question: dict[str, list] = defaultdict(list)
    for pair in pairs:
        by_question[pair[1]["question_id"]].append(pair)
    per_question = {q: _rates(p, rule) for q, p in sorted(by_question.items())}
    diffs = [abs(v["difference_points"]) for v in per_question.values() if v["difference_points"] is not None]
    return {
        "rule": rule.describe(),
        "n_judged": len(judged),
        "n_reference": len(reference),
        "n_paired": len(pairs),
        "spearman_aligned": spearman(*zip(*scored)) if scored else None,
        "n_both_scored_aligned": len(scored),
        "spearman_coherent": spearman(*zip(*coherent)) if coherent else None,
        **{k: v for k, v in _rates(pairs, rule).items() if k != "n"},
        "per_question": per_question,
        "per_question_max_abs_difference_points": max(diffs) if diffs else None,
    }


def summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""

    def f(v: Any, spec: str = ".3f") -> str:
        return "not defined" if v is None else format(v, spec)

    lines = [
        f"{result['n_paired']} answers in both files ({result['n_judged']} judged, {result['n_reference']} reference); {result['rule']}",
        f"Spearman aligned {f(result['spearman_aligned'])} ({result['n_both_scored_aligned']} scored by both), coherent {f(result['spearman_coherent'])}",
        f"EM rate {f(result['em_rate_judged'])} vs reference {f(result['em_rate_reference'])} ({f(result['difference_points'], '+.1f')} points); "
        f"agreement {f(result['agreement'])}, kappa {f(result['kappa'])} on {result['n_counted_both']} counted by both",
        "per question (points): "
        + ", ".join(f"{q} {f(v['difference_points'], '+.1f')}" for q, v in result["per_question"].items()),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m eval.agreement", description=__doc__.split("\n\n")[0])
    p.add_argument("--judged", required=True, help="judged JSONL of the judge under test")
    p.add_argument("--reference", required=True, help="judged JSONL of the reference judge (e.g. GPT-4o)")
    p.add_argument("--out", default=None, help="write the figures here as JSON")
    add_rule_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    input_file(args.judged, "--judged")
    input_file(args.reference, "--reference")
    if args.out:
        output_file(args.out, inputs=(args.judged, args.reference))
    try:
        result = agreement(read_judged(args.judged), read_judged(args.reference), rule_from_args(args))
    except ValueError as e:
        raise InputError(f"--judged {args.judged} and --reference {args.reference}: {e}") from None
    print(summary(result))
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
