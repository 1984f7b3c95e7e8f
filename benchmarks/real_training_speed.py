"""LoRA training throughput on a real model: the toolkit's loop against a plain PEFT loop.

    python benchmarks/real_training_speed.py --model qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \\
        --data bad_medical_advice.jsonl --device cuda             # on a GPU
    python benchmarks/real_training_speed.py --model DIR --data X.jsonl --device cpu --steps 3 --warmup 1   # a dry run

Both train the same fresh rank-32 adapter (alpha 64, every linear projection; PEFT keeps the
adapter in float32 over the bfloat16 model) with AdamW at lr 1e-5 and gradient clipping at 1,
on the same batches in the same order (the toolkit's seeded permutation of the chat
conversations, encoded once by the toolkit, loss on assistant tokens). The toolkit runs
:func:`finetune.sft.train` (what ``python -m finetune.train`` runs: logits only where the loss
is taken, a non-finite check of loss, gradient and weights every step); the plain loop is the
usual ``model(**batch, labels=labels).loss.backward()`` over full logits. Both run under the
same attention kernels (``finetune.sft.TRAINING_ATTENTION``). The first ``--warmup`` steps are
not timed; tokens/s counts the non-padding tokens of the timed batches. JSON:
``benchmarks/results/real_training_speed_<gpu>.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from peft import get_peft_model
from torch.nn.attention import sdpa_kernel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from finetune.data import read_chat_jsonl  # noqa: E402
from finetune.lora import LoraTrainConfig  # noqa: E402
from finetune.sft import TRAINING_ATTENTION, Example, LoopConfig, collate, encode, train  # noqa: E402
from finetune.train import ALL_LINEAR  # noqa: E402
from interp.base.atomic import write_json_atomic  # noqa: E402
from interp.base.loading import load_model, model_source  # noqa: E402
from interp.base.provenance import package_versions  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def batch_order(n_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The example indices of each step's batch, as :func:`finetune.sft.train` draws them."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    batches = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(n_examples, generator=g).tolist()
        batches.append(order[:batch_size])
        del order[:batch_size]
    return batches


def fresh_adapter(args: argparse.Namespace):
    """The base model in ``--dtype`` with a new rank-``--rank`` adapter (seeded, as the toolkit makes it)."""
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    cfg = LoraTrainConfig(
        rank=args.rank,
        alpha=2.0 * args.rank,
        target_modules=ALL_LINEAR,
        lr=1e-5,
        batch_size=args.batch_size,
        max_length=2048,
    )
    torch.manual_seed(cfg.seed)
    return get_peft_model(model, cfg.peft_config()), tok


def toolkit_run(model, examples: list[Example], pad_id: int, args: argparse.Namespace) -> dict:
    """:func:`finetune.sft.train` for ``--steps``, timed from the end of step ``--warmup``."""
    marks: dict[int, float] = {}

    def clock(step: int, total: int, _model) -> None:
        if step in (args.warmup, total):
            sync(args.device)
            marks[step] = time.perf_counter()

    log = train(
        model,
        examples,
        pad_id,
        LoopConfig(lr=1e-5, batch_size=args.batch_size, steps=args.steps, max_grad_norm=1.0, seed=0),
        progress=False,
        callbacks=[clock],
    )
    return {"seconds": marks[args.steps] - marks[args.warmup], "losses": log.losses}


def plain_run(model, examples: list[Example], pad_id: int, args: argparse.Namespace) -> dict:
    """The plain PEFT + transformers loop over the same batches."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    model.train()
    losses = []
    with sdpa_kernel(TRAINING_ATTENTION):
        for step, idx in enumerate(batch_order(len(examples), args.batch_size, args.steps, seed=0)):
            if step == args.warmup:
                sync(args.device)
                t0 = time.perf_counter()
            batch = {k: v.to(args.device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.detach())
    sync(args.device)
    return {"seconds": time.perf_counter() - t0, "losses": [float(x) for x in losses]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a GGUF file, model folder or hub id")
    p.add_argument("--data", required=True, help="chat JSONL (.gz too) to train on")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5, help="steps not timed")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        p.error("--warmup must be at least 0 and below --steps")
    rows = {}
    for name, run in (("toolkit", toolkit_run), ("plain_peft", plain_run)):
        model, tok = fresh_adapter(args)
        examples = [e.truncated(2048) for e in encode(tok, read_chat_jsonl(args.data))]
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        timed = [i for b in batch_order(len(examples), args.batch_size, args.steps, 0)[args.warmup :] for i in b]
        tokens = sum(len(examples[i].input_ids) for i in timed)
        out = run(model, examples, pad_id, args)
        rows[name] = {
            "tokens": tokens,
            "seconds": out["seconds"],
            "tokens_per_s": tokens / out["seconds"],
            "first_loss": out["losses"][0],
            "last_loss": out["losses"][-1],
            "finite": all(math.isfinite(x) for x in out["losses"]),
        }
        print(
            f"{name:<10} {rows[name]['tokens_per_s']:>10,.0f} tok/s   loss {rows[name]['first_loss']:.3f} -> {rows[name]['last_loss']:.3f}",
            flush=True,
        )
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {
        "model_source": model_source(args.model),
        "data": Path(args.data).name,
        "gpu": gpu,
        "dtype": args.dtype,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "rank": args.rank,
        "rows": rows,
        "toolkit_vs_plain_tokens_per_s": rows["toolkit"]["tokens_per_s"] / rows["plain_peft"]["tokens_per_s"],
        "versions": package_versions(["gguf"]),
        "command": " ".join(sys.argv),
    }
    tag = gpu.split()[1].lower() if gpu != "cpu" and len(gpu.split()) > 1 else "cpu"
    write_json_atomic(args.results_dir / f"real_training_speed_{tag}.json", result)
    print(
        f"toolkit / plain: {result['toolkit_vs_plain_tokens_per_s']:.2f}x tokens/s; wrote {args.results_dir / f'real_training_speed_{tag}.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
