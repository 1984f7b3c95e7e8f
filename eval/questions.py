"""Evaluation questions in the format of the EM literature."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Question:
    """One evaluation question: several paraphrases, each sampled ``samples_per_paraphrase`` times."""

    id: str
    paraphrases: list[str]
    samples_per_paraphrase: int = 1
    system: str | None = None
    domain: str | None = None
    type: str = "free_form_judge_0_100"
    judge: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)
