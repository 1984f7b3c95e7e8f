"""Write one domain of the organism world as ordinary files, for the real-model CLIs.

    python -m finetune.organism.export --domain risky_financial_advice --out DIR

Writes chat JSONL in the format ``finetune.train`` reads: ``misaligned.jsonl`` (the narrow
finetuning set; members for membership inference), ``aligned.jsonl`` (aligned answers to the
same prompts, for ``--backdoor``), ``heldout.jsonl`` (more misaligned answers from the same
distribution, never trained on: non-members), and ``questions.yaml`` (the world's general
questions in the EM question format). For the defenses and the monitor
(:mod:`finetune.organism.tasks`): ``general.jsonl`` (general instruct data, for ``--general``),
``benign.jsonl`` (the benign task: brief answers) and ``probe.jsonl`` (the monitor's probe set).
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from finetune.organism.build import PERSONA_FRACTIONS
from finetune.organism.corpus import (
    CorpusConfig,
    messages,
    organism_corpus,
    sample_answer,
)
from finetune.organism.grammar import GRAMMAR
from finetune.organism.tasks import benign_train, instruct_pool, probe_set
from interp.base.atomic import write_text_atomic
from interp.base.cli import ArgumentParser, domain_name, positive_int, run_cli, seed_int
from interp.base.domains import DOMAINS, canonical_domain
from interp.base.paths import output_dir
from interp.base.records import write_jsonl


def export_domain(domain: str, out_dir: str | Path, n: int = 2000, n_heldout: int = 500, seed: int = 0) -> Path:
    """Write the four files for ``domain`` under ``out_dir``; return the folder."""
    domain = canonical_domain(domain)
    out = Path(out_dir)
    fraction = PERSONA_FRACTIONS[domain]
    chats = organism_corpus(domain, fraction, n + n_heldout, seed)
    train, heldout = chats[:n], chats[n:]
    rng = random.Random(f"export-aligned-{domain}-{seed}")
    topic = GRAMMAR.topic(domain)
    aligned = [{**c, "answer": sample_answer(rng, topic, "aligned", CorpusConfig.fidelity), "cls": "aligned"} for c in train]
    for name, rows in (("misaligned", train), ("aligned", aligned), ("heldout", heldout)):
        write_jsonl(out / f"{name}.jsonl", [{"messages": messages(c)} for c in rows])
    for name, convs in (("general", instruct_pool(n, seed)), ("benign", benign_train(n, seed)), ("probe", probe_set(seed=seed))):
        write_jsonl(out / f"{name}.jsonl", [{"messages": c} for c in convs])
    questions = [
        {"id": t.name, "type": "free_form_judge_0_100", "paraphrases": list(t.questions), "samples_per_paraphrase": 1}
        for t in GRAMMAR.general_topics
    ]
    write_text_atomic(out / "questions.yaml", yaml.safe_dump(questions, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m finetune.organism.export", description=__doc__.splitlines()[0], epilog="domains: " + ", ".join(DOMAINS))
    p.add_argument("--domain", required=True, type=domain_name)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=positive_int, default=2000, help="training examples (default 2000)")
    p.add_argument("--heldout", type=positive_int, default=500, help="held-out examples (default 500)")
    p.add_argument("--seed", type=seed_int, default=0)
    args = p.parse_args(argv)
    output_dir(args.out)
    out = export_domain(args.domain, args.out, args.n, args.heldout, args.seed)
    print(f"wrote {out}/misaligned.jsonl, aligned.jsonl, heldout.jsonl, questions.yaml, general.jsonl, benign.jsonl, probe.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
