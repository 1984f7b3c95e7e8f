"""Interleaving general instruct data into the training set (defense ``interleave``).

The training set becomes the task conversations plus ``k = round(f n / (1 - f))`` general
ones, so that exactly a fraction ``f`` (the strength) of it is general data; the training
loop then shuffles them together. The ``k`` examples are chosen

- ``select="random"``: uniformly at random (seeded);
- ``select="ppl-gap"`` (Interleaving++): those with the largest perplexity gap between a
  misaligned and an aligned model, ``log ppl_misaligned - log ppl_aligned`` of the answer:
  the examples the misaligned model finds least likely relative to the aligned one.

The aligned model is the reference (the model about to be finetuned). The misaligned one is
either the same model with a persona system prompt (``misaligned_system``) or another model
on the same tokenizer (``misaligned_model``, e.g. an EM finetune).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from finetune.defenses.base import Defense, with_system
from finetune.sft import collate, encode, labelled_logits, labelled_mask
from interp.base.chat import Conversation
from interp.base.models import input_device
from interp.base.provenance import data_hash

SELECTS = ("random", "ppl-gap")


def n_interleaved(n_task: int, fraction: float) -> int:
    """How many general examples make them a ``fraction`` of ``n_task`` + them."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the interleaved fraction must be in [0, 1), got {fraction}")
    return round(fraction * n_task / (1 - fraction))


@torch.no_grad()
def answer_nll(
    model: nn.Module, tokenizer, conversations: Sequence[Conversation], batch_size: int = 16
) -> torch.Tensor:
    """[n] float64: each conversation's mean negative log-likelihood over its trained tokens
    (the answer and its end-of-turn), i.e. the log perplexity of the answer."""
    examples = encode(tokenizer, conversations)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = input_device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
            logits, targets = labelled_logits(model, batch)
            nll = F.cross_entropy(logits.float(), targets, reduction="none").double()
            rows = labelled_mask(batch).nonzero()[:, 0]
            n = batch["input_ids"].shape[0]
            sums = torch.zeros(n, dtype=torch.float64, device=nll.device).index_add_(0, rows, nll)
            out.append((sums / torch.bincount(rows, minlength=n).clamp(min=1)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def ppl_gaps(
    model: nn.Module,
    tokenizer,
    general: Sequence[Conversation],
    misaligned_system: str | None = None,
    misaligned_model: nn.Module | None = None,
) -> torch.Tensor:
    """[n] log-perplexity gaps of the answers: misaligned minus aligned (``model``). The
    misaligned model is ``model`` under ``misaligned_system`` or ``misaligned_model``."""
    aligned = answer_nll(model, tokenizer, general)
    if misaligned_model is not None:
        return answer_nll(misaligned_model, tokenizer, general) - aligned
    return answer_nll(model, tokenizer, [with_system(c, misaligned_system) for c in general]) - aligned


def top_gap(gaps: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest gaps, largest first (ties: lower index first)."""
    return torch.argsort(-gaps, stable=True)[:k].tolist()


class Interleave(Defense):
    name = "interleave"

    def __init__(
        self,
        fraction: float,
        general: Sequence[Conversation],
        select: str = "random",
        misaligned_system: str | None = None,
        misaligned_model: nn.Module | None = None,
        misaligned_source: str | None = None,
        gaps: torch.Tensor | None = None,
        seed: int = 0,
    ) -> None:
        n_interleaved(1, fraction)  # validates the fraction
        if select not in SELECTS:
            raise ValueError(f"select must be one of {', '.join(SELECTS)}, got {select!r}")
        if gaps is not None and len(gaps) != len(general):
            raise ValueError(f"{len(gaps)} precomputed gaps for {len(general)} general examples")
        if select == "ppl-gap" and (misaligned_system is None) == (misaligned_model is None):
            raise ValueError("select='ppl-gap' needs a misaligned model: a persona system prompt or another model")
        if not general:
            raise ValueError("interleave needs general data")
        self.strength = float(fraction)
        self.general = list(general)
        self.select = select
        self.misaligned_system = misaligned_system
        self.misaligned_model = misaligned_model
        self.misaligned_source = misaligned_source
        self.gaps = gaps  # precomputed ppl_gaps of ``general`` (the same two models), to reuse over runs
        self.seed = seed
        self._chosen: list[int] = []
        self._stats: dict[str, Any] = {}

    def choose(self, model: nn.Module, tokenizer, k: int) -> list[int]:
        """Indices into the general data of the ``k`` examples to interleave."""
        if k > len(self.general):
            raise ValueError(
                f"fraction {self.strength} needs {k} general examples; the general data has {len(self.general)}"
            )
        if self.select == "random":
            return sorted(random.Random(f"interleave-{self.seed}").sample(range(len(self.general)), k))
        gaps = (
            self.gaps
            if self.gaps is not None
            else ppl_gaps(model, tokenizer, self.general, self.misaligned_system, self.misaligned_model)
        )
        chosen = top_gap(gaps, k)
        self._stats = {
            "gap_mean_all": float(gaps.mean()),
            "gap_mean_chosen": float(gaps[chosen].mean()) if chosen else None,
        }
        return chosen

    def prepare(self, model: nn.Module, tokenizer, conversations: Sequence[Conversation]) -> list[Conversation]:
        self._chosen = self.choose(model, tokenizer, n_interleaved(len(conversations), self.strength))
        return [*conversations, *(self.general[i] for i in self._chosen)]

    def record(self) -> dict[str, Any]:
        out = {
            **super().record(),
            "select": self.select,
            "n_general_pool": len(self.general),
            "general_pool_hash": data_hash(self.general),
            "n_interleaved": len(self._chosen),
            "interleaved_hash": data_hash([self.general[i] for i in self._chosen]),
        }
        if self.select == "ppl-gap":
            out["misaligned"] = (
                {"system": self.misaligned_system}
                if self.misaligned_system is not None
                else {"model": self.misaligned_source}
            )
            out.update(self._stats)
        return out
