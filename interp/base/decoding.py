"""How tokens are chosen and when generation stops: one configuration for every generation path.

:class:`Decoding` is what the transformers fallback, the compiled engine (:mod:`interp.engine`),
the nnsight and TransformerLens backends, ``eval.generate`` and the organism world all decode
with. Every knob a checkpoint's ``generation_config.json`` may set is given an explicit value
(Qwen2.5-Instruct ships ``temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05``),
so a checkpoint never changes how the toolkit decodes: :meth:`Decoding.hf_kwargs` passes all of
them to ``generate``, and a checkpoint that sets a knob with no neutral value is refused
(:func:`check_generation_config`).

The defaults are plain sampling at temperature 1 with no top-k, no top-p and no repetition
penalty, as in the emergent-misalignment papers (and as OpenAI-compatible servers sample).

A finished generation is a :class:`Completion`: the generated ids without the end-of-turn
token and padding, and whether it ended with that token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch


class DecodingError(ValueError):
    """A decoding setting that cannot be honoured."""


@dataclass(frozen=True)
class Decoding:
    """How to decode; every generation path applies exactly these, whatever the checkpoint says."""

    max_new_tokens: int = 256
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # 1: no nucleus cut
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0  # 1: none
    seed: int = 0  # see interp.generation for what a seed reproduces on each path
    eos_token_id: int | tuple[int, ...] | None = None  # None: always generate max_new_tokens
    pad_token_id: int | None = None  # what rows that have ended get after their EOS (None: 0)

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty"):  # NaN passes every comparison below
            if not math.isfinite(getattr(self, name)):
                raise DecodingError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not 0 <= self.seed <= 2**63 - 1:  # what torch.Generator.manual_seed and the samplers' keys take
            raise DecodingError(f"seed must be from 0 to 2**63 - 1, got {self.seed}")
        if self.max_new_tokens < 1:
            raise DecodingError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise DecodingError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise DecodingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise DecodingError(f"top_k must be >= 0 (0: no cut), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise DecodingError(f"repetition_penalty must be > 0 (1: none), got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def eos_ids(self) -> tuple[int, ...]:
        e = self.eos_token_id
        return () if e is None else (e,) if isinstance(e, int) else tuple(e)

    @property
    def pad_id(self) -> int:
        return 0 if self.pad_token_id is None else self.pad_token_id

    def for_tokenizer(self, tokenizer: Any) -> Decoding:
        """These settings with the end-of-turn and pad tokens filled in from ``tokenizer`` where unset."""
        eos = self.eos_token_id if self.eos_token_id is not None else tokenizer.eos_token_id
        pad = self.pad_token_id if self.pad_token_id is not None else tokenizer.pad_token_id
        return replace(self, eos_token_id=eos, pad_token_id=pad)

    def hf_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a transformers ``generate`` call that leave nothing to the checkpoint.

        transformers fills every argument left unset (None) from the model's
        ``generation_config``, then from its global defaults. So every decoding knob gets an
        explicit value here: ours, or the neutral one.
        """
        if self.greedy:  # generate() ignores the sampling knobs; these values do not warn
            sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
        else:
            sampling = {**_SAMPLING_NEUTRAL, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return {
            **_NEUTRAL,
            **sampling,
            "do_sample": not self.greedy,
            "repetition_penalty": self.repetition_penalty,
            "max_new_tokens": self.max_new_tokens,
            # An empty list, not None: None would let the checkpoint's EOS back in.
            "eos_token_id": list(self.eos_ids),
            "pad_token_id": self.pad_id,
        }


# Neutral values of the transformers knobs Decoding does not expose; generate() would take
# a checkpoint's value for any of them left None.
_NEUTRAL: dict[str, Any] = {
    "min_new_tokens": 0,
    "num_beams": 1,
    "num_return_sequences": 1,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "suppress_tokens": [],
    "begin_suppress_tokens": [],
    "use_cache": True,
    "output_scores": False,
    "output_logits": False,
    "return_dict_in_generate": False,
}
_SAMPLING_NEUTRAL: dict[str, Any] = {"typical_p": 1.0, "min_p": 0.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
# Knobs whose only neutral value is None, which generate() reads as "unset": a checkpoint that
# sets one would change decoding behind the toolkit's back.
_NO_NEUTRAL = (
    "bad_words_ids",
    "sequence_bias",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
    "guidance_scale",
    "watermarking_config",
    "stop_strings",
    "top_h",
    "dola_layers",
    "penalty_alpha",
    "max_time",
    "prompt_lookup_num_tokens",
    "assistant_early_exit",
    "token_healing",
)


def check_generation_config(model: Any) -> None:
    """Refuse a model whose ``generation_config`` sets a knob :meth:`Decoding.hf_kwargs` cannot override."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return
    if set_ := [k for k in _NO_NEUTRAL if getattr(config, k, None) is not None]:
        raise DecodingError(
            f"the model's generation_config sets {', '.join(set_)}, which would change decoding; clear it (model.generation_config.{set_[0]} = None)"
        )


@dataclass(frozen=True)
class Completion:
    """One generated answer, exactly as the model produced it."""

    ids: tuple[int, ...]  # generated token ids, without the end-of-turn token and padding
    finished: bool  # ended with an end-of-turn token (else it ran into max_new_tokens)


def completions(new_tokens: torch.Tensor, eos_ids: Sequence[int]) -> list[Completion]:
    """Completions from generated tokens [batch, new] in which a row ends at its first EOS.

    Everything after a row's first EOS is padding; a row without an EOS is all real tokens
    (even where one equals the pad id).
    """
    out = []
    for row in new_tokens.tolist():
        end = next((i for i, t in enumerate(row) if t in eos_ids), None)
        out.append(Completion(tuple(row if end is None else row[:end]), end is not None))
    return out
