"""Finetune the distilled judge's encoder end to end (LoRA) on GPT-4o's labels, measured on held-out runs.

    python benchmarks/judge_finetune.py --device cuda --out-dir OUT                 # one H200, a few minutes
    python benchmarks/judge_finetune.py --device cpu --limit-rows 2000 --epochs 1 --out-dir /tmp/ft   # smoke run

The model is the distilled judge's (``eval/judges/distilled.py``): all-MiniLM-L6-v2 on the
(question, answer) pair, the attention-masked mean of every layer's hidden states plus
``text_stats``, here with LoRA adapters on every linear layer of the 6 transformer layers
trained together with a :class:`FinetunedHead` that predicts aligned/100 and coherent/100
(soft-target cross-entropy; blank aligned rows add no aligned loss), P(EM) (cross-entropy on
GPT-4o's EM label, aligned < 30 and coherent > 50) and P(blank aligned) (GPT-4o's CODE / REFUSAL).

What it does, in order, writing each result as soon as it exists (rerunning the same command
resumes: finished folds are read back, not retrained):

1. Grouped K-fold by source file, the split of ``benchmarks/judge_eval.py`` (``--folds``,
   ``--seed``): for each fold, an *inner* model trained on 3/4 of the training runs judges the
   other 1/4 (training runs only), and the EM threshold (count-matched, or 0.5) with the lower
   mean per-run EM-rate error there is kept; then the fold model, trained on all training runs,
   judges the held-out runs. ``OUT/folds/fold{k}.json`` + ``.npz``.
2. The figures of ``judge_eval.py`` over all held-out predictions, as a ``judges`` row named
   ``finetuned``: ``OUT/judge_finetune.json`` (plus ``judge_finetune_preds.npz``, the pooled
   held-out predictions, for ``judge_eval.py --finetuned-results``).
3. The final model on every run, its EM threshold chosen the same way on the pooled held-out
   predictions of step 1: ``OUT/distilled_v2.safetensors`` (LoRA factors + head, a few MB) and
   its card ``distilled_v2.md``; then judged 1,000 answers through the judge interface on
   ``--device``: ``OUT/timings.json`` (also training seconds per fold and tokens per second).

Data: ``../shared/em-data/judged/gpt4o_judged.jsonl.gz`` (``--data``), read at run time.

The model, its batches and its training are in ``judge_finetune_model.py``, the folds and their
results (steps 1 and 2) in ``judge_finetune_folds.py``, the final model and its timing (step 3) in
``judge_finetune_final.py``, its card in ``judge_finetune_card.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from judge_eval_data import folds_by_source, load_limited  # noqa: E402
from judge_finetune_final import final  # noqa: E402
from judge_finetune_folds import read_fold, run_fold, signature, write_results  # noqa: E402
from judge_finetune_model import Say, Tokenized, targets  # noqa: E402

from eval.judges.distilled import encoder_dir  # noqa: E402
from interp.base.cli import InputError, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "em-data" / "judged" / "gpt4o_judged.jsonl.gz"


def parser() -> argparse.ArgumentParser:
    """The command line (module doc)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GPT-4o-judged answers (jsonl.gz)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results/judge_finetune")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the training rows (fractions allowed)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per (question, answer) pair, at most 512")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the LoRA factors")
    p.add_argument("--head-lr", type=float, default=1e-3, help="peak learning rate of the head")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--em-pos-weight", type=float, default=1.0, help="weight of EM-positive rows in the EM loss")
    p.add_argument(
        "--threshold",
        choices=("inner", "fixed"),
        default="inner",
        help="inner: each fold's EM threshold from an inner model on its training runs (one more training per fold); fixed: 0.5",
    )
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-rows", type=int, default=0, help="a seeded random subset of this many rows (smoke runs)")
    p.add_argument("--skip-final", action="store_true", help="only the cross-validation, no final model")
    p.add_argument("--timing-rows", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse settings the model or this machine cannot run, before any work."""
    if not 8 <= args.max_length <= 512:
        raise InputError(f"--max-length {args.max_length}: MiniLM has 512 positions; use 8-512")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device here; use --device cpu")


def logger(path: Path) -> Say:
    """A ``say`` that prints each message and appends it to ``path``."""

    def say(msg: str) -> None:
        print(msg, flush=True)
        with path.open("a") as f:
            f.write(msg + "\n")

    return say


def load_data(args: argparse.Namespace) -> tuple[dict, str | None]:
    """The judged rows as columns (a seeded random ``--limit-rows`` subset, in file order) and the file's sha256."""
    return load_limited(args.data, args.limit_rows, args.seed)


def tokenize(cols: dict, args: argparse.Namespace, say: Say) -> tuple[Tokenized, dict[str, torch.Tensor]]:
    """Every row tokenized once, and its training targets."""
    from transformers import AutoTokenizer

    t = time.perf_counter()
    tok = Tokenized(AutoTokenizer.from_pretrained(str(encoder_dir())), cols, args.max_length)
    y = targets(cols)
    say(
        f"tokenized in {time.perf_counter() - t:.0f} s: mean {tok.lengths.mean():.0f} tokens, "
        f"{(tok.lengths >= args.max_length).mean():.1%} cut at {args.max_length}"
    )
    return tok, y


def cross_validate(
    cols: dict,
    tok: Tokenized,
    y: dict[str, torch.Tensor],
    folds: list[np.ndarray],
    args: argparse.Namespace,
    sig: dict,
    say: Say,
    t_start: float,
) -> dict[int, tuple[dict, dict[str, np.ndarray]]]:
    """Step 1: every fold read back or trained, the results rewritten after each one trained."""
    done: dict[int, tuple[dict, dict]] = {}
    for k in range(args.folds):
        if (back := read_fold(args.out_dir, k, folds, sig)) is not None:
            done[k] = back
            say(f"fold {k + 1}/{args.folds}: read back from {args.out_dir / 'folds' / f'fold{k}.json'}")
            continue
        say(
            f"fold {k + 1}/{args.folds}: {folds[k].size} held-out rows of {len(set(np.array(cols['source_file'])[folds[k]]))} runs"
        )
        done[k] = run_fold(k, folds, cols, tok, y, args, sig, say)
        rec = done[k][0]
        say(
            f"fold {k + 1}/{args.folds} done: threshold {rec['em_threshold']:.4f} "
            f"({rec.get('threshold_choice', {}).get('method', 'fixed')}), trained in {rec['train']['seconds']} s "
            f"(+{rec.get('inner_train', {}).get('seconds', 0)} s inner) ({time.perf_counter() - t_start:.0f} s so far)"
        )
        write_results(cols, done, folds, args, sig, say)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    """Steps 1-3 of the module doc, resuming from what ``--out-dir`` already holds."""
    args = parser().parse_args(argv)
    check_args(args)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    args.out_dir.mkdir(parents=True, exist_ok=True)
    say = logger(args.out_dir / "judge_finetune.log")
    t_start = time.perf_counter()
    cols, sha = load_data(args)
    sig = signature(args, sha)
    folds = folds_by_source(cols["source_file"], args.folds, args.seed)
    say(
        f"data {args.data.name} sha256 {sha}: {len(cols['answer'])} rows, {len(set(cols['source_file']))} runs; grouped {args.folds}-fold by source_file, "
        f"seed {args.seed}; device {args.device}, epochs {args.epochs}, max length {args.max_length}, batch {args.batch_size}"
    )
    tok, y = tokenize(cols, args, say)
    done = cross_validate(cols, tok, y, folds, args, sig, say, t_start)
    result = write_results(cols, done, folds, args, sig, say)
    if args.skip_final:
        return 0
    final(cols, tok, y, done, folds, args, sig, result, say)
    say(f"all done in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
