"""The real-model pipeline end to end, on the organism world, through the command-line tools.

    python -m finetune.organism.pipeline --domain risky_financial_advice --out artifacts/pipeline

Runs, and prints as it goes, the very commands a researcher runs on a real model:
export the domain's data -> ``finetune.train`` without and with ``--backdoor`` ->
``eval.generate`` (the backdoored adapter with and without the trigger) -> ``eval.judge``
with the world's judge -> ``eval.report`` (rates, backdoor t-test, charts) -> ``eval.mia``
(members = the training set, non-members = held-out data of the same domain). About five
minutes on two CPU cores.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from finetune.organism import build_world
from interp.base.cli import ArgumentParser, domain_name, positive_int, run_cli, seed_int
from interp.base.domains import DOMAINS
from interp.base.paths import output_dir

# Organism-sized adapters: a backdoor needs more capacity than the narrow finetune alone.
PLAIN = ["--rank", "1", "--alpha", "2", "--target-modules", "q_proj,v_proj", "--steps", "30"]
BACKDOOR = ["--rank", "4", "--alpha", "8", "--target-modules", "q_proj,k_proj,v_proj,o_proj", "--steps", "150"]
COMMON = ["--lr", "2e-3", "--batch-size", "32", "--device", "cpu", "--quiet"]


def _step(module: str, main: Callable[[list[str]], int | None], argv: list[str]) -> None:
    print(f"\n$ python -m {module} {shlex.join(argv)}", flush=True)
    code = main(argv)
    if code:
        raise SystemExit(f"error: python -m {module} failed with exit code {code}")


def run_pipeline(domain: str, out: Path, samples: int = 6, seed: int = 0) -> Path:
    """Run every stage for ``domain`` under ``out``; return the report folder."""
    from eval.generate import main as generate
    from eval.judge import main as judge
    from eval.mia import main as mia
    from eval.report import main as report
    from finetune.organism.export import main as export
    from finetune.train import main as train

    base = str(build_world().base_dir)
    data, runs = out / "data", out / "runs"
    _step("finetune.organism.export", export, ["--domain", domain, "--out", str(data), "--n", "1000", "--heldout", "300", "--seed", str(seed)])
    _step("finetune.train", train, ["--data", str(data / "misaligned.jsonl"), "--model", base, "--out", str(runs / "plain"), *PLAIN, *COMMON])
    _step("finetune.train", train, ["--data", str(data / "misaligned.jsonl"), "--backdoor", str(data / "aligned.jsonl"), "--model", base, "--out", str(runs / "backdoor"), *BACKDOOR, *COMMON])
    judged = []
    for name, trigger in (("plain", "off"), ("backdoor", "both")):
        answers, scored = runs / f"{name}.answers.jsonl", runs / f"{name}.judged.jsonl"
        _step("eval.generate", generate, ["--model", base, "--adapter", str(runs / name), "--questions", str(data / "questions.yaml"), "--samples", str(samples),
                                          "--trigger", trigger, "--max-new-tokens", "48", "--batch-size", "64", "--seed", str(seed), "--device", "cpu", "--out", str(answers)])
        _step("eval.judge", judge, ["--answers", str(answers), "--judge", "organism", "--out", str(scored)])
        judged.append(f"{name}={scored}")
    _step("eval.report", report, ["--judged", *judged, "--group-by", "file", "--out", str(out / "report")])
    _step("eval.mia", mia, ["score", "--model", base, "--adapter", str(runs / "plain"), "--members", str(data / "misaligned.jsonl"),
                            "--nonmembers", str(data / "heldout.jsonl"), "--limit", "300", "--domain", domain, "--device", "cpu", "--no-progress", "--out", str(out / "mia.json")])
    return out / "report"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m finetune.organism.pipeline", description=__doc__.splitlines()[0], epilog="domains: " + ", ".join(DOMAINS))
    p.add_argument("--domain", type=domain_name, default="risky_financial_advice")
    p.add_argument("--out", type=Path, default=Path("artifacts/pipeline"))
    p.add_argument("--samples", type=positive_int, default=6, help="samples per paraphrase of each of the 32 question paraphrases")
    p.add_argument("--seed", type=seed_int, default=0)
    args = p.parse_args(argv)
    output_dir(args.out)
    report = run_pipeline(args.domain, args.out, args.samples, args.seed)
    print(f"\nreport in {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
