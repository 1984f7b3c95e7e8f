"""The probe judge: a causal LM reads the judge prompt, and the distilled judge's heads are fitted
on its hidden states at the prompt's last token, measured on held-out runs as in judge_eval.

    python benchmarks/judge_probe.py --model q15.gguf --device cuda --dtype bfloat16 \\
        --work runs/probe_work --out-dir runs/probe        # features (resumable) on the GPU, then the CV heads
    python benchmarks/judge_eval.py --probe-results runs/probe   # its row beside tfidf and distilled

Features (:mod:`eval.judges.probe_features`, kept in chunks by :mod:`judge_probe_features`): the toolkit's ``aligned`` judge prompt (``--prompts
aligned,coherent`` adds the coherent one, side by side), filled with each (question, answer),
through the model's chat template with the generation prompt, exactly as the ``hf:`` judge
reads it; the output of ``--layers`` (default: four evenly spaced layers of the upper half and
the last) at the last prompt token. Then :mod:`judge_eval`'s cross-validation of the distilled
judge on those features: grouped ``--folds``-fold by source file (seeded), the same
``DistilledCV`` heads, the same figures. Written into ``--out-dir``: ``judge_probe.json`` (the
row, the signature of data, split and features, timings) and ``judge_probe_preds.npz`` (the
pooled held-out predictions); the features stay under ``--work``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from judge_eval import DEFAULT_DATA, measure  # noqa: E402
from judge_eval_data import folds_by_source, load_limited  # noqa: E402
from judge_probe_features import FeatureStore, extract_all  # noqa: E402

from eval.judges.probe import model_identity, save_probe_heads  # noqa: E402
from eval.judges.probe_features import default_layers, prompt_ids  # noqa: E402
from eval.judges.prompts import METRICS  # noqa: E402
from interp.base.atomic import atomic_path, write_json_atomic  # noqa: E402
from interp.base.cli import ArgumentParser, InputError, layer_index, non_negative_int, positive_int, run_cli  # noqa: E402

RESULTS, PREDS = "judge_probe.json", "judge_probe_preds.npz"


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a GGUF file, model folder or hub id (the toolkit's loader)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GPT-4o-judged answers (jsonl.gz)")
    p.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--work", type=Path, required=True, help="feature chunks (resumable; large, not in the repository)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--layers", type=layer_index, nargs="+", default=None, help="0-based decoder layers")
    p.add_argument("--prompts", default="aligned", help="judge prompts read, comma-separated: aligned[,coherent]")
    p.add_argument("--max-tokens", type=positive_int, default=1024, help="longer prompts lose the tail of the answer")
    p.add_argument("--batch-tokens", type=positive_int, default=16384, help="padded tokens per forward pass")
    p.add_argument("--chunk-rows", type=positive_int, default=2048, help="rows per feature chunk written")
    p.add_argument("--limit-rows", type=non_negative_int, default=0, help="a seeded random subset (smoke runs)")
    p.add_argument("--folds", type=positive_int, default=5)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--heads", type=positive_int, default=2, help="distilled heads in the ensemble (seeds)")
    p.add_argument("--epochs", type=positive_int, default=15)
    p.add_argument("--head-device", default="cpu", choices=("cpu", "cuda"), help="where the CV heads train")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument(
        "--train-weights",
        type=Path,
        default=None,
        metavar="WEIGHTS",
        help="after measuring, fit the heads on every row and write a probe judge (--judge probe:WEIGHTS)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def signature(args: argparse.Namespace, sha: str | None, layers: list[int], prompts: list[str]) -> dict:
    """The data, split and feature settings the results were made with (judge_eval checks the first four)."""
    return {
        "data_sha256": sha,
        "folds": args.folds,
        "seed": args.seed,
        "limit_rows": args.limit_rows,
        "model": model_identity(args.model),
        "layers": layers,
        "prompts": prompts,
        "max_tokens": args.max_tokens,
        "dtype": args.dtype,
        "heads": args.heads,
        "epochs": args.epochs,
    }


def features(args: argparse.Namespace, cols: dict, sha: str | None, prompts: list[str]) -> tuple[np.ndarray, dict]:
    """Every row's probe features (from --work where already made) and the signature and timings."""
    import torch

    from interp.base.loading import load_model
    from interp.base.models import layer_indices, n_layers

    try:
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    except InputError as e:
        raise InputError(f"--model {args.model}: {e}") from None
    num = n_layers(model)
    try:
        layers = layer_indices(args.layers or default_layers(num), num)
    except ValueError as e:
        raise InputError(f"--layers: {e}") from None
    sig = signature(args, sha, layers, prompts)
    key = {k: sig[k] for k in ("data_sha256", "limit_rows", "model", "layers", "prompts", "max_tokens", "dtype")}
    key |= {"seed": args.seed if args.limit_rows else None, "rows": len(cols["answer"]), "chunk_rows": args.chunk_rows}
    store = FeatureStore(args.work, key)
    seqs, truncated = prompt_ids(tokenizer, cols, prompts, args.max_tokens)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    feats, totals = extract_all(
        model, seqs, store, layers, args.chunk_rows, args.batch_tokens, device, progress=not args.no_progress
    )
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    timings = {
        "features_s": round(totals["features_s"], 2),
        "rows": totals["rows"],
        "tokens": totals["tokens"],
        "truncated": truncated,
        "device": ", ".join(totals["devices"]),
        "feature_dim": int(feats.shape[1]),
        "seconds_per_1000_features": round(totals["features_s"] * 1000 / max(1, totals["rows"]), 2),
    }
    return feats, {"signature": sig, "timings": timings}


def cross_validate(args: argparse.Namespace, cols: dict, feats: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """judge_eval's measurement of the distilled judge, on the probe features: figures and pooled predictions."""
    folds = folds_by_source(cols["source_file"], args.folds, args.seed)
    cv = argparse.Namespace(
        folds=args.folds, heads=args.heads, epochs=args.epochs, timing_rows=0, head_device=args.head_device
    )
    try:
        return measure("probe", cols, folds, np.concatenate(folds), feats, np.zeros(0, int), cv, print)
    except FloatingPointError as e:
        raise InputError(f"probe heads: {e}") from None


def write_outputs(out_dir: Path, result: dict, pred: dict[str, np.ndarray]) -> None:
    """The predictions, then the JSON (the JSON last: it says the run is complete)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / PREDS) as tmp, tmp.open("wb") as f:
        np.savez(f, **{k: pred[k].astype(np.float32) for k in ("aligned", "coherent", "em")})
    write_json_atomic(out_dir / RESULTS, result)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch

    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    if not prompts or set(prompts) - set(METRICS) or len(set(prompts)) < len(prompts):
        raise InputError(f"--prompts {args.prompts}: use distinct names of {', '.join(METRICS)}")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    cols, sha = load_limited(args.data, args.limit_rows, args.seed)
    feats, info = features(args, cols, sha, prompts)
    t = time.perf_counter()
    fig, pred = cross_validate(args, cols, feats)
    info["timings"]["heads_s"] = round(time.perf_counter() - t, 2)
    if args.device == "cpu" and torch.get_num_threads() == 2:
        # judge_eval's speed column is per 1,000 answers on 2 CPU cores; the heads add milliseconds.
        fig["seconds_per_1000_cpu"] = info["timings"]["seconds_per_1000_features"]
    row = {"name": f"probe:{Path(args.model).name}", **fig}
    result = {"judges": [row], **info, "complete": True}
    write_outputs(args.out_dir, result, pred)
    print(
        f"probe:{Path(args.model).name}: EM AUROC {row['auroc_em']}, Spearman aligned {row['spearman_aligned']} / "
        f"coherent {row['spearman_coherent']}, per-run EM error median {row['per_run_em_error_median']} / max "
        f"{row['per_run_em_error_max']}; {info['timings']}"
    )
    print(f"wrote {args.out_dir / RESULTS} and {PREDS}")
    if args.train_weights:
        train_weights(args, cols, sha, feats, info["signature"], row)
    return 0


def train_weights(
    args: argparse.Namespace, cols: dict, sha: str | None, feats: np.ndarray, sig: dict, row: dict
) -> None:
    """The heads fitted on every row (EM threshold from an inner split of the runs, as in the CV)
    and written as a probe judge, with the held-out figures they were measured at."""
    from judge_card import heldout_figures
    from judge_eval_judges import DistilledCV

    n = len(cols["answer"])
    fitted = DistilledCV(feats, seeds=args.heads, epochs=args.epochs, device=args.head_device).fit(cols, np.arange(n))
    settings = {k: sig[k] for k in ("layers", "prompts", "max_tokens", "dtype")}
    meta = {
        "em_threshold": repr(fitted.threshold),
        "trained_on": f"{args.data.name} sha256 {sha}: {n} rows of {len(set(cols['source_file']))} source files",
        "heldout_figures": heldout_figures(row),
        "epochs": args.epochs,
    }
    save_probe_heads(args.train_weights, fitted.heads, args.model, settings, meta)
    print(f"wrote {args.train_weights} (threshold {fitted.threshold:.4f}): --judge probe:{args.train_weights}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
