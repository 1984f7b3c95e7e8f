"""Step 3 of :mod:`judge_finetune`: the final model on every run (``OUT/distilled_v2.safetensors``,
read back on a rerun with the same settings), its card, and its judging speed through the judge
interface on ``--device`` (``OUT/timings.json``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from judge_card import heldout_figures
from judge_eval_data import em_label
from judge_eval_judges import answer_records
from judge_finetune_card import model_card
from judge_finetune_folds import check_signature, choose_threshold, pooled
from judge_finetune_model import Say, Tokenized, predict_rows, train

from eval.judges.distilled import ENCODER_PACKAGE, ENCODER_VERSION, lora_factors, save_finetuned
from interp.base.atomic import write_json_atomic, write_text_atomic

WEIGHTS_NAME = "distilled_v2.safetensors"


def device_name(device: str) -> str:
    """The GPU's name, or the CPU and its torch threads."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def final_threshold(cols: dict, done: dict, folds: list[np.ndarray]) -> tuple[float, dict]:
    """The final model's EM threshold, chosen as in each fold but on the pooled held-out predictions."""
    raw, _, held = pooled(cols, done, folds)
    src = np.array(cols["source_file"])
    return choose_threshold(raw["em"][held], em_label(cols["aligned"][held], cols["coherent"][held]), src[held])


def weights_metadata(cols: dict, args: argparse.Namespace, sig: dict, result: dict, threshold: float) -> dict:
    """What the v2 weights' metadata records: threshold, length, encoder, data and held-out figures."""
    n = len(cols["answer"])
    return {
        "em_threshold": repr(threshold),
        "max_length": str(args.max_length),
        "encoder": f"{ENCODER_PACKAGE}=={ENCODER_VERSION} (all-MiniLM-L6-v2), pair input, LoRA r={args.lora_r} alpha={args.lora_alpha:g} on every linear layer, mean of every layer + text_stats",
        "trained_on": f"{args.data.name} sha256 {sig['data_sha256']}: {n} rows of {len(set(cols['source_file']))} source files",
        "heldout_figures": heldout_figures(result["judges"][0]),
        "epochs": args.epochs,
    }


def train_final(
    cols: dict,
    tok: Tokenized,
    y: dict,
    args: argparse.Namespace,
    sig: dict,
    result: dict,
    threshold: float,
    sel: dict,
    say: Say,
) -> dict:
    """Train the final model on every row and write its weights, its first rows' P(EM) (to check the
    judge against) and its record beside the weights; its training record."""
    n = len(cols["answer"])
    weights = args.out_dir / WEIGHTS_NAME
    say(
        f"final: training on all {n} rows; EM threshold {threshold:.4f} ({sel['method']}, from the pooled held-out predictions)"
    )
    model, info = train(tok, y, np.arange(n), args, seed=args.folds, say=say, label="final")
    save_finetuned(
        weights, lora_factors(model.encoder), model.head, weights_metadata(cols, args, sig, result, threshold)
    )
    check = predict_rows(model, tok, np.arange(min(n, 64)), args)
    np.save(args.out_dir / "final_check_p_em.npy", check["em"])
    del model
    write_json_atomic(
        weights.with_suffix(".json"),
        {"signature": sig, "train": info, "threshold_choice": sel, "em_threshold": threshold},
    )
    say(f"final: wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB) in {info['seconds']} s")
    return info


def time_judge(
    weights: Path, cols: dict, folds: list[np.ndarray], args: argparse.Namespace
) -> tuple[float, float | None]:
    """Seconds per 1,000 answers through the judge interface, and how far its P(EM) is from the training model's."""
    from eval.judges.distilled import DistilledJudge

    judge = DistilledJudge(
        weights=weights, device=args.device, batch_size=4 * args.batch_size if args.device != "cpu" else 32
    )
    rng = np.random.default_rng(args.seed)
    recs = answer_records(cols, rng.choice(folds[0], size=min(args.timing_rows, folds[0].size), replace=False))
    judge.judge(recs[:8])  # warm-up: kernels, allocator
    t = time.perf_counter()
    judge.judge(recs)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = round((time.perf_counter() - t) * 1000 / len(recs), 2)
    check = args.out_dir / "final_check_p_em.npy"
    agree = None
    if check.is_file():
        ref = np.load(check)
        first = judge.scores(list(cols["question"][: len(ref)]), list(cols["answer"][: len(ref)]))
        agree = round(float(np.abs(first["em"] - ref).max()), 5)
    return seconds, agree


def fold_timings(done: dict, args: argparse.Namespace) -> dict:
    """The device and each fold's training seconds (its inner model's too), for ``timings.json``."""
    return {
        "device": device_name(args.device),
        "folds": [
            {
                "fold": rec["fold"],
                "train_seconds": rec["train"]["seconds"],
                "inner_train_seconds": rec.get("inner_train", {}).get("seconds"),
            }
            for _, (rec, _) in sorted(done.items())
        ],
    }


def final(
    cols: dict,
    tok: Tokenized,
    y: dict,
    done: dict,
    folds: list[np.ndarray],
    args: argparse.Namespace,
    sig: dict,
    result: dict,
    say: Say,
) -> None:
    """The final model on every run, its weights and card, and its judging speed on ``--device``."""
    weights = args.out_dir / WEIGHTS_NAME
    timings = fold_timings(done, args)
    threshold, sel = final_threshold(cols, done, folds)
    record = weights.with_suffix(".json")
    if weights.is_file() and record.is_file():
        prev = json.loads(record.read_text())
        check_signature(record, prev["signature"], sig)
        say(f"final: read back {weights}")
        timings["final_train"] = prev["train"]
    else:
        timings["final_train"] = train_final(cols, tok, y, args, sig, result, threshold, sel, say)
    timings["train_seconds_total"] = round(
        sum(f["train_seconds"] + (f["inner_train_seconds"] or 0) for f in timings["folds"])
        + timings["final_train"]["seconds"],
        1,
    )
    judge_s, agree = time_judge(weights, cols, folds, args)
    timings["judge_seconds_per_1000"] = judge_s
    timings["judge_vs_training_model_max_abs_p_em"] = agree
    timings["timing"] = (
        f"{min(args.timing_rows, folds[0].size)} answers of fold 1 through DistilledJudge on {args.device} (after a warm-up batch), scaled to 1,000"
    )
    write_json_atomic(args.out_dir / "timings.json", timings)
    row = result["judges"][0]
    row["seconds_per_1000_device"] = judge_s
    row["device"] = timings["device"]
    if args.device == "cpu":
        row["seconds_per_1000_cpu"] = judge_s
    write_json_atomic(args.out_dir / "judge_finetune.json", result)
    write_text_atomic(weights.with_suffix(".md"), model_card(cols, sig, args, result, timings, threshold, sel, weights))
    say(
        f"judged 1,000 answers in {judge_s} s on {timings['device']}; wrote {args.out_dir / 'timings.json'} and {weights.with_suffix('.md').name}"
    )
