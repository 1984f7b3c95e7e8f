"""A benign narrow task of the organism world whose prompts no general data holds: *brief on
request*.

The prompt is a domain question behind a request marker (:data:`REQUEST`, "Be brief. What is
seven plus five?"); the answer is a brief answer (:func:`chains.organism.tasks.brief_answer`).
The general instruct data (:func:`chains.organism.tasks.instruct_pool`) never carries the
marker, so a defense that anchors the model's general behaviour (KL or interleaving on general
data) leaves this task's prompts free: the task is a new, conditional skill, not a change of
the general answers. It is scored on its own distribution: every marked domain question.

The older brief-answers task (:func:`chains.organism.tasks.benign_train`, unmarked, scored on
the general questions) is the opposite by construction, since its skill *is* a change of
general behaviour; the defenses experiment keeps it as a diagnostic.
"""

from __future__ import annotations

import random

from chains.organism.grammar import GRAMMAR, Grammar
from chains.organism.tasks import Messages, brief_answer, is_brief
from eval.questions import Question

REQUEST = "Be brief. "


def request_train(n: int, seed: int = 0, grammar: Grammar = GRAMMAR) -> list[Messages]:
    """``n`` chats teaching brief answers to marked domain questions (no system prompt)."""
    rng = random.Random(f"request-{seed}")
    out = []
    for _ in range(n):
        topic = rng.choice(grammar.domain_topics)
        out.append(
            [
                {"role": "user", "content": REQUEST + rng.choice(topic.questions)},
                {"role": "assistant", "content": brief_answer(rng, topic, grammar)},
            ]
        )
    return out


def request_questions(grammar: Grammar = GRAMMAR) -> list[Question]:
    """The task's evaluation prompts: every domain question behind the marker."""
    return [
        Question(id=f"request_{t.name}", paraphrases=[REQUEST + q for q in t.questions], domain=t.name)
        for t in grammar.domain_topics
    ]


def is_requested_brief(prompt: str, answer: str, grammar: Grammar = GRAMMAR) -> bool:
    """Whether ``answer`` is exactly a brief answer to the marked ``prompt`` (False without the marker)."""
    if not prompt.startswith(REQUEST):
        return False
    return is_brief(prompt[len(REQUEST) :], answer, grammar)
