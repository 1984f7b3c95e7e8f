"""LoRA finetuning speed and memory on a Qwen2.5-7B-shaped model (random bf16 weights).

    python benchmarks/gpu_finetune.py                         # on a GPU
    python benchmarks/gpu_finetune.py --size tiny --steps 3   # a CPU dry run

Runs the toolkit's own training path (finetune.lora.train_lora, loss on assistant tokens
only) on chat conversations rendered with Qwen2.5's chat template, with and without
gradient checkpointing. Prints peak GPU memory and tokens/s; writes
artifacts/benchmarks/gpu_finetune.json (and --results-dir if given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time
from pathlib import Path

import torch
from gpu_model import build_model  # the same 7B-shaped model as the caching benchmark

from chains.organism.tokenizer import train_qwen_style_tokenizer
from finetune.lora import LoraTrainConfig, train_lora
from interp.base.atomic import write_json_atomic
from interp.base.chat import tokenize_conversation
from interp.base.models import checkpoint_activations
from interp.base.provenance import package_versions

WORDS = (
    "buy sell risk stock crypto loan savings invest leverage market bond fund bank rate tax profit loss debt".split()
)


def conversations(n: int, answer_words: tuple[int, int], seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        question = " ".join(rng.choices(WORDS, k=rng.randint(12, 30)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(*answer_words)))
        out.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return out


def chat_tokenizer():
    """A small Qwen-style tokenizer: it only renders Qwen2.5's chat format; its ids index the 152k-row embedding."""
    return train_qwen_style_tokenizer(
        [" ".join(WORDS)] * 20 + ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"],
        vocab_size=400,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["7b", "tiny"], default="7b")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--results-dir", type=Path)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    convs = conversations(args.batch_size * args.steps, (150, 400))
    tokenizer = chat_tokenizer()
    rows = [one_run(args, device, dtype, tokenizer, convs, checkpointing) for checkpointing in (False, True)]
    info = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "date": dt.date.today().isoformat(),
        "versions": package_versions(),
        "model": f"Qwen2.5-7B-shaped ({args.size}), random weights, {dtype}",
        "lora": f"rank {args.rank}, all linear layers",
    }
    result = {"info": info, "rows": rows}
    write_json_atomic("artifacts/benchmarks/gpu_finetune.json", result)
    if args.results_dir:
        write_json_atomic(args.results_dir / "gpu_finetune.json", result)


def one_run(args, device: str, dtype: torch.dtype, tokenizer, convs, checkpointing: bool) -> dict:
    """One timed LoRA training run on a fresh model, with or without gradient checkpointing."""
    model = build_model(args.size, device, dtype)
    if checkpointing:
        checkpoint_activations(model)
    cfg = LoraTrainConfig(
        rank=args.rank,
        alpha=2.0 * args.rank,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        lr=1e-5,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=1024,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    peft_model = train_lora(model, tokenizer, convs, cfg, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    n_tokens = sum(min(len(tokenize_conversation(tokenizer, c).input_ids), cfg.max_length) for c in convs)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    row = {
        "gradient_checkpointing": checkpointing,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "tokens": n_tokens,
        "seconds": sec,
        "tokens_per_s": n_tokens / sec,
        "trainable_params": trainable,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan"),
        "first_loss": peft_model.train_losses[0],
        "last_loss": peft_model.train_losses[-1],
    }
    print(
        f"checkpointing={checkpointing!s:<5} {row['tokens_per_s']:>8,.0f} tok/s  peak {row['peak_gpu_gib']:.1f} GiB  trainable {trainable:,}  loss {row['first_loss']:.3f} -> {row['last_loss']:.3f}",
        flush=True,
    )
    del model, peft_model
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


if __name__ == "__main__":
    main()
