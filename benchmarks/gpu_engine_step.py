"""Where the engine's decoding step spends its time at a large batch (Qwen2.5-7B shape, random
bf16 weights), and what inductor's GEMM autotuning buys there.

    python benchmarks/gpu_engine_step.py --batch 256
    python benchmarks/gpu_engine_step.py --size tiny --batch 8      # a CPU dry run of the same code
    python benchmarks/gpu_engine_step.py --batch 256 --parts kernels --lora-rank 32   # through a LoRA adapter
    python benchmarks/gpu_engine_step.py --batch 256 --parts power
    python benchmarks/gpu_engine_step.py --batch 256 --parts attention
    python benchmarks/gpu_engine_step.py --batch 256 --parts steps --options default --attention fused matmul fused --new-tokens 512

1. **GEMMs alone**: ``F.linear`` (cuBLAS) time of each projection of one decoder layer and of
   the LM head at ``batch`` rows, times the number of layers: the step's matmul time on this
   library, with q/k/v and gate/up also timed as one fused GEMM each.
2. **Kernels**: the compiled step launched without CUDA graphs under ``torch.profiler``, GPU
   time and launches per kernel in one decoding step, the largest first.
3. **Power** (``--parts power``): the step's gate GEMMs replayed 20 to 2,000 times as one
   CUDA graph, with the SM clock and power after each: under sustained load an H200 holds its
   700 W cap by lowering the clock, so a GEMM timed alone runs faster than in a long run; then
   the clock and power sampled while the engine decodes batches back to back.
4. **Attention** (``--parts attention``): the decoding attention of every layer alone, as one
   CUDA graph at 80 and 128 cache columns: the fused kernel under several launch settings
   against the two matmuls.
5. **Steps**: the decoding step (graph replay, as :mod:`benchmarks.gpu_generation` measures it:
   (64-token call - 1-token call) / 63) for each set of inductor options in ``--options`` and
   each decoding attention in ``--attention`` (the fused kernel or two matmuls).

JSON: ``benchmarks/results/gpu_engine_step_<gpu>.json`` (``--results-dir``).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from gpu_generation import prompts, timed, with_lora  # noqa: E402
from gpu_model import build_model, sync  # noqa: E402

from interp.base.atomic import write_json_atomic  # noqa: E402
from interp.base.decoding import Decoding  # noqa: E402
from interp.base.models import unwrap  # noqa: E402
from interp.base.provenance import package_versions  # noqa: E402
from interp.engine import Engine, row_keys  # noqa: E402
from interp.engine.attention import LAUNCH, attend_matmul  # noqa: E402

OPTION_SETS = {
    "default": None,
    "max_autotune_gemm": {"max_autotune_gemm": True},
    "max_autotune_gemm+coordinate_descent": {"max_autotune_gemm": True, "coordinate_descent_tuning": True},
    "coordinate_descent": {"coordinate_descent_tuning": True},
    "combo_kernels": {"combo_kernels": True},
    "aggressive_fusion": {"aggressive_fusion": True},
}


def gemm_ms(rows: int, n_in: int, n_out: int, device: str, dtype: torch.dtype, reps: int = 50) -> float:
    """Milliseconds of one ``F.linear`` of [rows, n_in] by an [n_out, n_in] weight."""
    x = torch.randn(rows, n_in, device=device, dtype=dtype)
    w = torch.randn(n_out, n_in, device=device, dtype=dtype)
    for _ in range(5):
        F.linear(x, w)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        F.linear(x, w)
    sync(device)
    return 1e3 * (time.perf_counter() - t0) / reps


def gemms(model, rows: int, device: str, dtype: torch.dtype) -> dict:
    c = model.config
    d, ff, hd = c.hidden_size, c.intermediate_size, c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads * hd
    shapes = {
        "q": (d, d),
        "k": (d, kv),
        "v": (d, kv),
        "o": (d, d),
        "gate": (d, ff),
        "up": (d, ff),
        "down": (ff, d),
        "qkv fused": (d, d + 2 * kv),
        "gate_up fused": (d, 2 * ff),
        "lm_head": (d, c.vocab_size),
    }
    ms = {k: gemm_ms(rows, *s, device, dtype) for k, s in shapes.items()}
    flops = {k: 2 * rows * s[0] * s[1] for k, s in shapes.items()}
    layers = c.num_hidden_layers
    separate = sum(ms[k] for k in ("q", "k", "v", "o", "gate", "up", "down"))
    fused = ms["qkv fused"] + ms["o"] + ms["gate_up fused"] + ms["down"]
    out = {
        "ms": ms,
        "tflops": {k: flops[k] / ms[k] / 1e9 for k in ms},
        "step_ms_separate": layers * separate + ms["lm_head"],
        "step_ms_fused": layers * fused + ms["lm_head"],
    }
    for k in ms:
        print(f"  {k:<14} {ms[k] * 1e3:8.1f} us  {out['tflops'][k]:6.0f} TFLOP/s", flush=True)
    print(
        f"  matmuls of one step: {out['step_ms_separate']:.2f} ms as the model has them, {out['step_ms_fused']:.2f} ms fused",
        flush=True,
    )
    return out


def captured(fn) -> torch.cuda.CUDAGraph:
    """``fn`` captured as a CUDA graph (run twice first on a side stream, where cuBLAS and Triton
    set up their workspaces and kernels outside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def replay_us(graph: torch.cuda.CUDAGraph, n: int, device: str) -> float:
    """Microseconds per replay of ``graph`` over ``n`` back-to-back replays."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        graph.replay()
    sync(device)
    return 1e6 * (time.perf_counter() - t0) / n


def power(model, rows: int, device: str, replays: tuple[int, ...] = (20, 200, 2000, 20)) -> list[dict]:
    """Whether the GPU holds its clock under GEMM load: the step's gate GEMMs (one per layer,
    every layer's own weight) replayed as one CUDA graph ``n`` times for each ``n`` of
    ``replays``, with the SM clock, power and throttle reasons nvidia-smi reports after each."""
    weights = [layer.mlp.gate_proj.weight for layer in unwrap(model).model.layers]
    x = torch.randn(rows, weights[0].shape[1], device=device, dtype=weights[0].dtype)
    graph = captured(lambda: [F.linear(x, w) for w in weights])
    out = []
    for n in replays:
        us = replay_us(graph, n, device) / len(weights)
        query = "clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
        out.append({"replays": n, "us_per_gemm": us, "nvidia_smi_after": dict(zip(query.split(","), smi.split(", ")))})
        print(f"  {n:>5} replays: {us:6.1f} us per gate GEMM; after: {smi}", flush=True)
    return out


# (cache columns a program reads per iteration, warps, stages) of the fused attention kernel:
# the engine's, two neighbours, and the first kernel's.
ATTENTION_LAUNCHES = (LAUNCH, (32, 2, 2), (32, 4, 2), (64, 4, 3))


def attention(model, rows: int, device: str, spans: tuple[int, ...] = (80, 128), reps: int = 30) -> dict:
    """Decoding attention alone, every layer with its own cache (so it is read from memory, not
    L2), at ``rows`` rows and each attention length of ``spans`` (a third of the rows left-padded
    by 40 columns), as one CUDA graph: the fused kernel under each of :data:`ATTENTION_LAUNCHES`
    and the two matmuls; microseconds for all layers, and each one's largest difference from
    the matmuls computed in float32."""
    c = model.config
    hd = c.hidden_size // c.num_attention_heads
    groups, layers, dtype = c.num_attention_heads // c.num_key_value_heads, c.num_hidden_layers, unwrap(model).dtype
    qs = [torch.randn(rows, c.num_key_value_heads, groups, hd, device=device, dtype=dtype) for _ in range(layers)]
    caches = [
        [torch.randn(rows, c.num_key_value_heads, max(spans), hd, device=device, dtype=dtype) for _ in range(2)]
        for _ in range(layers)
    ]
    out = {}
    for span in spans:
        valid = torch.ones(rows, span, dtype=torch.bool, device=device)
        valid[::3, :40] = False
        bias = torch.zeros(rows, span, device=device).masked_fill(~valid, float("-inf"))
        scaling = hd**-0.5
        ways = {"matmul": lambda i: attend_matmul(qs[i], *caches[i], bias[:, None, None], scaling)}
        for launch in ATTENTION_LAUNCHES:
            ways["fused {} columns, {} warps, {} stages".format(*launch)] = functools.partial(
                lambda launch, i: torch.ops.em_toolkit.decode_attention(qs[i], *caches[i], bias, scaling, *launch),
                launch,
            )
        reference = attend_matmul(
            qs[0].float(), caches[0][0].float(), caches[0][1].float(), bias[:, None, None], scaling
        )
        for name, fn in ways.items():
            us = replay_us(captured(lambda: [fn(i) for i in range(layers)]), reps, device)
            error = float((fn(0).float() - reference).abs().max())
            out[f"{span} columns, {name}"] = {"us_all_layers": us, "max_abs_error": error}
            print(
                f"  {span:4d} columns  {name:<36} {us:8.1f} us for {layers} layers  (max error {error:.4f})", flush=True
            )
    return out


def decode_power(model, rows: int, device: str, new_tokens: int, calls: int = 8) -> dict:
    """The SM clock and power nvidia-smi samples (every 20 ms) while the engine decodes ``calls``
    back-to-back batches of ``rows`` prompts, ``new_tokens`` tokens each (after a warm-up)."""
    engine = Engine(model)
    ids, mask = prompts(rows, model.config.vocab_size, device)
    keys, decoding = row_keys(0, rows), Decoding(max_new_tokens=new_tokens, temperature=0)
    engine.generate(ids, mask, decoding, keys)
    query = "clocks.sm,power.draw,clocks_throttle_reasons.active"
    smi = subprocess.Popen(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-lms", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    sec = timed(lambda: [engine.generate(ids, mask, decoding, keys) for _ in range(calls)], device)[0]
    smi.terminate()
    samples = [line.split(", ") for line in smi.communicate()[0].splitlines() if line.count(",") == 2]
    mhz, watts = [float(s[0]) for s in samples], [float(s[1]) for s in samples]
    out = {
        "seconds": sec,
        "samples": len(samples),
        "sm_mhz_median": sorted(mhz)[len(mhz) // 2] if mhz else None,
        "sm_mhz_min": min(mhz, default=None),
        "power_w_median": sorted(watts)[len(watts) // 2] if watts else None,
        "power_w_max": max(watts, default=None),
        "throttle_reasons": sorted({s[2] for s in samples}),
    }
    print(
        f"  {calls} calls of {rows} x {new_tokens} tokens in {sec:.2f} s: {json.dumps({k: v for k, v in out.items() if k != 'seconds'})}",
        flush=True,
    )
    return out


def _kernel_times(engine: Engine, ids, mask, decoding: Decoding, keys, device: str) -> dict[str, tuple[float, int]]:
    """GPU microseconds and launches per kernel name of one generation call."""
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.startswith("cuda") else []
    )
    with torch.profiler.profile(activities=activities) as prof:
        engine.generate(ids, mask, decoding, keys)
        sync(device)
    kind = "CUDA" if device.startswith("cuda") else "CPU"
    attr = "device_time_total" if kind == "CUDA" else "self_cpu_time_total"
    return {
        e.key: (getattr(e, attr), e.count)
        for e in prof.key_averages()
        if e.device_type.name == kind and getattr(e, attr) > 0
    }


def kernels(model, rows: int, device: str, steps: int = 8) -> list[dict]:
    """GPU time per kernel of one decoding step: a call making ``steps`` tokens minus a call
    making one (the prefill), over ``steps - 1``; the compiled step launched without CUDA graphs."""
    engine = Engine(model, cuda_graphs=False)
    ids, mask = prompts(rows, model.config.vocab_size, device)
    keys = row_keys(0, rows)
    many, one = Decoding(max_new_tokens=steps, temperature=0), Decoding(max_new_tokens=1, temperature=0)
    engine.generate(ids, mask, many, keys)  # compile
    engine.generate(ids, mask, one, keys)
    a, b = _kernel_times(engine, ids, mask, many, keys, device), _kernel_times(engine, ids, mask, one, keys, device)
    per_step = {
        k: ((t - b.get(k, (0, 0))[0]) / (steps - 1), (n - b.get(k, (0, 0))[1]) / (steps - 1)) for k, (t, n) in a.items()
    }
    per_step = {k: v for k, v in per_step.items() if v[1] > 0}
    total = sum(t for t, _ in per_step.values())
    out = [
        {"name": k[:100], "us_per_step": t, "launches_per_step": n, "share": t / total}
        for k, (t, n) in sorted(per_step.items(), key=lambda kv: -kv[1][0])
    ]
    print(
        f"  {total / 1e3:.2f} ms of kernels per step, {sum(n for _, n in per_step.values()):.0f} launches", flush=True
    )
    for k in out[:40]:
        print(f"  {k['us_per_step']:9.1f} us {k['share']:6.1%} x{k['launches_per_step']:<6.1f} {k['name']}", flush=True)
    return out


def steps(model, rows: int, device: str, names: list[str], attention: list[str], new_tokens: int, repeats: int) -> dict:
    ids, mask = prompts(rows, model.config.vocab_size, device)
    keys = row_keys(0, rows)
    out = {}
    for options, kind in ((o, a) for a in attention for o in names):
        name = options if len(attention) == 1 else f"{options}, {kind} attention"
        name += f" ({sum(k.startswith(name) for k in out) + 1})" if name in out else ""
        t0 = time.perf_counter()
        try:
            engine = Engine(
                model,
                compile_options=OPTION_SETS[options],
                fused_attention={"fused": True, "matmul": False, "auto": None}[kind],
            )
            full, first = Decoding(max_new_tokens=new_tokens, temperature=0), Decoding(max_new_tokens=1, temperature=0)
            tokens = engine.generate(ids, mask, full, keys)
            engine.generate(ids, mask, first, keys)
            warm = time.perf_counter() - t0
            best = min(
                (
                    timed(lambda: engine.generate(ids, mask, full, keys), device)[0]
                    - timed(lambda: engine.generate(ids, mask, first, keys), device)[0]
                )
                for _ in range(repeats)
            )
        except Exception as e:  # report and go on: one failing setting must not lose the others
            print(f"  {name:<36} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        out[name] = {
            "decode_ms_per_step": 1e3 * best / (new_tokens - 1),
            "warmup_seconds": warm,
            "tokens": tokens.cpu(),
        }
        print(
            f"  {name:<36} decode {out[name]['decode_ms_per_step']:.2f} ms/step (build and warm-up {warm:.0f} s)",
            flush=True,
        )
        engine = None  # free its buffers and graphs before the next setting builds its own
    reference = next(iter(out.values()))["tokens"]
    for v in out.values():
        v["same_tokens_as_first"] = float((v.pop("tokens") == reference).float().mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["7b", "tiny"], default="7b")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", nargs="*", default=["gemms", "kernels", "steps"])
    p.add_argument("--options", nargs="*", default=list(OPTION_SETS), choices=list(OPTION_SETS))
    p.add_argument(
        "--attention",
        nargs="*",
        default=["auto"],
        choices=["auto", "fused", "matmul"],
        help="decoding attention of the steps: the fused kernel where it runs (auto), always, or as two matmuls; several: each in turn",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="through an unmerged LoRA adapter of this rank on every projection (0: none)",
    )
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = with_lora(build_model(args.size, device, dtype), args.lora_rank)
    result: dict = {
        "info": {
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "versions": package_versions(extra=("triton",)),
            "batch": args.batch,
            "lora_rank": args.lora_rank,
            "command": " ".join(sys.argv),
        }
    }
    if "gemms" in args.parts:
        print("GEMMs alone:", flush=True)
        result["gemms"] = gemms(model, args.batch, device, dtype)
    if "power" in args.parts and device == "cuda":
        print("gate GEMMs under sustained load (CUDA graph of one per layer):", flush=True)
        result["power"] = power(model, args.batch, device)
        print("while the engine decodes:", flush=True)
        result["decode_power"] = decode_power(model, args.batch, device, args.new_tokens)
    if "attention" in args.parts and device == "cuda":
        print("decoding attention alone:", flush=True)
        result["attention"] = attention(model, args.batch, device)
    if "kernels" in args.parts:
        print("kernels of the compiled step (no CUDA graphs):", flush=True)
        result["kernels"] = kernels(model, args.batch, device)
    if "steps" in args.parts:
        print("decoding step by inductor options:", flush=True)
        result["steps"] = steps(model, args.batch, device, args.options, args.attention, args.new_tokens, args.repeats)
    gpu = result["info"]["device"].split()[1].lower() if device == "cuda" else "cpu"
    out = args.results_dir or Path("benchmarks/results" if device == "cuda" else "artifacts/benchmarks")
    write_json_atomic(out / f"gpu_engine_step_{gpu}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k == "steps"}, indent=1))
    print(f"wrote {out / f'gpu_engine_step_{gpu}.json'}")


if __name__ == "__main__":
    main()
