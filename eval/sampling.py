"""Batched answer sampling from a chat model: left padding, seeded per batch, one decoding
configuration (:class:`~interp.base.decoding.Decoding`) on every path.

Generation runs through :func:`interp.generation.generate`: the compiled engine on a GPU,
transformers' ``generate`` elsewhere (``engine``), with any steering or ablation applied
around the call. Each answer keeps what the model produced: the generated token ids, the
decoded text before stripping, and whether it ended with the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from interp.base.decoding import Decoding, completions
from interp.base.models import input_device
from interp.generation import EngineName, generate

Messages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class SamplingConfig(Decoding):
    """A :class:`~interp.base.decoding.Decoding` and the number of prompts per generate call.

    Batch ``k`` of a run decodes with seed ``seed + k`` (see :func:`sample_answers`). The end
    of turn and the padding come from the tokenizer unless set.
    """

    batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class Answer:
    """One sampled answer: ``text`` for reading and judging, and what the model produced."""

    text: str  # ``raw`` stripped
    raw: str  # the decoded generated tokens, unstripped
    ids: tuple[int, ...] | None  # generated token ids without end of turn and padding (None: not known)
    finished: bool  # ended with the end-of-turn token (else it ran into max_new_tokens)

    def record_fields(self) -> dict[str, Any]:
        """The answer-record fields this answer fills (see :mod:`interp.base.records`)."""
        out: dict[str, Any] = {"answer": self.text, "answer_raw": self.raw, "finished": self.finished}
        if self.ids is not None:
            out["answer_ids"] = list(self.ids)
        return out


# prompts, config (its seed already the batch's) -> one answer per prompt
Sampler = Callable[[Sequence[Messages], SamplingConfig], list[Answer]]


@torch.no_grad()
def sample_answers(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[Messages],
    config: SamplingConfig = SamplingConfig(),
    progress: bool = True,
    desc: str = "sampling",
    engine: EngineName = "auto",
) -> list[Answer]:
    """One sampled answer per prompt (a list of chat messages), in prompt order.

    Batch ``k`` is seeded with ``config.seed + k``, so a run split and resumed at batch
    boundaries reproduces the same answers (what a seed reproduces on each engine:
    :mod:`interp.generation`).
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
    decoding = config.for_tokenizer(tokenizer)
    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last column
    was_training = model.training
    model.eval()
    device = input_device(model)
    out: list[Answer] = []
    try:
        starts = range(0, len(texts), config.batch_size)
        for k, start in enumerate(tqdm(starts, desc=desc, disable=not progress, unit="batch")):
            enc = tokenizer(
                texts[start : start + config.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            new = generate(
                model, enc["input_ids"], enc["attention_mask"], replace(decoding, seed=config.seed + k), engine=engine
            )
            done = completions(new, decoding.eos_ids)
            raws = tokenizer.batch_decode([list(c.ids) for c in done], skip_special_tokens=True)
            out.extend(Answer(raw.strip(), raw, c.ids, c.finished) for raw, c in zip(raws, done))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out
