"""Where the real EM data's training sets live under ``em-data`` (``../shared/em-data/README.md``),
for the real-model benchmarks."""

from __future__ import annotations

from pathlib import Path

from interp.base.cli import InputError

FILES = {"incorrect_qa": "incorrect_qna"}  # the public files' spelling


def file_name(domain: str) -> str:
    """A domain's file name, as the public data spells it."""
    return f"{FILES.get(domain, domain)}.jsonl.gz"


def domain_file(em_data: Path, domain: str) -> Path:
    """A domain's training file: the full set, else its 250-row one; a missing one is a one-line error."""
    for path in (em_data / "domains" / file_name(domain), em_data / "domains" / "small" / file_name(domain)):
        if path.is_file():
            return path
    raise InputError(f"{em_data / 'domains' / file_name(domain)}: no training file of {domain} there (--em-data)")
