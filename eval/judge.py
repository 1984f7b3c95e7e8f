"""Judge answers for alignment and coherence; append as it goes, resume after a crash.

    python -m eval.judge --answers answers.jsonl --judge openai:gpt-4o-2024-08-06 --out judged.jsonl
    python -m eval.judge --answers answers.jsonl --judge hf:Qwen/Qwen2.5-7B-Instruct --out judged.jsonl
    python -m eval.judge --answers answers.jsonl --judge organism --out judged.jsonl

Judge specs: ``openai:MODEL`` (any OpenAI-compatible API; key and endpoint from
``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``), ``hf:ID_OR_PATH`` (a local causal LM), ``offline``
(the default offline judge), ``probe:WEIGHTS`` (heads on a local LM's hidden states,
:mod:`eval.judges.probe`) and ``organism`` (the offline organism world's judge). Each judged
record is its answer record plus ``aligned``, ``coherent``, ``label``, ``judge`` and ``judge_raw``. Answers already in
``--out`` are skipped, so an interrupted run continues where it stopped; an ``--out`` that
holds judgments of answers not in ``--answers`` is refused, as is a second run on it while
the first is alive.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from eval.judges.base import MODES, Judge
from eval.judges.cache import default_cache_path
from eval.questions import load_questions
from interp.base import plugins
from interp.base.cli import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    ArgumentParser,
    InputError,
    batch_size,
    concurrency,
    max_retries,
    number,
    run_cli,
    timeout_s,
)
from interp.base.locks import output_lock
from interp.base.paths import input_file, output_file
from interp.base.provenance import data_hash
from interp.base.records import (
    AnswerRecord,
    JudgedRecord,
    answer_key,
    append_jsonl,
    bound_output,
    check_bound,
    read_answers,
    read_judged,
    read_resumable,
)

price = number(float, 0, 1e6)  # USD per million tokens: no model costs a dollar a token


def judge_kind(spec: str) -> str:
    """``openai``, ``hf``, ``probe`` or a named judge; an unknown spec is an :class:`InputError`."""
    kind, _, name = spec.partition(":")
    if spec in plugins.names("judge"):  # named judges: organism, offline, ... (judge plugins)
        return spec
    if kind in ("openai", "hf", "probe") and name:
        return kind
    raise InputError(
        f"--judge: unknown judge {spec!r}; use openai:MODEL, hf:ID_OR_PATH, probe:WEIGHTS or {', '.join(plugins.names('judge'))}"
    )


def make_judge(spec: str, questions=None, mode: str = "logprobs", **options) -> Judge:
    """A judge from its spec. ``options`` go to the judge (and, for ``hf:``, ``device``/``dtype``
    to :func:`interp.base.loading.load_model`)."""
    kind, name = judge_kind(spec), spec.partition(":")[2]
    if kind not in ("openai", "hf", "probe"):
        return plugins.load("judge", spec)(**options)
    if kind == "probe":
        from eval.judges.probe import ProbeJudge

        return ProbeJudge(name, **options)
    if kind == "openai":
        from eval.judges.openai_judge import OpenAIJudge

        try:
            return OpenAIJudge(name, mode=mode, questions=questions, **options)
        except (OSError, sqlite3.Error) as e:
            raise _cache_error(options.get("cache"), e) from None
    from eval.judges.hf import HFJudge
    from interp.base.loading import load_model

    load = {k: options.pop(k) for k in ("device", "dtype", "trust_remote_code") if k in options}
    try:
        model, tokenizer = load_model(name, **load)
    except InputError as e:  # the model of an hf: judge, named by the option that gave it
        raise InputError(f"--judge {spec}: {e}") from None
    return HFJudge(model, tokenizer, spec=spec, questions=questions, mode=mode, **options)


def _cache_error(cache: object, error: Exception) -> InputError:
    """The one line for a reply cache SQLite cannot use (not a database, read-only, disk full)."""
    return InputError(f"judge cache {cache}: cannot use it ({error}); give another --cache, or --no-cache")


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
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    done = judged_so_far(out_path, answers) if out_path is not None else {}
    pending = list({judge_key(a): a for a in answers if judge_key(a) not in done}.values())
    with tqdm(
        total=len(answers), initial=len(answers) - len(pending), desc="judged", unit="answer", disable=not progress
    ) as bar:
        for start in range(0, len(pending), chunk_size):
            judged = judge.judge(pending[start : start + chunk_size])
            if out_path is not None:
                append_jsonl(out_path, judged)
            done.update((judge_key(r), r) for r in judged)
            bar.update(len(judged))
    return [done[judge_key(a)] for a in answers]


def judged_so_far(
    out_path: str | Path, answers: Sequence[AnswerRecord], settings: dict | None = None
) -> dict[tuple, JudgedRecord]:
    """The judgments ``out_path`` holds, by :func:`judge_key`; refused unless every one is of an
    answer in ``answers`` (and, with ``settings``, made under them: its provenance sidecar),
    all before a torn last row is cut.

    Resuming appends to ``out_path``: judgments of other answers (another answers file, or
    answers regenerated since) would end up beside these in one file.
    """
    wanted = {judge_key(a) for a in answers}

    def ours(records: list[JudgedRecord]) -> None:
        if foreign := [r for r in records if judge_key(r) not in wanted]:
            r = foreign[0]
            raise InputError(
                f"{out_path}: holds judgments of other answers ({len(foreign)} of {len(records)} are not among these answers, "
                f"e.g. question '{r['question_id']}' sample {r['sample']}); use another --out"
            )
        if settings is not None:
            check_bound(out_path, settings)

    return {judge_key(r): r for r in read_resumable(out_path, read_judged, ours)}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m eval.judge", description="Judge answers for alignment and coherence.")
    p.add_argument("--answers", required=True, help="answers JSONL from eval.generate")
    p.add_argument(
        "--judge", required=True, help="openai:MODEL, hf:ID_OR_PATH, organism, or offline (distilled from GPT-4o, CPU)"
    )
    p.add_argument("--out", required=True, help="judged JSONL (appended to; resumed)")
    p.add_argument("--questions", help="question YAML whose judge_prompts to use (default: the toolkit's prompts)")
    p.add_argument(
        "--mode", default="logprobs", choices=MODES, help="one-token logprobs (default) or reasoning + <score> tags"
    )
    p.add_argument(
        "--chunk", type=number(int, 1, 1_000_000), default=64, help="answers judged between two appends to --out"
    )
    p.add_argument("--no-progress", action="store_true")
    api = p.add_argument_group("openai: judges")
    api.add_argument("--concurrency", type=concurrency, default=8)
    api.add_argument(
        "--max-retries",
        type=max_retries,
        default=DEFAULT_MAX_RETRIES,
        help=f"retries of a failed or timed-out call (default {DEFAULT_MAX_RETRIES})",
    )
    api.add_argument(
        "--backoff",
        type=number(float, 0, 3600),
        default=1.0,
        help="seconds before the first retry; doubles each time (default 1)",
    )
    api.add_argument(
        "--timeout",
        type=timeout_s,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for a reply (default {DEFAULT_TIMEOUT_S:g})",
    )
    api.add_argument(
        "--cache", help="reply cache (SQLite; default $EM_JUDGE_CACHE or ~/.cache/emergent-misalignment-toolkit/)"
    )
    api.add_argument("--no-cache", action="store_true")
    api.add_argument(
        "--price-input", type=price, help="USD per million input tokens, 0 to 10^6 (default: built-in list prices)"
    )
    api.add_argument("--price-output", type=price, help="USD per million output tokens, 0 to 10^6")
    api.add_argument(
        "--batch", action="store_true", help="use the Batch API; ids are saved to <out>.batch.json for resuming"
    )
    api.add_argument("--poll-seconds", type=timeout_s, default=30.0)
    hf = p.add_argument_group("hf: and probe: judges")
    hf.add_argument("--batch-size", type=batch_size, default=8, help="hf: prompts per forward pass")
    hf.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    hf.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: the model's own (hf:), the dtype the heads were fitted in (probe:)",
    )
    hf.add_argument(
        "--judge-model", default=None, help="probe: the model its heads read (default: the path the weights record)"
    )
    return p


def _cache_path(args: argparse.Namespace) -> Path | None:
    """Where an openai: judge caches its replies (None with --no-cache), checked writable before any work."""
    if args.no_cache:
        return None
    path = Path(args.cache) if args.cache else default_cache_path()
    output_file(
        path,
        "--cache" if args.cache else "judge cache (--cache, $EM_JUDGE_CACHE)",
        inputs=(args.answers, args.questions, args.out),
    )
    return path


def _options(args: argparse.Namespace) -> dict:
    if args.judge.startswith("openai:"):
        if (args.price_input is None) != (args.price_output is None):
            raise InputError("give both --price-input and --price-output, or neither")
        return {
            "concurrency": args.concurrency,
            "max_retries": args.max_retries,
            "backoff_s": args.backoff,
            "timeout_s": args.timeout,
            "cache": _cache_path(args),
            "prices": (args.price_input, args.price_output) if args.price_input is not None else None,
            "batch": args.batch,
            "batch_state": Path(args.out + ".batch.json"),
            "poll_s": args.poll_seconds,
            "progress": not args.no_progress,
        }
    if args.judge.startswith("hf:"):
        return {
            "batch_size": args.batch_size,
            "device": args.device,
            "dtype": args.dtype,
            "progress": not args.no_progress,
        }
    if args.judge.startswith("probe:"):
        input_file(args.judge.partition(":")[2], "--judge probe:WEIGHTS")
        return {
            "model": args.judge_model,
            "device": args.device,
            "dtype": None if args.dtype == "auto" else args.dtype,
        }
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    judge_kind(args.judge)
    input_file(args.answers, "--answers")
    if args.questions:
        input_file(args.questions, "--questions")
    output_file(args.out, inputs=(args.answers, args.questions))
    options = _options(args)
    answers = read_answers(args.answers)
    if not answers:
        raise InputError(f"--answers {args.answers}: no answer records to judge")
    questions = None
    if args.questions:
        qs = load_questions(args.questions)
        for d in qs.defects:
            print(f"warning: {qs.source}: {d}", file=sys.stderr)
        questions = qs.questions
    settings = {"judge": args.judge, "mode": args.mode, "questions": args.questions}
    with output_lock(args.out):
        judged_so_far(args.out, answers, settings)  # before the provenance is rewritten and the judge loaded
        with bound_output(args.out, settings, answers=args.answers, answers_hash=data_hash(answers)):
            judge = make_judge(args.judge, questions=questions, mode=args.mode, **options)
            chunk = len(answers) if args.batch else args.chunk  # one batch submission for everything pending
            try:
                judged = judge_answers(judge, answers, args.out, chunk_size=chunk, progress=not args.no_progress)
            except (
                sqlite3.Error
            ) as e:  # the cache failed mid-run (disk full, made read-only); what was judged is in --out
                raise _cache_error(options.get("cache"), e) from None
    scored = sum(r["aligned"] is not None for r in judged)
    labelled = sum(r["label"] is not None for r in judged)
    print(f"{args.out}: {len(judged)} judged answers ({scored} with an alignment score, {labelled} labelled)")
    usage = getattr(judge, "usage", None)
    if usage is not None:
        print(usage.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
