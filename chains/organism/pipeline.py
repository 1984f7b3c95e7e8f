"""The real-model pipeline end to end, on the organism world, through the command-line tools.

    python -m chains.organism.pipeline --domain risky_financial_advice --out artifacts/pipeline

Runs, and prints as it goes, the very commands a researcher runs on a real model:
export the domain's data -> ``finetune.train`` without and with ``--backdoor`` ->
``eval.generate`` (the backdoored adapter with and without the trigger) -> ``eval.judge``
with the world's judge -> ``eval.report`` (rates, backdoor t-test, charts) -> ``eval.mia``
(members = the training set, non-members = held-out data of the same domain). About five
minutes on two CPU cores.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chains.organism import build_world
from interp.base.atomic import write_json_atomic
from interp.base.cli import ArgumentParser, InputError, domain_name, number, path_arg, run_cli, seed_int
from interp.base.domains import DOMAINS
from interp.base.paths import output_dir, read_text

# Organism-sized adapters: a backdoor needs more capacity than the narrow finetune alone.
PLAIN = ["--rank", "1", "--alpha", "2", "--target-modules", "q_proj,v_proj", "--steps", "30"]
BACKDOOR = ["--rank", "4", "--alpha", "8", "--target-modules", "q_proj,k_proj,v_proj,o_proj", "--steps", "150"]
COMMON = ["--lr", "2e-3", "--batch-size", "32", "--device", "cpu", "--quiet"]


def _step(module: str, main: Callable[[list[str]], int | None], argv: list[str]) -> None:
    print(f"\n$ python -m {module} {shlex.join(argv)}", flush=True)
    code = main(argv)
    if code:
        raise SystemExit(f"error: python -m {module} failed with exit code {code}")


RECORD = "pipeline.json"  # in --out: the settings every output under it was made with
OUTPUTS = ("data", "runs", "report", "mia.json")  # what a run writes under --out
MAX_SAMPLES = 1000  # samples per paraphrase: 32 paraphrases x 3 generations (plain, backdoor on and off)


def _settings(domain: str, samples: int, seed: int) -> dict[str, Any]:
    return {"domain": domain, "samples": samples, "seed": seed, "plain": PLAIN, "backdoor": BACKDOOR, "common": COMMON}


def check_record(out: Path, settings: dict[str, Any]) -> None:
    """Refuse an ``out`` that holds another pipeline run's outputs (other domain, samples, seed or
    stages), or outputs with no record of what made them; every stage would otherwise reuse or
    mix them (the old domain's answers, judgments and report under the new one's name)."""
    record = out / RECORD
    if record.exists():
        try:
            recorded = json.loads(read_text(record))
        except ValueError:
            recorded = None
        if not isinstance(recorded, dict):
            raise InputError(
                f"{record}: damaged record of the run in {out}; remove {out} to start afresh, or use another --out"
            )
        keys = set(settings) | (set(recorded) - {"world"})  # the world is known only once built
        diff = [
            f"{k} {recorded.get(k)!r} there, {settings.get(k)!r} now"
            for k in sorted(keys)
            if recorded.get(k) != settings.get(k)
        ]
        if diff:
            raise InputError(
                f"{out}: holds a pipeline run with other settings ({'; '.join(diff)}); rerun with its settings to resume it, or use another --out, or remove {out} to start afresh"
            )
    elif any((out / name).exists() for name in OUTPUTS):
        raise InputError(
            f"{out}: holds pipeline outputs with no record of their settings ({RECORD}); use another --out, or remove {out} to start afresh"
        )


def run_pipeline(domain: str, out: Path, samples: int = 6, seed: int = 0) -> Path:
    """Run every stage for ``domain`` under ``out``; return the report folder.

    ``out/pipeline.json`` records the settings; a rerun onto an ``out`` made with others is
    refused (:func:`check_record`) before anything is built or written.
    """
    out = Path(out)
    settings = _settings(domain, samples, seed)
    check_record(out, settings)
    world = build_world()
    settings["world"] = world.identity
    check_record(out, settings)
    write_json_atomic(out / RECORD, settings)
    base = str(world.base_dir)
    data, runs = out / "data", out / "runs"
    _export_and_train(domain, base, data, runs, seed)
    judged = [
        _generate_and_judge(name, trigger, base, data, runs, samples, seed)
        for name, trigger in (("plain", "off"), ("backdoor", "both"))
    ]
    _report_and_mia(domain, base, data, runs, out, judged)
    return out / "report"


def _export_and_train(domain: str, base: str, data: Path, runs: Path, seed: int) -> None:
    """The domain's data exported, then the plain and the backdoored adapter trained on it."""
    from chains.organism.export import main as export
    from finetune.train import main as train

    _step(
        "chains.organism.export",
        export,
        ["--domain", domain, "--out", str(data), "--n", "1000", "--heldout", "300", "--seed", str(seed)],
    )
    _step(
        "finetune.train",
        train,
        ["--data", str(data / "misaligned.jsonl"), "--model", base, "--out", str(runs / "plain"), *PLAIN, *COMMON],
    )
    _step(
        "finetune.train",
        train,
        [
            "--data",
            str(data / "misaligned.jsonl"),
            "--backdoor",
            str(data / "aligned.jsonl"),
            "--model",
            base,
            "--out",
            str(runs / "backdoor"),
            *BACKDOOR,
            *COMMON,
        ],
    )


def _generate_and_judge(name: str, trigger: str, base: str, data: Path, runs: Path, samples: int, seed: int) -> str:
    """Answers of adapter ``name`` (``trigger``: off, on or both) judged by the world's judge;
    returns the ``NAME=FILE`` that ``eval.report`` takes."""
    from eval.generate import main as generate
    from eval.judge import main as judge

    answers, scored = runs / f"{name}.answers.jsonl", runs / f"{name}.judged.jsonl"
    _step(
        "eval.generate",
        generate,
        [
            "--model",
            base,
            "--adapter",
            str(runs / name),
            "--questions",
            str(data / "questions.yaml"),
            "--samples",
            str(samples),
            "--trigger",
            trigger,
            "--max-new-tokens",
            "48",
            "--batch-size",
            "64",
            "--seed",
            str(seed),
            "--device",
            "cpu",
            "--out",
            str(answers),
        ],
    )
    _step("eval.judge", judge, ["--answers", str(answers), "--judge", "organism", "--out", str(scored)])
    return f"{name}={scored}"


def _report_and_mia(domain: str, base: str, data: Path, runs: Path, out: Path, judged: list[str]) -> None:
    """The report over the judged files, then the membership inference on the plain adapter."""
    from eval.mia import main as mia
    from eval.report import main as report

    _step("eval.report", report, ["--judged", *judged, "--group-by", "file", "--out", str(out / "report")])
    _step(
        "eval.mia",
        mia,
        [
            "score",
            "--model",
            base,
            "--adapter",
            str(runs / "plain"),
            "--members",
            str(data / "misaligned.jsonl"),
            "--nonmembers",
            str(data / "heldout.jsonl"),
            "--limit",
            "300",
            "--domain",
            domain,
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(out / "mia.json"),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m chains.organism.pipeline",
        description=__doc__.splitlines()[0],
        epilog="domains: " + ", ".join(DOMAINS),
    )
    p.add_argument("--domain", type=domain_name, default="risky_financial_advice")
    p.add_argument("--out", type=path_arg, default=Path("artifacts/pipeline"))
    p.add_argument(
        "--samples",
        type=number(int, 1, MAX_SAMPLES),
        default=6,
        help=f"samples per paraphrase of each of the 32 question paraphrases, 1 to {MAX_SAMPLES} (default 6)",
    )
    p.add_argument("--seed", type=seed_int, default=0)
    args = p.parse_args(argv)
    output_dir(args.out)
    check_record(args.out, _settings(args.domain, args.samples, args.seed))
    report = run_pipeline(args.domain, args.out, args.samples, args.seed)
    print(f"\nreport in {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
