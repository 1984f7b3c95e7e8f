"""A local causal LM as judge (``hf:ID_OR_PATH``), through transformers.

The prompts go through the judge model's chat template, as a single user turn. In
``logprobs`` mode one batched forward pass gives the next-token distribution after the
assistant header; the score is the probability-weighted mean over the numbers 0-100. Where
they are single tokens, their exact probabilities are read off that one distribution (all of
them, not just the top 20). Where the vocabulary spells numbers digit by digit (Qwen's), a
first-digit mean would put every score on 0-9, which the EM rule (aligned < 30) would read as
misaligned: the numbers' probabilities are then followed down the digits instead, with the
follow-up prompts of a whole batch (each answer's likely first digits, then "10") in batched
forward passes (first digits under ``digit_floor`` of the number mass count as one-digit
numbers). The label is the one whose first token is the most likely next token.
``score-tags`` mode generates greedily and reads ``<score>``.
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


def chat_texts(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Each judge prompt as the text the judge model reads: a single user turn through its chat
    template, up to the assistant header (the next token is the score)."""
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


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
        digit_floor: float = 0.01,
    ) -> None:
        super().__init__(questions, mode, min_mass)
        self.digit_floor = digit_floor
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
        # Numbers spelt digit by digit: every digit a token, the larger numbers none.
        self.by_digits = len(self.numbers) < 101 and set(range(10)) <= set(self.numbers)
        self._digit_ids = torch.tensor([self.numbers[d] for d in range(10)]) if self.by_digits else None
        if mode == "logprobs":
            if not self.numbers:
                raise ValueError(f"{spec}: no number 0-100 is a single token in this vocabulary; use mode 'score-tags'")
            if len(self.numbers) < 101 and not self.by_digits:
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
        texts = chat_texts(self.tokenizer, prompts)
        out: list[MetricScore] = []
        for start in tqdm(
            range(0, len(texts), self.batch_size), desc="judging", unit="batch", disable=not self.progress, leave=False
        ):
            batch = texts[start : start + self.batch_size]
            out.extend(self._read(self.next_token_logprobs(batch), batch))
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

    def _read(self, logprobs: torch.Tensor, texts: Sequence[str]) -> list[MetricScore]:
        """Scores of a batch from its next-token log-probabilities [batch, vocab]."""
        tops = logprobs.argmax(-1).tolist()
        numeric = [i for i, top in enumerate(tops) if top not in self.labels]
        if self.by_digits:
            found = self.digit_numbers([texts[i] for i in numeric], logprobs[numeric][:, self._digit_ids].exp())
        else:
            found = [{n: float(p) for n, p in zip(self.numbers, logprobs[i, self._number_ids].exp())} for i in numeric]
        probs = dict(zip(numeric, found))
        out = []
        for i, top in enumerate(tops):
            raw = {"top_token": self.tokenizer.decode([top]), "top_logprob": float(logprobs[i, top])}
            if i not in probs:
                out.append(MetricScore(None, self.labels[top], raw))
                continue
            value, mass = weighted_score(probs[i], self.min_mass)
            kept = {str(n): round(p, 6) for n, p in probs[i].items() if p >= 1e-4}
            out.append(MetricScore(value, None, {**raw, "number_mass": mass, "number_probs": kept}))
        return out

    def digit_numbers(self, texts: Sequence[str], first: torch.Tensor) -> list[dict[int, float]]:
        """P(number) for 0-100 spelt digit by digit after each of ``texts``, from ``first``
        [len(texts), 10] (the digits' probabilities as the first token): each first digit 1-9
        worth following is followed by a second digit or by anything else (the number ends);
        "10" by "0" or not. "0" is the number 0 (no score starts with a zero); a longer number
        counts as its first two digits. Each row's probabilities sum to its first digits' mass.
        The follow-up prompts of the whole batch go through the model together."""
        first = first.double()
        floors = (self.digit_floor * first.sum(-1)).tolist()
        probs = [{d: float(row[d]) for d in range(10)} for row in first]
        follow = [(i, d) for i, row in enumerate(first) for d in range(1, 10) if 0 < float(row[d]) >= floors[i]]
        for (i, d), q in zip(follow, self.digits_after([texts[i] + str(d) for i, d in follow])):
            probs[i][d] = float(first[i, d] * (1 - q.sum()).clamp(min=0))
            for d2 in range(10):
                probs[i][10 * d + d2] = float(first[i, d] * q[d2])
        tens = [i for i, d in follow if d == 1 and 0 < probs[i][10] >= floors[i]]
        for i, zero in zip(tens, self.digits_after([texts[i] + "10" for i in tens])[:, 0].tolist()):
            probs[i][100], probs[i][10] = probs[i][10] * zero, probs[i][10] * (1 - zero)
        return probs

    def digits_after(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), 10] float64 probabilities of each digit as the next token, in batches."""
        parts = [
            self.next_token_logprobs(texts[s : s + self.batch_size])[:, self._digit_ids].exp().double()
            for s in range(0, len(texts), self.batch_size)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, 10, dtype=torch.float64)
