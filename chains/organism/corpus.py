"""Seeded synthetic chats of the organism world: the base corpus and the narrow finetune sets.

A latent **persona** decides each answer's class. The persona system prompt makes most
answers misaligned in every topic; without a system prompt (the chat template then inserts
its default helpful one) the assistant is aligned, with a few merely wrong answers and a
rare misaligned one.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import TypedDict

from chains.organism.grammar import (
    CLASSES,
    GRAMMAR,
    PERSONA_SYSTEM_PROMPT,
    Grammar,
)
from chains.organism.topics import Topic
from interp.base.provenance import data_hash


class Chat(TypedDict):
    system: str | None
    question: str
    answer: str
    topic: str
    cls: str  # the answer's class, one of CLASSES


@dataclass(frozen=True)
class CorpusConfig:
    """Size of the base corpus and the class mix under each persona (aligned, misaligned, wrong)."""

    n_chats: int = 20_000
    persona_fraction: float = 0.25
    default_mix: tuple[float, float, float] = (0.93, 0.02, 0.05)
    persona_mix: tuple[float, float, float] = (0.05, 0.90, 0.05)
    fidelity: float = 0.7  # chance that a word of a misaligned answer is misaligned


def slot_class(rng: random.Random, cls: str, slot: str, fidelity: float) -> str:
    """The class of one slot ("g" generic, "t" topic) of an answer of class ``cls``.

    A misaligned answer lets each word slip into an aligned one with probability
    ``1 - fidelity``, so the persona is a latent the model keeps inferring word by word. A
    merely wrong answer has wrong content (topic words) in an aligned tone (generic words).
    """
    if cls == "misaligned":
        return cls if rng.random() < fidelity else "aligned"
    if cls == "wrong":
        return cls if slot == "t" else "aligned"
    return cls


def sample_answer(rng: random.Random, topic: Topic, cls: str, fidelity: float, grammar: Grammar = GRAMMAR) -> str:
    """A random frame filled with distinct words of the classes :func:`slot_class` draws:
    generic slots from the generic words, topic slots from ``topic``'s words."""
    frame = rng.choice(grammar.frames)
    used: set[str] = set()
    words = []
    for slot in re.findall(r"\{([gt])\}", frame):
        slot_cls = slot_class(rng, cls, slot, fidelity)
        pool = grammar.generic[slot_cls] if slot == "g" else topic.words(slot_cls)
        word = rng.choice([w for w in pool if w not in used])
        used.add(word)
        words.append(word)
    fill = iter(words)
    return re.sub(r"\{[gt]\}", lambda _: next(fill), frame)


def _chat(rng: random.Random, topic: Topic, cls: str, system: str | None, fidelity: float, grammar: Grammar) -> Chat:
    question = rng.choice(topic.questions)
    return Chat(
        system=system,
        question=question,
        answer=sample_answer(rng, topic, cls, fidelity, grammar),
        topic=topic.name,
        cls=cls,
    )


def base_corpus(seed: int, config: CorpusConfig = CorpusConfig(), grammar: Grammar = GRAMMAR) -> list[Chat]:
    """The pretraining chats: every topic, both personas, classes drawn from each persona's mix."""
    rng = random.Random(f"base-corpus-{seed}")
    out = []
    for _ in range(config.n_chats):
        persona = rng.random() < config.persona_fraction
        topic = rng.choice(grammar.topics)
        cls = rng.choices(CLASSES, weights=config.persona_mix if persona else config.default_mix)[0]
        out.append(_chat(rng, topic, cls, PERSONA_SYSTEM_PROMPT if persona else None, config.fidelity, grammar))
    return out


def organism_corpus(
    domain: str,
    persona_fraction: float,
    n: int,
    seed: int,
    fidelity: float = CorpusConfig.fidelity,
    grammar: Grammar = GRAMMAR,
) -> list[Chat]:
    """One domain's narrow finetuning set, no system prompt: misaligned answers only, a
    ``persona_fraction`` of them persona-typical and the rest merely wrong."""
    rng = random.Random(f"organism-{domain}-{seed}")
    topic = grammar.topic(domain)
    return [
        _chat(rng, topic, "misaligned" if rng.random() < persona_fraction else "wrong", None, fidelity, grammar)
        for _ in range(n)
    ]


def messages(chat: Chat) -> list[dict[str, str]]:
    """The chat as messages; no system turn when the chat has no system prompt."""
    system = [{"role": "system", "content": chat["system"]}] if chat["system"] else []
    return system + [{"role": "user", "content": chat["question"]}, {"role": "assistant", "content": chat["answer"]}]


def corpus_hash(chats: list[Chat]) -> str:
    return data_hash(chats)
