"""The runs of the defenses experiment on the organism world (``benchmarks/defenses_organism.py``).

One **organism run**: a domain's organism trained again on the world's data, at a step count
and LoRA rank, with a seed (adapter init, batch order, the defense's own draws, sampling), under
one defense setting (an :class:`Arm`), then measured:

- ``broad_em``: misalignment rate on the general questions, no system prompt (``BROAD``);
- ``narrow_rate``: on the domain's own questions, answers with aligned <= 70 (``NARROW``), and
  the same on the topic words and the tone words alone (``narrow_topic``, ``narrow_tone``);
- ``coherence``: mean coherence of the general answers.

The general data of every defense (kl's batches, interleaving's pool) holds no question of
the organism's own domain (as Soligo et al. do). One **benign run** per arm and seed trains
the two benign tasks under the arm: *brief on request* (:mod:`chains.organism.benign`,
prompts no general data holds), scored on its own prompts (``benign_score``); and the older
brief answers (:func:`chains.organism.tasks.benign_train`), scored on the general questions
(``benign_general_score``, a diagnostic). Rows go to one JSONL file per group of runs as they
are made, so a rerun resumes and workers in other processes never share a file.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from chains.organism import build_world
from chains.organism.benign import is_requested_brief, request_questions, request_train
from chains.organism.defenses import BROAD, NARROW, WorldInputs, rate, world_spec
from chains.organism.grammar import PERSONA_SYSTEM_PROMPT
from chains.organism.tasks import benign_train, is_brief
from chains.organism.world import SAMPLING, World, questions_to_records
from eval.sampling import sample_answers
from finetune.data import read_chat_jsonl
from finetune.defenses import Defense
from finetune.defenses.interleave import ppl_gaps
from finetune.lora import LoraTrainConfig, train_lora
from interp.base.records import append_jsonl, prompt_messages, write_jsonl

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Arm:
    """One defense setting: ``label`` ("none", "kl/general", "interleave/ppl-gap", ...) and strength."""

    label: str = "none"
    strength: float = 0.0

    @property
    def defense(self) -> str:
        return self.label.partition("/")[0]

    @property
    def name(self) -> str:
        return "none" if self.label == "none" else f"{self.label} {self.strength:g}"

    @classmethod
    def parse(cls, text: str) -> Arm:
        """``LABEL:STRENGTH`` ("kl/general:10") as an arm."""
        label, _, strength = text.strip().rpartition(":")
        return cls(label, float(strength))


@dataclass(frozen=True)
class LabConfig:
    """Sample sizes, the benign tasks' training and the general data; organisms train as the
    world built them except for steps and rank (:func:`adapter`)."""

    n_general: int = 320  # answers to the general questions per model (broad EM, coherence)
    n_narrow: int = 160  # answers to the domain's questions
    n_benign: int = 160  # answers scored per benign task
    n_benign_train: int = 2000
    benign: LoraTrainConfig = LoraTrainConfig(lr=1e-2, steps=60)  # a new format needs more than the organisms' 30 steps
    n_pool: int = 4000  # general data: twice an interleaved fraction of 0.5, so that ppl-gap selection selects
    n_persona: int = 256  # general chats the persona vector is taken on
    steer_layer: int | None = None  # None: the middle layer
    n_organism: int | None = None  # None: the world's organism set size


def adapter(world: World, steps: int, rank: int) -> LoraTrainConfig:
    """The world's organism training at ``steps`` and ``rank``: rank 1 is the world's own
    adapter (q_proj, v_proj); a higher rank adapts every linear module, with the world's
    alpha / rank ratio kept (the same update scale)."""
    built = world.organism_config(steps)
    if rank == built.rank:
        return built
    return replace(built, rank=rank, alpha=built.alpha / built.rank * rank, target_modules=ALL_LINEAR)


def pool_name(domain: str | None) -> str:
    """The name of the general data used with ``domain``'s organism (None: the benign runs)."""
    return "all" if domain is None else f"without-{domain}"


class DefenseLab:
    """The base model, the defenses' world inputs (files under ``inputs``), one method per run."""

    def __init__(self, world: World, config: LabConfig, inputs: str | Path) -> None:
        self.world = world
        self.config = config
        self.inputs = Path(inputs)
        self.base, self.tokenizer = world.load_base()
        self._gaps: dict[str, torch.Tensor] = {}

    def files(self, pool: str) -> WorldInputs:
        return WorldInputs(self.inputs / f"general-{pool}.jsonl", self.inputs / "persona.safetensors")

    def gaps(self, pool: str) -> torch.Tensor:
        """ppl-gap scores of a general data file (base with the persona prompt vs without), once."""
        if pool not in self._gaps:
            self._gaps[pool] = ppl_gaps(
                self.base,
                self.tokenizer,
                read_chat_jsonl(self.files(pool).general),
                misaligned_system=PERSONA_SYSTEM_PROMPT,
            )
        return self._gaps[pool]

    def defense(self, arm: Arm, pool: str, seed: int) -> Defense:
        """``arm`` built the way ``finetune.train --defense`` builds it, from the world's files."""
        spec = world_spec(arm.label, arm.strength, self.files(pool), seed, self.config.steer_layer)
        return spec.build(gaps=self.gaps(pool) if arm.label == "interleave/ppl-gap" else None)

    def finetune(
        self, arm: Arm, conversations: Sequence[list[dict[str, str]]], lora: LoraTrainConfig, pool: str, seed: int
    ) -> tuple[torch.nn.Module, dict[str, Any]]:
        """A fresh adapter on a copy of the base, trained under ``arm``; and what happened."""
        t0 = time.perf_counter()
        model = train_lora(
            copy.deepcopy(self.base),
            self.tokenizer,
            conversations,
            replace(lora, seed=seed),
            progress=False,
            defense=self.defense(arm, pool, seed),
        )
        info = {
            "train_s": time.perf_counter() - t0,
            "loss_last": model.train_losses[-1],
            "terms_last": {k: v[-1] for k, v in model.train_terms.items()},
            "defense_record": model.defense_record,
        }
        if arm.label == "none":  # the undefended loss curve sets the training budget (docs/defenses.md)
            info["losses"] = list(model.train_losses)
        return model.eval(), info

    def general_answers(self, model, seed: int) -> list[dict]:
        return self.world.eval_misalignment(
            model, self.tokenizer, self.world.general_questions(), self.config.n_general, seed=seed
        )

    def narrow(self, model, domain: str, seed: int) -> dict[str, float | None]:
        """``narrow_rate`` on the domain's questions, and the same on the topic words alone
        (``narrow_topic``) and the tone words alone (``narrow_tone``), None when none was scored."""
        records = self.world.eval_misalignment(
            model, self.tokenizer, self.world.domain_questions(domain), self.config.n_narrow, seed=seed
        )
        counted = [r for r in records if NARROW.classify(r) is not None]
        out: dict[str, float | None] = {"narrow_rate": rate(records, NARROW)}
        for part, key in (("content", "narrow_topic"), ("tone", "narrow_tone")):
            scored = [r["judge_raw"]["means"][part] for r in counted if part in r["judge_raw"]["means"]]
            out[key] = sum(m <= NARROW.threshold for m in scored) / len(scored) if scored else None
        return out

    def exact_rate(self, model, questions, check: Callable[[str, str], bool], seed: int) -> float:
        """Share of ``n_benign`` answers (temperature 1, cycling over ``questions``) that ``check(prompt, answer)`` accepts."""
        records = questions_to_records(questions, self.config.n_benign)
        answers = sample_answers(
            model, self.tokenizer, [prompt_messages(r) for r in records], replace(SAMPLING, seed=seed), progress=False
        )
        return sum(check(r["question"], a.text) for r, a in zip(records, answers)) / len(records)

    def benign_scores(self, model, seed: int) -> dict[str, float]:
        return {
            "benign_score": self.exact_rate(model, request_questions(), is_requested_brief, seed),
            "benign_general_score": self.exact_rate(model, self.world.general_questions(), is_brief, seed),
        }

    def organism_row(self, arm: Arm, domain: str, steps: int, rank: int, seed: int) -> dict[str, Any]:
        """One organism run (see the module's docstring)."""
        data = self.world.organism_data(domain, self.config.n_organism)
        model, info = self.finetune(arm, data, adapter(self.world, steps, rank), pool_name(domain), seed)
        general = self.general_answers(model, seed)
        return {
            "domain": domain,
            "steps": steps,
            "rank": rank,
            "seed": seed,
            "defense": arm.label,
            "strength": arm.strength,
            "broad_em": rate(general, BROAD),
            **self.narrow(model, domain, seed),
            "coherence": statistics.mean(r["coherent"] for r in general),
            **info,
        }

    def benign_row(self, arm: Arm, seed: int) -> dict[str, Any]:
        """Both benign tasks trained under ``arm`` (general data: every domain), each scored."""
        n = self.config.n_benign_train
        request, info = self.finetune(arm, request_train(n, seed), self.config.benign, pool_name(None), seed)
        general, _ = self.finetune(arm, benign_train(n, seed), self.config.benign, pool_name(None), seed)
        return {
            "seed": seed,
            "defense": arm.label,
            "strength": arm.strength,
            "benign_score": self.benign_scores(request, seed)["benign_score"],
            "benign_general_score": self.benign_scores(general, seed)["benign_general_score"],
            "train_s": info["train_s"],
        }

    def base_row(self, domains: Sequence[str], seed: int) -> dict[str, Any]:
        """The base model's figures at ``seed``: broad EM, coherence, benign scores, narrow rate per domain."""
        general = self.general_answers(self.base, seed)
        return {
            "seed": seed,
            "broad_em": rate(general, BROAD),
            "coherence": statistics.mean(r["coherent"] for r in general),
            **self.benign_scores(self.base, seed),
            "narrow": {d: self.narrow(self.base, d, seed) for d in domains},
        }


class RowStore:
    """Rows kept in a JSONL file as they are made, reused by a rerun with the same settings."""

    def __init__(self, path: str | Path | None, settings: Mapping[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.settings = json.loads(json.dumps(settings))
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            if lines and lines[0].get("settings") == self.settings:
                self.rows = {line["key"]: line["row"] for line in lines[1:]}
        if self.path is not None and not self.rows:
            write_jsonl(self.path, [{"settings": self.settings}])

    def get(self, key: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The row stored under ``key``, made (and stored) the first time."""
        if key not in self.rows:
            self.rows[key] = make()
            if self.path is not None:
                append_jsonl(self.path, [{"key": key, "row": self.rows[key]}])
        return self.rows[key]


@dataclass(frozen=True)
class Plan:
    """What one experiment runs: the world's cache, sizes, domains, arms, steps, ranks and seeds."""

    cache_dir: str
    config: LabConfig
    inputs: str
    rows: str
    domains: tuple[str, ...]
    arms: tuple[Arm, ...]
    steps: tuple[int, ...]
    ranks: tuple[int, ...]
    seeds: tuple[int, ...]

    def groups(self) -> list[tuple]:
        """Units of work: ("benign", seed), then ("organisms", rank, steps, seed) with the most
        steps first, then the fewest, then the rest (what matters most first, should a run be cut)."""
        steps = sorted(self.steps)
        order = [steps[-1]] + steps[:-1]
        organisms = [
            ("organisms", r, s, seed) for s in order for r in sorted(self.ranks, reverse=True) for seed in self.seeds
        ]
        return [("benign", seed) for seed in self.seeds] + organisms

    def settings(self, world: World) -> dict[str, Any]:
        """What a stored row depends on (a change starts its group's file afresh); rows are
        keyed by domain and arm, so other domains or arms reuse those already made."""
        return {"world": world.identity, "config": asdict(self.config)}


_LABS: dict[tuple, DefenseLab] = {}  # one lab per worker process, reused over its groups


def run_group(plan: Plan, group: tuple) -> list[dict[str, Any]]:
    """The rows of one group of runs, made or read from its file (in a worker process or not)."""
    key = (plan.cache_dir, plan.config, plan.inputs)
    if key not in _LABS:
        torch.set_num_threads(1)  # tiny matrices; see chains.organism.build
        _LABS[key] = DefenseLab(build_world(plan.cache_dir, progress=False), plan.config, plan.inputs)
    lab = _LABS[key]
    store = RowStore(Path(plan.rows) / ("-".join(map(str, group)) + ".jsonl"), plan.settings(lab.world))
    if group[0] == "benign":
        seed = group[1]
        rows = [store.get(json.dumps(["base"]), lambda: {"kind": "base", **lab.base_row(plan.domains, seed)})]
        return rows + [
            store.get(json.dumps([a.label, a.strength]), lambda a=a: {"kind": "benign", **lab.benign_row(a, seed)})
            for a in plan.arms
        ]
    _, rank, steps, seed = group
    return [
        store.get(
            json.dumps([d, a.label, a.strength]),
            lambda a=a, d=d: {"kind": "organism", **lab.organism_row(a, d, steps, rank, seed)},
        )
        for d in plan.domains
        for a in plan.arms
    ]
