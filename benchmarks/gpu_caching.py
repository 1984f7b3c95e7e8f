"""Caching and steered-generation speed on a Qwen2.5-7B-shaped model (random bf16 weights).

    python benchmarks/gpu_caching.py                      # one GPU, every method side by side
    python benchmarks/gpu_caching.py --size tiny --n 64   # a CPU dry run of the same code
    torchrun --nproc_per_node=2 benchmarks/gpu_caching.py --conversations 1000  # data parallel vs one GPU, with and without --compile

Everything takes about 13 minutes on an H100; under a 10-minute limit split it with --only,
as the runs in benchmarks/results were (one with plain toolkit compiled stop nnsight tl, one
with plain toolkit compiled reference memory generate).

Workload: chat-shaped conversations (prompt 60 tokens, answers 100-400 tokens, varied), all
28 layers' answer-token means. Random weights do not change speed or memory. Prints a table
and writes JSON to artifacts/benchmarks/gpu_caching[_ddp].json (and --results-dir if given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy
from caching_baselines import nnsight_as_documented, plain_forward, reference_approach  # noqa: E402  (beside this file)
from gpu_model import best_of, build_model, matmul_tflops, measure, sync  # noqa: E402

from interp.backends import make_backend  # noqa: E402
from interp.base.atomic import write_json_atomic  # noqa: E402
from interp.base.chat import TokenizedConversation  # noqa: E402
from interp.base.provenance import package_versions  # noqa: E402
from interp.cache import cache_means  # noqa: E402
from interp.compiled import compiled_layers  # noqa: E402

PROMPT_LEN = 60


def workload(n: int, vocab: int, seed: int = 0) -> list[TokenizedConversation]:
    """Prompt of 60 tokens, answer of 100-400, two closing tokens; dataset order is random."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        answer = int(torch.randint(100, 401, (1,), generator=g))
        ids = torch.randint(10, vocab, (PROMPT_LEN + answer + 2,), generator=g).tolist()
        out.append(TokenizedConversation(ids, PROMPT_LEN, PROMPT_LEN + answer))
    return out


def steered_generation(model, device, batch_sizes, new_tokens: int, layer: int, repeats: int) -> list[dict]:
    """Greedy generation with and without a steering hook at one layer, alternated."""
    from interp.steer import steer

    rows = []
    vec = torch.randn(model.config.hidden_size)
    for bs in batch_sizes:
        ids = torch.randint(10, model.config.vocab_size, (bs, PROMPT_LEN), device=device)
        kw = dict(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

        def plain():
            model.generate(**kw)

        def steered():
            with steer(model, {layer: vec}, alpha=4.0, positions="generated"):
                model.generate(**kw)

        plain()  # warm-up at the full length
        ratios = []
        for r in range(repeats):
            pair = {
                name: measure(f"generate bs={bs} {name}", fn, bs * new_tokens, bs, device)
                for name, fn in (("plain", plain), ("steered", steered))
            }
            ratios.append(pair["steered"]["tokens_per_s"] / pair["plain"]["tokens_per_s"])
            rows += [{**row, "batch_size": bs, "steered": name == "steered", "repeat": r} for name, row in pair.items()]
        rows.append(
            {
                "method": f"generate bs={bs} steered/plain, median of back-to-back pairs",
                "batch_size": bs,
                "ratios": ratios,
                "median_ratio": statistics.median(ratios),
            }
        )
        print(
            f"  bs={bs}: steered/plain per pair {[round(x, 3) for x in ratios]}, median {statistics.median(ratios):.3f}",
            flush=True,
        )
    return rows


PARTS = ("plain", "toolkit", "compiled", "stop", "nnsight", "tl", "order", "reference", "memory", "generate")


def single_gpu(model, items, tokens: int, info: dict, args, device: str) -> list[dict]:
    """Every method of ``args.only`` side by side on one device; fills ``info`` with checks."""
    want = set(args.only or PARTS)
    L, n = model.config.num_hidden_layers, args.n
    means: dict[str, torch.Tensor] = {}
    warm_up(model, items, args.batch_size, device, want, info)
    methods = timed_methods(model, items, args.batch_size, device, want, info, means)
    rows = []
    for r in range(args.repeats):
        for name, fn in methods:
            rows.append({**measure(name, fn, tokens, n, device), "repeat": r})
    rows += one_off_rows(model, items, args, device, want, tokens)
    # The same means, whichever way they were computed (bf16 rounding differs between kernels).
    if "eager" in means:
        ref = means["eager"].float()
        info["max_rel_diff_vs_toolkit"] = {
            k: float((v.float() - ref).abs().max() / ref.abs().max())
            for k, v in means.items()
            if k not in ("eager", "stop", "stop compiled")
        }
        print(
            f"  means vs the toolkit's eager ones (max abs diff / max abs): {info['max_rel_diff_vs_toolkit']}",
            flush=True,
        )
    if device.startswith("cuda"):
        info["matmul_tflops"] = matmul_tflops(device)
        info["floor_seconds_decoder"] = 2 * info["non_embedding_params"] * tokens / (info["matmul_tflops"] * 1e12)
        print(
            f"  bf16 matmul {info['matmul_tflops']:.0f} TFLOP/s; decoder floor {info['floor_seconds_decoder']:.2f} s for {tokens:,} tokens",
            flush=True,
        )
    if "generate" in want:
        rows.extend(steered_generation(model, device, args.gen_batch_sizes, args.gen_tokens, L // 2, args.gen_repeats))
    print_best(rows, info, L)
    return rows


def warm_up(model, items, bs: int, device: str, want: set[str], info: dict) -> None:
    """Clocks and kernels warm before anything is timed; with ``compiled``, the compile warm-up, timed."""
    warm = items[:bs]
    cache_means(model, None, warm, batch_size=bs, progress=False)
    plain_forward(model, items[:200], bs, device, True)  # clocks and kernels warm
    if "compiled" in want:
        sync(device)
        t0 = time.perf_counter()
        cache_means(model, None, warm, batch_size=bs, progress=False, compile=True)
        sync(device)
        info["compile_warmup_seconds"] = time.perf_counter() - t0
        with compiled_layers(model):  # the plain call passes other position ids: its own graph
            plain_forward(model, warm, bs, device, True, padding_mask=False)
        sync(device)
        print(f"  torch.compile warm-up: {info['compile_warmup_seconds']:.1f} s", flush=True)


def timed_methods(
    model, items, bs: int, device: str, want: set[str], info: dict, means: dict[str, torch.Tensor]
) -> list[tuple[str, Callable[[], None]]]:
    """(name, run) of every method timed round-robin; the toolkit's runs leave their means in ``means``."""
    L = model.config.num_hidden_layers
    mid = L // 2 - 1
    warm = items[:bs]

    def toolkit(key: str, **kw) -> Callable[[], None]:
        def run() -> None:
            means[key] = cache_means(model, None, items, batch_size=bs, progress=False, **kw).mean()

        return run

    def compiled_plain() -> None:
        with compiled_layers(model):
            plain_forward(model, items, bs, device, True, padding_mask=False)

    methods: list[tuple[str, Callable[[], None]]] = []
    if "plain" in want:
        methods += [
            ("plain forward, decoder only, padding mask", lambda: plain_forward(model, items, bs, device, True)),
            (
                "plain forward, decoder only, causal mask only",
                lambda: plain_forward(model, items, bs, device, True, padding_mask=False),
            ),
            ("plain forward, whole model with logits", lambda: plain_forward(model, items, bs, device, False)),
        ]
    if "toolkit" in want:
        methods.append((f"toolkit, all {L} layers", toolkit("eager")))
    if "compiled" in want:
        methods += [
            ("plain forward, decoder only, compiled layers", compiled_plain),
            (f"toolkit --compile, all {L} layers", toolkit("compiled", compile=True)),
        ]
    if "stop" in want:
        methods.append((f"toolkit, layers 0-{mid} (stops after {mid})", toolkit("stop", layers=range(mid + 1))))
        if "compiled" in want:
            methods.append(
                (
                    f"toolkit --compile, layers 0-{mid} (stops after {mid})",
                    toolkit("stop compiled", layers=range(mid + 1), compile=True),
                )
            )
    if "nnsight" in want:
        methods.append(
            (
                f"nnsight as documented: whole-model trace, .save() all {L} layers",
                lambda: means.__setitem__("nnsight documented", nnsight_as_documented(model, items, bs, device)),
            )
        )
    for backend in [b for b, key in (("nnsight", "nnsight"), ("transformer_lens", "tl")) if key in want]:
        try:
            runner = make_backend(backend, model)
            cache_means(model, None, warm, batch_size=bs, progress=False, backend=runner)
            methods.append((f"{backend} backend, all {L} layers", toolkit(backend, backend=runner)))
        except Exception as e:  # a missing or failing backend is reported, not fatal
            print(f"  {backend}: failed: {type(e).__name__}: {e}", flush=True)
            info[f"{backend}_error"] = f"{type(e).__name__}: {e}"
    return methods


def one_off_rows(model, items, args, device: str, want: set[str], tokens: int) -> list[dict]:
    """The methods timed once, after the round-robin: dataset order, the reference, the memory check."""
    L, bs, n = model.config.num_hidden_layers, args.batch_size, args.n
    rows = []
    if "order" in want:
        rows.append(
            measure(
                f"toolkit, all {L} layers, dataset order (padding)",
                lambda: cache_means(model, None, items, batch_size=bs, progress=False, sort_by_length=False),
                tokens,
                n,
                device,
            )
        )
    if "reference" in want:
        sub = items[: args.reference_n]
        rows.append(
            measure(
                "reference: one at a time, per-token dumps",
                lambda: reference_approach(model, sub, device),
                sum(len(i.input_ids) for i in sub),
                len(sub),
                device,
            )
        )
    if "memory" in want:
        half = n // 2
        rows.append(
            {
                **measure(
                    f"toolkit, all {L} layers, half the conversations",
                    lambda: cache_means(model, None, items[:half], batch_size=bs, progress=False),
                    sum(len(i.input_ids) for i in items[:half]),
                    half,
                    device,
                ),
                "memory_check": half,
            }
        )
    return rows


def print_best(rows: list[dict], info: dict, L: int) -> None:
    """The best of repeats per method, and the toolkit's speed-ups over the others (into ``info``)."""
    print("\nbest of repeats:")
    best = {row["method"]: row["tokens_per_s"] for row in best_of(rows)}
    for row in best_of(rows):
        print(
            f"  {row['method']:<64} {row['tokens_per_s']:>10,.0f} tok/s  peak {row['peak_gpu_gib']:6.1f} GiB  host +{row['host_rss_growth_mb']:.0f} MB"
        )
    ours = [
        m for m in best if m.startswith("toolkit") and f"all {L} layers" in m and "," not in m.split("layers", 1)[1]
    ]
    info["speedups"] = {
        m: {other: best[m] / t for other, t in best.items() if not other.startswith(("toolkit", "generate"))}
        for m in ours
    }
    for m, table in info["speedups"].items():
        print(f"\n{m} is:" + "".join(f"\n  {x:6.2f}x  {other}" for other, x in table.items()))


def parse_args() -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["7b", "tiny"], default="7b")
    p.add_argument(
        "--conversations",
        "--n",
        dest="n",
        type=int,
        default=2000,
        help="conversations for caching (--n is refused by torchrun: ambiguous)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reference-n", type=int, default=128, help="conversations for the one-at-a-time reference")
    p.add_argument("--only", nargs="*", default=None, help=f"subset of: {' '.join(PARTS)}")
    p.add_argument("--gen-batch-sizes", type=int, nargs="*", default=[1, 16, 64])
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="round-robin repeats of every method; the best counts")
    p.add_argument("--gen-repeats", type=int, default=3)
    p.add_argument("--results-dir", type=Path, default=None, help="also write the JSON here (e.g. benchmarks/results)")
    return p.parse_args()


def run_info(args, model, items, device: str, dtype: torch.dtype) -> dict:
    """What the run is: device, date, versions, model, workload sizes."""
    params = sum(p.numel() for n_, p in model.named_parameters() if "embed_tokens" not in n_ and "lm_head" not in n_)
    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "date": dt.date.today().isoformat(),
        "versions": package_versions(extra=("nnsight", "transformer-lens")),
        "model": f"Qwen2.5-7B-shaped ({args.size}), random weights, {dtype}",
        "conversations": args.n,
        "tokens": sum(len(i.input_ids) for i in items),
        "answer_tokens": sum(i.answer_end - i.answer_start for i in items),
        "batch_size": args.batch_size,
        "non_embedding_params": params,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
    }


def data_parallel(model, items, tokens: int, info: dict, args, rank: int, device: str) -> list[dict]:
    """The toolkit on one GPU (rank 0 alone) and data-parallel over every rank, eager and compiled;
    rank 0 records the scaling in ``info``."""
    import torch.distributed as dist

    from interp.distributed import cache_means_distributed

    rows: list[dict] = []
    world = info["world_size"]
    for compiled in (False, True):
        flag = " --compile" if compiled else ""
        # One GPU in the same launch: rank 0 alone, the others waiting. Every timed run comes
        # after a full pass over the workload (each batch shape met once), best of --repeats.
        if rank == 0:
            one = functools.partial(
                cache_means, model, None, items, batch_size=args.batch_size, progress=False, compile=compiled
            )
            one()
            rows += [
                {**measure(f"toolkit{flag} one GPU", one, tokens, args.n, device), "repeat": r}
                for r in range(args.repeats)
            ]
        dist.barrier()
        run = functools.partial(
            cache_means_distributed, model, None, items, batch_size=args.batch_size, progress=False, compile=compiled
        )
        run()
        for r in range(args.repeats):
            dist.barrier()
            rows.append({**measure(f"toolkit{flag} data-parallel x{world}", run, tokens, args.n, device), "repeat": r})
    if rank == 0:
        best = {row["method"]: row["tokens_per_s"] for row in best_of(rows)}
        info["scaling"] = {
            ("compiled" if flag else "eager"): best[f"toolkit{flag} data-parallel x{world}"]
            / best[f"toolkit{flag} one GPU"]
            for flag in ("", " --compile")
        }
        print(f"data-parallel scaling on {world} GPUs (best of {args.repeats}): {info['scaling']}", flush=True)
    return rows


def main() -> None:
    args = parse_args()
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        import torch.distributed as dist

        from interp.distributed import init_process_group

        rank, _, device = init_process_group()  # gloo on the CPU: a dry run
    else:
        rank = 0
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build_model(args.size, device, dtype)
    items = workload(args.n, model.config.vocab_size)
    info = run_info(args, model, items, device, dtype)
    tokens = info["tokens"]
    if rank == 0:
        print(json.dumps(info, indent=1), flush=True)
    if distributed:
        rows = data_parallel(model, items, tokens, info, args, rank, device)
    else:
        rows = single_gpu(model, items, tokens, info, args, device)
    if rank == 0:
        result = {"info": info, "best": best_of(rows), "runs": rows}
        name = "gpu_caching_ddp.json" if distributed else "gpu_caching.json"
        write_json_atomic(Path("artifacts/benchmarks") / name, result)
        if args.results_dir:
            write_json_atomic(args.results_dir / name, result)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
