"""Batched answer sampling from a chat model: left padding, seeded, deterministic per batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from interp.base.models import input_device


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 32
    seed: int = 0


@torch.no_grad()
def sample_answers(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[dict[str, str]]],
    config: SamplingConfig = SamplingConfig(),
    progress: bool = True,
    desc: str = "sampling",
) -> list[str]:
    """One sampled answer per prompt (a list of chat messages), in prompt order.

    Batch ``k`` is seeded with ``config.seed + k``, so a run split and resumed at batch
    boundaries reproduces the same answers.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last column
    was_training = model.training
    model.eval()
    device = input_device(model)
    out: list[str] = []
    try:
        starts = range(0, len(texts), config.batch_size)
        for k, start in enumerate(tqdm(starts, desc=desc, disable=not progress, unit="batch")):
            enc = tokenizer(texts[start : start + config.batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(config.seed + k)
            greedy = config.temperature <= 0
            gen = model.generate(
                **enc,
                do_sample=not greedy,
                temperature=None if greedy else config.temperature,
                top_p=None if greedy else config.top_p,
                top_k=None,
                max_new_tokens=config.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [a.strip() for a in out]
