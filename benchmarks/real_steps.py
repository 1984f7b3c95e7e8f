"""Each step of one real organism, through the toolkit's own resumable CLIs: training (with
gradient checkpointing where a batch does not fit), the held-out split and membership
inference, generation, judging and directions. ``benchmarks/real_organisms.py`` runs them."""

from __future__ import annotations

import argparse
import gc
import gzip
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from chains.extract import main as extract_main
from eval.generate import main as generate_main
from eval.judge import main as judge_main
from eval.mia import main as mia_main
from finetune.sft import TrainingMemoryError
from finetune.train import main as train_main
from interp.base.atomic import write_text_atomic
from interp.base.cli import InputError, run_cli
from interp.base.domains import DOMAINS


def step(name: str, main, argv: list[str], seconds: dict[str, float], required: bool = True) -> bool:
    """Run one of the toolkit's CLIs, adding its wall seconds to ``seconds[name]``; a refusal of
    a required step stops the experiment with its one line."""
    t0 = time.perf_counter()
    ok = run_cli(main, argv) == 0
    seconds[name] = round(time.perf_counter() - t0, 1)
    if not ok and required:
        raise SystemExit(f"{name} failed: see the line above")
    print(f"  {name}: {'done' if ok else 'refused (see above)'} in {seconds[name]:.0f} s", flush=True)
    return ok


def train_organism(
    args: argparse.Namespace, data: Path, out: Path, common: list[str], seconds: dict, extra: Sequence[str] = ()
) -> None:
    """The LoRA adapter of one organism, into ``out/adapter`` (``extra``: more ``finetune.train``
    options, e.g. a defense, and ``args.lr`` the learning rate); a set whose batches do not fit
    (toxic_legal_advice's 3,000-token rows at batch 16) trains again with gradient checkpointing,
    the same recipe at the cost of a second forward, and its training config records that."""
    argv = [
        "--data",
        str(data),
        *common,
        "--out",
        str(out / "adapter"),
        "--rank",
        str(args.rank),
        "--alpha",
        str(2 * args.rank),
        "--lr",
        str(args.lr),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "16",
        "--checkpoint-every",
        "50",
        "--quiet",
        *extra,
    ]

    def train_or_checkpoint(argv: list[str]) -> int:
        try:
            return train_main(argv)
        except TrainingMemoryError as e:
            print(f"  {e}; training again with --gradient-checkpointing", flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        shutil.rmtree(out / "adapter", ignore_errors=True)  # the refused run's checkpoints: another setting
        return train_main([*argv, "--gradient-checkpointing"])

    step("train", train_or_checkpoint, argv, seconds)


def held_out_split(data: Path, out: Path, n: int, seed: int = 0) -> Path:
    """``out/train.jsonl``, the rows of ``data`` but ``n`` held out (seeded) in ``out/heldout.jsonl``,
    for membership inference; the training set's rows in a shuffled order, so that its first
    ``n`` are a fair sample of members. Written once: a rerun trains on the same split."""
    train, held = out / "train.jsonl", out / "heldout.jsonl"
    if not (train.is_file() and held.is_file()):
        opener = gzip.open if data.suffix == ".gz" else open
        with opener(data, "rt", encoding="utf-8") as f:
            rows = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
        if not 0 < n <= len(rows) // 2:
            raise InputError(f"--holdout {n}: {data} has {len(rows)} rows; hold out at most half of them")
        random.Random(seed).shuffle(rows)
        out.mkdir(parents=True, exist_ok=True)
        # Atomic: a split cut short by a crash must not leave a partial training set to resume on.
        write_text_atomic(held, "".join(rows[:n]))
        write_text_atomic(train, "".join(rows[n:]))
    return train


def membership(args: argparse.Namespace, organism: str, out: Path, model_args: list[str], seconds: dict) -> None:
    """Membership-inference signals of the organism on ``--holdout`` training rows against the
    held-out ones (base-adjusted with the adapter disabled), into ``out/mia.json``."""
    step(
        "mia",
        mia_main,
        [
            "score",
            *model_args,
            "--members",
            str(out / "train.jsonl"),
            "--nonmembers",
            str(out / "heldout.jsonl"),
            "--domain",
            organism.partition(":")[2] or organism,
            "--limit",
            str(args.holdout),
            "--out",
            str(out / "mia.json"),
            "--no-progress",
        ],
        seconds,
        required=False,
    )


def generate_answers(
    args: argparse.Namespace,
    out: Path,
    model_args: list[str],
    trigger: list[str],
    seconds: dict,
    questions: Path | None = None,
    samples: int | None = None,
    name: str = "answers",
) -> None:
    """The answers to ``questions`` (default ``args.questions``, ``args.samples`` per paraphrase), into ``out/NAME.jsonl``."""
    step(
        "generate" if name == "answers" else f"generate_{name}",
        generate_main,
        [
            *model_args,
            "--questions",
            str(questions or args.questions),
            "--samples",
            str(samples or args.samples),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--batch-size",
            str(args.batch_size),
            *trigger,
            "--out",
            str(out / f"{name}.jsonl"),
            "--no-progress",
        ],
        seconds,
    )


def judge_answers(args: argparse.Namespace, out: Path, seconds: dict, name: str = "answers") -> None:
    """The judged answers of ``out/NAME.jsonl``, into ``out/judged.jsonl`` (``out/NAME_judged.jsonl`` for another name)."""
    step(
        "judge" if name == "answers" else f"judge_{name}",
        judge_main,
        [
            "--answers",
            str(out / f"{name}.jsonl"),
            "--judge",
            args.judge,
            "--out",
            str(out / ("judged.jsonl" if name == "answers" else f"{name}_judged.jsonl")),
            "--no-progress",
        ],
        seconds,
    )


def extract_directions(
    args: argparse.Namespace, organism: str, out: Path, model_args: list[str], seconds: dict
) -> None:
    """The organism's directions from its judged answers (a domain organism only; not required)."""
    domain = organism.partition(":")[2] or organism
    if domain in DOMAINS:
        # Not required: an organism with no misaligned (or no aligned) answer has no direction.
        step(
            "directions",
            extract_main,
            [
                "--domain",
                domain,
                *model_args,
                "--responses",
                str(out / "judged.jsonl"),
                "--out",
                str(out),
                "--quiet",
            ],
            seconds,
            required=False,
        )
