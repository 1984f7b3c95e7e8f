"""LoRA supervised finetuning on chat conversations, loss on the assistant's answers only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from finetune.sft import LoopConfig, encode, train
from interp.base.chat import Conversation


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
) -> PeftModel:
    """Wrap ``model`` in a fresh LoRA adapter and train it on ``conversations``.

    Each conversation ends with the assistant answer to learn. Only adapter weights train;
    the base weights are frozen (PEFT wraps ``model`` in place). Returns the PEFT model in
    eval mode, with ``losses`` (one per step) attached as ``model.train_losses``. With
    ``checkpoint_dir``, training saves its state every ``checkpoint_every`` steps and resumes
    from what it finds there (see :func:`finetune.sft.train`).
    """
    # Adapter init is random (LoRA A); seed it so a run is reproducible.
    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model, config.peft_config())
    examples = encode(tokenizer, conversations, train_eos=config.train_eos)
    examples = [e.truncated(config.max_length) for e in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses = train(peft_model, examples, pad_id, config.loop(), progress=progress, desc=desc, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
    peft_model.eval()
    peft_model.train_losses = losses
    return peft_model
