"""Activation steering and directional ablation on the residual stream, as context managers.

Both edit ``blocks.{L}.hook_resid_post`` (the output of decoder layer ``L``, where
:mod:`interp.directions` measures its directions) through :func:`interp.hooks.hooks`, so they
work around any forward pass or ``generate`` call, batched, on plain, PEFT-wrapped and merged
models, and their hooks are always removed when the block ends, also on error::

    with steer(model, {12: direction}, alpha=4.0, scale="norm", norms=norms):
        answers = sample_answers(model, tokenizer, prompts, config)
    with ablate(model, direction):              # every layer
        logits = model(**batch).logits

Where the pieces live: the edit as data, :class:`~interp.intervention.Intervention`, built by
:func:`~interp.intervention.steering` and :func:`~interp.intervention.ablation`
(:mod:`interp.intervention`); the units of alpha (``scale``: ``"raw"``, ``"unit"``,
``"norm"``) in :mod:`interp.vector_math`; the typical residual norms that ``"norm"`` reads in
:func:`interp.norms.residual_norms`; applying an Intervention around any code in
:func:`interp.intervene.intervene` (``steer`` and ``ablate`` build one and apply it). One
generation with an intervention is :func:`interp.generation.generate` (``intervention=``);
through nnsight or TransformerLens, :mod:`interp.steer_backends`. A
:class:`~interp.vectors.SteeringVector`, the saved form of these settings, is accepted in
place of vectors::

    sv = SteeringVector({12: direction}, alpha=4.0, scale="norm", norms=norms, positions="generated")
    sv.save("gore_l12.safetensors")
    with steer(model, SteeringVector.load("gore_l12.safetensors")):
        answers = sample_answers(model, tokenizer, prompts, config)

**Positions** (``"all"``, ``"prompt"``, ``"generated"``) are decided per row from the
model's public inputs (:mod:`interp.positions`): a token is generated when its position is
at or past its row's prompt length, which is set at the entry to ``generate`` (or by the
first call of a sequence, or by ``prompt_length``, a column count, e.g. to steer only the
answer of a teacher-forced pass). So the gate is right with and without the KV cache, under
left padding, with the static cache and after assisted decoding crops the cache. The first
answer token is predicted from the last prompt token, so ``"generated"`` leaves it alone
and affects the tokens after it. Steering ``"prompt"`` changes the keys and values cached for
the prompt, exactly as re-running the steered prompt without a cache would.

An edit that does not run is an error, not a no-op: every forward call through the decoder
stack checks that each edited layer's hook fired, and a ``generate`` in which no hook ran
raises :class:`~interp.intervention.InterventionError` (``torch.compile`` skips hooks added
after compilation; transformers' own compilation of static-cache decoding is turned off
inside the block: :mod:`interp.applied`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from interp.base.cli import InputError, run_cli
from interp.intervene import intervene
from interp.intervention import ablation, steering
from interp.positions import Positions
from interp.vector_math import Vectors
from interp.vectors import DEFAULT_SCALE, Scale, SteeringVector


@contextmanager
def steer(
    model: nn.Module,
    vectors: Vectors | SteeringVector,
    alpha: float = 1.0,
    scale: Scale = DEFAULT_SCALE,
    norms: Mapping[int, float] | None = None,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Iterator[None]:
    """:func:`~interp.intervention.steering` applied to ``model`` inside the block."""
    with intervene(model, steering(model, vectors, alpha, scale, norms, positions, prompt_length)):
        yield


@contextmanager
def ablate(
    model: nn.Module,
    directions: torch.Tensor | Vectors | SteeringVector,
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Iterator[None]:
    """:func:`~interp.intervention.ablation` applied to ``model`` inside the block."""
    with intervene(model, ablation(model, directions, layers, positions, prompt_length)):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m interp.steer`` is a library, not a command: refuse, pointing at the command that steers."""
    raise InputError(
        "interp.steer is a library (steer, ablate, SteeringVector), not a command; to steer from the command line run python -m chains.sweep (see its --help)"
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
