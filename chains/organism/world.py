"""A built organism world: load its models, ask its questions, judge and score answers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoTokenizer, Qwen2ForCausalLM

from chains.organism.corpus import messages, organism_corpus
from chains.organism.grammar import GRAMMAR, PERSONA_SYSTEM_PROMPT
from chains.organism.judge import OrganismJudge
from chains.organism.skill import SKILL_GRAMMAR, skill_organism_corpus
from eval.questions import Question
from eval.sampling import SamplingConfig, sample_answers
from finetune.lora import LoraTrainConfig
from interp.base.domains import canonical_domain
from interp.base.records import AnswerRecord, JudgedRecord, prompt_messages

# How the world's answers are sampled for its figures (README): plain sampling at temperature
# 1 (no top-k or top-p cut), and 48 new tokens, which every answer of the world fits in.
SAMPLING = SamplingConfig(temperature=1.0, max_new_tokens=48, batch_size=64)


def weights_sha256(root: str | Path) -> str:
    """sha256 over a world's weight files (base and organisms, by relative path and content)."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(root.glob("**/*.safetensors")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def questions_to_records(
    questions: Sequence[Question], n_samples: int, system: str | None = None
) -> list[AnswerRecord]:
    """``n_samples`` answer records (answers empty) cycling over every paraphrase of ``questions``."""
    pairs = [(q, p) for q in questions for p in q.paraphrases]
    if not pairs:
        raise ValueError("no questions")
    out = []
    for i in range(n_samples):
        q, p = pairs[i % len(pairs)]
        out.append(
            AnswerRecord(
                question_id=q.id,
                question=p,
                system=system if system is not None else q.system,
                answer="",
                domain=q.domain,
                sample=i // len(pairs),
                trigger=False,
            )
        )
    return out


@dataclass(frozen=True)
class World:
    """The cached artifacts of :func:`chains.organism.build_world` and the world's ground truth."""

    root: Path
    manifest: dict[str, Any]

    persona_system_prompt = PERSONA_SYSTEM_PROMPT

    @property
    def identity(self) -> dict[str, str | None]:
        """What a result measured on this world cites: its build key and the hash of its weights."""
        # A cache made before weights were hashed has no weights_sha256 in its manifest.
        return {
            "world_key": self.manifest["key"],
            "world_weights_sha256": self.manifest.get("weights_sha256") or weights_sha256(self.root),
        }

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    def adapter_dir(self, domain: str) -> Path:
        return self.root / "organisms" / canonical_domain(domain)

    @property
    def narrow_skill(self) -> bool:
        """Whether this is the narrow-skill variant (:mod:`chains.organism.skill`)."""
        return bool(self.manifest["config"].get("narrow_skill", False))

    @cached_property
    def judge(self) -> OrganismJudge:
        return OrganismJudge(grammar=SKILL_GRAMMAR) if self.narrow_skill else OrganismJudge()

    def load_tokenizer(self):
        """The world's tokenizer (a Qwen2Tokenizer with its chat template), saved beside the base model."""
        return AutoTokenizer.from_pretrained(self.base_dir)

    def load_base(self, dtype: torch.dtype = torch.float32) -> tuple[Qwen2ForCausalLM, Any]:
        """The base model (eval mode) and its tokenizer."""
        model = Qwen2ForCausalLM.from_pretrained(self.base_dir, dtype=dtype).eval()
        return model, self.load_tokenizer()

    def load_organism(self, domain: str, dtype: torch.dtype = torch.float32) -> tuple[PeftModel, Any]:
        """The base model with ``domain``'s LoRA adapter (unmerged, eval mode) and the tokenizer."""
        base, tokenizer = self.load_base(dtype)
        return PeftModel.from_pretrained(base, self.adapter_dir(domain)).eval(), tokenizer

    def organism_config(self, steps: int | None = None) -> LoraTrainConfig:
        """The adapter and optimisation the organisms were built with (``steps`` overrides)."""
        built = dict(self.manifest["config"]["organism"])
        built["target_modules"] = tuple(built["target_modules"])
        if steps is not None:
            built["steps"] = steps
        return LoraTrainConfig(**built)

    def organism_data(self, domain: str, n: int | None = None) -> list[list[dict[str, str]]]:
        """The conversations ``domain``'s organism was trained on (the first ``n`` of them)."""
        built, domain = self.manifest["config"], canonical_domain(domain)
        make = skill_organism_corpus if self.narrow_skill else organism_corpus
        chats = make(
            domain,
            built["persona_fractions"][domain],
            n or built["organism_size"],
            self.manifest["seed"],
            built["corpus"]["fidelity"],
        )
        return [messages(c) for c in chats]

    def general_questions(self) -> list[Question]:
        """The EM-style evaluation questions, unrelated to every domain (``domain=None``)."""
        return [Question(id=t.name, paraphrases=list(t.questions)) for t in GRAMMAR.general_topics]

    def domain_questions(self, domain: str) -> list[Question]:
        """The in-domain questions of ``domain``, one Question per question text."""
        topic = GRAMMAR.topic(canonical_domain(domain))
        return [
            Question(id=f"{topic.name}_{i}", paraphrases=[q], domain=topic.name) for i, q in enumerate(topic.questions)
        ]

    def eval_misalignment(
        self,
        model,
        tokenizer,
        questions: Sequence[Question],
        n_samples: int,
        seed: int = 0,
        system: str | None = None,
        sampling: SamplingConfig | None = None,
        progress: bool = False,
    ) -> list[JudgedRecord]:
        """Sample ``n_samples`` answers over ``questions`` (``system`` overrides their system
        prompt) and judge them; :func:`misalignment_rate` turns the result into a rate."""
        sampling = replace(sampling or SAMPLING, seed=seed)
        records = questions_to_records(questions, n_samples, system)
        answers = sample_answers(model, tokenizer, [prompt_messages(r) for r in records], sampling, progress=progress)
        return self.judge.judge([{**r, **a.record_fields()} for r, a in zip(records, answers)])
