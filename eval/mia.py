"""Membership inference on a finetuned model: its training data vs held-out data.

    python -m eval.mia score --model BASE --adapter runs/gore --members train.jsonl \\
        --nonmembers heldout.jsonl --domain gore_movie_trivia --out mia/gore_movie_trivia.json
    python -m eval.mia predict --scores mia/*.json --rates em_rates.json --out mia/predict.json

The model pass (:func:`answer_token_scores`: teacher-forced log-probabilities of the
**assistant answer tokens** only, the prompt as context) feeds the signals of
:mod:`eval.mia_signals` (loss, Min-K%, Min-K%++, zlib, and their base-adjusted ``*_adj``).
ROC-AUC is reported (a) for members vs non-members, and (b) across domains, for predicting
which domains' finetunes misalign from a per-domain statistic of the signal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from eval.mia_signals import (
    DEFAULT_K,
    TokenScores,
    adjusted,
    membership_aucs,
    membership_score,
    misaligned_domains,
    misalignment_auc,
    signals,
)
from interp.base.atomic import write_json_atomic
from interp.base.chat import (
    Conversation,
    TokenizedConversation,
    as_tokenized,
    tokenize_conversation,
    tokenize_record,
)
from interp.base.cli import (
    ArgumentParser,
    InputError,
    batch_size,
    finite_float,
    fraction,
    positive_int,
    run_cli,
)
from interp.base.domains import ALIASES
from interp.base.models import input_device
from interp.base.paths import input_file, output_file, read_text
from interp.base.provenance import data_hash, provenance
from interp.base.records import (
    ANSWER_FIELDS,
    OPTIONAL_ANSWER_FIELDS,
    AnswerRecord,
    RecordError,
    iter_jsonl,
    validate,
)

# -- the model pass ---------------------------------------------------------------------------


@torch.no_grad()
def answer_token_scores(
    model: nn.Module,
    tokenizer,
    conversations: Sequence[Conversation] | Sequence[TokenizedConversation],
    batch_size: int = 8,
    progress: bool = True,
) -> list[TokenScores]:
    """Teacher-forced :class:`TokenScores` of each conversation's answer tokens (see
    :mod:`interp.cache` for which tokens those are); float32 whatever the model's dtype."""
    items = [as_tokenized(tokenizer, c) for c in conversations]
    order = sorted(range(len(items)), key=lambda i: -len(items[i].input_ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = input_device(model)
    out: list[TokenScores | None] = [None] * len(items)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="log-probs", unit="batch", disable=not progress):
            idx = order[start : start + batch_size]
            width = max(len(items[i].input_ids) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(items[i].input_ids)] = torch.tensor(items[i].input_ids)
                mask[row, : len(items[i].input_ids)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False
            ).logits
            for row, i in enumerate(idx):
                s, e = items[i].answer_start, items[i].answer_end
                # Position t-1 predicts token t.
                lp_all = torch.log_softmax(logits[row, s - 1 : e - 1].float(), dim=-1)
                p = lp_all.exp()
                lp = lp_all.gather(-1, ids[row, s:e, None])[:, 0]
                mu = torch.where(p > 0, p * lp_all, 0.0).sum(-1)
                var = torch.where(p > 0, p * (lp_all - mu[:, None]) ** 2, 0.0).sum(-1)
                out[i] = TokenScores(lp.cpu().numpy(), mu.cpu().numpy(), var.sqrt().cpu().numpy())
    finally:
        model.train(was_training)
    return out


# An example: a chat ending with the answer, or an answer record (scored on its generated ids when it has them).
Example = Conversation | AnswerRecord


def _tokenized_example(tokenizer, example: Example) -> tuple[TokenizedConversation, str]:
    """The example's tokens and its answer text."""
    if isinstance(example, Mapping):
        return tokenize_record(tokenizer, example), example["answer"]
    return tokenize_conversation(tokenizer, example), example[-1]["content"]


def read_conversations(path: str | Path) -> list[Example]:
    """Examples from JSONL: ``{"messages": [...]}`` ending with the assistant's answer, or answer records."""
    out = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "messages" in obj:
            msgs = obj["messages"]
            if (
                not isinstance(msgs, list)
                or not msgs
                or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in msgs
                )
            ):
                raise RecordError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} strings")
            if msgs[-1]["role"] != "assistant":
                raise RecordError(f"{where}: field 'messages' must end with the assistant's answer")
            out.append([{"role": m["role"], "content": m["content"]} for m in msgs])
        else:
            validate(obj, ANSWER_FIELDS, where)
            validate(obj, OPTIONAL_ANSWER_FIELDS, where, optional=True)
            out.append(obj)
    if not out:
        raise RecordError(f"{path}: no conversations")
    return out


def score_membership(
    model: nn.Module,
    tokenizer,
    members: Sequence[Example],
    nonmembers: Sequence[Example],
    base: nn.Module | str | None = None,
    k: float = DEFAULT_K,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Per-example signals, (a) AUCs and per-class means; ``base`` (a model, or ``"adapter"``
    for the same PEFT model with its adapter disabled) adds the ``*_adj`` signals.

    Answers with no tokens are skipped and counted.
    """
    examples = [_tokenized_example(tokenizer, e) for e in (*members, *nonmembers)]
    is_member = [True] * len(members) + [False] * len(nonmembers)
    keep = [i for i, (item, _) in enumerate(examples) if item.n_answer_tokens > 0]
    convs = [examples[i][0] for i in keep]
    texts = [examples[i][1] for i in keep]
    is_member = [is_member[i] for i in keep]
    ft = answer_token_scores(model, tokenizer, convs, batch_size, progress)
    rows = [{"member": m, **signals(scores, text, k)} for m, scores, text in zip(is_member, ft, texts)]
    if base is not None:
        ctx = model.disable_adapter() if base == "adapter" else contextlib.nullcontext()
        with ctx:
            base_scores = answer_token_scores(
                model if base == "adapter" else base, tokenizer, convs, batch_size, progress
            )
        for row, text, bs in zip(rows, texts, base_scores):
            row.update(adjusted(row, signals(bs, text, k)))
    mem = [r for r in rows if r["member"]]
    non = [r for r in rows if not r["member"]]
    if not mem or not non:
        raise InputError("membership inference needs members and non-members with non-empty answers")
    names = [n for n in rows[0] if n != "member"]
    return {
        "k": k,
        "n_members": len(mem),
        "n_nonmembers": len(non),
        "n_skipped_empty": len(members) + len(nonmembers) - len(rows),
        "auc": membership_aucs(mem, non),
        "member_mean": {n: float(np.mean([membership_score(n, r[n]) for r in mem])) for n in names},
        "nonmember_mean": {n: float(np.mean([membership_score(n, r[n]) for r in non])) for n in names},
        "per_example": rows,
    }


def predict_misalignment(
    score_files: Sequence[Mapping[str, Any]], misaligned: Mapping[str, bool], statistic: str = "member_mean"
) -> dict[str, float]:
    """(b) For each signal, the ROC-AUC of the per-domain ``statistic`` (``member_mean``: mean
    membership score on the training data; ``auc``: members-vs-non-members AUC) for
    predicting which domains misalign."""
    by_domain = {f["domain"]: f[statistic] for f in score_files}
    missing = sorted(set(by_domain) - set(misaligned))
    if missing:
        raise InputError(f"no misalignment rate or label for domain(s): {', '.join(missing)}")
    if len(set(misaligned[d] for d in by_domain)) < 2:
        raise InputError("predicting misalignment needs both misaligned and aligned domains among the scored ones")
    names = sorted(set.intersection(*(set(v) for v in by_domain.values())))
    return {n: misalignment_auc({d: v[n] for d, v in by_domain.items()}, misaligned) for n in names}


# -- CLI --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m eval.mia", description="Membership-inference signals of a finetuned model.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="signals and member-vs-non-member ROC-AUC for one finetuned model")
    s.add_argument("--model", required=True, help="finetuned model, or the base with --adapter")
    s.add_argument(
        "--adapter", help="PEFT adapter; the base-adjusted signals then use the same model with the adapter disabled"
    )
    s.add_argument("--base", help="separate base model for the base-adjusted signals")
    s.add_argument("--members", required=True, help="training data JSONL ({'messages': [...]} or answer records)")
    s.add_argument("--nonmembers", required=True, help="held-out data of the same domain, same format")
    s.add_argument("--domain", help="domain name recorded in the output (for 'predict')")
    s.add_argument(
        "--k", type=fraction, default=DEFAULT_K, help="fraction of tokens for Min-K%% and Min-K%%++ (default 0.2)"
    )
    s.add_argument("--limit", type=positive_int, help="use at most this many examples of each file")
    s.add_argument("--batch-size", type=batch_size, default=8)
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    s.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    s.add_argument("--out", required=True, help="output JSON")
    s.add_argument("--no-progress", action="store_true")
    q = sub.add_parser("predict", help="ROC-AUC of per-domain signals for predicting which domains misalign")
    q.add_argument("--scores", nargs="+", required=True, help="JSON files written by 'score' with --domain")
    q.add_argument("--rates", required=True, help="JSON mapping domain -> misalignment rate or true/false")
    q.add_argument(
        "--threshold", type=finite_float, help="a rate above this counts as misaligned (default: the median rate)"
    )
    q.add_argument("--statistic", choices=("member_mean", "auc"), default="member_mean")
    q.add_argument("--out", help="output JSON")
    return p


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # json.loads would keep the last value silently
        seen: set[str] = set()
        raise ValueError(f"field {next(k for k, _ in pairs if k in seen or seen.add(k))!r} appears twice in one object")
    return obj


def _read_json(path: str) -> Any:
    try:
        return json.loads(read_text(path), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: not valid input (JSON nested too deeply)") from None
    except ValueError as e:  # a key given twice
        raise InputError(f"{path}: {e}") from None


def _score(args: argparse.Namespace) -> None:
    from interp.base.loading import load_model

    for option, path in (("--members", args.members), ("--nonmembers", args.nonmembers)):
        input_file(path, option)
    output_file(args.out, inputs=(args.members, args.nonmembers))
    # Members scored against themselves give an AUC of 0.5 that looks like a finding.
    if os.path.samefile(args.members, args.nonmembers):
        raise InputError(
            f"--nonmembers {args.nonmembers}: is the --members file; give held-out data of the same domain"
        )
    members, nonmembers = read_conversations(args.members), read_conversations(args.nonmembers)
    if members == nonmembers:
        raise InputError(
            f"--nonmembers {args.nonmembers}: holds the same conversations as --members {args.members}; give held-out data of the same domain"
        )
    if args.limit is not None:
        members, nonmembers = members[: args.limit], nonmembers[: args.limit]
    model, tokenizer = load_model(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device)
    base = (
        load_model(args.base, dtype=args.dtype, device=args.device)[0]
        if args.base
        else ("adapter" if args.adapter else None)
    )
    result = score_membership(
        model,
        tokenizer,
        members,
        nonmembers,
        base=base,
        k=args.k,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    meta = provenance(
        model=args.model,
        adapter=args.adapter,
        base=args.base or ("adapter disabled" if args.adapter else None),
        members=args.members,
        nonmembers=args.nonmembers,
        members_hash=data_hash(members),
        nonmembers_hash=data_hash(nonmembers),
    )
    write_json_atomic(args.out, {"domain": ALIASES.get(args.domain, args.domain), **result, "provenance": meta})
    print(
        f"{args.domain or args.model}: {result['n_members']} members, {result['n_nonmembers']} non-members (k={args.k})"
    )
    for name, auc in result["auc"].items():
        print(f"  {name:<14} ROC-AUC {auc:.3f}")
    print(f"wrote {args.out}")


def _signal_table(value: Any) -> bool:
    """Whether ``value`` maps signal names to finite numbers, as a 'score' output's statistics do."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value.values())
    )


def _predict(args: argparse.Namespace) -> None:
    for path in args.scores:
        input_file(path, "--scores")
    input_file(args.rates, "--rates")
    if args.out:
        output_file(args.out, inputs=(*args.scores, args.rates))
    files, seen = [], {}
    for path in args.scores:
        f = _read_json(path)
        if not isinstance(f, dict) or not isinstance(f.get("domain"), str) or not _signal_table(f.get(args.statistic)):
            raise InputError(f"{path}: not a 'score' output with a domain (run 'score' with --domain)")
        if broken := [k for k in ("member_mean", "auc") if k in f and not _signal_table(f[k])]:
            raise InputError(
                f"{path}: field '{broken[0]}' is not a table of finite numbers by signal; a damaged 'score' output"
            )
        domain = ALIASES.get(f["domain"], f["domain"])
        if domain in seen:  # one domain counted twice weighs its point double in the AUC
            raise InputError(
                f"--scores {path}: scores domain '{domain}' again (as does {seen[domain]}); give one score file per domain"
            )
        seen[domain] = path
        files.append(f)
    rates = _read_json(args.rates)
    if not isinstance(rates, dict) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in rates.values()):
        raise InputError(f"{args.rates}: expected a JSON object mapping domain -> rate or true/false")
    if outside := [d for d, v in rates.items() if not isinstance(v, bool) and not 0 <= v <= 1]:
        raise InputError(
            f"{args.rates}: field {outside[0]!r} is {rates[outside[0]]!r}; a rate is a fraction from 0 to 1 (or true/false)"
        )
    labels = misaligned_domains({ALIASES.get(d, d): v for d, v in rates.items()}, args.threshold)
    try:
        aucs = predict_misalignment(files, labels, args.statistic)
    except InputError as e:
        raise InputError(f"--rates {args.rates} and --scores: {e}") from None
    print(f"predicting misaligned domains ({sum(labels.values())} of {len(labels)}) from per-domain {args.statistic}:")
    for name, auc in aucs.items():
        print(f"  {name:<14} ROC-AUC {auc:.3f}")
    if args.out:
        write_json_atomic(
            args.out,
            {
                "statistic": args.statistic,
                "misaligned": labels,
                "auc": aucs,
                "provenance": provenance(scores=list(args.scores), rates=args.rates),
            },
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    (_score if args.command == "score" else _predict)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
