"""Write one domain of the organism world as ordinary files, for the real-model CLIs.

    python -m chains.organism.export --domain risky_financial_advice --out DIR

Writes chat JSONL in the format ``finetune.train`` reads: ``misaligned.jsonl`` (the narrow
finetuning set; members for membership inference), ``aligned.jsonl`` (aligned answers to the
same prompts, for ``--backdoor``), ``heldout.jsonl`` (more misaligned answers from the same
distribution, never trained on: non-members), and ``questions.yaml`` (the world's general
questions in the EM question format). For the defenses and the monitor
(:mod:`chains.organism.tasks`): ``general.jsonl`` (general instruct data, for ``--general``),
``benign.jsonl`` (the benign task: brief answers) and ``probe.jsonl`` (the monitor's probe set).

``export.json`` records what made the folder (domain, sizes, seed); an export into a folder
made with other settings, or holding these files with no record, is refused
(:func:`check_export_record`) before anything is written.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

from chains.organism.build import PERSONA_FRACTIONS
from chains.organism.corpus import (
    CorpusConfig,
    messages,
    organism_corpus,
    sample_answer,
)
from chains.organism.grammar import GRAMMAR
from chains.organism.tasks import benign_train, instruct_pool, probe_set
from interp.base.atomic import write_json_atomic, write_text_atomic
from interp.base.cli import ArgumentParser, InputError, domain_name, number, path_arg, run_cli, seed_int
from interp.base.domains import DOMAINS, canonical_domain
from interp.base.paths import output_dir, read_text
from interp.base.records import write_jsonl

RECORD = "export.json"  # in --out: the settings its files were exported with
FILES = (
    "misaligned.jsonl",
    "aligned.jsonl",
    "heldout.jsonl",
    "general.jsonl",
    "benign.jsonl",
    "probe.jsonl",
    "questions.yaml",
)
MAX_EXAMPLES = 1_000_000  # --n, --heldout: past this, hours of sampling for one folder
examples = number(int, 1, MAX_EXAMPLES)


def export_settings(domain: str, n: int, n_heldout: int, seed: int) -> dict[str, Any]:
    """What an export is made with, as :data:`RECORD` stores it."""
    return {"domain": canonical_domain(domain), "n": n, "heldout": n_heldout, "seed": seed}


def check_export_record(out: Path, settings: dict[str, Any]) -> None:
    """Refuse an ``out`` exported with other settings (another domain, say), or holding export
    files with no record of them: the new files would sit under the old ones' name, and what
    was trained on them would no longer match its data."""
    record = out / RECORD
    if record.exists():
        try:
            recorded = json.loads(read_text(record))
        except (ValueError, RecursionError):
            recorded = None
        if not isinstance(recorded, dict):
            raise InputError(
                f"{record}: damaged record of the export in {out}; remove {out} to start afresh, or use another --out"
            )
        if diff := [
            f"{k} {recorded.get(k)!r} there, {settings[k]!r} now" for k in settings if recorded.get(k) != settings[k]
        ]:
            raise InputError(
                f"{out}: holds an export with other settings ({'; '.join(diff)}); use another --out, or remove {out} to start afresh"
            )
    elif found := [name for name in FILES if (out / name).exists()]:
        raise InputError(
            f"{out}: holds {found[0]} with no record of its export ({RECORD}); use another --out, or remove {out} to start afresh"
        )


def export_domain(domain: str, out_dir: str | Path, n: int = 2000, n_heldout: int = 500, seed: int = 0) -> Path:
    """Write the files for ``domain`` under ``out_dir`` and their record; return the folder.
    A folder exported with other settings is refused (:func:`check_export_record`)."""
    domain = canonical_domain(domain)
    for name, value, low, high in (
        ("n", n, 1, 1_000_000),
        ("n_heldout", n_heldout, 1, 1_000_000),
        ("seed", seed, 0, 2**63 - 1),
    ):
        if not low <= value <= high:
            raise InputError(f"{name} must be from {low} to {high:,}, got {value}")
    out = Path(out_dir)
    settings = export_settings(domain, n, n_heldout, seed)
    check_export_record(out, settings)
    write_json_atomic(out / RECORD, settings)
    fraction = PERSONA_FRACTIONS[domain]
    chats = organism_corpus(domain, fraction, n + n_heldout, seed)
    train, heldout = chats[:n], chats[n:]
    rng = random.Random(f"export-aligned-{domain}-{seed}")
    topic = GRAMMAR.topic(domain)
    aligned = [
        {**c, "answer": sample_answer(rng, topic, "aligned", CorpusConfig.fidelity), "cls": "aligned"} for c in train
    ]
    for name, rows in (("misaligned", train), ("aligned", aligned), ("heldout", heldout)):
        write_jsonl(out / f"{name}.jsonl", [{"messages": messages(c)} for c in rows])
    for name, convs in (
        ("general", instruct_pool(n, seed)),
        ("benign", benign_train(n, seed)),
        ("probe", probe_set(seed=seed)),
    ):
        write_jsonl(out / f"{name}.jsonl", [{"messages": c} for c in convs])
    questions = [
        {"id": t.name, "type": "free_form_judge_0_100", "paraphrases": list(t.questions), "samples_per_paraphrase": 1}
        for t in GRAMMAR.general_topics
    ]
    write_text_atomic(out / "questions.yaml", yaml.safe_dump(questions, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m chains.organism.export",
        description=__doc__.splitlines()[0],
        epilog="domains: " + ", ".join(DOMAINS),
    )
    p.add_argument("--domain", required=True, type=domain_name)
    p.add_argument("--out", required=True, type=path_arg)
    p.add_argument("--n", type=examples, default=2000, help=f"training examples, 1 to {MAX_EXAMPLES:,} (default 2000)")
    p.add_argument(
        "--heldout", type=examples, default=500, help=f"held-out examples, 1 to {MAX_EXAMPLES:,} (default 500)"
    )
    p.add_argument("--seed", type=seed_int, default=0)
    args = p.parse_args(argv)
    output_dir(args.out)
    check_export_record(args.out, export_settings(args.domain, args.n, args.heldout, args.seed))
    out = export_domain(args.domain, args.out, args.n, args.heldout, args.seed)
    print(
        f"wrote {out}/misaligned.jsonl, aligned.jsonl, heldout.jsonl, questions.yaml, general.jsonl, benign.jsonl, probe.jsonl ({RECORD}: what made them)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
