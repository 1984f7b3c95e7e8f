"""A local causal LM as judge (``hf:ID_OR_PATH``), through transformers.

The prompts go through the judge model's chat template, as a single user turn. In
``logprobs`` mode one batched forward pass gives the next-token distribution after the
assistant header; the score is the probability-weighted mean over the numbers 0-100 **that
are single tokens in the judge's vocabulary** (Qwen tokenizers split numbers into digits, so
there only 0-9 count: the score then lives on 0-9). The exact probabilities of all those
number tokens are used, not just the top 20. The label is the one whose first token is the
most likely next token. ``score-tags`` mode generates greedily and reads ``<score>``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from eval.judges.base import (
    MIN_NUMBER_MASS,
    MetricScore,
    PromptJudge,
    score_tags,
    weighted_score,
)
from eval.sampling import SamplingConfig, sample_answers
from interp.base.models import input_device
from interp.base.records import LABELS

log = logging.getLogger(__name__)


def single_token_numbers(tokenizer) -> dict[int, int]:
    """Number 0-100 -> token id, for the numbers the vocabulary holds as one token."""
    out = {}
    for n in range(101):
        ids = tokenizer(str(n), add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out[n] = ids[0]
    return out


def label_first_tokens(tokenizer) -> dict[int, str]:
    """First token id -> label, for labels whose first token no other label shares."""
    firsts: dict[int, list[str]] = {}
    for label in LABELS:
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        firsts.setdefault(ids[0], []).append(label)
    return {tok: labels[0] for tok, labels in firsts.items() if len(labels) == 1}


class HFJudge(PromptJudge):
    """Judge with a local transformers causal LM (module doc)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        spec: str = "hf:local",
        questions=None,
        mode: str = "logprobs",
        batch_size: int = 8,
        max_reasoning_tokens: int = 512,
        min_mass: float = MIN_NUMBER_MASS,
        progress: bool = True,
    ) -> None:
        super().__init__(questions, mode, min_mass)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.batch_size = batch_size
        self.max_reasoning_tokens = max_reasoning_tokens
        self.progress = progress
        self.numbers = single_token_numbers(tokenizer)
        self.labels = {
            t: lab for t, lab in label_first_tokens(tokenizer).items() if t not in set(self.numbers.values())
        }
        self._number_ids = torch.tensor(list(self.numbers.values()), dtype=torch.long)
        if mode == "logprobs":
            if not self.numbers:
                raise ValueError(f"{spec}: no number 0-100 is a single token in this vocabulary; use mode 'score-tags'")
            if len(self.numbers) < 101:
                log.warning(
                    "%s: only %d of the numbers 0-100 are single tokens (%s..%s); logprob scores average over those",
                    spec,
                    len(self.numbers),
                    min(self.numbers),
                    max(self.numbers),
                )

    def score_prompts(self, prompts: Sequence[str]) -> list[MetricScore]:
        chats = [[{"role": "user", "content": p}] for p in prompts]
        if self.mode == "score-tags":
            config = SamplingConfig(temperature=0, max_new_tokens=self.max_reasoning_tokens, batch_size=self.batch_size)
            return [
                score_tags(a.text)
                for a in sample_answers(
                    self.model, self.tokenizer, chats, config, progress=self.progress, desc="judging"
                )
            ]
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        out: list[MetricScore] = []
        for start in tqdm(
            range(0, len(texts), self.batch_size), desc="judging", unit="batch", disable=not self.progress, leave=False
        ):
            logprobs = self.next_token_logprobs(texts[start : start + self.batch_size])
            out.extend(self._read(row) for row in logprobs)
        return out

    @torch.no_grad()
    def next_token_logprobs(self, texts: Sequence[str]) -> torch.Tensor:
        """[batch, vocab] float32 log-probabilities of the token after each text (left padding)."""
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            self.tokenizer.padding_side = side
        device = input_device(self.model)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        # Positions from the mask, as generate() does, so padding does not shift a row.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def _read(self, logprobs: torch.Tensor) -> MetricScore:
        top = int(logprobs.argmax())
        number_lp = logprobs[self._number_ids]
        raw = {"top_token": self.tokenizer.decode([top]), "top_logprob": float(logprobs[top])}
        if top in self.labels:
            return MetricScore(None, self.labels[top], raw)
        probs = {n: float(p) for n, p in zip(self.numbers, number_lp.exp())}
        value, mass = weighted_score(probs, self.min_mass)
        return MetricScore(
            value,
            None,
            {**raw, "number_mass": mass, "number_probs": {str(n): round(p, 6) for n, p in probs.items() if p >= 1e-4}},
        )
