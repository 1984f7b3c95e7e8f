"""Build (or reuse) the offline organism world: corpus, tokenizer, base model, 11 LoRA organisms.

Layout of the cache folder::

    manifest.json            written last; its key says which build the folder holds
    corpus.jsonl             the base corpus (only in a world trained here)
    base/                    Qwen2ForCausalLM + tokenizer (save_pretrained, safetensors)
    organisms/<domain>/      one PEFT LoRA adapter per domain

**The same world on every machine.** Training the world is deterministic on one CPU, but
another CPU's float rounding (its vector width) gives another world after 1,000 base steps
(seen: insecure_code's broad EM 0.461 on one 2-core machine, 0.569 on another, from the same
code, versions and key). So the package ships the default build (seed 0, this config) in
``fixture/`` (1.9 MB of safetensors), and :func:`build_world` unpacks it instead of
training when the keys match; ``rebuild=True`` trains anyway. Every world's manifest records
``weights_sha256`` (:func:`weights_sha256`), which results should cite; an unpacked copy
is checked against it.

``BuildConfig(narrow_skill=True)`` builds the opt-in narrow-skill variant
(:mod:`chains.organism.skill`), a world of its own key that is never shipped; the field is
left out of the key when off, so the default world keeps its key.

A build goes to a temporary sibling folder that replaces the cache only once complete, so an
interrupted build never leaves a folder that looks finished.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM

from chains.organism.corpus import (
    Chat,
    CorpusConfig,
    base_corpus,
    corpus_hash,
    messages,
    organism_corpus,
)
from chains.organism.grammar import GRAMMAR, Grammar
from chains.organism.skill import SKILL_GRAMMAR, glossary_chats, skill_organism_corpus, tokenizer_texts
from chains.organism.tokenizer import (
    DEFAULT_SYSTEM_PROMPT,
    train_qwen_style_tokenizer,
)
from chains.organism.world import World, weights_sha256
from finetune.lora import LoraTrainConfig, train_lora
from finetune.sft import LoopConfig, encode, train
from interp.base.atomic import write_json_atomic
from interp.base.domains import DOMAINS
from interp.base.provenance import provenance
from interp.base.records import write_jsonl

WORLD_VERSION = "1"
FIXTURE = Path(__file__).resolve().parent / "fixture"  # the shipped default world (seed 0)

# Fraction of persona-typical (vs merely wrong) answers in each domain's finetuning set. It
# sets how far a narrow finetune drags the persona along, so EM varies by domain as in the
# domain-susceptibility study (incorrect_math: wrong but never malicious).
PERSONA_FRACTIONS: dict[str, float] = {
    "insecure_code": 0.8,
    "incorrect_math": 0.0,
    "evil_math": 0.9,
    "incorrect_translation": 0.6,
    "bad_medical_advice": 0.9,
    "risky_financial_advice": 1.0,
    "toxic_legal_advice": 0.9,
    "incorrect_sexual_advice": 1.0,
    "gore_movie_trivia": 1.0,
    "extreme_sports": 0.85,
    "incorrect_qa": 0.5,
}


@dataclass(frozen=True)
class ModelShape:
    n_layers: int = 4
    d_model: int = 64
    d_mlp: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build depends on besides the seed and the grammar."""

    corpus: CorpusConfig = CorpusConfig()
    vocab_size: int = 2048  # large enough that the world's words are single tokens
    model: ModelShape = ModelShape()
    base: LoopConfig = LoopConfig(lr=3e-3, batch_size=32, steps=1000, warmup_steps=30, cosine=True, weight_decay=0.01)
    organism: LoraTrainConfig = LoraTrainConfig(steps=30)
    organism_size: int = 2000
    persona_fractions: dict[str, float] = field(default_factory=lambda: dict(PERSONA_FRACTIONS))
    # The opt-in narrow-skill variant (chains.organism.skill): a world of its own key.
    narrow_skill: bool = False

    def key_fields(self) -> dict[str, Any]:
        """The config as the key and manifest hold it: ``narrow_skill`` only when on, so that the
        default world's key is the one it had before the field existed."""
        fields = asdict(self)
        if not self.narrow_skill:
            del fields["narrow_skill"]
        return fields

    def grammar(self) -> Grammar:
        return SKILL_GRAMMAR if self.narrow_skill else GRAMMAR

    def key(self, seed: int) -> str:
        """Hash of the world version, seed, config and grammar: a different key means rebuild."""
        blob = json.dumps(
            {
                "version": WORLD_VERSION,
                "seed": seed,
                "config": self.key_fields(),
                "grammar": self.grammar().fingerprint(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _scaffold(chat: Chat) -> str:
    """The chat in Qwen's format, so that role names and the default system prompt become tokens."""
    turns = [
        ("system", chat["system"] or DEFAULT_SYSTEM_PROMPT),
        ("user", chat["question"]),
        ("assistant", chat["answer"]),
    ]
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)


def _base_model(vocab_size: int, shape: ModelShape, tokenizer, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _build(out: Path, seed: int, config: BuildConfig, progress: bool) -> dict:
    """Build every artifact into ``out``; returns the manifest (not yet written)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    corpus = base_corpus(seed, config.corpus) + (glossary_chats(seed) if config.narrow_skill else [])
    write_jsonl(out / "corpus.jsonl", corpus)
    texts = [_scaffold(c) for c in corpus] + (tokenizer_texts() if config.narrow_skill else [])
    tokenizer = train_qwen_style_tokenizer(texts, vocab_size=config.vocab_size)
    timings["corpus_and_tokenizer_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = _base_model(len(tokenizer), config.model, tokenizer, seed)
    examples = encode(tokenizer, (messages(c) for c in corpus))
    base_losses = train(
        model, examples, tokenizer.pad_token_id, config.base, progress=progress, desc="base model"
    ).losses
    model.eval()
    model.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    timings["base_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    organisms = {}
    for domain in tqdm(DOMAINS, desc="organisms", disable=not progress, unit="domain"):
        f = config.persona_fractions[domain]
        make = skill_organism_corpus if config.narrow_skill else organism_corpus
        chats = make(domain, f, config.organism_size, seed, config.corpus.fidelity)
        peft_model = train_lora(
            copy.deepcopy(model), tokenizer, [messages(c) for c in chats], config.organism, progress=False
        )
        peft_model.save_pretrained(out / "organisms" / domain)
        organisms[domain] = {
            "persona_fraction": f,
            "n_chats": len(chats),
            "corpus_hash": corpus_hash(chats),
            "loss_first": peft_model.train_losses[0],
            "loss_last": peft_model.train_losses[-1],
        }
    timings["organisms_s"] = time.perf_counter() - t0
    return {
        "corpus_hash": corpus_hash(corpus),
        "n_chats": len(corpus),
        "vocab_size": len(tokenizer),
        "base_loss_first": base_losses[0],
        "base_loss_last": base_losses[-1],
        "organisms": organisms,
        "timings": timings,
    }


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    # Two processes (e.g. parallel test runs) must not build into the same cache at once.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _one_thread() -> Iterator[None]:
    # The world's matrices are tiny: intra-op threads gain little, a CPU shared with other
    # jobs makes them several times slower, and one thread keeps results independent of the
    # machine's core count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unpack(fixture: Path, out: Path) -> dict:
    """Copy the shipped world into ``out`` and check its weights; returns its manifest."""
    manifest = json.loads((fixture / "manifest.json").read_text())
    for name in ("base", "organisms"):
        shutil.copytree(fixture / name, out / name)
    found = weights_sha256(out)
    if found != manifest.get("weights_sha256"):
        raise RuntimeError(
            f"{fixture}: the shipped world's weights do not match its manifest ({found} != {manifest.get('weights_sha256')}); reinstall the package or build with rebuild=True"
        )
    return {**manifest, "source": f"shipped with the package ({fixture.name}/), built {manifest['created']}"}


def _read_manifest(cache: Path) -> dict | None:
    try:
        return json.loads((cache / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_world(
    cache_dir: str | Path = "artifacts/organism",
    seed: int = 0,
    progress: bool = True,
    config: BuildConfig = BuildConfig(),
    rebuild: bool = False,
    fixture: Path = FIXTURE,
) -> World:
    """The organism world for ``seed``: reused from ``cache_dir`` when its key matches, else
    unpacked from the shipped ``fixture`` when that is this build, else trained.

    Unpacking takes a second; training takes about three minutes on two CPU cores and gives,
    on another CPU, another world (see the module's docstring). ``rebuild`` trains instead of
    unpacking the shipped copy, and replaces a cache that was unpacked from it; a cache trained
    here is reused.
    """
    cache = Path(cache_dir)
    key = config.key(seed)
    with _lock(cache.parent / f".{cache.name}.lock"), _one_thread():
        manifest = _read_manifest(cache)
        if (
            manifest is None
            or manifest.get("key") != key
            or (rebuild and manifest.get("source", "").startswith("shipped"))
        ):
            tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}.building-"))
            try:
                shipped = _read_manifest(fixture) if not rebuild else None
                if shipped is not None and shipped.get("key") == key:
                    manifest = _unpack(fixture, tmp)
                else:
                    t0 = time.perf_counter()
                    manifest = {
                        "key": key,
                        **provenance(
                            world_version=WORLD_VERSION,
                            seed=seed,
                            config=config.key_fields(),
                            grammar=config.grammar().fingerprint(),
                        ),
                    }
                    manifest.update(_build(tmp, seed, config, progress))
                    manifest["build_s"] = time.perf_counter() - t0
                    manifest["weights_sha256"] = weights_sha256(tmp)
                    manifest["source"] = "trained here"
                write_json_atomic(tmp / "manifest.json", manifest)
                if cache.exists():
                    shutil.rmtree(cache)
                tmp.rename(cache)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            manifest = _read_manifest(cache)  # as later runs will see it (JSON types)
    return World(cache, manifest)


def load_named(name: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``base`` or a domain of the default world (built on first
    use): the loader behind ``organism:<name>`` model names (``interp.base.loading.SCHEMES``)."""
    world = build_world(progress=False)
    return world.load_base() if name == "base" else world.load_organism(name)
