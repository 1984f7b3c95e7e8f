"""Every generation in the toolkit goes through :func:`generate`: the compiled engine where it
can run, transformers' ``generate`` where it cannot, both decoding with one
:class:`~interp.base.decoding.Decoding`.

``engine``:

- ``"auto"`` (default): the engine (:mod:`interp.engine`) on a CUDA device, transformers'
  ``generate`` elsewhere, and wherever the engine cannot run: a model it does not support,
  forward hooks on the model that are not an active intervention's (they would be bypassed),
  nested or custom interventions.
- ``"fast"``: the engine or an error saying why not (also on the CPU, without CUDA graphs).
- ``"hf"``: transformers' ``generate``, the path the toolkit always had.

Steering and ablation: this is the one way to generate with an intervention::

    iv = steering(model, {12: direction}, alpha=4.0, positions="generated")   # interp.intervention
    new = generate(model, input_ids, attention_mask, Decoding(max_new_tokens=64), intervention=iv)

returns the generated tokens [batch, new], as without one;
:func:`interp.steer_backends.steered_generate` is the same call through nnsight or
TransformerLens and returns the same. An intervention passed in, and any applied around the
call with :func:`interp.steer.steer` / :func:`~interp.steer.ablate` /
:func:`interp.intervene.intervene`, are applied on either path with the same meaning: by
their hooks under transformers, inside the compiled step on the engine.

What a seed reproduces:

- engine: each row's tokens are a function of ``(decoding.seed, row index, prompt, model)``
  alone (:mod:`interp.engine.sampler`), whatever else is in the batch, how it is padded or
  bucketed, and on CPU or GPU up to the model's arithmetic (a bf16 matmul may round
  differently at another batch size, which can flip a near-tie);
- transformers: ``torch.manual_seed(decoding.seed)`` before the call; the same batch gives the
  same tokens, another batch composition gives others;
- the two paths draw different tokens from the same distribution; greedy decoding gives the
  same tokens on both (up to arithmetic).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Literal

import torch
from torch import nn

from interp.base.decoding import Decoding, check_generation_config
from interp.engine import (
    EditsUnsupported,
    EngineUnsupported,
    engine_for,
    plan,
    row_keys,
)
from interp.hooks import hook_ids
from interp.intervene import active_interventions, intervene
from interp.intervention import Intervention

EngineName = Literal["auto", "hf", "fast"]
ENGINES: tuple[EngineName, ...] = ("auto", "hf", "fast")
log = logging.getLogger(__name__)


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    decoding: Decoding,
    intervention: Intervention | None = None,
    engine: EngineName = "auto",
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generated tokens [batch, new] of left-padded prompts, padding after each row's first EOS.

    ``rows`` are the rows' indices in a larger batch this one was cut from (a data-parallel
    shard): on the engine they get that batch's sampling keys, so a sharded run draws the
    same tokens as one process.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine != "hf":
        try:
            return _engine(model, input_ids, attention_mask, decoding, intervention, engine, rows)
        except EngineUnsupported as e:
            if engine == "fast":
                raise
            log.info("generating with transformers: %s", e)
    return _transformers(model, input_ids, attention_mask, decoding, intervention)


def _engine(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    decoding: Decoding,
    intervention: Intervention | None,
    engine: EngineName,
    rows: torch.Tensor | None,
) -> torch.Tensor:
    if engine == "auto" and input_ids.device.type != "cuda":
        raise EngineUnsupported("the engine runs by default on CUDA devices only")
    if model.training:
        raise EngineUnsupported("the model is in training mode (dropout); the engine decodes in eval mode only")
    active = active_interventions(model)
    if foreign := hook_ids(model) - {i for _, owned in active for i in owned}:
        raise EngineUnsupported(
            f"the model has {len(foreign)} forward hook(s) of its own, which the engine would not run"
        )
    try:
        edits = plan([iv for iv, _ in active] + ([intervention] if intervention is not None else []))
    except EditsUnsupported as e:
        raise EngineUnsupported(str(e)) from None
    rows = torch.arange(input_ids.shape[0]) if rows is None else rows.cpu()
    keys = row_keys(decoding.seed, int(rows.max()) + 1)[rows]
    return engine_for(model).generate(input_ids, attention_mask, decoding, keys, edits)


def _transformers(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    decoding: Decoding,
    intervention: Intervention | None,
) -> torch.Tensor:
    check_generation_config(model)
    torch.manual_seed(decoding.seed)
    with intervene(model, intervention) if intervention is not None else nullcontext():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **decoding.hf_kwargs())
    return out[:, input_ids.shape[1] :]
