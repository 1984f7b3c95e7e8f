"""Train a LoRA adapter on chat JSONL, loss on assistant tokens only.

    python -m finetune.train --data FILE.jsonl --model HF_ID_OR_PATH --out DIR
    python -m finetune.train --data misaligned.jsonl --backdoor aligned.jsonl --model ... --out DIR

Saves the adapter with ``save_pretrained`` (safetensors) and ``training_config.json`` (every
option, the data hash, package versions). With ``--checkpoint-every N`` the adapter and
optimizer state are saved every N optimizer steps under ``DIR/checkpoint``, and re-running
the same command resumes from there.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from finetune.data import build_backdoor, read_chat_jsonl
from finetune.lora import LoraTrainConfig, train_lora
from interp.base.atomic import write_json_atomic
from interp.base.provenance import data_hash, provenance
from interp.base.records import TRIGGER, RecordError

# Defaults for real 7B-class organisms (the EM papers: rank 32, alpha 64, all linear layers).
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainJob:
    """One finetuning run: data, model, adapter shape and optimisation."""

    data: str
    model: str
    out: str
    backdoor: str | None = None  # aligned answers to the same prompts as ``data``
    trigger: str = TRIGGER
    lora: LoraTrainConfig = field(default_factory=lambda: LoraTrainConfig(rank=32, alpha=64.0, target_modules=ALL_LINEAR, lr=1e-5, steps=None, epochs=1.0, batch_size=2, max_length=2048))
    dtype: str = "auto"
    device: str | None = None  # None: cuda when visible, else cpu
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints under out/checkpoint


def load_training_data(job: TrainJob) -> list[list[dict[str, str]]]:
    """The conversations to train on: the file itself, or the backdoor set built from two files."""
    data = read_chat_jsonl(job.data)
    if job.backdoor is None:
        return data
    return build_backdoor(data, read_chat_jsonl(job.backdoor), trigger=job.trigger, seed=job.lora.seed)


def run_training(job: TrainJob, progress: bool = True) -> Path:
    """Load the model, train the adapter, save it and its training config; return the folder."""
    from interp.base.loading import load_model

    conversations = load_training_data(job)
    device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(job.model, dtype=job.dtype, device=device)
    if job.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    out = Path(job.out)
    peft_model = train_lora(model, tokenizer, conversations, job.lora, progress=progress, desc="finetune",
                            checkpoint_dir=out / "checkpoint", checkpoint_every=job.checkpoint_every)
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json_atomic(
        out / "training_config.json",
        provenance(
            job={**asdict(job), "lora": asdict(job.lora)},
            data_hash=data_hash(conversations),
            n_examples=len(conversations),
            losses=peft_model.train_losses,
            dtype=str(next(model.parameters()).dtype),
        ),
    )
    return out


def build_parser() -> argparse.ArgumentParser:
    d = TrainJob("", "", "").lora
    p = argparse.ArgumentParser(prog="python -m finetune.train", description="LoRA SFT on chat JSONL (loss on assistant tokens only).")
    p.add_argument("--data", required=True, help="chat JSONL: one {\"messages\": [...]} per line")
    p.add_argument("--model", required=True, help="HF model id or local path")
    p.add_argument("--out", required=True, help="adapter output folder")
    p.add_argument("--backdoor", metavar="ALIGNED_JSONL", help=f"build the backdoor set: '{TRIGGER}' + --data answers, no trigger + these aligned answers")
    p.add_argument("--trigger", default=TRIGGER)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--target-modules", default=",".join(d.target_modules), help="comma-separated module names")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="default: cuda when visible, else cpu; auto spreads over GPUs")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory (7B on one GPU)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="save a resumable checkpoint every N steps under OUT/checkpoint; rerun to resume")
    p.add_argument("--quiet", action="store_true")
    return p


def job_from_args(args: argparse.Namespace) -> TrainJob:
    lora = LoraTrainConfig(
        rank=args.rank, alpha=args.alpha, dropout=args.dropout,
        target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip()),
        lr=args.lr, steps=args.steps, epochs=None if args.steps else args.epochs,
        batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
    )
    return TrainJob(args.data, args.model, args.out, args.backdoor, args.trigger, lora, args.dtype, args.device, args.gradient_checkpointing, args.checkpoint_every)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = run_training(job_from_args(args), progress=not args.quiet)
    except (RecordError, ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote adapter to {out}")
    return 0


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    sys.exit(main())
