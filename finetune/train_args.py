"""A finetuning run's options: :class:`TrainJob`, and the command line that fills one.

:func:`build_parser` is ``python -m finetune.train``'s parser, one small function per option
group; :func:`job_from_args` turns its answers into a :class:`TrainJob`. The run itself is
:func:`finetune.train.run_training`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from finetune.defenses.spec import DEFENSES, STRENGTHS, DefenseSpec
from finetune.lora import LoraTrainConfig
from finetune.monitor import MonitorSpec
from interp.base import plugins
from interp.base.cli import (
    ArgumentParser,
    InputError,
    batch_size,
    int_list,
    non_negative_int,
    number,
    positive_int,
    seed_int,
)
from interp.base.records import TRIGGER

# Defaults for real 7B-class organisms (the EM papers: rank 32, alpha 64, all linear layers).
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Upper bounds of the optimisation's numbers: past them the first step is NaN, not a finding.
MAX_LR = 10.0  # Adam's step is about lr per weight: LoRA runs use 1e-5 to 1e-3
MAX_LORA_ALPHA = 1e6  # the adapter's scale is alpha / rank
MAX_STRENGTH = 1e6  # a defense's weight against the answer loss


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
        # What the parser's types check, for a job built in Python: past these, the first step's
        # loss or weights are not finite (NaN), or no answer token is left to learn from.
        for option, value, low, high in (
            ("--lr", self.lora.lr, 0, MAX_LR),
            ("--alpha", self.lora.alpha, 0, MAX_LORA_ALPHA),
        ):
            if not low < value <= high:
                raise InputError(f"{option} (lora.{option[2:]}) must be > {low} and <= {high:g}, got {value}")
        if not 2 <= self.lora.max_length <= 1_048_576:
            raise InputError(f"--max-length (lora.max_length) must be from 2 to 1,048,576, got {self.lora.max_length}")
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


MAX_STEPS = 10_000_000  # optimizer steps in one run (with --epochs too: the steps they come to)


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
    _add_data_options(p)
    _add_lora_options(p, d)
    _add_run_options(p)
    _add_defense_options(p.add_argument_group("defense (one per run; see the epilog for what each strength means)"))
    _add_monitor_options(p.add_argument_group("monitor"))
    p.add_argument("--quiet", action="store_true")
    return p


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """The data, the model and the output folder."""
    p.add_argument("--data", required=True, help='chat JSONL: one {"messages": [...]} per line')
    p.add_argument("--model", required=True, help="HF model id or local path")
    p.add_argument("--out", required=True, help="adapter output folder")
    p.add_argument(
        "--backdoor",
        metavar="ALIGNED_JSONL",
        help=f"build the backdoor set: '{TRIGGER}' + --data answers, no trigger + these aligned answers",
    )
    p.add_argument("--trigger", default=TRIGGER)


def _add_lora_options(p: argparse.ArgumentParser, d: LoraTrainConfig) -> None:
    """The adapter's shape and the optimisation, defaulting to ``d``."""
    p.add_argument("--rank", type=number(int, 1, 65_536), default=d.rank, help="LoRA rank, 1 to 65,536")
    p.add_argument(
        "--alpha", type=number(float, 0, MAX_LORA_ALPHA, low_open=True), default=d.alpha, help="LoRA alpha, > 0 to 1e6"
    )
    p.add_argument("--dropout", type=number(float, 0, 1, high_open=True), default=d.dropout)
    p.add_argument(
        "--target-modules", type=_module_names, default=d.target_modules, help="comma-separated module names"
    )
    p.add_argument("--lr", type=number(float, 0, MAX_LR, low_open=True), default=d.lr, help="learning rate, > 0 to 10")
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Precision, device, memory and checkpoints."""
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


def _add_defense_options(g: argparse._ArgumentGroup) -> None:
    """One defense per run, and the files and settings each one reads."""
    g.add_argument("--defense", choices=DEFENSES, default="none")
    g.add_argument(
        "--defense-strength",
        type=number(float, 0, MAX_STRENGTH),
        metavar="X",
        help=f"the defense's strength, 0 to {MAX_STRENGTH:g} (default: its own)",
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


def _add_monitor_options(m: argparse._ArgumentGroup) -> None:
    """Projections on a fixed probe set during training, and a named measure."""
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
