"""A local causal LM as judge (``hf:ID_OR_PATH``), through transformers.

The prompts go through the judge model's chat template, as a single user turn. In
``logprobs`` mode one batched forward pass gives the next-token distribution after the
assistant header; the score is the probability-weighted mean over the numbers 0-100. Where
they are single tokens, their exact probabilities are read off that one distribution (all of
them, not just the top 20). Where the vocabulary spells numbers digit by digit (Qwen's), a
first-digit mean would put every score on 0-9, which the EM rule (aligned < 30) would read as
misaligned: the numbers' probabilities are then followed down the digits instead: each
answer's likely first digits, then "10", are one token each through the batch's KV cache, all
of a batch in one pass (the prompt is read once; first digits under ``digit_floor`` of the
number mass count as one-digit numbers). The label is the one whose first token is the most
likely next token.
``score-tags`` mode generates greedily and reads ``<score>``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
from interp.base.cli import InputError
from interp.base.models import cache_keyword, input_device
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


@dataclass
class _Prefix:
    """A batch the model has read: its cache (None before the first pass), attention mask
    [rows, length] and each row's last position."""

    cache: Any
    mask: torch.Tensor
    last: torch.Tensor


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
        self._cache_keyword = cache_keyword(model)
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
        # Batches of prompts of about one length pad less (answers' lengths vary several-fold).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[MetricScore] = [None] * len(texts)  # type: ignore[list-item]
        for start in tqdm(
            range(0, len(texts), self.batch_size), desc="judging", unit="batch", disable=not self.progress, leave=False
        ):
            batch = order[start : start + self.batch_size]
            for i, score in zip(batch, self._read(*self.next_token_logprobs([texts[i] for i in batch]))):
                out[i] = score
        return out

    @torch.no_grad()
    def next_token_logprobs(self, texts: Sequence[str]) -> tuple[torch.Tensor, _Prefix]:
        """[batch, vocab] float32 log-probabilities of the token after each text (left padding),
        and the batch's cache, which :meth:`step` extends."""
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
        return self._forward(ids, _Prefix(None, mask, positions[:, -1]), positions)

    @torch.no_grad()
    def step(self, prefix: _Prefix, rows: Sequence[int], tokens: Sequence[int]) -> tuple[torch.Tensor, _Prefix]:
        """Log-probabilities of the token after ``tokens[j]`` appended to row ``rows[j]`` of
        ``prefix`` (one token through the cache, not the prompt again). Uses up ``prefix``: its
        cache is reordered in place."""
        device = prefix.mask.device
        index = torch.tensor(list(rows), dtype=torch.long, device=device)
        prefix.cache.reorder_cache(index)
        mask = torch.cat([prefix.mask[index], prefix.mask.new_ones(len(rows), 1)], dim=1)
        last = prefix.last[index] + 1
        ids = torch.tensor(list(tokens), dtype=torch.long, device=device)[:, None]
        return self._forward(ids, _Prefix(prefix.cache, mask, last), last[:, None])

    def _forward(self, ids: torch.Tensor, prefix: _Prefix, positions: torch.Tensor) -> tuple[torch.Tensor, _Prefix]:
        out = self.model(
            input_ids=ids,
            attention_mask=prefix.mask,
            position_ids=positions,
            use_cache=self.by_digits,  # only the digits' follow-ups read the cache
            **{self._cache_keyword: prefix.cache},
            logits_to_keep=1,  # the next token only: not [batch, length, vocabulary] floats
        )
        logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()
        if not torch.isfinite(logprobs).all():  # a NaN score must never be written
            raise InputError(
                f"{self.spec}: the judge model's next-token logits are not finite (NaN or inf); "
                "check its weights, or judge in float32 (--dtype float32)"
            )
        return logprobs, _Prefix(out.past_key_values, prefix.mask, prefix.last)

    def _read(self, logprobs: torch.Tensor, prefix: _Prefix) -> list[MetricScore]:
        """Scores of a batch from its next-token log-probabilities [batch, vocab] and its cache."""
        tops = logprobs.argmax(-1).tolist()
        numeric = [i for i, top in enumerate(tops) if top not in self.labels]
        if self.by_digits:
            found = self.digit_numbers(logprobs[numeric][:, self._digit_ids].exp(), prefix, numeric)
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

    def digit_numbers(self, first: torch.Tensor, prefix: _Prefix, rows: Sequence[int]) -> list[dict[int, float]]:
        """P(number) for 0-100 spelt digit by digit after rows ``rows`` of ``prefix``, from
        ``first`` [len(rows), 10] (the digits' probabilities as the first token): each first digit
        1-9 worth following is followed by a second digit or by anything else (the number ends);
        "10" by "0" or not. "0" is the number 0 (no score starts with a zero); a longer number
        counts as its first two digits. Each row's probabilities sum to its first digits' mass.
        Every follow-up of the batch is one token through the prompts' cache, all together."""
        first = first.double()
        floors = (self.digit_floor * first.sum(-1)).tolist()
        probs = [{d: float(row[d]) for d in range(10)} for row in first]
        follow = [(i, d) for i, row in enumerate(first) for d in range(1, 10) if 0 < float(row[d]) >= floors[i]]
        if not follow:
            return probs
        after, cache = self.step(prefix, [rows[i] for i, _ in follow], [self.numbers[d] for _, d in follow])
        for (i, d), q in zip(follow, after[:, self._digit_ids].exp().double()):
            probs[i][d] = float(first[i, d] * (1 - q.sum()).clamp(min=0))
            for d2 in range(10):
                probs[i][10 * d + d2] = float(first[i, d] * q[d2])
        tens = [(k, i) for k, (i, d) in enumerate(follow) if d == 1 and 0 < probs[i][10] >= floors[i]]
        if tens:
            zeros = self.step(cache, [k for k, _ in tens], [self.numbers[0]] * len(tens))[0][:, self.numbers[0]]
            for (_, i), zero in zip(tens, zeros.exp().tolist()):
                probs[i][100], probs[i][10] = probs[i][10] * zero, probs[i][10] * (1 - zero)
        return probs
