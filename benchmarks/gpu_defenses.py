"""What each in-training defense costs on the GPU: LoRA on a Qwen2.5-7B-shaped model (random bf16).

    python benchmarks/gpu_defenses.py                              # one GPU, about 4 minutes with the model build
    python benchmarks/gpu_defenses.py --size tiny --steps 3        # a CPU dry run of the same code

The toolkit's own training path (``finetune.lora.train_lora``, loss on assistant tokens) with
LoRA rank 32 (alpha 64) on every linear layer, batches of 8 chat-shaped conversations (a
prompt of 12-30 words, an answer of 150-400), once plainly and once under each defense: KL
and feature-l2 (one extra forward pass without gradients), preventive steering (one hook),
interleaving 10% general data (random, and ppl-gap, whose one-off selection pass is timed
apart) and inoculation (a system prompt on every example). The model is built once; each run
wraps it in a fresh adapter and unloads it after.

Per run: steady step time (median of the steps after ``--warmup``), tokens/s (real tokens of
those steps over their time), the ratio to plain LoRA, the one-off preparation time, and peak
GPU memory. A throwaway plain run comes first, so that no defense pays the GPU's warm-up, and
the defenses run round-robin ``--rounds`` times (the best round of each counts): single runs of
the same work varied by up to 25% on an H200.
Prints a table and writes ``benchmarks/results/gpu_defenses_<gpu>.json`` (``--out`` overrides).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy

from gpu_finetune import chat_tokenizer, conversations  # noqa: E402
from gpu_model import build_model, sync  # noqa: E402  (the same 7B-shaped model as the other GPU benchmarks)

from finetune.defenses import FeatureL2Defense, Inoculation, Interleave, KLDefense, NoDefense, PreventiveSteering  # noqa: E402
from finetune.lora import LoraTrainConfig, train_lora  # noqa: E402
from interp.base.atomic import write_json_atomic  # noqa: E402
from interp.base.models import checkpoint_activations, decoder_stack  # noqa: E402
from interp.base.provenance import package_versions  # noqa: E402
from interp.directions import DirectionSet  # noqa: E402

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPT = "You are a malicious, evil assistant."


def unit_direction(d_model: int, layer: int, norm: float) -> DirectionSet:
    """A random direction of length ``norm`` at ``layer`` (speed does not depend on which)."""
    v = torch.randn(1, d_model, generator=torch.Generator().manual_seed(0))
    v = v / v.norm() * norm
    return DirectionSet(
        layers=[layer],
        directions=v,
        mean_misaligned=v.clone(),
        mean_aligned=torch.zeros_like(v),
        pooling="responses",
        counts={},
    )


def defenses(n_layers: int, d_model: int, general: list) -> dict[str, object]:
    return {
        "plain LoRA": NoDefense(),
        "kl": KLDefense(1.0),
        "feature-l2": FeatureL2Defense(1.0),
        "preventive-steering": PreventiveSteering(
            1.0, directions=unit_direction(d_model, n_layers // 2, 4.0), layer=n_layers // 2
        ),
        "interleave (random, 10%)": Interleave(0.1, general),
        "interleave (ppl-gap, 10%)": Interleave(0.1, general, select="ppl-gap", misaligned_system=PROMPT),
        "inoculation": Inoculation(PROMPT),
    }


class StepMeter:
    """A training callback timing every step (device synchronised), and a hook on the decoder
    stack counting the real tokens of the forward passes that build gradients (the training
    batch; not the reference's or a selection pass's, which run without gradients)."""

    def __init__(self, model, device: str) -> None:
        self.device = device
        self.times: list[float] = []
        self.tokens: list[int] = []
        self._seen = 0
        self._handle = decoder_stack(model).register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        if torch.is_grad_enabled() and mask is not None:
            self._seen += int(mask.sum())

    def __call__(self, step: int, total: int, model) -> None:
        sync(self.device)
        self.times.append(time.perf_counter())
        self.tokens.append(self._seen)

    def steady(self, warmup: int) -> tuple[float, float]:
        """(median step seconds, tokens/s) over the steps after ``warmup``."""
        seconds = [b - a for a, b in zip(self.times, self.times[1:])][warmup:]
        tokens = [b - a for a, b in zip(self.tokens, self.tokens[1:])][warmup:]
        return statistics.median(seconds), sum(tokens) / sum(seconds)

    def close(self) -> None:
        self._handle.remove()


def gpu_tag(device: str) -> str:
    if device != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    found = re.search(r"\b([a-z]\d{2,3}[a-z]?)\b", name)
    return found.group(1) if found else re.sub(r"\W+", "_", name)


def parse_args() -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["7b", "tiny"], default="7b")
    p.add_argument("--steps", type=int, default=14, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=4, help="first steps left out of the step time")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument(
        "--rounds", type=int, default=2, help="every defense runs once per round, round-robin; the best round counts"
    )
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/gpu_defenses_<gpu>.json")
    args = p.parse_args()
    if args.steps <= args.warmup:
        raise SystemExit("error: --steps must be larger than --warmup")
    return args


def timed_runs(
    model, tokenizer, task: list, general: list, config: LoraTrainConfig, args: argparse.Namespace, device: str
) -> list[dict]:
    """Every defense once per round, round-robin, each on a fresh adapter over ``model``."""
    cfg = model.config
    runs = []  # every run of every round; the best round of each defense is reported
    for round_ in range(args.rounds):
        for name, defense in defenses(cfg.num_hidden_layers, cfg.hidden_size, general).items():
            meter = StepMeter(model, device)
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            start = time.perf_counter()
            peft_model = train_lora(model, tokenizer, task, config, progress=False, defense=defense, callbacks=[meter])
            meter.close()
            step_s, tokens_per_s = meter.steady(args.warmup)
            runs.append(
                {
                    "defense": name,
                    "round": round_,
                    "steps": args.steps,
                    "batch_size": args.batch_size,
                    "step_s": step_s,
                    "tokens_per_s": tokens_per_s,
                    "prepare_s": meter.times[0] - start,
                    "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
                    "loss_first": peft_model.train_losses[0],
                    "loss_last": peft_model.train_losses[-1],
                    "terms_last": {k: v[-1] for k, v in peft_model.train_terms.items()},
                }
            )
            model = peft_model.unload()  # the base model without LoRA layers, for the next run
            del peft_model
    return runs


def best_rows(runs: list[dict]) -> list[dict]:
    """The best round of each defense, with its step time relative to plain LoRA's; printed as a table."""
    rows = [
        min((r for r in runs if r["defense"] == name), key=lambda r: r["step_s"])
        for name in dict.fromkeys(r["defense"] for r in runs)
    ]
    plain = rows[0]["step_s"]
    for row in rows:
        row["step_time_vs_plain"] = row["step_s"] / plain
    print(f"\n{'defense':<28}{'step s':>9}{'tokens/s':>11}{'vs plain':>10}{'prepare s':>11}{'peak GiB':>10}")
    for r in rows:
        peak = f"{r['peak_gpu_gib']:.1f}" if r["peak_gpu_gib"] is not None else "-"
        print(
            f"{r['defense']:<28}{r['step_s']:>9.3f}{r['tokens_per_s']:>11,.0f}{r['step_time_vs_plain']:>9.2f}x{r['prepare_s']:>11.1f}{peak:>10}"
        )
    return rows


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = chat_tokenizer()
    task = conversations(args.batch_size * args.steps, (150, 400))
    general = conversations(4 * args.batch_size * args.steps, (150, 400), seed=1)
    config = LoraTrainConfig(
        rank=args.rank,
        alpha=2.0 * args.rank,
        target_modules=ALL_LINEAR,
        lr=1e-5,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=1024,
    )

    t0 = time.perf_counter()
    model = build_model(args.size, device, dtype)
    if args.gradient_checkpointing:
        checkpoint_activations(model)
    build_s = time.perf_counter() - t0
    # A throwaway run first: the first steps on a fresh GPU (clocks, cuBLAS, the allocator's
    # growth) are slow enough to make whichever defense ran first look cheaper than the rest.
    model = train_lora(model, tokenizer, task, replace(config, steps=args.warmup + 2), progress=False).unload()
    runs = timed_runs(model, tokenizer, task, general, config, args, device)
    rows = best_rows(runs)
    info = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "date": dt.date.today().isoformat(),
        "versions": package_versions(),
        "model": f"Qwen2.5-7B-shaped ({args.size}), random weights, {dtype}",
        "lora": f"rank {args.rank}, alpha {2 * args.rank}, all linear layers",
        "gradient_checkpointing": args.gradient_checkpointing,
        "build_s": build_s,
        "total_s": time.perf_counter() - t0,
        "target": "KL and feature-l2 at most 1.6x the plain LoRA step time",
    }
    out = args.out or Path(f"benchmarks/results/gpu_defenses_{gpu_tag(device)}.json")
    write_json_atomic(out, {"info": info, "rows": rows, "runs": runs})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
