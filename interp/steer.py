"""Activation steering and directional ablation on the residual stream.

Both edit ``blocks.{L}.hook_resid_post`` (the output of decoder layer ``L``, where
:mod:`interp.directions` measures its directions) through :func:`interp.hooks.hooks`, so they
work around any forward pass or ``generate`` call, batched, on plain, PEFT-wrapped and merged
models, and their hooks are always removed when the block ends, also on error::

    with steer(model, {12: direction}, alpha=4.0, scale="norm", norms=norms):
        answers = sample_answers(model, tokenizer, prompts, config)
    with ablate(model, direction):              # every layer
        logits = model(**batch).logits

Each edit is an :class:`Intervention`, built by :func:`steering` or :func:`ablation`;
:func:`intervene` applies one with these hooks (``steer`` and ``ablate`` do both steps), and
:mod:`interp.steer_backends` runs the same one through nnsight or TransformerLens.

Vectors are kept in float32 and cast to the hidden states' dtype and device at hook time.

**Units of alpha** (``scale``; the default is ``"raw"``):

- ``"raw"``: add ``alpha * v`` as given. For a difference-of-means direction, ``alpha = 1``
  moves the mean aligned activation exactly onto the mean misaligned one.
- ``"unit"``: add ``alpha * v / |v|``; alpha is a length in residual-stream units.
- ``"norm"``: add ``alpha * n_L * v / |v|``, where ``n_L`` is the typical residual norm at
  that layer (:func:`residual_norms`, or your own numbers); alpha is then a fraction of the
  stream's size, comparable across layers and models whose norms grow with depth.

**Positions** are sequence columns of the padded batch, counted from the start of the
sequence, so they stay right during cached decoding, where each forward call sees only the
newest column. ``"prompt"`` is the columns before the prompt length, ``"generated"`` the
columns from it on; with left padding (as ``generate`` wants) every row's prompt ends at the
same column. The prompt length is the width of the first forward call of each generation,
found anew whenever a new sequence starts (a call at column 0 with a fresh KV cache, or,
without a cache, a call whose input does not extend the last prompt), or fixed by passing
``prompt_length`` (needed e.g. to steer only the answer of a teacher-forced pass). The first
answer token is predicted from the last prompt column, so ``"generated"`` leaves it alone
and affects the tokens after it. Steering ``"prompt"`` changes the keys and values cached for
the prompt, exactly as re-running the steered prompt without a cache would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from interp.cache import Conversation, pad_right, right_padded_inputs, tokenize_conversation
from interp.hooks import HookFn, decoder_layers, hooks, resid_post, stop_after

Positions = Literal["all", "prompt", "generated"]
Scale = Literal["raw", "unit", "norm"]
POSITIONS: tuple[Positions, ...] = ("all", "prompt", "generated")
SCALES: tuple[Scale, ...] = ("raw", "unit", "norm")
DEFAULT_SCALE: Scale = "raw"

Vectors = Mapping[int, torch.Tensor]
Edit = Callable[[torch.Tensor], torch.Tensor]  # hidden states -> edited hidden states


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.detach().float()
    norm = v.norm()
    if norm == 0:
        raise ValueError("cannot normalise a zero vector")
    return v / norm


def _layer_index(layer: int, num_layers: int) -> int:
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"layer {layer} out of range for a {num_layers}-layer model")
    return layer % num_layers


def _d_model(model: nn.Module) -> int:
    return model.get_input_embeddings().weight.shape[1]


def _check_vector(v: torch.Tensor, d_model: int, what: str) -> None:
    if v.ndim != 1 or v.shape[0] != d_model:
        raise ValueError(f"{what} has shape {tuple(v.shape)}; expected ({d_model},)")


def steering_deltas(
    vectors: Vectors,
    alpha: float = 1.0,
    scale: Scale = DEFAULT_SCALE,
    norms: Mapping[int, float] | None = None,
) -> dict[int, torch.Tensor]:
    """The float32 vector added at each layer, ``alpha`` read in the units of ``scale``."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    out = {}
    for layer, v in vectors.items():
        if scale == "raw":
            out[layer] = alpha * v.detach().float()
        elif scale == "unit":
            out[layer] = alpha * _unit(v)
        else:
            if norms is None or layer not in norms:
                raise ValueError(f"scale='norm' needs the residual norm at layer {layer}; pass norms (see residual_norms)")
            out[layer] = alpha * float(norms[layer]) * _unit(v)
    return out


def project_out(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``x - (x . u) u`` along the last dim, for unit ``u``; computed in float32, cast back."""
    xf = x.float()
    uf = u.to(device=x.device, dtype=torch.float32)
    return (xf - (xf @ uf)[..., None] * uf).to(x.dtype)


def random_like(vector: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A Gaussian random direction with ``vector``'s norm: the control for a steering vector."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(vector.shape[-1], generator=g, dtype=torch.float64)
    return (r / r.norm() * vector.double().norm()).float()


@dataclass(frozen=True, eq=False)
class Intervention:
    """Edits of resid_post at some decoder layers, and the sequence columns they apply to.

    Built by :func:`steering` and :func:`ablation`; applied with native hooks by
    :func:`intervene` (which :func:`steer` and :func:`ablate` wrap), or through any backend by
    :mod:`interp.steer_backends`. Layers are 0-based and already resolved.
    """

    edits: Mapping[int, Edit]
    positions: Positions = "all"
    prompt_length: int | None = None  # None: the width of the first forward call (module doc)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; expected one of {', '.join(POSITIONS)}")
        if self.prompt_length is not None and self.prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {self.prompt_length}")

    @property
    def layers(self) -> list[int]:
        return sorted(self.edits)

    def columns(self, start: int, width: int, prompt_length: int, device: torch.device) -> torch.Tensor | None:
        """[width] bool: which of the columns ``start, start + 1, ...`` to edit; None: all."""
        if self.positions == "all":
            return None
        cols = torch.arange(start, start + width, device=device)
        return cols < prompt_length if self.positions == "prompt" else cols >= prompt_length

    def apply(self, layer: int, hidden: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
        """``hidden`` [batch, seq, d_model] with layer's edit applied at ``columns``."""
        new = self.edits[layer](hidden)
        return new if columns is None else torch.where(columns.to(hidden.device)[None, :, None], new, hidden)

    def editor(self) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """A fresh ``(layer, hidden) -> edited hidden`` for one forward pass or one generation.

        For backends that see hidden states only: call it at every edited layer of every
        forward call, in layer order, with the KV cache on. A call at the lowest edited layer
        starts a new forward call, whose columns follow the previous call's (as they do with
        a KV cache); the first call's width is the prompt length unless it is fixed.
        """
        first = min(self.edits, default=None)
        start, width, prompt_length = 0, 0, self.prompt_length
        columns: torch.Tensor | None = None

        def edit(layer: int, hidden: torch.Tensor) -> torch.Tensor:
            nonlocal start, width, prompt_length, columns
            if layer == first:
                start, width = start + width, hidden.shape[1]
                if prompt_length is None:
                    prompt_length = width
                columns = self.columns(start, width, prompt_length, hidden.device)
            return self.apply(layer, hidden, columns)

        return edit


class _PositionGate:
    """Tracks, per forward call, which sequence columns an intervention applies to.

    It watches the input of decoder layer 0: the columns of a call start at the KV cache's
    length (or ``cache_position``); a new sequence starts the prompt anew (see module doc).
    """

    def __init__(self, intervention: Intervention) -> None:
        self.intervention = intervention
        self.prompt_length = intervention.prompt_length
        self.prompt_input: torch.Tensor | None = None  # layer-0 input of the last uncached prompt
        self.columns: torch.Tensor | None = None  # [seq] bool for the current call

    def observe(self, hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("past_key_values")
        cache_position = kwargs.get("cache_position")
        # The cache's length is a host-side int; reading cache_position (on the GPU) would stall
        # every decoding step on a device sync, which costs ~8% at batch 1.
        if cache is not None:
            start = int(cache.get_seq_length())
        elif cache_position is not None:
            start = int(cache_position.reshape(-1)[0])
        else:
            start = 0
        seq = hidden.shape[1]
        if self.intervention.prompt_length is None and start == 0 and (cache is not None or not self._extends_prompt(hidden)):
            self.prompt_length = seq
            # Without a cache, generate re-feeds prompt + generated tokens at every step; the
            # prompt's layer-0 input tells such a continuation apart from a new prompt.
            self.prompt_input = None if cache is not None else hidden.detach().clone()
        self.columns = self.intervention.columns(start, seq, self.prompt_length, hidden.device)

    def _extends_prompt(self, hidden: torch.Tensor) -> bool:
        p = self.prompt_input
        return (
            p is not None
            and hidden.shape[0] == p.shape[0]
            and hidden.shape[1] > p.shape[1]
            and torch.equal(hidden[:, : p.shape[1]], p.to(hidden.device))
        )


@contextmanager
def intervene(model: nn.Module, intervention: Intervention) -> Iterator[None]:
    """Apply ``intervention`` to ``model``'s forward passes and ``generate`` calls in the block."""
    gate = _PositionGate(intervention)
    fns: dict[str, HookFn] = {}
    if intervention.positions != "all":
        fns["blocks.0.hook_resid_pre"] = gate.observe

    def edit(layer: int) -> HookFn:
        return lambda hidden, kwargs: intervention.apply(layer, hidden, gate.columns)

    fns.update({resid_post(layer): edit(layer) for layer in intervention.layers})
    with hooks(model, fns):
        yield


def steering(
    model: nn.Module,
    vectors: Vectors,
    alpha: float = 1.0,
    scale: Scale = DEFAULT_SCALE,
    norms: Mapping[int, float] | None = None,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Intervention:
    """Add ``alpha * vectors[L]`` (in the units of ``scale``) to resid_post of each layer L."""
    num_layers, d = len(decoder_layers(model)), _d_model(model)
    vectors = {_layer_index(l, num_layers): v for l, v in vectors.items()}
    if norms is not None:
        norms = {_layer_index(l, num_layers): n for l, n in norms.items()}
    for layer, v in vectors.items():
        _check_vector(v, d, f"steering vector for layer {layer}")
    deltas = steering_deltas(vectors, alpha, scale, norms)

    def add(delta: torch.Tensor) -> Edit:
        cast: dict[tuple, torch.Tensor] = {}  # one host-to-device copy, not one per decoding step

        def edit(hidden: torch.Tensor) -> torch.Tensor:
            key = (hidden.device, hidden.dtype)
            if key not in cast:
                cast[key] = delta.to(device=hidden.device, dtype=hidden.dtype)
            return hidden + cast[key]

        return edit

    return Intervention({l: add(v) for l, v in deltas.items()}, positions, prompt_length)


def ablation(
    model: nn.Module,
    directions: torch.Tensor | Vectors,
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Intervention:
    """Project the unit direction out of resid_post at ``layers`` (default: all).

    ``directions`` is one vector used at every chosen layer, or ``{layer: vector}`` with each
    layer's own direction (then ``layers`` defaults to its keys). Edits each layer's output,
    so every later layer reads a stream with no component along the direction; the embedding
    output entering layer 0 is left as it is.
    """
    num_layers, d = len(decoder_layers(model)), _d_model(model)
    if isinstance(directions, torch.Tensor):
        chosen = range(num_layers) if layers is None else layers
        per_layer = {_layer_index(l, num_layers): directions for l in chosen}
    else:
        per_layer = {_layer_index(l, num_layers): v for l, v in directions.items()}
        if layers is not None:
            wanted = {_layer_index(l, num_layers) for l in layers}
            if missing := wanted - per_layer.keys():
                raise ValueError(f"no direction given for layers {sorted(missing)}")
            per_layer = {l: per_layer[l] for l in sorted(wanted)}
    for layer, v in per_layer.items():
        _check_vector(v, d, f"ablation direction for layer {layer}")

    def remove(u: torch.Tensor) -> Edit:
        return lambda hidden: project_out(hidden, u)

    return Intervention({l: remove(_unit(v)) for l, v in per_layer.items()}, positions, prompt_length)


@contextmanager
def steer(
    model: nn.Module,
    vectors: Vectors,
    alpha: float = 1.0,
    scale: Scale = DEFAULT_SCALE,
    norms: Mapping[int, float] | None = None,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Iterator[None]:
    """:func:`steering` applied to ``model`` inside the block."""
    with intervene(model, steering(model, vectors, alpha, scale, norms, positions, prompt_length)):
        yield


@contextmanager
def ablate(
    model: nn.Module,
    directions: torch.Tensor | Vectors,
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Iterator[None]:
    """:func:`ablation` applied to ``model`` inside the block."""
    with intervene(model, ablation(model, directions, layers, positions, prompt_length)):
        yield


@torch.no_grad()
def residual_norms(
    model: nn.Module,
    tokenizer,
    conversations: Sequence[Conversation],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
) -> dict[int, float]:
    """Mean L2 norm of resid_post at each layer over answer tokens (the typical stream size).

    Answer tokens only, as in :mod:`interp.cache`: the first tokens of real models carry
    outsized norms (attention sinks) that would inflate a mean over all positions.
    """
    num_layers = len(decoder_layers(model))
    layers = sorted({_layer_index(l, num_layers) for l in (range(num_layers) if layers is None else layers)})
    items = [tokenize_conversation(tokenizer, c) for c in conversations]
    if not items:
        raise ValueError("no conversations to measure norms on")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.get_input_embeddings().weight.device
    sums = dict.fromkeys(layers, 0.0)
    n_tokens = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), batch_size):
            ids, answer, _ = pad_right(items[start : start + batch_size], pad_id, device)

            def grab(layer: int, answer=answer):
                def fn(hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
                    sums[layer] += float((hidden.float().norm(dim=-1) * answer.to(hidden.device)).sum())

                return fn

            with hooks(model, {resid_post(l): grab(l) for l in layers}), stop_after(model, max(layers)):
                model(**right_padded_inputs(ids).kwargs(), use_cache=False)
            n_tokens += int(answer.sum())
    finally:
        model.train(was_training)
    if n_tokens == 0:
        raise ValueError("the conversations have no answer tokens")
    return {l: s / n_tokens for l, s in sums.items()}


if __name__ == "__main__":
    from interp.sweep import main

    raise SystemExit(main())
