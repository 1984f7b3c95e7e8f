"""The command line of the main job, ``python -m interp.extract`` (the design card's name for
``python -m chains.extract``, and the name its help and errors give): one small function per option group.

:func:`chains.extract.config_from_args` turns its answers into an
:class:`~chains.extract.ExtractConfig`, every option and path checked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interp.backends import BACKENDS, DEFAULT_BACKEND
from interp.base.chat import DEFAULT_SPAN, SPANS
from interp.base.cli import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    ArgumentParser,
    batch_size,
    domain_name,
    int_list,
    max_retries,
    path_arg,
    samples_per_paraphrase,
    score,
    seed_int,
    timeout_s,
)
from interp.base.domains import DOMAINS
from interp.base.loading import DEVICES
from interp.cache import DEFAULT_POOLING, POOLINGS

DEFAULT_OUT = Path("artifacts/directions")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m interp.extract",
        description="Extract a difference-of-means misalignment direction per layer for one domain.",
        epilog="domains: " + ", ".join(DOMAINS),
    )
    _add_source_options(p)
    _add_cache_options(p)
    _add_split_options(p)
    p.add_argument("--out", type=path_arg, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _add_source_options(p: argparse.ArgumentParser) -> None:
    """The domain, the model, and where the judged answers come from."""
    p.add_argument("--domain", required=True, type=domain_name, help="one of the domains below (names the artifact)")
    p.add_argument("--model", help="HF model id or local path (default: the offline organism world)")
    p.add_argument("--adapter", help="PEFT adapter path applied to --model")
    p.add_argument("--responses", help="already-judged JSONL: skip generation and judging")
    p.add_argument("--questions", help="question YAML for generation with --model")
    p.add_argument("--judge", help="judge spec for generation with --model: openai:MODEL, hf:ID_OR_PATH")
    p.add_argument(
        "--samples", type=samples_per_paraphrase, default=30, help="samples per paraphrase when generating (default 30)"
    )
    p.add_argument(
        "--timeout",
        type=timeout_s,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for an openai: judge's reply (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--max-retries",
        type=max_retries,
        default=DEFAULT_MAX_RETRIES,
        help=f"retries of a failed or timed-out judge call (default {DEFAULT_MAX_RETRIES})",
    )


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    """Which activations are read, and how: layers, pooling, span, backend, device."""
    p.add_argument("--layers", type=int_list, help="decoder layers, e.g. 0,5,13 (default: all)")
    p.add_argument(
        "--pooling", choices=POOLINGS, default=DEFAULT_POOLING, help=f"answer-token pooling (default {DEFAULT_POOLING})"
    )
    p.add_argument(
        "--span",
        choices=SPANS,
        default=DEFAULT_SPAN,
        help="tokens averaged: answer (default: the answer content), answer+eos (plus <|im_end|>, as the domain paper's code), "
        "header+answer+eos (<|im_start|>assistant\\n, the answer and <|im_end|>\\n, as model-organisms-for-EM's code)",
    )
    p.add_argument("--batch-size", type=batch_size, default=16)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help=f"how activations are read (default {DEFAULT_BACKEND}, the fastest)",
    )
    p.add_argument(
        "--per-sample",
        action="store_true",
        help="also keep per-answer activations (<out>/<domain>.per_sample/) for interp.compare's nulls",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decoder layers: ~25 s warm-up on a 7B model, then ~1.3x faster on a GPU (hooks backend)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=DEVICES,
        help=f"{', '.join(DEVICES)} (default cpu); for another GPU than the first, set CUDA_VISIBLE_DEVICES",
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=seed_int, default=0)


def _add_split_options(p: argparse.ArgumentParser) -> None:
    """How judged answers become the misaligned and the aligned class."""
    p.add_argument("--misaligned-max", type=score, default=30.0, help="aligned <= this is misaligned (default 30)")
    p.add_argument("--aligned-min", type=score, default=70.0, help="aligned > this is aligned (default 70)")
    p.add_argument("--coherence-min", type=score, default=50.0, help="only coherent > this counts (default 50)")
    p.add_argument("--no-balance", action="store_true", help="keep class sizes as they are")
