"""The main job: organism -> answers -> judge -> split -> cache -> directions -> artifact.

    python -m chains.extract --domain gore_movie_trivia
    python -m interp.extract --domain gore_movie_trivia   # the same job, by the design card's name

With no further options the chain runs on the offline organism world (built on first use and
cached under ``artifacts/organism``). For real models, pass ``--model`` (HF id or local path),
optionally ``--adapter`` (PEFT adapter), and either ``--responses`` (already-judged JSONL) or
``--questions`` + ``--judge`` to generate and judge here.

This module is a chain (floor 3): it reaches into ``finetune`` and ``eval`` through their
public functions; the interp core it drives knows nothing of them. ``interp.extract`` reaches
:func:`main` through the ``command`` plugin ``extract`` (:mod:`interp.base.plugins`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from chains.extract_args import DEFAULT_OUT, build_parser
from eval.questions import Question
from eval.sampling import SamplingConfig
from interp.backends import DEFAULT_BACKEND
from interp.base.atomic import write_json_atomic
from interp.base.chat import DEFAULT_SPAN, tokenize_record
from interp.base.cli import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, InputError, run_cli
from interp.base.locks import output_lock
from interp.base.models import n_layers
from interp.base.paths import input_file, output_dir
from interp.base.provenance import data_hash, differing_keys, provenance
from interp.base.records import JudgedRecord, check_token_ids, read_judged, write_jsonl
from interp.base.resumable import bound_output
from interp.cache import DEFAULT_POOLING, describe_positions
from interp.directions import (
    DirectionSet,
    SplitConfig,
    extract_directions,
    split_records,
)


@dataclass
class ExtractConfig:
    """Everything that decides an extraction; recorded in the artifact."""

    domain: str
    model: str | None = None  # None: the offline organism world
    adapter: str | None = None
    responses: str | None = None  # already-judged JSONL
    questions: str | None = None
    judge: str | None = None
    samples: int = 30  # per paraphrase, when generating
    layers: list[int] | None = None
    pooling: str = DEFAULT_POOLING
    span: str = DEFAULT_SPAN  # which tokens are averaged (interp.base.chat)
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "auto"
    seed: int = 0
    backend: str = DEFAULT_BACKEND
    per_sample: bool = False  # keep per-answer activations for interp.compare's nulls
    compile: bool = False  # torch.compile the decoder layers (long GPU runs)
    timeout_s: float = DEFAULT_TIMEOUT_S  # per call, with an openai: judge
    max_retries: int = DEFAULT_MAX_RETRIES
    split: SplitConfig = field(default_factory=SplitConfig)
    # None: the organism world's own sampling (chains.organism.world.SAMPLING), or for real
    # models temperature 1, no top-k, answers of up to 512 tokens; seeded with ``seed``.
    sampling: SamplingConfig | None = None
    work_dir: Path = Path("artifacts/runs")


def _organism_chain(cfg: ExtractConfig, progress: bool):
    from chains.organism import build_world
    from chains.organism.world import SAMPLING
    from eval.generate import generate_answers

    world = build_world(progress=progress)
    model, tokenizer = world.load_organism(cfg.domain)
    check_layers(cfg.layers, model)
    sampling = cfg.sampling or replace(SAMPLING, seed=cfg.seed)
    source = {
        "model": f"organism-world:{world.base_dir}",
        "adapter": str(world.adapter_dir(cfg.domain)),
        "judge": world.judge.spec,
        "world": world.manifest,
        "sampling": asdict(sampling),
    }
    answers = _work_dir_answers(
        cfg,
        source,
        lambda out: generate_answers(
            model, tokenizer, world.general_questions(), cfg.samples, config=sampling, out_path=out, progress=progress
        ),
    )
    judged = world.judge.judge(answers)
    write_jsonl(cfg.work_dir / cfg.domain / "judged.jsonl", judged)
    return model, tokenizer, judged, source


def _work_dir_answers(cfg: ExtractConfig, source: dict[str, Any], generate: Callable[[Path], list]) -> list:
    """``generate(path)`` into the run folder's answers file, resuming it only when the same
    model, adapter and sampling (seed included) wrote it: another run's answers would be
    judged and labelled as this model's (:func:`~interp.base.resumable.bound_output` refuses)."""
    answers_path = cfg.work_dir / cfg.domain / "answers.jsonl"
    settings = {"model": source["model"], "adapter": source["adapter"], "sampling": source["sampling"]}
    with bound_output(answers_path, settings):
        return generate(answers_path)


def read_responses(path: str | Path) -> list[JudgedRecord]:
    """The judged records of ``--responses``, every line checked; a file of fewer than two is
    refused (a direction needs a misaligned and an aligned answer)."""
    judged = read_judged(path)
    if not judged:
        raise InputError(f"{path}: no judged records")
    if len(judged) < 2:
        raise InputError(f"{path}: 1 judged record; a direction needs at least 2 (a misaligned and an aligned answer)")
    return judged


def load_checked_questions(path: str | Path, samples: int) -> list[Question]:
    """The questions of ``--questions``, with the number of answers ``samples`` per paraphrase
    gives them checked against one run's bound (:func:`eval.generate.check_size`)."""
    from eval.generate import check_size
    from eval.questions import load_questions

    questions = load_questions(path).questions
    check_size(questions, samples, 1, str(path))
    return questions


def check_layers(layers: list[int] | None, model: torch.nn.Module) -> None:
    """Every requested layer (``None``: all) is one of ``model``'s; else one line naming ``--layers``."""
    if not layers:
        return
    num = n_layers(model)
    if beyond := [layer for layer in layers if layer >= num]:
        raise InputError(f"--layers {beyond[0]}: layer {beyond[0]} out of range for a {num}-layer model")


def _real_chain(cfg: ExtractConfig, progress: bool):
    from interp.base.loading import load_model, model_source

    # Read the inputs first: a bad line or an absurd size should not wait for a 7B model to load.
    judged = read_responses(cfg.responses) if cfg.responses is not None else None
    questions = load_checked_questions(cfg.questions, cfg.samples) if judged is None else None
    model, tokenizer = load_model(cfg.model, adapter=cfg.adapter, dtype=cfg.dtype, device=cfg.device)
    check_layers(cfg.layers, model)
    sampling = None
    if judged is not None:
        check_token_ids(cfg.responses, len(tokenizer))
        source_judge = sorted({r.get("judge", "?") for r in judged})
    else:
        judged, sampling = _generate_and_judge(cfg, model, tokenizer, questions, progress)
        source_judge = cfg.judge
    return (
        model,
        tokenizer,
        judged,
        {
            **model_source(cfg.model, cfg.adapter),
            "judge": source_judge,
            "responses": cfg.responses,
            "sampling": sampling and asdict(sampling),
        },
    )


def _generate_and_judge(
    cfg: ExtractConfig, model: torch.nn.Module, tokenizer: Any, questions: list[Question], progress: bool
) -> tuple[list[JudgedRecord], SamplingConfig]:
    """Answers of ``model`` to ``questions`` in the run folder, judged by ``cfg.judge``."""
    from eval.generate import generate_answers
    from eval.judge import make_judge

    sampling = cfg.sampling or SamplingConfig(temperature=1.0, max_new_tokens=512, batch_size=64, seed=cfg.seed)
    source = {"model": cfg.model, "adapter": cfg.adapter, "sampling": asdict(sampling)}
    answers = _work_dir_answers(
        cfg,
        source,
        lambda out: generate_answers(
            model, tokenizer, questions, cfg.samples, config=sampling, out_path=out, progress=progress
        ),
    )
    server = {"timeout_s": cfg.timeout_s, "max_retries": cfg.max_retries} if cfg.judge.startswith("openai:") else {}
    judge = make_judge(cfg.judge, questions=questions, **server)
    judged = judge.judge(answers)
    write_jsonl(cfg.work_dir / cfg.domain / "judged.jsonl", judged)
    return judged, sampling


def run_extract(cfg: ExtractConfig, out_dir: Path = DEFAULT_OUT, progress: bool = True) -> tuple[DirectionSet, Path]:
    """Run the whole chain for one domain; return the directions and the artifact path.

    One run per artifact, and per run folder when it generates, at a time
    (:func:`interp.base.locks.output_lock`): two would write one artifact and its per-sample
    files, or append to one answers file.
    """
    with ExitStack() as locks:
        locks.enter_context(output_lock(Path(out_dir) / f"{cfg.domain}.safetensors"))
        if cfg.responses is None:
            locks.enter_context(
                output_lock(cfg.work_dir / cfg.domain, "wait for it: one extraction per domain at a time")
            )
        return _extract(cfg, out_dir, progress)


def _bound_per_sample(folder: Path, source: dict[str, Any]) -> Path:
    """``folder``, its activations bound to the model ``source`` names (``source.json``): one that
    holds another model's (or an unrecorded model's) is refused, never resumed. The shards'
    own manifest ties them to the token ids and settings, not to the weights."""
    model = json.loads(json.dumps({k: v for k, v in source.items() if k not in ("judge", "responses", "sampling")}))
    record = folder / "source.json"
    if folder.is_dir() and any(folder.iterdir()):
        try:
            before = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            before = None
        if not isinstance(before, dict):
            raise InputError(
                f"{folder}: holds per-sample activations but no readable {record.name} to tell which model made them; remove it to start afresh"
            )
        if before != model:
            diff = differing_keys(before, model)
            raise InputError(
                f"{folder}: per-sample activations of another model ({', '.join(diff)} differ: {before.get(diff[0])!r} there, {model.get(diff[0])!r} now); remove it to start afresh, or use another --out"
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, model)
    return folder


def _extract(cfg: ExtractConfig, out_dir: Path, progress: bool) -> tuple[DirectionSet, Path]:
    torch.manual_seed(cfg.seed)
    chain = _organism_chain if cfg.model is None else _real_chain
    model, tokenizer, judged, source = chain(cfg, progress)
    split = split_records(judged, cfg.split)
    if not split.misaligned or not split.aligned:
        given = f"--responses {cfg.responses}" if cfg.responses is not None else f"domain {cfg.domain}"
        raise InputError(
            f"{given}: a class has no answers ({len(split.misaligned)} misaligned, {len(split.aligned)} aligned "
            f"of {len(judged)} judged; excluded {split.excluded}); sample more or loosen the thresholds"
        )
    meta = provenance(
        domain=cfg.domain,
        **source,
        data_hash=data_hash(judged),
        token_positions=describe_positions(cfg.span, cfg.pooling),
        split=asdict(cfg.split),
        excluded=split.excluded,
        seed=cfg.seed,
        dtype=str(next(model.parameters()).dtype),
        compiled=cfg.compile,
    )
    ds = extract_directions(
        model,
        tokenizer,
        # Teacher-force what the model generated (its token ids) where the records keep it.
        [tokenize_record(tokenizer, judged[i]) for i in split.misaligned],
        [tokenize_record(tokenizer, judged[i]) for i in split.aligned],
        layers=cfg.layers,
        pooling=cfg.pooling,
        span=cfg.span,
        batch_size=cfg.batch_size,
        progress=progress,
        metadata=meta,
        backend=cfg.backend,
        per_sample_dir=_bound_per_sample(Path(out_dir) / f"{cfg.domain}.per_sample", source)
        if cfg.per_sample
        else None,
        compile=cfg.compile,
    )
    path = ds.save(Path(out_dir) / f"{cfg.domain}.safetensors")
    return ds, path


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
    """The run's config, every option and path checked (:class:`InputError`) before anything loads."""
    if args.model is None and (args.adapter or args.responses or args.questions or args.judge):
        raise InputError(
            "--adapter, --responses, --questions and --judge need --model (the organism world brings its own)"
        )
    if args.model is not None and args.responses is None and not (args.questions and args.judge):
        raise InputError("with --model, pass --responses, or --questions and --judge to generate and judge here")
    for name in ("responses", "questions"):
        if getattr(args, name) is not None:
            input_file(getattr(args, name), f"--{name}")
    # Every line and size checked before anything is locked or loaded.
    if args.responses is not None:
        read_responses(args.responses)
    elif args.questions is not None:
        load_checked_questions(args.questions, args.samples)
    if args.judge is not None:
        from eval.judge import judge_kind

        judge_kind(args.judge)
    if args.responses is not None and (args.questions or args.judge):  # they would be ignored without a word
        given = " and ".join(o for o, v in (("--questions", args.questions), ("--judge", args.judge)) if v)
        raise InputError(f"{given}: not used with --responses (its answers are judged already); drop one")
    output_dir(args.out)
    cfg = ExtractConfig(
        domain=args.domain,
        model=args.model,
        adapter=args.adapter,
        responses=args.responses,
        questions=args.questions,
        judge=args.judge,
        samples=args.samples,
        layers=sorted(set(args.layers)) if args.layers is not None else None,
        pooling=args.pooling,
        span=args.span,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        backend=args.backend,
        per_sample=args.per_sample,
        compile=args.compile,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        split=SplitConfig(args.misaligned_max, args.aligned_min, args.coherence_min, not args.no_balance, args.seed),
    )
    if cfg.responses is None:
        output_dir(cfg.work_dir / cfg.domain, "run folder")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        ds, path = run_extract(cfg, args.out, progress=not args.quiet)
    except (ValueError, OSError) as e:  # what the libraries refuse, e.g. --compile with another backend
        raise InputError(str(e)) from None
    counts = ", ".join(f"{k}: {v['answers']} answers" for k, v in ds.counts.items())
    norms = ", ".join(f"L{l}: {n:.3g}" for l, n in zip(ds.layers, ds.directions.norm(dim=-1).tolist()))
    print(f"wrote {path} ({len(ds.layers)} layers, span {ds.span}, pooling {ds.pooling}; {counts})")
    print(f"direction norms: {norms}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
