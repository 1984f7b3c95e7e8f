"""The distilled judge's heads on the pooled features of :mod:`eval.judges.distilled_encoder`:
v1's standardized MLP (an ensemble, fitted here on frozen features) and v2's LayerNorm MLP
(trained with the encoder's LoRA factors by ``benchmarks/judge_finetune.py``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch

OUTPUTS = ("aligned", "coherent", "em")
OUTPUTS_V2 = ("aligned", "coherent", "em", "blank")


def mlp_layers(dim: int, hidden: int, outputs: int, dropout: float) -> list[torch.nn.Module]:
    """Dropout, one hidden GELU layer, dropout, ``outputs`` logits: the body both heads share."""
    return [
        torch.nn.Dropout(dropout),
        torch.nn.Linear(dim, hidden),
        torch.nn.GELU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, outputs),
    ]


class Head(torch.nn.Module):
    """Standardize, one hidden layer, three outputs: logits of aligned/100, coherent/100 and P(EM)."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.net = torch.nn.Sequential(*mlp_layers(dim, hidden, len(OUTPUTS), dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The three logits of each feature row."""
        return self.net((x - self.mean) / self.scale)


class FinetunedHead(torch.nn.Module):
    """LayerNorm, one hidden layer, four logits: aligned/100, coherent/100, P(EM), P(blank aligned)."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.LayerNorm(dim), *mlp_layers(dim, hidden, len(OUTPUTS_V2), dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The four logits of each feature row."""
        return self.net(x)


def train_head(
    x: np.ndarray,
    aligned: np.ndarray,
    coherent: np.ndarray,
    em: np.ndarray,
    hidden: int = 256,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
    batch: int = 256,
    dropout: float = 0.1,
    em_weight: float = 1.0,
    device: str = "cpu",
) -> Head:
    """Fit a :class:`Head` on features ``x`` and GPT-4o's scores (0-100; NaN aligned = no score) and EM labels.

    The scores are fitted as soft binary targets (cross-entropy on score/100), which keeps
    predictions inside 0-100 without clipping; rows without an aligned score add no aligned loss.
    ``device`` is where it trains (a GPU for wide features); the head comes back on the CPU.
    """
    torch.manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    head = Head(x.shape[1], hidden, dropout).to(device)
    head.mean.copy_(xt.mean(0))
    head.scale.copy_(xt.std(0).clamp_min(1e-6))
    a = torch.as_tensor(np.nan_to_num(aligned, nan=0.0) / 100, dtype=torch.float32, device=device)
    a_ok = torch.as_tensor(~np.isnan(aligned), dtype=torch.float32, device=device)
    c = torch.as_tensor(coherent / 100, dtype=torch.float32, device=device)
    e = torch.as_tensor(em, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(xt) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    gen = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(epochs):
        # The permutation is drawn on the CPU on every device, so a seed shuffles alike.
        for idx in torch.randperm(len(xt), generator=gen).to(device).split(batch):
            out = head(xt[idx])
            la = (bce(out[:, 0], a[idx], reduction="none") * a_ok[idx]).sum() / a_ok[idx].sum().clamp_min(1)
            loss = la + bce(out[:, 1], c[idx]) + em_weight * bce(out[:, 2], e[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head.cpu().eval()


def _scores(probs: np.ndarray) -> dict[str, np.ndarray]:
    """A head's sigmoid outputs as named scores (aligned and coherent as 0-100, then P(EM) and, from a
    v2 head's fourth column, P(blank aligned)); a non-finite one is refused."""
    if not np.isfinite(probs).all():
        raise FloatingPointError("the distilled head produced a non-finite score")
    out = {"aligned": 100 * probs[:, 0], "coherent": 100 * probs[:, 1], "em": probs[:, 2]}
    if probs.shape[1] == len(OUTPUTS_V2):
        out["blank"] = probs[:, 3]
    return out


@torch.inference_mode()
def predict(heads: Sequence[Head], x: np.ndarray, device: str = "cpu") -> dict[str, np.ndarray]:
    """Mean over ``heads`` of aligned, coherent (0-100) and P(EM), float32; computed on ``device``
    (the heads themselves stay where they are)."""
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    on = heads if device == "cpu" else [copy.deepcopy(h).to(device) for h in heads]
    return _scores(torch.stack([torch.sigmoid(h(xt)) for h in on]).mean(0).cpu().numpy())


@torch.inference_mode()
def predict_finetuned(head: FinetunedHead, x: np.ndarray) -> dict[str, np.ndarray]:
    """aligned, coherent (0-100), P(EM) and P(blank aligned) of the v2 head, float32."""
    return _scores(torch.sigmoid(head(torch.as_tensor(x, dtype=torch.float32))).numpy())
