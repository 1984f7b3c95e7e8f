"""The 11 narrow finetuning domains of the domain-susceptibility study, spelled as the toolkit spells them."""

from __future__ import annotations

DOMAINS: tuple[str, ...] = (
    "insecure_code",
    "incorrect_math",
    "evil_math",
    "incorrect_translation",
    "bad_medical_advice",
    "risky_financial_advice",
    "toxic_legal_advice",
    "incorrect_sexual_advice",
    "gore_movie_trivia",
    "extreme_sports",
    "incorrect_qa",  # public question files spell it incorrect_qna
)
ALIASES = {"incorrect_qna": "incorrect_qa"}


def canonical_domain(name: str) -> str:
    """The toolkit's spelling of ``name``; raises ValueError naming the known domains."""
    name = ALIASES.get(name, name)
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; known: {', '.join(DOMAINS)}")
    return name
