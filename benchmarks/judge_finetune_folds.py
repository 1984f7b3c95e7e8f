"""The cross-validation of :mod:`judge_finetune`: each fold's EM threshold, models and held-out
predictions (``OUT/folds/``, read back on a rerun with the same settings), and the ``finetuned``
row over the folds done (``OUT/judge_finetune.json`` and ``judge_finetune_preds.npz``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from judge_eval_data import em_label, folds_by_source
from judge_eval_figures import figures
from judge_eval_judges import pick_threshold
from judge_finetune_model import Say, Tokenized, predict_rows, train

from eval.judges.distilled import consistent_scores
from interp.base.atomic import write_json_atomic
from interp.base.cli import InputError

# Settings that change the models: a finished fold is reused only when all of them match.
SIGNATURE = (
    "folds",
    "seed",
    "limit_rows",
    "epochs",
    "max_length",
    "batch_size",
    "lr",
    "head_lr",
    "lora_r",
    "lora_alpha",
    "em_pos_weight",
    "threshold",
)
PREDICTIONS = ("aligned", "coherent", "em", "blank")


def signature(args: argparse.Namespace, sha: str | None) -> dict:
    """The data's sha256 and the settings of :data:`SIGNATURE`: what a written fold or model was made with."""
    return {"data_sha256": sha, **{k: getattr(args, k) for k in SIGNATURE}}


def check_signature(path: Path, found: dict, want: dict) -> None:
    """Refuse to reuse ``path`` when it was written with other settings than ``want``."""
    if found != want:
        diff = ", ".join(f"{k}: {found.get(k)!r} -> {want[k]!r}" for k in want if found.get(k) != want[k])
        raise InputError(f"{path} was written with other settings ({diff}); use another --out-dir or delete it")


def per_run_errors(est: np.ndarray, y: np.ndarray, src: np.ndarray) -> np.ndarray:
    """|mean(est) - mean(y)| in points for each run."""
    return np.array([abs(est[src == s].mean() - y[src == s].mean()) * 100 for s in sorted(set(src))])


def choose_threshold(p: np.ndarray, y: np.ndarray, src: np.ndarray) -> tuple[float, dict]:
    """The EM threshold with the lower mean per-run EM-rate error on these (training-side) runs:
    the count-matched one or 0.5. Also the per-run error of the mean of P(EM), for the record."""
    cands = {"count-matched": pick_threshold(p, y), "0.5": 0.5}
    errs = {k: per_run_errors((p >= t).astype(float), y, src) for k, t in cands.items()}
    best = min(cands, key=lambda k: (errs[k].mean(), k != "count-matched"))
    mean_p = per_run_errors(p, y, src)
    info = {
        "method": best,
        "runs": len(set(src)),
        "candidates": {
            k: {"threshold": round(cands[k], 5), "per_run_error_mean": round(float(e.mean()), 3)}
            for k, e in errs.items()
        },
        "mean_p_em_per_run_error_mean": round(float(mean_p.mean()), 3),
    }
    return float(cands[best]), info


def read_fold(out: Path, k: int, folds: list[np.ndarray], sig: dict) -> tuple[dict, dict[str, np.ndarray]] | None:
    """Fold ``k``'s record and held-out predictions as an earlier run wrote them, or None if not done."""
    fj, fz = out / "folds" / f"fold{k}.json", out / "folds" / f"fold{k}.npz"
    if not (fj.is_file() and fz.is_file()):
        return None
    rec = json.loads(fj.read_text())
    check_signature(fj, rec["signature"], sig)
    z = np.load(fz)
    if not np.array_equal(z["idx"], folds[k]):
        raise InputError(f"{fz}: other rows than fold {k + 1}'s; use another --out-dir")
    return rec, {key: z[key] for key in PREDICTIONS}


def inner_threshold(
    k: int, train_idx: np.ndarray, cols: dict, tok: Tokenized, y: dict, args: argparse.Namespace, say: Say
) -> tuple[float, dict, dict]:
    """Fold ``k``'s EM threshold, chosen on a quarter of its training runs by a model trained on the
    rest: the threshold, the inner model's training record, and how the threshold was chosen."""
    src = np.array(cols["source_file"])
    inner = folds_by_source(list(src[train_idx]), 4, 1)
    val = train_idx[inner[0]]
    m, info = train(tok, y, np.setdiff1d(train_idx, val), args, seed=100 + k, say=say, label=f"fold {k + 1} inner")
    pv = predict_rows(m, tok, val, args)
    del m
    threshold, sel = choose_threshold(pv["em"], em_label(cols["aligned"][val], cols["coherent"][val]), src[val])
    return threshold, info, sel


def run_fold(
    k: int,
    folds: list[np.ndarray],
    cols: dict,
    tok: Tokenized,
    y: dict,
    args: argparse.Namespace,
    sig: dict,
    say: Say,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Train fold ``k``'s inner and fold models, judge its held-out runs, write both files."""
    n = len(cols["answer"])
    test = folds[k]
    train_idx = np.setdiff1d(np.arange(n), test)
    src = np.array(cols["source_file"])
    rec: dict = {"fold": k, "signature": sig, "heldout_sources": sorted(set(src[test])), "rows": int(test.size)}
    if args.threshold == "inner":
        threshold, rec["inner_train"], rec["threshold_choice"] = inner_threshold(k, train_idx, cols, tok, y, args, say)
    else:
        threshold = 0.5
    m, info = train(tok, y, train_idx, args, seed=k, say=say, label=f"fold {k + 1}")
    t = time.perf_counter()
    p = predict_rows(m, tok, test, args)
    rec["train"] = info
    rec["predict_seconds"] = round(time.perf_counter() - t, 1)
    rec["em_threshold"] = threshold
    d = args.out_dir / "folds"
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / f"fold{k}.tmp.npz", idx=test, **p)
    (d / f"fold{k}.tmp.npz").rename(d / f"fold{k}.npz")
    write_json_atomic(d / f"fold{k}.json", rec)  # written last: its presence marks the fold done
    return rec, p


def pooled(
    cols: dict, folds_done: dict[int, tuple[dict, dict]], folds: list[np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """All rows' held-out predictions (NaN where not yet predicted), raw and EM-consistent, and the rows held."""
    n = len(cols["answer"])
    raw = {key: np.full(n, np.nan, dtype=np.float32) for key in PREDICTIONS}
    written = {key: np.full(n, np.nan, dtype=np.float32) for key in ("aligned", "coherent", "em")}
    for k, (rec, p) in folds_done.items():
        test = folds[k]
        for key in raw:
            raw[key][test] = p[key]
        written["em"][test] = p["em"]
        written["aligned"][test], written["coherent"][test] = consistent_scores(
            p["aligned"], p["coherent"], p["em"], rec["em_threshold"]
        )
    held = np.concatenate([folds[k] for k in sorted(folds_done)])
    return raw, written, held


def fold_figures(cols: dict, raw: dict, written: dict, held: np.ndarray) -> dict:
    """judge_eval's figures on the written scores, plus the blank head's AUROC and the mean-P(EM) per-run error."""
    from sklearn.metrics import roc_auc_score

    fig = figures(cols, written, held)
    a, c = cols["aligned"][held], cols["coherent"][held]
    blank = np.isnan(a)
    if 0 < blank.sum() < blank.size:
        fig["auroc_blank"] = round(float(roc_auc_score(blank, raw["blank"][held])), 4)
    src = np.array(cols["source_file"])[held]
    e = per_run_errors(raw["em"][held], em_label(a, c), src)
    fig["per_run_em_error_mean_p_median"] = round(float(np.median(e)), 3)
    fig["per_run_em_error_mean_p_max"] = round(float(e.max()), 3)
    return fig


def write_results(
    cols: dict, done: dict, folds: list[np.ndarray], args: argparse.Namespace, sig: dict, say: Say
) -> dict:
    """``judge_finetune.json`` (the ``finetuned`` row over the folds done so far) and the pooled predictions."""
    raw, written, held = pooled(cols, done, folds)
    row = {"name": "finetuned", **fold_figures(cols, raw, written, held)}
    row["seconds_per_1000_cpu"] = None  # judge_eval.py times it on its own CPU, or timings.json has the device's
    result = {
        "judges": [row],
        "complete": len(done) == args.folds,
        "folds_done": sorted(done),
        "signature": sig,
        "rows_total": len(cols["answer"]),
        "split": f"grouped {args.folds}-fold by source_file (seed {args.seed}), the split of benchmarks/judge_eval.py",
        "folds": [
            {k: v for k, v in rec.items() if k != "signature"}
            for _, (rec, _) in sorted(done.items(), key=lambda x: x[0])
        ],
    }
    np.savez(args.out_dir / "judge_finetune_preds.tmp.npz", held=held, data_sha256=str(sig["data_sha256"]), **written)
    (args.out_dir / "judge_finetune_preds.tmp.npz").rename(args.out_dir / "judge_finetune_preds.npz")
    write_json_atomic(args.out_dir / "judge_finetune.json", result)
    say(
        f"  held-out so far ({len(done)}/{args.folds} folds): AUROC {row['auroc_em']} AUPRC {row['auprc_em']} "
        f"Spearman {row['spearman_aligned']}/{row['spearman_coherent']} per-run error median {row['per_run_em_error_median']} "
        f"max {row['per_run_em_error_max']} (mean-P(EM) median {row['per_run_em_error_mean_p_median']} max {row['per_run_em_error_mean_p_max']})"
    )
    return result
