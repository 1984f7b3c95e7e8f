"""The Qwen2.5-7B-shaped model with random weights that the GPU benchmarks share, and how they
time a run: ``sync``, ``measure`` (seconds, throughput, peak memory), ``best_of`` repeats and
the bf16 matmul rate (moved here from ``gpu_caching.py``)."""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

QWEN25_7B = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    max_position_embeddings=32768,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1000,
)


def build_model(size: str, device: str, dtype: torch.dtype) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(**(QWEN25_7B if size == "7b" else TINY), attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = Qwen2ForCausalLM(cfg)
        finally:
            torch.set_default_dtype(prev)
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, fn: Callable[[], None], tokens: int, convs: int, device: str) -> dict:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss0 = rss_mb()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    sec = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    row = {
        "method": name,
        "seconds": sec,
        "tokens": tokens,
        "conversations": convs,
        "tokens_per_s": tokens / sec,
        "convs_per_s": convs / sec,
        "peak_gpu_gib": peak,
        "host_rss_growth_mb": rss_mb() - rss0,
    }
    print(
        f"  {name:<64} {row['tokens_per_s']:>10,.0f} tok/s  {row['convs_per_s']:>7.1f} conv/s  peak {peak:6.1f} GiB",
        flush=True,
    )
    return row


def matmul_tflops(device: str, n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def best_of(rows: list[dict]) -> list[dict]:
    """Per method, the fastest of its repeats (the others are kept in the JSON as runs)."""
    best: dict[str, dict] = {}
    for row in rows:
        if "tokens_per_s" in row and (
            row["method"] not in best or row["tokens_per_s"] > best[row["method"]]["tokens_per_s"]
        ):
            best[row["method"]] = row
    return list(best.values())
