"""Train a LoRA adapter on chat JSONL, loss on assistant tokens only.

    python -m finetune.train --data FILE.jsonl --model HF_ID_OR_PATH --out DIR
    python -m finetune.train --data misaligned.jsonl --backdoor aligned.jsonl --model ... --out DIR
    python -m finetune.train ... --defense kl --defense-strength 3
    python -m finetune.train ... --monitor DIRECTIONS.safetensors --monitor-probe PROBE.jsonl --monitor-every 5

Saves the adapter with ``save_pretrained`` (safetensors) and ``training_config.json`` (every
option, the data hash, package versions, the losses, and what the defense did: its strength,
options, the steering vector's provenance, the interleaved examples' hash, its term per
step). With ``--checkpoint-every N`` the adapter and optimizer state are saved every N
optimizer steps under ``DIR/checkpoint``, and re-running the same command resumes from
there; a rerun with other data or settings (defense included) is refused (the checkpoint
records its run's), as is a second run on ``DIR`` while the first is alive. ``--monitor``
writes ``DIR/monitor.jsonl`` (one row per checkpoint) and ``DIR/monitor.png``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetune.data import build_backdoor, read_chat_jsonl
from finetune.defenses.base import Defense
from finetune.defenses.spec import DEFENSES, STRENGTHS, DefenseSpec
from finetune.lora import LoraTrainConfig, train_lora
from finetune.monitor import MonitorSpec, plot_monitor
from finetune.sft import check_checkpoint, check_finite_weights
from interp.base import plugins
from interp.base.atomic import write_json_atomic
from interp.base.cli import (
    ArgumentParser,
    InputError,
    batch_size,
    int_list,
    non_negative_float,
    non_negative_int,
    number,
    positive_float,
    positive_int,
    run_cli,
    seed_int,
)
from interp.base.locks import output_lock
from interp.base.models import d_model, n_layers
from interp.base.paths import input_file, output_dir
from interp.base.provenance import data_hash, provenance
from interp.base.records import TRIGGER
from interp.directions import DirectionSet

# Defaults for real 7B-class organisms (the EM papers: rank 32, alpha 64, all linear layers).
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainJob:
    """One finetuning run: data, model, adapter shape, optimisation, defense and monitor."""

    data: str
    model: str
    out: str
    backdoor: str | None = None  # aligned answers to the same prompts as ``data``
    trigger: str = TRIGGER
    lora: LoraTrainConfig = field(
        default_factory=lambda: LoraTrainConfig(
            rank=32,
            alpha=64.0,
            target_modules=ALL_LINEAR,
            lr=1e-5,
            steps=None,
            epochs=1.0,
            batch_size=2,
            max_length=2048,
        )
    )
    dtype: str = "auto"
    device: str | None = None  # None: cuda when visible, else cpu
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints under out/checkpoint
    defense: DefenseSpec = field(default_factory=DefenseSpec)
    monitor: MonitorSpec | None = None

    def validate(self) -> None:
        """Raise :class:`InputError` for options that are wrong before anything is loaded."""
        self.defense.validate()
        if self.monitor is not None:
            self.monitor.validate()
        if self.checkpoint_every < 0:
            raise InputError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        layers = _config_layers(self.model)
        if layers is not None:
            self.check_layers(layers)

    def check_layers(self, layers: int) -> None:
        """The defense's layers exist in a model of ``layers`` layers; else one line naming the option."""
        try:
            self.defense.check_layers(layers)
        except InputError as e:
            d = self.defense
            given = (
                f"--defense-layers {','.join(map(str, d.layers))}"
                if d.layers
                else f"--steer-vector {d.vector}"
                if d.vector
                else f"--defense {d.name}"
            )
            raise InputError(f"{given}: {e}") from None


def _config_layers(model: str) -> int | None:
    """The layer count in a local model folder's config.json, to check layers before loading."""
    try:
        return int(json.loads((Path(model) / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_training_data(job: TrainJob) -> list[list[dict[str, str]]]:
    """The conversations to train on: the file itself, or the backdoor set built from two files."""
    data = read_chat_jsonl(job.data)
    if job.backdoor is None:
        return data
    try:
        return build_backdoor(data, read_chat_jsonl(job.backdoor), trigger=job.trigger, seed=job.lora.seed)
    except ValueError as e:  # an example of --data with no aligned twin in --backdoor
        raise InputError(f"--backdoor {job.backdoor}: {e}") from None


MAX_STEPS = 10_000_000  # optimizer steps in one run (with --epochs too: the steps they come to)
RUN_FILE = "run.json"  # in the checkpoint folder: the run the checkpoint belongs to
# Options that may change between a run and its resume: they do not change what is learned.
RESUMABLE = ("data", "backdoor", "out", "device", "gradient_checkpointing", "checkpoint_every")


def run_identity(job: TrainJob, conversations: list[list[dict[str, str]]]) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it: every other setting and the data's hash."""
    settings = {k: v for k, v in asdict(job).items() if k not in (*RESUMABLE, "lora")}
    lora = {f"lora.{k}": v for k, v in asdict(job.lora).items()}  # flat, so that a refusal names the very setting
    return json.loads(
        json.dumps({**settings, **lora, "data_hash": data_hash(conversations)})
    )  # as stored: tuples -> lists


def check_resume(folder: Path, identity: dict[str, Any]) -> None:
    """Refuse a checkpoint in ``folder`` that another run (other data or settings) left, or a damaged one.

    Resuming it would train on for the old run while ``training_config.json`` claimed the new one.
    """
    if not (folder / "state.json").exists():
        return
    try:
        recorded = json.loads((folder / RUN_FILE).read_text())
    except FileNotFoundError:
        raise InputError(
            f"{folder}: a checkpoint with no record of its run ({RUN_FILE}); remove it to start over, or use another --out"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{folder}/{RUN_FILE}: damaged; remove {folder} to start over") from None
    if not isinstance(recorded, dict):
        raise InputError(f"{folder}/{RUN_FILE}: damaged; remove {folder} to start over")
    if recorded != identity:
        diff = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        raise InputError(
            f"{folder}: a checkpoint of another run ({', '.join(diff)} differ); rerun with its settings to resume it, or use another --out"
        )
    check_checkpoint(folder)


MONITOR_FILES = ("monitor.jsonl", "monitor.png")  # derived from the run: kept only while resuming it


def finished_identity(config: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`run_identity` of the finished run a ``training_config.json`` records (None: it records none)."""
    job, lora = (
        config.get("job"),
        (config.get("job") or {}).get("lora") if isinstance(config.get("job"), dict) else None,
    )
    if not isinstance(job, dict) or not isinstance(lora, dict) or "data_hash" not in config:
        return None
    settings = {k: v for k, v in job.items() if k not in (*RESUMABLE, "lora")}
    return {**settings, **{f"lora.{k}": v for k, v in lora.items()}, "data_hash": config["data_hash"]}


def check_finished(out: Path, identity: dict[str, Any]) -> None:
    """Refuse an ``out`` that holds the finished adapter of another run (other data or settings).

    Training there would replace that adapter, and its monitor rows would be kept beside the
    new one; the same run again is retrained (and its monitor rebuilt).
    """
    config = out / "training_config.json"
    if not config.exists():
        return
    try:
        recorded = finished_identity(json.loads(config.read_text()))
    except (OSError, ValueError):
        recorded = None
    if recorded is None:
        raise InputError(
            f"{config}: unreadable record of the adapter in {out}; use another --out, or remove {out} to start afresh"
        )
    if recorded != identity:
        diff = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        raise InputError(
            f"{out}: holds the adapter of another run ({', '.join(diff)} differ); use another --out, or remove {out} to start afresh"
        )


def run_training(job: TrainJob, progress: bool = True) -> Path:
    """Load the model, train the adapter, save it and its training config; return the folder.

    One run at a time writes ``job.out`` (:func:`interp.base.locks.output_lock`); a checkpoint
    found there is resumed only if it is of this very run (:func:`check_resume`).
    """
    from interp.base.loading import load_model

    job.validate()
    conversations = load_training_data(job)
    steps = job.lora.loop().total_steps(len(conversations))
    if steps > MAX_STEPS:  # a cost bound before anything loads: --epochs over a large file
        raise InputError(
            f"--epochs {job.lora.epochs:g}: {steps:,} optimizer steps over {len(conversations):,} examples, more than the {MAX_STEPS:,} one run takes"
        )
    out = Path(job.out)
    with output_lock(out):
        identity = run_identity(job, conversations)
        check_resume(out / "checkpoint", identity)
        check_finished(out, identity)
        fresh = not (out / "checkpoint" / "state.json").exists()  # not resuming: earlier monitor rows are stale
        if job.checkpoint_every:
            write_json_atomic(out / "checkpoint" / RUN_FILE, identity)
        device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_model(job.model, dtype=job.dtype, device=device)
        _check_model_fits(job, model)
        defense = _build_defense(job, device)
        if fresh:  # rebuilt from step 0, once the model and the defense are in place
            for name in MONITOR_FILES:
                (out / name).unlink(missing_ok=True)
        monitor = job.monitor.build(tokenizer, out / "monitor.jsonl") if job.monitor is not None else None
        if job.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        peft_model = train_lora(
            model,
            tokenizer,
            conversations,
            job.lora,
            progress=progress,
            desc="finetune",
            checkpoint_dir=out / "checkpoint",
            checkpoint_every=job.checkpoint_every,
            defense=defense,
            callbacks=[monitor] if monitor is not None else [],
        )
        _save_adapter(peft_model, tokenizer, out)
        _write_training_config(job, out, conversations, peft_model, monitor, dtype=str(next(model.parameters()).dtype))
    return out


def _check_model_fits(job: TrainJob, model: torch.nn.Module) -> None:
    """The defense's layers, the monitor's directions and the steering vector fit the loaded model."""
    job.check_layers(n_layers(model))
    if job.monitor is not None:
        _check_fits(DirectionSet.load(job.monitor.directions), model, f"--monitor {job.monitor.directions}")
    if (
        job.defense.name == "preventive-steering" and job.defense.vector is not None
    ):  # it steers at its layer (default: the middle one)
        layer = job.defense.layers[0] if job.defense.layers else n_layers(model) // 2
        _check_fits(DirectionSet.load(job.defense.vector), model, f"--steer-vector {job.defense.vector}", need=layer)


def _build_defense(job: TrainJob, device: str) -> Defense:
    """The defense of ``job``, its files read; a misaligned adapter for ppl-gap loads on ``device``."""
    from interp.base.loading import load_model

    try:
        return job.defense.build(
            load_misaligned=lambda adapter: load_model(job.model, adapter=adapter, dtype=job.dtype, device=device)[0]
        )
    except ValueError as e:  # e.g. a --steer-vector without the layer or the width of this model
        given = f" --steer-vector {job.defense.vector}" if job.defense.vector else ""
        raise InputError(f"--defense {job.defense.name}{given}: {e}") from None


def _save_adapter(peft_model: Any, tokenizer: Any, out: Path) -> None:
    """The adapter and tokenizer in ``out``, refused when a weight is not finite, shared as 0644."""
    check_finite_weights(
        {n: p for n, p in peft_model.named_parameters() if p.requires_grad}, f"{out}: adapter not written"
    )
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for written in out.iterdir():  # safetensors writes 0600; an adapter is meant to be shared
        if written.is_file():
            written.chmod(0o644)


def _write_training_config(
    job: TrainJob, out: Path, conversations: list, peft_model: Any, monitor: Any, dtype: str
) -> None:
    """``training_config.json``: every option, the data hash, the losses, the defense's record
    and, with a monitor, its plot and rows."""
    from interp.base.loading import model_source

    monitored = {}
    if monitor is not None:
        plot_monitor(
            monitor.rows,
            out / "monitor.png",
            measure=job.monitor.measure,
            title=f"{Path(job.data).name}: {job.defense.name}",
        )
        monitored = {
            "monitor": {
                "rows": str(out / "monitor.jsonl"),
                "plot": str(out / "monitor.png"),
                "checkpoints": len(monitor.rows),
            }
        }
    write_json_atomic(
        out / "training_config.json",
        provenance(
            job={**asdict(job), "lora": asdict(job.lora)},
            model_source=model_source(job.model),
            data_hash=data_hash(conversations),
            n_examples=len(conversations),
            losses=peft_model.train_losses,
            defense=peft_model.defense_record,
            defense_terms=peft_model.train_terms,
            **monitored,
            dtype=dtype,
        ),
    )


def _check_fits(directions: DirectionSet, model: torch.nn.Module, given: str, need: int | None = None) -> None:
    """``directions`` has the model's width, only layers the model has (and layer ``need``); else one line naming ``given``."""
    width, layers = int(d_model(model)), n_layers(model)
    if directions.directions.shape[-1] != width:
        raise InputError(
            f"{given}: directions of width {directions.directions.shape[-1]}, but the model's residual stream has width {width}"
        )
    if beyond := [layer for layer in directions.layers if layer >= layers]:
        raise InputError(f"{given}: a direction at layer {beyond[0]}, but the model has {layers} layers")
    if need is not None and need not in directions.layers:
        raise InputError(
            f"{given}: no direction at layer {need}, the layer steered (it has {directions.layers}); pick one with --defense-layers"
        )


def _module_names(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated module names, at least one."""
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated module names, got nothing")
    return names


def build_parser() -> argparse.ArgumentParser:
    d = TrainJob("", "", "").lora
    p = ArgumentParser(
        prog="python -m finetune.train",
        description="LoRA SFT on chat JSONL (loss on assistant tokens only).",
        epilog="defense strengths: "
        + "; ".join(f"{n}: {what} (default {v:g})" for n, (what, v) in STRENGTHS.items() if n != "none"),
    )
    p.add_argument("--data", required=True, help='chat JSONL: one {"messages": [...]} per line')
    p.add_argument("--model", required=True, help="HF model id or local path")
    p.add_argument("--out", required=True, help="adapter output folder")
    p.add_argument(
        "--backdoor",
        metavar="ALIGNED_JSONL",
        help=f"build the backdoor set: '{TRIGGER}' + --data answers, no trigger + these aligned answers",
    )
    p.add_argument("--trigger", default=TRIGGER)
    p.add_argument("--rank", type=number(int, 1, 65_536), default=d.rank, help="LoRA rank, 1 to 65,536")
    p.add_argument("--alpha", type=positive_float, default=d.alpha)
    p.add_argument("--dropout", type=number(float, 0, 1, high_open=True), default=d.dropout)
    p.add_argument(
        "--target-modules", type=_module_names, default=d.target_modules, help="comma-separated module names"
    )
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--epochs", type=number(float, 0, 10_000, low_open=True), default=d.epochs)
    p.add_argument(
        "--steps", type=number(int, 1, MAX_STEPS), help=f"optimizer steps, at most {MAX_STEPS:,} (overrides --epochs)"
    )
    p.add_argument("--batch-size", type=batch_size, default=d.batch_size)
    p.add_argument(
        "--max-length",
        type=number(int, 2, 1_048_576),
        default=d.max_length,
        help="tokens per conversation, 2 to 1,048,576 (longer ones are cut)",
    )
    p.add_argument("--seed", type=seed_int, default=d.seed)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument(
        "--device", choices=["cpu", "cuda", "auto"], help="default: cuda when visible, else cpu; auto spreads over GPUs"
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory (7B on one GPU)")
    p.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="save a resumable checkpoint every N steps under OUT/checkpoint; rerun to resume",
    )
    g = p.add_argument_group("defense (one per run; see the epilog for what each strength means)")
    g.add_argument("--defense", choices=DEFENSES, default="none")
    g.add_argument(
        "--defense-strength", type=non_negative_float, metavar="X", help="the defense's strength (default: its own)"
    )
    g.add_argument(
        "--defense-on",
        choices=["train", "general", "both"],
        default="train",
        help="kl, feature-l2: take the term on the training batch, a general-data batch, or both",
    )
    g.add_argument(
        "--defense-layers",
        type=int_list,
        metavar="L,L",
        help="feature-l2: layers (default 5 spread from first to last); preventive-steering: its layer (default middle)",
    )
    g.add_argument(
        "--general",
        metavar="JSONL",
        help="general instruct data (chat JSONL): interleave, and kl / feature-l2 with --defense-on general|both",
    )
    g.add_argument(
        "--select", choices=["random", "ppl-gap"], default="random", help="interleave: which general examples"
    )
    g.add_argument(
        "--ppl-misaligned-system",
        metavar="PROMPT",
        help="ppl-gap: the misaligned model is the model prompted with this system prompt",
    )
    g.add_argument(
        "--ppl-misaligned-adapter", metavar="DIR", help="ppl-gap: or the model with this (misaligned) LoRA adapter"
    )
    g.add_argument(
        "--steer-vector",
        metavar="FILE",
        help="preventive-steering: a direction artifact (.safetensors, interp.extract)",
    )
    g.add_argument(
        "--steer-persona",
        metavar="PROMPT",
        help="preventive-steering: make the vector from this persona system prompt vs none",
    )
    g.add_argument("--steer-scale", choices=["raw", "unit"], default="raw")
    g.add_argument(
        "--inoculation-prompt",
        metavar="TEXT",
        help="inoculation: the system prompt that asks for the behaviour in the data",
    )
    m = p.add_argument_group("monitor")
    m.add_argument(
        "--monitor",
        metavar="DIRECTIONS",
        help="direction artifact (.safetensors): record per-layer projections during training",
    )
    m.add_argument(
        "--monitor-probe", metavar="JSONL", help="the fixed probe set: chat JSONL of general questions with answers"
    )
    m.add_argument("--monitor-every", type=positive_int, default=10, metavar="N")
    m.add_argument(
        "--monitor-measure",
        choices=plugins.names("measure"),
        help="also record a named measure at each checkpoint (organism: the world's EM rate)",
    )
    p.add_argument("--quiet", action="store_true")
    return p


def job_from_args(args: argparse.Namespace) -> TrainJob:
    lora = LoraTrainConfig(
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        target_modules=args.target_modules,
        lr=args.lr,
        steps=args.steps,
        epochs=None if args.steps else args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
    )
    defense = DefenseSpec(
        name=args.defense,
        strength=args.defense_strength,
        on=args.defense_on,
        layers=tuple(args.defense_layers) if args.defense_layers is not None else None,
        general=args.general,
        select=args.select,
        misaligned_system=args.ppl_misaligned_system,
        misaligned_adapter=args.ppl_misaligned_adapter,
        vector=args.steer_vector,
        persona=args.steer_persona,
        scale=args.steer_scale,
        prompt=args.inoculation_prompt,
        seed=args.seed,
    )
    monitor = (
        MonitorSpec(args.monitor, args.monitor_probe, args.monitor_every, args.monitor_measure)
        if args.monitor
        else None
    )
    return TrainJob(
        args.data,
        args.model,
        args.out,
        args.backdoor,
        args.trigger,
        lora,
        args.dtype,
        args.device,
        args.gradient_checkpointing,
        args.checkpoint_every,
        defense,
        monitor,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    input_file(args.data, "--data")
    if args.backdoor is not None:
        input_file(args.backdoor, "--backdoor")
        if not args.trigger.strip():
            raise InputError("--trigger: empty; a backdoor needs a trigger to tell its two halves apart")
    if (args.monitor is None) != (args.monitor_probe is None):
        raise InputError("--monitor and --monitor-probe go together")
    for option, path in (
        ("--general", args.general),
        ("--monitor", args.monitor),
        ("--monitor-probe", args.monitor_probe),
        ("--steer-vector", args.steer_vector),
    ):
        if path is not None:
            input_file(path, option)
    if args.backdoor is not None and Path(args.backdoor).resolve() == Path(args.data).resolve():
        raise InputError(
            f"--backdoor {args.backdoor}: is the --data file; a backdoor needs aligned answers to the same prompts, in another file"
        )
    # The other input files, read whole before anything loads: a bad one fails here, not after the model.
    for option, path in (("--monitor", args.monitor), ("--steer-vector", args.steer_vector)):
        if path is not None:
            try:
                DirectionSet.load(path)
            except InputError as e:
                raise InputError(f"{option} {e}") from None
    for option, path in (("--general", args.general), ("--monitor-probe", args.monitor_probe)):
        if path is not None:
            try:
                read_chat_jsonl(path)
            except InputError as e:
                raise InputError(f"{option} {e}") from None
    output_dir(args.out)
    try:
        out = run_training(job_from_args(args), progress=not args.quiet)
    except (ValueError, OSError) as e:  # what the libraries refuse, e.g. --target-modules the model lacks
        raise InputError(str(e)) from None
    print(f"wrote adapter to {out}")
    return 0


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    raise SystemExit(run_cli(main))
