"""LoRA supervised finetuning on chat conversations, loss on the assistant's answers only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from finetune.defenses.base import Defense, NoDefense
from finetune.sft import IGNORE, Callback, LoopConfig, encode, train
from interp.base.chat import Conversation
from interp.base.cli import InputError


@dataclass(frozen=True)
class LoraTrainConfig:
    """Adapter shape and optimisation of :func:`train_lora`; ``steps`` wins over ``epochs``."""

    rank: int = 1
    alpha: float = 2.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = 2e-3
    steps: int | None = 60
    epochs: float | None = None
    batch_size: int = 32
    max_length: int = 512  # longer conversations are cut from the right
    train_eos: bool = True  # also train the end-of-turn token after each answer
    seed: int = 0

    def loop(self) -> LoopConfig:
        return LoopConfig(lr=self.lr, batch_size=self.batch_size, steps=self.steps, epochs=self.epochs, seed=self.seed)

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )


def train_lora(
    model: nn.Module,
    tokenizer,
    conversations: Sequence[Conversation],
    config: LoraTrainConfig = LoraTrainConfig(),
    progress: bool = True,
    desc: str = "lora",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    defense: Defense | None = None,
    callbacks: Sequence[Callback] = (),
) -> PeftModel:
    """Wrap ``model`` in a fresh LoRA adapter and train it on ``conversations``.

    Each conversation ends with the assistant answer to learn. Only adapter weights train;
    the base weights are frozen (PEFT wraps ``model`` in place). ``defense``
    (:mod:`finetune.defenses`) first prepares the data on ``model`` as it is, the reference
    (mixing in general data, prepending a prompt, making a steering vector), then adds its
    terms to every step's loss. ``callbacks`` see the model before the first step and after
    each (see :func:`finetune.sft.train`). Returns the PEFT model in eval mode with, attached,
    ``train_losses`` (the answer loss per step), ``train_terms`` (the defense's terms per
    step) and ``defense_record`` (what the defense did, for the training config). With
    ``checkpoint_dir``, training saves its state every ``checkpoint_every`` steps and resumes
    from what it finds there, if it was written with the same adapter, optimisation and defense.
    """
    defense = defense or NoDefense()
    conversations = defense.prepare(model, tokenizer, conversations)
    # Adapter init is random (LoRA A); seed it so a run is reproducible.
    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model, config.peft_config())
    examples = encode(tokenizer, conversations, train_eos=config.train_eos)
    examples = [e.truncated(config.max_length) for e in examples]
    # Position 0 predicts nothing: an answer token counts from position 1 on.
    if not any(any(label != IGNORE for label in e.labels[1:]) for e in examples):
        raise InputError(
            f"--max-length {config.max_length}: no conversation keeps an answer token after truncation; nothing would train"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    record = defense.record()
    log = train(
        peft_model,
        examples,
        pad_id,
        config.loop(),
        progress=progress,
        desc=desc,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        objective=defense.objective,
        callbacks=callbacks,
        settings={"lora": asdict(config), "defense": record},
    )
    peft_model.eval()
    peft_model.train_losses = log.losses
    peft_model.train_terms = log.terms
    peft_model.defense_record = record
    return peft_model
