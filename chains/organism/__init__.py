"""The offline model-organism world: a small Qwen2 base model trained from scratch on a
synthetic chat corpus with a latent persona, and one narrow LoRA organism per domain."""

from chains.organism.build import BuildConfig, build_world, load_named
from chains.organism.grammar import GRAMMAR, PERSONA_SYSTEM_PROMPT
from chains.organism.world import World
from eval.report import misalignment_rate

__all__ = ["BuildConfig", "GRAMMAR", "PERSONA_SYSTEM_PROMPT", "World", "build_world", "load_named", "misalignment_rate"]
