"""The model :mod:`judge_finetune` trains: MiniLM with LoRA adapters and a :class:`FinetunedHead`,
its tokenized rows and length-bucketed batches, its losses, its training and its predictions."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from judge_eval_data import em_label

from eval.judges.distilled import LORA_TARGETS, FinetunedHead, encoder_dir, pool_layers, text_stats

Say = Callable[[str], None]

# --- data --------------------------------------------------------------------------------------


class Tokenized:
    """Every row's (question, answer) pair tokenized once, unpadded, plus its surface statistics."""

    def __init__(self, tokenizer, cols: dict, max_length: int) -> None:
        enc = tokenizer(list(cols["question"]), list(cols["answer"]), truncation="only_second", max_length=max_length)
        self.ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
        self.types = [np.asarray(x, dtype=np.int64) for x in enc["token_type_ids"]]
        self.lengths = np.array([len(x) for x in self.ids])
        self.stats = torch.as_tensor(text_stats(cols["answer"]))
        self.pad = tokenizer.pad_token_id

    def batch(self, idx: np.ndarray, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Rows ``idx`` padded to their longest, on ``device``: the encoder's inputs and the text statistics."""
        width = int(self.lengths[idx].max())
        ids = np.full((len(idx), width), self.pad, dtype=np.int64)
        types = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for r, i in enumerate(idx):
            n = self.lengths[i]
            ids[r, :n], types[r, :n], mask[r, :n] = self.ids[i], self.types[i], 1
        enc = {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(types),
            "attention_mask": torch.from_numpy(mask),
        }
        nb = device.type == "cuda"
        return {k: v.to(device, non_blocking=nb) for k, v in enc.items()}, self.stats[idx].to(device, non_blocking=nb)


def length_batches(
    idx: np.ndarray, lengths: np.ndarray, size: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Batches of ``idx`` with little padding: shuffled (``rng``) into pools of 50 batches, each
    sorted by length, then the batches shuffled; without ``rng``, simply sorted by length."""
    if rng is None:
        order = idx[np.argsort(lengths[idx], kind="stable")]
        return [order[s : s + size] for s in range(0, len(order), size)]
    idx = rng.permutation(idx)
    out = []
    pool = 50 * size
    for s in range(0, len(idx), pool):
        chunk = idx[s : s + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[t : t + size] for t in range(0, len(chunk), size)]
    return [out[i] for i in rng.permutation(len(out))]


def targets(cols: dict) -> dict[str, torch.Tensor]:
    """Every row's training targets: aligned/100 (0 where blank), coherent/100, the EM label, blank aligned."""
    a, c = cols["aligned"], cols["coherent"]
    return {
        "aligned": torch.as_tensor(np.nan_to_num(a, nan=0.0) / 100, dtype=torch.float32),
        "coherent": torch.as_tensor(c / 100, dtype=torch.float32),
        "em": torch.as_tensor(em_label(a, c), dtype=torch.float32),
        "blank": torch.as_tensor(np.isnan(a), dtype=torch.float32),
    }


# --- model -------------------------------------------------------------------------------------


class Finetuned(torch.nn.Module):
    """The encoder with LoRA adapters and the head: pair tokens + text statistics -> four logits."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel

        torch.manual_seed(seed)
        base = AutoModel.from_pretrained(str(encoder_dir()), dtype=torch.float32)
        cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.05, target_modules=LORA_TARGETS)
        self.encoder = get_peft_model(base, cfg)
        width = base.config.hidden_size * (base.config.num_hidden_layers + 1) + text_stats([""]).shape[1]
        self.head = FinetunedHead(width)

    def forward(self, enc: dict[str, torch.Tensor], stats: torch.Tensor) -> torch.Tensor:
        """The four logits of each row in the batch (bf16 autocast on CUDA)."""
        cuda = enc["input_ids"].device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            hidden = self.encoder(**enc, output_hidden_states=True).hidden_states
        feats = pool_layers(hidden, enc["attention_mask"])
        return self.head(torch.cat([feats, stats.float()], dim=1))


def losses(out: torch.Tensor, y: dict[str, torch.Tensor], em_pos_weight: float) -> torch.Tensor:
    """Soft-target cross-entropy on aligned/100 (non-blank rows) and coherent/100, cross-entropy on EM and blank."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    ok = 1 - y["blank"]
    la = (bce(out[:, 0], y["aligned"], reduction="none") * ok).sum() / ok.sum().clamp_min(1)
    lc = bce(out[:, 1], y["coherent"])
    pw = torch.tensor(em_pos_weight, device=out.device)
    le = bce(out[:, 2], y["em"], pos_weight=pw)
    lb = bce(out[:, 3], y["blank"])
    return la + lc + le + 0.5 * lb


# --- training ----------------------------------------------------------------------------------


def optimizer(model: Finetuned, args: argparse.Namespace) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """AdamW over the LoRA factors (no weight decay) and the head, each at its own learning rate; and
    the trained parameters, for gradient clipping."""
    lora = [p for n, p in model.encoder.named_parameters() if p.requires_grad]
    head = list(model.head.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": lora, "lr": args.lr, "weight_decay": 0.0},
            {"params": head, "lr": args.head_lr, "weight_decay": 0.01},
        ],
        fused=torch.device(args.device).type == "cuda",
    )
    return opt, [*lora, *head]


def warmup_then_decay(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """6% linear warm-up, then linear decay to zero at step ``total``."""
    warm = max(1, int(0.06 * total))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))
    )


def train_step(
    model: Finetuned,
    opt: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    tok: Tokenized,
    y: dict[str, torch.Tensor],
    b: np.ndarray,
    args: argparse.Namespace,
) -> torch.Tensor:
    """One optimizer step on rows ``b`` (gradients clipped to norm 1); its loss, left on the device."""
    device = torch.device(args.device)
    enc, stats = tok.batch(b, device)
    yb = {k: v[b].to(device, non_blocking=True) for k, v in y.items()}
    loss = losses(model(enc, stats), yb, args.em_pos_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss


def train(
    tok: Tokenized,
    y: dict[str, torch.Tensor],
    idx: np.ndarray,
    args: argparse.Namespace,
    seed: int,
    say: Say,
    label: str,
) -> tuple[Finetuned, dict]:
    """One model trained on rows ``idx``: its seconds, steps and tokens per second."""
    device = torch.device(args.device)
    model = Finetuned(args, seed).to(device)
    model.train()
    opt, params = optimizer(model, args)
    rng = np.random.default_rng(seed)
    total = max(1, round(args.epochs * math.ceil(len(idx) / args.batch_size)))
    sched = warmup_then_decay(opt, total)
    t0 = last = time.perf_counter()
    step, tokens, padded, run_loss = 0, 0, 0, torch.zeros(())
    while step < total:
        for b in length_batches(idx, tok.lengths, args.batch_size, rng):
            if step >= total:
                break
            loss = train_step(model, opt, params, tok, y, b, args)
            sched.step()
            step += 1
            tokens += int(tok.lengths[b].sum())
            padded += len(b) * int(tok.lengths[b].max())
            # A running mean kept on the device: reading it every step would sync the GPU every step.
            run_loss = loss.detach() if step == 1 else 0.98 * run_loss + 0.02 * loss.detach()
            if time.perf_counter() - last > 30 or step == total:
                last = time.perf_counter()
                el = last - t0
                say(
                    f"    {label}: step {step}/{total} loss {float(run_loss):.4f} {tokens / el:,.0f} tok/s ({el:.0f} s)"
                )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    model.eval()
    info = {
        "rows": int(len(idx)),
        "steps": step,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "padded_tokens_per_s": round(padded / seconds),
        "final_loss": round(float(run_loss), 4),
    }
    return model, info


@torch.inference_mode()
def predict_rows(model: Finetuned, tok: Tokenized, idx: np.ndarray, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """aligned, coherent (0-100, as regressed), P(EM) and P(blank) of rows ``idx``, in ``idx``'s order."""
    device = torch.device(args.device)
    model.eval()
    pos = {int(i): k for k, i in enumerate(idx)}
    out = np.zeros((len(idx), 4), dtype=np.float32)
    for b in length_batches(np.asarray(idx), tok.lengths, 4 * args.batch_size, None):
        enc, stats = tok.batch(b, device)
        out[[pos[int(i)] for i in b]] = torch.sigmoid(model(enc, stats).float()).cpu().numpy()
    return {"aligned": 100 * out[:, 0], "coherent": 100 * out[:, 1], "em": out[:, 2], "blank": out[:, 3]}
