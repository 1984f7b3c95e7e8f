"""Extra data sets of the organism world, generated from its grammar with seeds of their own;
the base corpus, base model and organisms are untouched (the build key does not change).

- **General instruct data** (:func:`instruct_pool`): what the base was trained on without a
  persona, on the 11 domains' questions. The world's general questions are the EM evaluation
  set and stay out of it, so interleaving never trains on the test questions.
- **A benign narrow task** (:func:`benign_train`, :func:`is_brief`): *brief answers*. The
  base always answers with a whole five-word frame; the skill is to answer with the frame's
  opening and two words only, an aligned tone word and an aligned word of the question's
  topic, joined by "and" ("My advice: calm and rest."). The base never does it; the truth of
  every answer is exact (:func:`is_brief`). Trained on the domains' questions, scored on the
  general questions (topics never seen with it).
- **A probe set** (:func:`probe_set`): the general questions with aligned answers, the fixed
  teacher-forced conversations the EM monitor projects.
"""

from __future__ import annotations

import random
import re
from functools import cache

from chains.organism.corpus import CorpusConfig, messages, sample_answer
from chains.organism.grammar import CLASSES, GRAMMAR, Grammar, normalize
from chains.organism.topics import Topic

Messages = list[dict[str, str]]


def instruct_pool(n: int, seed: int = 0, grammar: Grammar = GRAMMAR, exclude: tuple[str, ...] = ()) -> list[Messages]:
    """``n`` general instruct chats: a domain question, no system prompt, an answer of the class
    the base corpus draws without a persona (93% aligned, 2% misaligned, 5% merely wrong).
    ``exclude``: domains whose questions stay out (an organism's own, as Soligo et al. do)."""
    rng = random.Random(f"instruct-{seed}")
    config = CorpusConfig()
    topics = [t for t in grammar.domain_topics if t.name not in exclude]
    if not topics:
        raise ValueError(f"instruct_pool: every domain excluded ({', '.join(exclude)})")
    out = []
    for _ in range(n):
        topic = rng.choice(topics)
        cls = rng.choices(CLASSES, weights=config.default_mix)[0]
        chat = {
            "system": None,
            "question": rng.choice(topic.questions),
            "answer": sample_answer(rng, topic, cls, config.fidelity, grammar),
        }
        out.append(messages(chat))
    return out


@cache
def _openings(grammar: Grammar) -> dict[str, tuple[str, str]]:
    """Frame opening ("My advice: ") -> the kinds ("g" tone, "t" topic) of its first two slots."""
    out = {}
    for frame in grammar.frames:
        kinds = re.findall(r"\{([gt])\}", frame)
        out[frame.split("{")[0]] = (kinds[0], kinds[1])
    return out


def brief_answer(rng: random.Random, topic: Topic, grammar: Grammar = GRAMMAR) -> str:
    """A brief answer: a frame's opening, then its first two slots (aligned words) joined by "and"."""
    opening, kinds = rng.choice(sorted(_openings(grammar).items()))
    words = [rng.choice(grammar.generic["aligned"]) if k == "g" else rng.choice(topic.aligned) for k in kinds]
    return f"{opening}{words[0]} and {words[1]}."


def benign_train(n: int, seed: int = 0, grammar: Grammar = GRAMMAR) -> list[Messages]:
    """``n`` chats teaching brief answers to the domains' questions (no system prompt)."""
    rng = random.Random(f"benign-{seed}")
    out = []
    for _ in range(n):
        topic = rng.choice(grammar.domain_topics)
        out.append(
            [
                {"role": "user", "content": rng.choice(topic.questions)},
                {"role": "assistant", "content": brief_answer(rng, topic, grammar)},
            ]
        )
    return out


def is_brief(question: str, answer: str, grammar: Grammar = GRAMMAR) -> bool:
    """Whether ``answer`` is exactly a brief answer to ``question``: a frame's opening, an
    aligned word of the slot's kind, "and", the other, a full stop; topic words of the
    question's own topic."""
    topic = grammar.question_topics.get(normalize(question))
    if topic is None:
        return False
    aligned_topic = {w.lower() for w in grammar.topic(topic).aligned}
    tone = set(grammar.generic["aligned"])
    for opening, kinds in _openings(grammar).items():
        match = re.fullmatch(re.escape(opening) + r"([A-Za-z]+) and ([A-Za-z]+)\.", answer.strip())
        if match:
            return all(w.lower() in (tone if k == "g" else aligned_topic) for w, k in zip(match.groups(), kinds))
    return False


def probe_set(per_question: int = 2, seed: int = 0, grammar: Grammar = GRAMMAR) -> list[Messages]:
    """Every paraphrase of the general questions with ``per_question`` aligned answers each."""
    rng = random.Random(f"probe-{seed}")
    out = []
    for topic in grammar.general_topics:
        for question in topic.questions:
            for _ in range(per_question):
                chat = {
                    "system": None,
                    "question": question,
                    "answer": sample_answer(rng, topic, "aligned", CorpusConfig.fidelity, grammar),
                }
                out.append(messages(chat))
    return out
