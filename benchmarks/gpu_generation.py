"""Generation speed on a Qwen2.5-7B-shaped model (random bf16 weights): the weights-read floor,
transformers' default ``generate`` and the engine, unsteered and steered, at several batch sizes.

    python benchmarks/gpu_generation.py                         # one GPU: floor, HF default, engine
    python benchmarks/gpu_generation.py --size tiny             # a CPU dry run of the same code
    python benchmarks/gpu_generation.py --lora-rank 32          # through an unmerged LoRA adapter
    torchrun --nproc_per_node=2 benchmarks/gpu_generation.py --sharded   # sharded vs one GPU
    python benchmarks/gpu_generation.py --model q15.gguf --temperature 1 --batch-sizes 256 --new-tokens 256 --tag real_1.5b_sampled
                                                                # a real model, sampled as EM is measured

Workload: random 60-token prompts, greedy, 64 new tokens (no EOS, so every row runs to the
end). ``ms_per_step`` is the wall time of a whole generation call (prefill included) over
the number of new tokens, for every engine alike; ``tokens_per_s`` is batch x new tokens
over that time. The decoding step alone is measured too: a call that generates one token
(the prefill and the first token) is timed the same way, and ``decode_ms_per_step`` is
(whole call - that call) / (new tokens - 1), ``decode_tokens_per_s`` the batch over it. The floor is the model's weight bytes over the device-to-device copy
bandwidth measured in the same run (bytes read + written). Steering adds a random vector
(x4) after the middle layer on generated positions, as ``benchmarks/gpu_caching.py`` does;
steered and unsteered engine runs alternate back to back and the best of ``--repeats``
pairs counts. Each engine configuration is warmed up once (compilation, graph capture)
before it is timed; the warm-up seconds are in the JSON.

The checks: the engine's greedy tokens are the argmax of the model's own logits
(transformers, teacher-forced over the engine's sequence, with the same steering through
the native hooks) at almost every step, and steering changes the tokens. With
``--temperature`` above 0 both engines sample (``generate``'s ``do_sample``; the engine's
counter-hash sampler), the argmax check does not apply, and the tokens are checked finite
and in the vocabulary; ``--model`` takes a real model (GGUF file, folder or hub id) in
bfloat16 instead of the random 7B shape, with the same random 60-token prompts (throughput
depends on lengths, not on what the prompts say).

JSON: ``benchmarks/results/gpu_generation_<gpu>.json`` (``--results-dir``) with
``floor_ms_per_step`` and ``rows: [{engine, batch_size, steered, ms_per_step, tokens_per_s}]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's packages, and gpu_model beside it
from gpu_generation_figures import best, print_best, ratios, row  # noqa: E402
from gpu_model import build_model, sync  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from finetune.train import ALL_LINEAR  # noqa: E402
from interp.base.atomic import write_json_atomic  # noqa: E402
from interp.base.decoding import Decoding  # noqa: E402
from interp.base.loading import load_model, model_source  # noqa: E402
from interp.base.provenance import package_versions  # noqa: E402
from interp.engine import engine_for  # noqa: E402
from interp.generation import generate  # noqa: E402
from interp.intervene import intervene  # noqa: E402
from interp.intervention import steering  # noqa: E402

PROMPT_LEN = 60


def with_lora(model, rank: int):
    """``model`` wrapped in an unmerged LoRA adapter of ``rank`` as finetune.train makes them
    (every linear projection, alpha = 2 x rank), B not zero so that it changes the output;
    ``model`` itself for rank 0."""
    if not rank:
        return model
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(ALL_LINEAR), init_lora_weights=False)
    return get_peft_model(model, config).eval()


def bench_model(args, device: str) -> tuple[torch.nn.Module, object]:
    """The model to time (bfloat16 on a GPU, float32 on the CPU) and how the JSON describes it."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if args.model:
        model, _ = load_model(
            args.model,
            dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
            device="cuda" if device.startswith("cuda") else "cpu",
        )
        return with_lora(model, args.lora_rank), {**model_source(args.model), "dtype": str(dtype)}
    return with_lora(
        build_model(args.size, device, dtype), args.lora_rank
    ), f"Qwen2.5-7B-shaped ({args.size}), random weights, {dtype}"


def copy_bandwidth(device: str, gib: float = 4.0, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = int(gib * 2**30) // 2
    src = torch.randn(n, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    return 2 * src.numel() * src.element_size() * reps / (time.perf_counter() - t0)


def prompts(batch: int, vocab: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (batch, PROMPT_LEN), generator=g)
    return ids.to(device), torch.ones_like(ids).to(device)


def timed(fn, device: str) -> tuple[float, torch.Tensor]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


@torch.no_grad()
def argmax_agreement(model, ids, mask, new: torch.Tensor, iv, rows: int = 8) -> dict:
    """How often each generated token is the argmax of the model's own (teacher-forced) logits,
    on the first ``rows`` rows."""
    ids, new = ids[:rows], new[:rows]
    full = torch.cat([ids, new], 1)
    fmask = torch.ones_like(full)
    with intervene(model, iv) if iv is not None else torch.no_grad():
        logits = (
            model(input_ids=full, attention_mask=fmask, position_ids=(fmask.cumsum(-1) - 1))
            .logits[:, ids.shape[1] - 1 : -1]
            .float()
        )
    chosen = logits.gather(-1, new[..., None])[..., 0]
    gap = logits.max(-1).values - chosen
    return {
        "argmax_fraction": float((gap == 0).float().mean()),
        "max_gap_over_logit_std": float(gap.max() / logits.std()),
    }


def one_device(model, args, device: str, info: dict) -> list[dict]:
    t0 = time.perf_counter()
    options = {} if args.compile == "auto" else {"compile": None if args.compile == "none" else args.compile}
    if args.spans is not None:
        options["spans"] = args.spans
    engine = engine_for(
        model, **options, compile_options=json.loads(args.compile_options) if args.compile_options else None
    )
    info["engine"] = {
        "compile": engine.code.backend,
        "compile_options": args.compile_options,
        "spans": engine.spans,
        "cuda_graphs": engine.cuda_graphs,
        "build_seconds": time.perf_counter() - t0,
        "verify_errors": engine.verify_errors,
        "fused_attention": engine.body.shape.fused_attention,
    }
    info["warmup_seconds"], info["checks"] = {}, {}
    print(f"  engine: {info['engine']}", flush=True)
    rows: list[dict] = []
    for bs in args.batch_sizes:
        try:
            rows += one_batch_size(model, args, device, info, bs)
        except Exception as e:  # report and go on: one failing size must not lose the others
            traceback.print_exc()
            info.setdefault("errors", {})[f"bs={bs}"] = f"{type(e).__name__}: {e}"
    return rows


def one_batch_size(model, args, device: str, info: dict, bs: int) -> list[dict]:
    layer = model.config.num_hidden_layers // 2
    vec = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    iv = steering(model, {layer: vec}, alpha=4.0, positions="generated")
    # The same edit for a teacher-forced pass, whose prompt ends at column PROMPT_LEN.
    iv_forced = steering(model, {layer: vec}, alpha=4.0, positions="generated", prompt_length=PROMPT_LEN)
    decoding = Decoding(max_new_tokens=args.new_tokens, temperature=args.temperature)
    first = Decoding(max_new_tokens=1, temperature=args.temperature)  # the prefill and the first token
    ids, mask = prompts(bs, model.config.vocab_size, device)
    rows: list[dict] = []

    def measure(name: str, steered: bool, r: int, fn) -> dict:
        first_sec = timed(lambda: fn(first), device)[0]
        return {
            **row(name, bs, steered, timed(lambda: fn(decoding), device)[0], args.new_tokens, first_sec),
            "repeat": r,
        }

    if "hf" in args.parts:
        hf = lambda d: generate(model, ids, mask, d, engine="hf")  # noqa: E731
        timed(lambda: hf(decoding), device)  # warm
        for r in range(args.hf_repeats):
            rows.append(measure("hf", False, r, hf))
    if "engine" not in args.parts:
        return rows
    runs = {
        False: lambda d: generate(model, ids, mask, d, engine="fast"),
        True: lambda d: generate(model, ids, mask, d, intervention=iv, engine="fast"),
    }
    outs = {}
    for steered, fn in runs.items():  # compile and capture
        info["warmup_seconds"][f"bs={bs} {'steered' if steered else 'plain'}"], outs[steered] = timed(
            lambda: fn(decoding), device
        )
        timed(lambda: fn(first), device)
    check = {"steering_changes_tokens": not torch.equal(outs[False], outs[True])}
    for steered in (False, True):
        if args.temperature > 0:
            check["steered" if steered else "plain"] = {
                "tokens_in_vocabulary": bool(((outs[steered] >= 0) & (outs[steered] < model.config.vocab_size)).all())
            }
        else:
            check["steered" if steered else "plain"] = argmax_agreement(
                model, ids, mask, outs[steered].to(device), iv_forced if steered else None
            )
    info["checks"][f"bs={bs}"] = check
    print(f"  checks bs={bs}: {json.dumps(check)}  warm-up {info['warmup_seconds']}", flush=True)
    for r in range(args.repeats):
        for steered, fn in runs.items():
            rows.append(measure("engine", steered, r, fn))
    return rows


def sharded(model, args, device: str, rank: int, world: int) -> list[dict]:
    """The whole workload on one GPU (rank 0 alone), then sharded over every rank."""
    import torch.distributed as dist

    from interp.distributed import generate_distributed

    decoding = Decoding(max_new_tokens=args.new_tokens, temperature=0)
    ids, mask = prompts(args.sharded_prompts, model.config.vocab_size, device)
    rows = []
    for name, fn in (
        ("one GPU", lambda: generate(model, ids, mask, decoding, engine="fast")),
        (f"sharded x{world}", lambda: generate_distributed(model, ids, mask, decoding, engine="fast")),
    ):
        if name == "one GPU" and rank != 0:
            dist.barrier()
            continue
        fn()  # warm-up: compile and capture every shape
        for r in range(args.repeats):
            sec, _ = timed(fn, device)
            rows.append(
                {
                    "engine": name,
                    "batch_size": args.sharded_prompts,
                    "steered": False,
                    "ms_per_step": 1e3 * sec / args.new_tokens,
                    "tokens_per_s": args.sharded_prompts * args.new_tokens / sec,
                    "repeat": r,
                }
            )
            if rank == 0:
                print(f"  {name:<12} {rows[-1]['tokens_per_s']:>10,.0f} tok/s", flush=True)
        if name == "one GPU":
            dist.barrier()
    return rows


def parse_args() -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["7b", "tiny"], default="7b")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 64, 256])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed runs (engine: back-to-back pairs); the best counts")
    p.add_argument("--hf-repeats", type=int, default=2)
    p.add_argument("--parts", nargs="*", default=["floor", "hf", "engine"], help="subset of: floor hf engine")
    p.add_argument(
        "--compile",
        default="auto",
        help="torch.compile backend of the engine, or none (default auto: inductor on a GPU, none on the CPU)",
    )
    p.add_argument(
        "--compile-options",
        default=None,
        help="torch.compile options of the engine's decoding step, as JSON (e.g. '{\"max_autotune_gemm\": true}')",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="generate through an unmerged PEFT LoRA adapter of this rank on every linear projection (0: none)",
    )
    p.add_argument(
        "--spans",
        type=int,
        default=None,
        help="attention lengths per shape the engine's step is captured for (default: the engine's; 1: the whole cache always)",
    )
    p.add_argument(
        "--sharded",
        action="store_true",
        help="under torchrun: the whole workload on one GPU, then sharded over every rank",
    )
    p.add_argument("--sharded-prompts", type=int, default=1024)
    p.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="default: benchmarks/results on a GPU, artifacts/benchmarks on the CPU",
    )
    p.add_argument("--model", help="a real model (GGUF file, folder or hub id) instead of the random --size shape")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); above 0 both engines sample")
    p.add_argument("--tag", default="", help="inserted in the results file name: gpu_generation_<tag>_<gpu>.json")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:
        from interp.distributed import init_process_group

        rank, world, device = init_process_group()
    else:
        rank, world = 0, 1
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, described = bench_model(args, device)
    info = run_info(args, model, described, device, world)
    result: dict = {"info": info}
    if distributed:
        sharded_result(result, model, args, device, rank, world)
    else:
        one_device_result(result, model, args, device)
    if rank == 0:
        write_result(result, args, device, distributed)
    if distributed:
        import torch.distributed as dist

        dist.destroy_process_group()


def run_info(args, model, described, device: str, world: int) -> dict:
    """What the run is: device, date, versions, model, sizes, the command."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "date": dt.date.today().isoformat(),
        "versions": package_versions(extra=("triton", "gguf")),
        "model": described,
        "lora_rank": args.lora_rank,
        "temperature": args.temperature,
        "prompt_tokens": PROMPT_LEN,
        "new_tokens": args.new_tokens,
        "weight_bytes": weight_bytes,
        "world_size": world,
        "command": " ".join(sys.argv),
    }


def sharded_result(result: dict, model, args, device: str, rank: int, world: int) -> None:
    """Under torchrun: the best rows of one GPU and of every rank, and the speed-up (rank 0)."""
    rows = sharded(model, args, device, rank, world)
    result["rows"] = best(rows)
    one = next(r for r in result["rows"] if r["engine"] == "one GPU") if rank == 0 else None
    if one:
        shard = next(r for r in result["rows"] if r["engine"].startswith("sharded"))
        result["speedup"] = shard["tokens_per_s"] / one["tokens_per_s"]
        print(f"sharded generation: {result['speedup']:.2f}x one GPU", flush=True)


def one_device_result(result: dict, model, args, device: str) -> None:
    """On one device: the bandwidth floor (``--parts floor``), every timed row, the best of
    repeats and the ratios."""
    info = result["info"]
    if "floor" in args.parts:
        weight_bytes = info["weight_bytes"]
        bw = copy_bandwidth(device, gib=4.0 if device.startswith("cuda") else 0.25)
        info["copy_bytes_per_s"] = bw
        result["floor_ms_per_step"] = 1e3 * weight_bytes / bw
        print(
            f"copy bandwidth {bw / 1e12:.2f} TB/s; weights {weight_bytes / 1e9:.2f} GB; floor {result['floor_ms_per_step']:.2f} ms/step",
            flush=True,
        )
    rows = one_device(model, args, device, info)
    result["rows"] = best(rows)
    result["runs"] = rows
    floor = result.get("floor_ms_per_step")
    print_best(result["rows"], floor)
    result["ratios"] = ratios(result["rows"], floor)
    print(json.dumps(result["ratios"], indent=1))


def write_result(result: dict, args, device: str, distributed: bool) -> None:
    """The JSON, named by tag, GPU and sharding, into ``--results-dir`` or its default."""
    info = result["info"]
    gpu = info["device"].split()[1].lower() if device.startswith("cuda") and len(info["device"].split()) > 1 else "cpu"
    name = f"gpu_generation_{args.tag + '_' if args.tag else ''}{gpu}{'_sharded' if distributed else ''}.json"
    out = args.results_dir or Path("benchmarks/results" if device.startswith("cuda") else "artifacts/benchmarks")
    write_json_atomic(out / name, result)
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
