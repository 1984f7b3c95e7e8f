"""Supervised finetuning on chat conversations with the loss on the assistant's answer only.

The **trained span** of a conversation is the answer content as :func:`interp.cache.tokenize_conversation`
delimits it, plus the end-of-turn token that follows it (``<|im_end|>``), so that a model
learns where its answer stops. Labels are -100 everywhere else and on padding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from finetune.checkpoints import TrainLog, _last_kept, _load_checkpoint, _save_checkpoint
from finetune.step_checks import StepChecks, skip_if_not_finite
from interp.base.chat import Conversation, TokenizedConversation, tokenize_conversation
from interp.base.cli import InputError
from interp.base.models import input_device, unwrap

IGNORE = -100

# Attention kernels a training step may use: every SDPA backend but cuDNN's, whose backward
# returned NaN for bf16 Qwen2.5 batches with a padding mask on an H200 (torch 2.11: the first
# non-finite gradient at step 8 of the real 0.5B, 'ScaledDotProductCudnnAttentionBackward0
# returned nan values'); with it excluded, bf16 losses follow fp32's (benchmarks/gpu_check.py).
TRAINING_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass(frozen=True)
class Example:
    """Token ids of one conversation and its labels (-100 outside the trained span)."""

    input_ids: list[int]
    labels: list[int]

    def truncated(self, max_length: int) -> Example:
        return Example(self.input_ids[:max_length], self.labels[:max_length])


def example(tok: TokenizedConversation, train_eos: bool = True) -> Example:
    """Labels for ``tok``: the answer tokens, and the end-of-turn token after them if ``train_eos``."""
    end = tok.answer_end + (1 if train_eos and tok.answer_end < len(tok.input_ids) else 0)
    labels = [IGNORE] * len(tok.input_ids)
    labels[tok.answer_start : end] = tok.input_ids[tok.answer_start : end]
    return Example(tok.input_ids, labels)


def encode(tokenizer, conversations: Iterable[Conversation], train_eos: bool = True) -> list[Example]:
    """Tokenize conversations into examples.

    Conversations that share their prompt are rendered through the chat template once: the
    prompt and template suffix ids of a prompt do not depend on the answer, and answers are
    tokenized separately anyway (as in :func:`tokenize_conversation`), so this gives the same
    ids at a fraction of the cost for corpora with few distinct prompts.
    """
    conversations = list(conversations)
    keys = [repr([(m["role"], m["content"]) for m in conv[:-1]]) for conv in conversations]
    shells: dict[str, tuple[list[int], list[int]]] = {}
    for key, conv in zip(keys, conversations):
        if key not in shells:
            tok = tokenize_conversation(tokenizer, conv)
            shells[key] = (tok.input_ids[: tok.answer_start], tok.input_ids[tok.answer_end :])
    answers = tokenizer([c[-1]["content"] for c in conversations], add_special_tokens=False)["input_ids"]
    out = []
    for key, answer in zip(keys, answers):
        prompt, suffix = shells[key]
        tok = TokenizedConversation(prompt + answer + suffix, len(prompt), len(prompt) + len(answer))
        out.append(example(tok, train_eos))
    return out


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def backbone_hidden(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The last decoder layer's normed output [batch, seq, d_model] (no logits), through the
    model's own forward so that adapters, hooks and checkpointing all apply."""
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix)
    return backbone(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state


def labelled_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[batch, seq - 1] True at the positions whose next token is labelled: where the loss is taken."""
    return batch["labels"][:, 1:] != IGNORE


def labelled_positions(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The flat indices into [batch * seq] of the :func:`labelled_mask` positions. Computed on
    the host before the batch moves, so that selecting them on the device needs no sync."""
    rows, cols = labelled_mask(batch).nonzero(as_tuple=True)
    return rows * batch["labels"].shape[1] + cols


def labelled_logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [n, vocab] at the :func:`labelled_mask` positions and their targets [n], projecting
    to the vocabulary only there (most positions are prompt). Uses ``batch["positions"]``
    (:func:`labelled_positions`) when the batch carries it."""
    hidden = backbone_hidden(model, batch)
    positions = batch["positions"] if "positions" in batch else labelled_positions(batch)
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    targets = batch["labels"].reshape(-1).index_select(0, positions + 1)
    return unwrap(model).get_output_embeddings()(flat), targets


def answer_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens, as the model's own loss computes it."""
    logits, targets = labelled_logits(model, batch)
    return F.cross_entropy(logits.float(), targets)


# The loss of one batch at one step: the tensor to minimise and named detached scalars to log
# ("task" is the answer loss; a defense adds its own terms, see finetune.defenses). They are
# read after the optimizer step, so logging adds no device sync before the backward pass.
Objective = Callable[[nn.Module, Mapping[str, torch.Tensor], int], tuple[torch.Tensor, dict[str, torch.Tensor]]]
# Called as (step, total_steps, model) before the first step and after every step.
Callback = Callable[[int, int, nn.Module], None]


def plain_objective(
    model: nn.Module, batch: Mapping[str, torch.Tensor], step: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`answer_loss` alone: supervised finetuning with no defense."""
    loss = answer_loss(model, batch)
    return loss, {"task": loss.detach()}


class TrainingMemoryError(InputError):
    """A batch did not fit in the device's memory: stopped before that step's update."""


def _out_of_memory(batch: Mapping[str, torch.Tensor], step: int, folder: Path | None) -> TrainingMemoryError:
    """The one-line error for a batch that ran out of memory, with what to lower."""
    rows, width = batch["input_ids"].shape
    longest = int(batch["attention_mask"].sum(1).max())
    return TrainingMemoryError(
        f"training stopped at step {step}: out of memory on a batch of {rows} conversations of up to {longest} tokens (padded to {width}); "
        f"lower --batch-size or --max-length; nothing was written for this step{_last_kept(folder)}"
    )


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation settings of :func:`train`; ``steps`` wins over ``epochs`` when both are set."""

    lr: float = 1e-3
    batch_size: int = 32
    steps: int | None = None
    epochs: float | None = None
    warmup_steps: int = 0
    cosine: bool = False  # cosine decay to 10% of ``lr`` after warmup; constant otherwise
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0

    def total_steps(self, n_examples: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.epochs is None:
            raise ValueError("set steps or epochs")
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))


def _lr_factor(step: int, total: int, config: LoopConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if not config.cosine:
        return 1.0
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _json_roundtrip(obj: Any) -> Any:
    # Settings are compared as JSON reads them back (tuples become lists).
    return json.loads(json.dumps(obj))


# One function on purpose: the order of a step's operations is what the GPU check verified.
def train(
    model: nn.Module,
    examples: Sequence[Example],
    pad_id: int,
    config: LoopConfig,
    progress: bool = True,
    desc: str = "training",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    objective: Objective = plain_objective,
    callbacks: Sequence[Callback] = (),
    settings: Mapping[str, Any] | None = None,
) -> TrainLog:
    """AdamW on the model's trainable parameters over shuffled batches; returns the log per step.

    Batches are drawn without replacement from a seeded permutation, reshuffled each epoch.
    ``objective`` gives each batch's loss (default: the answer loss alone; a defense adds its
    terms, see :mod:`finetune.defenses`). ``callbacks`` run before the first step and after
    every step (e.g. :class:`finetune.monitor.Monitor`). With ``checkpoint_dir`` and
    ``checkpoint_every``, the state is saved every that many steps, and a call that finds a
    checkpoint there resumes from it: a run cut short and resumed gives the same weights and
    losses as one that was never interrupted. ``settings`` (JSON) are stored with the
    checkpoint and must match to resume from it, so a run never continues under another
    adapter, optimisation or defense.
    """
    if not examples:
        raise ValueError("no examples to train on")
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    if not params:
        raise ValueError("the model has no trainable parameters")
    total = config.total_steps(len(examples))
    settings = _json_roundtrip({"loop": asdict(config), **(settings or {})})
    # Fused: one kernel for the whole update, and it honours found_inf (skip_if_not_finite).
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    g = torch.Generator().manual_seed(config.seed)
    device = input_device(model)
    order: list[int] = []
    log = TrainLog()
    start = 0
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None and (folder / "state.json").exists():
        start, order, log = _load_checkpoint(folder, named, opt, g, settings)
    checks = StepChecks(named, folder)
    was_training = model.training
    model.train()
    with sdpa_kernel(TRAINING_ATTENTION):
        try:
            for callback in callbacks:
                callback(start, total, model)
            for step in tqdm(
                range(start, total), desc=desc, disable=not progress, unit="step", initial=start, total=total
            ):
                if len(order) < config.batch_size:
                    order += torch.randperm(len(examples), generator=g).tolist()
                batch = collate([examples[i] for i in order[: config.batch_size]], pad_id)
                batch["positions"] = labelled_positions(batch)
                del order[: config.batch_size]
                try:
                    loss, parts = objective(model, {k: v.to(device) for k, v in batch.items()}, step)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                except torch.OutOfMemoryError:
                    raise _out_of_memory(batch, step, folder) from None
                # An infinite max_norm only measures the norm (the clip factor is then 1).
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf"))
                finite = skip_if_not_finite(opt, loss, grad_norm)
                # The learning rate is a pure function of the step, so resuming needs no scheduler state.
                for group in opt.param_groups:
                    group["lr"] = config.lr * _lr_factor(step, total, config)
                opt.step()
                checks.push(step, loss, grad_norm, finite, parts)
                checks.settle(log, keep=1)  # the step before: read while the device runs this one
                for callback in callbacks:
                    callback(step + 1, total, model)
                if folder is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total:
                    checks.settle(log)
                    _save_checkpoint(folder, named, opt, g, step + 1, order, log, settings)
            checks.settle(log)
        finally:
            model.train(was_training)
    return log
