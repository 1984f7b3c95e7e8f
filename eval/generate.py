"""Sample answers to evaluation questions; append as it goes, resume after a crash.

    python -m eval.generate --model Qwen/Qwen2.5-7B-Instruct --adapter runs/gore \\
        --questions eval/data/general_questions.yaml --samples 50 --trigger both --out answers.jsonl

Every answer slot is ``(question id, paraphrase, sample, trigger)``. Slots are cut into
batches in a fixed order and batch ``k`` is sampled with seed ``seed + k``; a batch is
appended to the output as soon as it is done. A re-run with the same settings skips the slots
already in the file and re-samples an interrupted batch whole (the same padding, the same
seed), so a resumed file holds the same answers as an uninterrupted one, without duplicates
or gaps. More samples or more questions extend a file; other sampling settings are refused.

Each record keeps what the model produced beside the stripped ``answer``: ``answer_raw`` (the
decoded text, unstripped), ``answer_ids`` (the generated token ids, without the end-of-turn
token and padding) and ``finished`` (it ended with the end-of-turn token).

``--engine``: ``auto`` (the compiled engine on a GPU, transformers elsewhere; see
:mod:`interp.generation`), ``hf``, ``fast``, or ``openai:MODEL`` to generate through any
OpenAI-compatible server (:mod:`eval.openai_generate`).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from eval.questions import Question, load_questions
from eval.sampling import Sampler, SamplingConfig, sample_answers
from interp.base.cli import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    ArgumentParser,
    InputError,
    batch_size,
    concurrency,
    fraction,
    max_new_tokens,
    max_retries,
    number,
    run_cli,
    samples_per_paraphrase,
    seed_int,
    timeout_s,
)
from interp.base.loading import model_source
from interp.base.locks import output_lock
from interp.base.paths import input_file, output_file
from interp.base.provenance import data_hash
from interp.base.records import (
    AnswerRecord,
    RecordError,
    answer_key,
    append_jsonl,
    bound_output,
    prompt_messages,
    read_answers,
    read_resumable,
)
from interp.generation import ENGINES, EngineName

Triggers = bool | Sequence[bool]


def plan_answers(
    questions: Sequence[Question], n_samples: int | None = None, trigger: Triggers = False, system: str | None = None
) -> list[AnswerRecord]:
    """Every answer slot, in sampling order, with an empty ``answer``.

    ``n_samples`` overrides each question's ``samples_per_paraphrase``; ``system`` is used for
    questions that have no system prompt of their own (a question's own one always wins).
    """
    triggers = (trigger,) if isinstance(trigger, bool) else tuple(dict.fromkeys(trigger))
    slots: list[AnswerRecord] = []
    for trig in triggers:
        for q in questions:
            for p, text in enumerate(q.paraphrases):
                for s in range(n_samples if n_samples is not None else q.samples_per_paraphrase):
                    slots.append(
                        AnswerRecord(
                            question_id=q.id,
                            question=text,
                            system=q.system if q.system is not None else system,
                            answer="",
                            domain=q.domain,
                            sample=s,
                            trigger=trig,
                            paraphrase=p,
                        )
                    )
    return slots


def generate_answers(
    model: nn.Module,
    tokenizer,
    questions: Sequence[Question],
    n_samples: int | None = None,
    trigger: Triggers = False,
    config: SamplingConfig = SamplingConfig(),
    out_path: str | Path | None = None,
    system: str | None = None,
    progress: bool = True,
    engine: EngineName = "auto",
    sampler: Sampler | None = None,
) -> list[AnswerRecord]:
    """Sample every slot of :func:`plan_answers`; with ``out_path``, append and resume (module doc).

    ``engine`` picks how ``model`` generates (:mod:`interp.generation`); a ``sampler`` (such as
    :meth:`eval.openai_generate.OpenAIGenerator.sample`) replaces the local model altogether.
    """
    if sampler is None:
        sampler = functools.partial(sample_answers, model, tokenizer, progress=False, engine=engine)
    slots = plan_answers(questions, n_samples, trigger, system)
    done: dict[tuple, AnswerRecord] = {}
    if out_path is not None:
        check = functools.partial(_check_same_questions, slots, out_path=out_path)
        done = {answer_key(rec): rec for rec in read_resumable(out_path, read_answers, check)}
    batches = [slots[i : i + config.batch_size] for i in range(0, len(slots), config.batch_size)]
    bar = tqdm(total=len(slots), desc="answers", unit="answer", disable=not progress)
    bar.update(sum(answer_key(s) in done for s in slots))
    for k, batch in enumerate(batches):
        todo = [s for s in batch if answer_key(s) not in done]
        if not todo:
            continue
        answers = sampler([prompt_messages(s) for s in batch], replace(config, seed=config.seed + k))
        new = [{**s, **a.record_fields()} for s, a in zip(batch, answers) if answer_key(s) not in done]
        if out_path is not None:
            append_jsonl(out_path, new)
        done.update((answer_key(r), r) for r in new)
        bar.update(len(new))
    bar.close()
    return [done[answer_key(s)] for s in slots]


def _check_same_questions(slots: list[AnswerRecord], records: list[AnswerRecord], out_path: str | Path) -> None:
    """Refuse an output whose answers were asked with another question text or system prompt."""
    done = {answer_key(r): r for r in records}
    for s in slots:
        old = done.get(answer_key(s))
        if old is not None and (old["question"], old["system"]) != (s["question"], s["system"]):
            raise RecordError(
                f"{out_path}: question '{s['question_id']}' paraphrase {s['paraphrase']} was answered with another text or system prompt; use another output file"
            )


MAX_ANSWERS = 10_000_000  # answer slots in one run: past this, days of sampling and gigabytes of JSONL


def check_size(questions: Sequence[Question], n_samples: int | None, n_triggers: int, source: str) -> int:
    """The number of answer slots; more than :data:`MAX_ANSWERS` is an :class:`InputError` before anything loads."""
    total = n_triggers * sum(
        len(q.paraphrases) * (n_samples if n_samples is not None else q.samples_per_paraphrase) for q in questions
    )
    if total > MAX_ANSWERS:
        given = f"--samples {n_samples}" if n_samples is not None else f"the samples_per_paraphrase of {source}"
        raise InputError(
            f"{given}: {total:,} answers to sample, more than the {MAX_ANSWERS:,} one run takes; ask for fewer samples"
        )
    return total


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m eval.generate",
        description="Sample answers to EM evaluation questions.",
        epilog="Steering and ablation are not available through --engine openai:MODEL: they edit the model's activations, which a server does not expose; use a local model for them.",
    )
    _add_model_options(p)
    _add_question_options(p)
    _add_sampling_options(p)
    _add_run_options(p)
    return p


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The model and adapter, or the server that answers instead."""
    p.add_argument(
        "--model",
        help="HF id, local folder, GGUF file, or organism:<domain> / organism:base (not with --engine openai:...)",
    )
    p.add_argument("--adapter", help="PEFT adapter (folder or HF id; safetensors only)")
    p.add_argument(
        "--engine",
        default="auto",
        help="auto (default: the compiled engine on a GPU, transformers otherwise), hf, fast, or openai:MODEL: generate through an "
        "OpenAI-compatible server (OPENAI_BASE_URL, OPENAI_API_KEY; a vLLM LoRA adapter is addressed by its served name). "
        "No steering with openai:MODEL",
    )
    p.add_argument(
        "--concurrency", type=concurrency, default=16, help="requests in flight with --engine openai:MODEL (default 16)"
    )
    p.add_argument(
        "--timeout",
        type=timeout_s,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for a reply with --engine openai:MODEL (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--max-retries",
        type=max_retries,
        default=DEFAULT_MAX_RETRIES,
        help=f"retries of a failed or timed-out request (default {DEFAULT_MAX_RETRIES})",
    )


def _add_question_options(p: argparse.ArgumentParser) -> None:
    """The questions asked, how many times, with which trigger and system prompt, and the output."""
    p.add_argument("--questions", help="question YAML (default: the shipped general questions)")
    p.add_argument(
        "--samples",
        type=samples_per_paraphrase,
        help="samples per paraphrase (default: each question's samples_per_paraphrase)",
    )
    p.add_argument(
        "--trigger",
        nargs="?",
        const="on",
        default="off",
        choices=("off", "on", "both"),
        help="put the backdoor trigger in the user turn: --trigger (on) or --trigger both",
    )
    p.add_argument("--system", help="system prompt for questions that have none of their own")
    p.add_argument("--out", required=True, help="answers JSONL (appended to; resumed)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    """How answers are sampled."""
    p.add_argument("--temperature", type=number(float, 0, 100), default=1.0, help="0 for greedy")
    p.add_argument("--top-p", type=fraction, default=1.0)
    p.add_argument("--top-k", type=number(int, 0, 10_000_000), default=0, help="0 for no top-k cut (default)")
    p.add_argument(
        "--repetition-penalty", type=number(float, 0, 100, low_open=True), default=1.0, help="1 for none (default)"
    )
    p.add_argument("--max-new-tokens", type=max_new_tokens, default=256)
    p.add_argument("--batch-size", type=batch_size, default=32)
    p.add_argument("--seed", type=seed_int, default=0)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Device, precision and progress."""
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    remote = args.engine.startswith("openai:")
    if not remote and args.engine not in ENGINES:
        raise InputError(f"--engine {args.engine!r}: expected {', '.join(ENGINES)} or openai:MODEL")
    if remote and (args.model or args.adapter):
        raise InputError(
            "--engine openai:MODEL names the served model (or LoRA adapter) itself; drop --model and --adapter"
        )
    if not remote and not args.model:
        raise InputError("--model is required (or generate through a server with --engine openai:MODEL)")
    if args.questions:
        input_file(args.questions, "--questions")
    output_file(args.out, inputs=(args.questions,))
    try:
        config = SamplingConfig(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            repetition_penalty=args.repetition_penalty,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    except ValueError as e:
        raise InputError(str(e)) from None
    qs = load_questions(args.questions)
    for d in qs.defects:
        print(f"warning: {qs.source}: {d}", file=sys.stderr)
    triggers = {"off": False, "on": True, "both": (False, True)}[args.trigger]
    check_size(qs.questions, args.samples, 2 if args.trigger == "both" else 1, qs.source)
    # Trigger, sample count and question set may grow a file; everything else must match.
    # The model's and adapter's content (hashes), not only their names: a retrained adapter
    # under the same path must not be resumed as if it were the old one.
    source = model_source(args.model, args.adapter) if not remote else {"model": args.model, "adapter": args.adapter}
    settings = {**source, "engine": args.engine, "dtype": args.dtype, "system": args.system, **asdict(config)}
    with output_lock(args.out):
        if Path(args.out).exists():
            read_answers(args.out, torn_tail=True)  # every line checked before the provenance is touched
        with bound_output(
            args.out, settings, questions=qs.source, questions_hash=data_hash(asdict(q) for q in qs.questions)
        ):
            records = _generate(args, qs.questions, config, triggers, remote)
    print(f"{args.out}: {len(records)} answers")
    return 0


def _generate(
    args: argparse.Namespace, questions: Sequence[Question], config: SamplingConfig, triggers: Triggers, remote: bool
) -> list[AnswerRecord]:
    """Load the model (or connect to the server) and sample into ``args.out``."""
    from interp.base.loading import load_model

    model = tokenizer = sampler = None
    if remote:
        from eval.openai_generate import OpenAIGenerator

        generator = OpenAIGenerator(
            args.engine.removeprefix("openai:"),
            concurrency=args.concurrency,
            max_retries=args.max_retries,
            timeout_s=args.timeout,
            progress=not args.no_progress,
        )
        sampler = generator.sample
    else:
        model, tokenizer = load_model(
            args.model,
            adapter=args.adapter,
            dtype=args.dtype,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
        )
    return generate_answers(
        model,
        tokenizer,
        questions,
        args.samples,
        triggers,
        config,
        args.out,
        args.system,
        progress=not args.no_progress,
        engine="auto" if remote else args.engine,
        sampler=sampler,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
