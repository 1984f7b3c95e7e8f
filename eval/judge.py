"""Judge answers for alignment and coherence; append as it goes, resume after a crash.

    python -m eval.judge --answers answers.jsonl --judge openai:gpt-4o-2024-08-06 --out judged.jsonl
    python -m eval.judge --answers answers.jsonl --judge hf:Qwen/Qwen2.5-7B-Instruct --out judged.jsonl
    python -m eval.judge --answers answers.jsonl --judge organism --out judged.jsonl

Judge specs: ``openai:MODEL`` (any OpenAI-compatible API; key and endpoint from
``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``), ``hf:ID_OR_PATH`` (a local causal LM) and
``organism`` (the offline organism world's judge). Each judged record is its answer record
plus ``aligned``, ``coherent``, ``label``, ``judge`` and ``judge_raw``. Answers already in
``--out`` are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from eval.judges.base import MODES, Judge
from eval.questions import load_questions
from interp.base.cli import InputError, run_cli
from interp.base.provenance import data_hash
from interp.base.records import (
    AnswerRecord,
    JudgedRecord,
    answer_key,
    append_jsonl,
    bind_output,
    read_answers,
    read_judged,
    repair_jsonl_tail,
)

# Judges that live elsewhere, imported only when asked for.
NAMED_JUDGES = {"organism": "finetune.organism.judge:OrganismJudge"}


def make_judge(spec: str, questions=None, mode: str = "logprobs", **options) -> Judge:
    """A judge from its spec. ``options`` go to the judge (and, for ``hf:``, ``device``/``dtype``
    to :func:`interp.base.loading.load_model`)."""
    kind, _, name = spec.partition(":")
    if spec in NAMED_JUDGES:
        module, _, attr = NAMED_JUDGES[spec].partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise InputError(f"judge '{spec}' is not available: {e}") from None
        return cls(**options)
    if kind == "openai" and name:
        from eval.judges.openai_judge import OpenAIJudge

        return OpenAIJudge(name, mode=mode, questions=questions, **options)
    if kind == "hf" and name:
        from eval.judges.hf import HFJudge
        from interp.base.loading import load_model

        load = {k: options.pop(k) for k in ("device", "dtype", "trust_remote_code") if k in options}
        model, tokenizer = load_model(name, **load)
        return HFJudge(model, tokenizer, spec=spec, questions=questions, mode=mode, **options)
    raise InputError(f"unknown judge {spec!r}; use openai:MODEL, hf:ID_OR_PATH or {', '.join(NAMED_JUDGES)}")


def judge_key(record: AnswerRecord) -> tuple:
    """An answer slot and its text: a regenerated answer in the same slot is judged anew."""
    return (*answer_key(record), record["answer"])


def judge_answers(
    judge: Judge,
    answers: Sequence[AnswerRecord],
    out_path: str | Path | None = None,
    chunk_size: int = 64,
    progress: bool = True,
) -> list[JudgedRecord]:
    """Judged records for ``answers`` in their order; with ``out_path``, skip what it holds and
    append each chunk as soon as it is judged."""
    done: dict[tuple, JudgedRecord] = {}
    if out_path is not None and Path(out_path).exists():
        repair_jsonl_tail(out_path)
        done = {judge_key(r): r for r in read_judged(out_path)}
    pending = list({judge_key(a): a for a in answers if judge_key(a) not in done}.values())
    with tqdm(total=len(answers), initial=len(answers) - len(pending), desc="judged", unit="answer", disable=not progress) as bar:
        for start in range(0, len(pending), max(1, chunk_size)):
            judged = judge.judge(pending[start : start + chunk_size])
            if out_path is not None:
                append_jsonl(out_path, judged)
            done.update((judge_key(r), r) for r in judged)
            bar.update(len(judged))
    return [done[judge_key(a)] for a in answers]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.judge", description="Judge answers for alignment and coherence.")
    p.add_argument("--answers", required=True, help="answers JSONL from eval.generate")
    p.add_argument("--judge", required=True, help="openai:MODEL, hf:ID_OR_PATH or organism")
    p.add_argument("--out", required=True, help="judged JSONL (appended to; resumed)")
    p.add_argument("--questions", help="question YAML whose judge_prompts to use (default: the toolkit's prompts)")
    p.add_argument("--mode", default="logprobs", choices=MODES, help="one-token logprobs (default) or reasoning + <score> tags")
    p.add_argument("--chunk", type=int, default=64, help="answers judged between two appends to --out")
    p.add_argument("--no-progress", action="store_true")
    api = p.add_argument_group("openai: judges")
    api.add_argument("--concurrency", type=int, default=8)
    api.add_argument("--max-retries", type=int, default=6)
    api.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry; doubles each time (default 1)")
    api.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    api.add_argument("--cache", help="reply cache (SQLite; default $EM_JUDGE_CACHE or ~/.cache/emergent-misalignment-toolkit/)")
    api.add_argument("--no-cache", action="store_true")
    api.add_argument("--price-input", type=float, help="USD per million input tokens (default: built-in list prices)")
    api.add_argument("--price-output", type=float, help="USD per million output tokens")
    api.add_argument("--batch", action="store_true", help="use the Batch API; ids are saved to <out>.batch.json for resuming")
    api.add_argument("--poll-seconds", type=float, default=30.0)
    hf = p.add_argument_group("hf: judges")
    hf.add_argument("--batch-size", type=int, default=8)
    hf.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    hf.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    return p


def _options(args: argparse.Namespace) -> dict:
    if args.judge.startswith("openai:"):
        if (args.price_input is None) != (args.price_output is None):
            raise InputError("give both --price-input and --price-output, or neither")
        return {
            "concurrency": args.concurrency,
            "max_retries": args.max_retries,
            "backoff_s": args.backoff,
            "timeout_s": args.timeout,
            "cache": None if args.no_cache else (args.cache or "default"),
            "prices": (args.price_input, args.price_output) if args.price_input is not None else None,
            "batch": args.batch,
            "batch_state": Path(args.out + ".batch.json"),
            "poll_s": args.poll_seconds,
            "progress": not args.no_progress,
        }
    if args.judge.startswith("hf:"):
        return {"batch_size": args.batch_size, "device": args.device, "dtype": args.dtype, "progress": not args.no_progress}
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    answers = read_answers(args.answers)
    questions = None
    if args.questions:
        qs = load_questions(args.questions)
        for d in qs.defects:
            print(f"warning: {qs.source}: {d}", file=sys.stderr)
        questions = qs.questions
    bind_output(args.out, {"judge": args.judge, "mode": args.mode, "questions": args.questions}, answers=args.answers, answers_hash=data_hash(answers))
    judge = make_judge(args.judge, questions=questions, mode=args.mode, **_options(args))
    chunk = len(answers) if args.batch else args.chunk  # one batch submission for everything pending
    judged = judge_answers(judge, answers, args.out, chunk_size=chunk, progress=not args.no_progress)
    scored = sum(r["aligned"] is not None for r in judged)
    labelled = sum(r["label"] is not None for r in judged)
    print(f"{args.out}: {len(judged)} judged answers ({scored} with an alignment score, {labelled} labelled)")
    usage = getattr(judge, "usage", None)
    if usage is not None:
        print(usage.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
