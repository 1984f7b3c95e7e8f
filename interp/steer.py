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
:mod:`interp.steer_backends` runs the same one through nnsight or TransformerLens. An
Intervention is data (the vector added, or the unit direction projected out, at each layer);
so is a :class:`~interp.vectors.SteeringVector`, the saved form of the settings below, which
every function here accepts in place of vectors::

    sv = SteeringVector({12: direction}, alpha=4.0, scale="norm", norms=norms, positions="generated")
    sv.save("gore_l12.safetensors")
    with steer(model, SteeringVector.load("gore_l12.safetensors")):
        answers = sample_answers(model, tokenizer, prompts, config)

Vectors are kept in float32 and cast to the hidden states' dtype and device at hook time.

**Units of alpha** (``scale``; the default is ``"raw"``):

- ``"raw"``: add ``alpha * v`` as given. For a difference-of-means direction, ``alpha = 1``
  moves the mean aligned activation exactly onto the mean misaligned one.
- ``"unit"``: add ``alpha * v / |v|``; alpha is a length in residual-stream units.
- ``"norm"``: add ``alpha * n_L * v / |v|``, where ``n_L`` is the typical residual norm at
  that layer (:func:`residual_norms`, or your own numbers); alpha is then a fraction of the
  stream's size, comparable across layers and models whose norms grow with depth.

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
raises :class:`InterventionError` (``torch.compile`` skips hooks added after compilation;
transformers' own compilation of static-cache decoding is turned off inside the block).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from interp.base.chat import (
    DEFAULT_SPAN,
    Conversation,
    Span,
    TokenizedConversation,
    as_tokenized,
    check_span,
)
from interp.base.cli import InputError, run_cli
from interp.base.models import (
    d_model,
    decoder_stack,
    input_device,
    layer_index,
    layer_indices,
    n_layers,
    unwrap,
)
from interp.hooks import HookFn, around_calls, hook_ids, hooks, resid_post, stop_after
from interp.inputs import pad_right, right_padded_inputs
from interp.positions import (
    CallInputs,
    PositionError,
    PositionGate,
    Positions,
)
from interp.vectors import DEFAULT_SCALE, SCALES, Scale, SteeringVector

Vectors = Mapping[int, torch.Tensor]


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.detach().float()
    norm = v.norm()
    if norm == 0:
        raise ValueError("cannot normalise a zero vector")
    return v / norm


def _check_vector(v: torch.Tensor, width: int, what: str) -> None:
    if v.ndim != 1 or v.shape[0] != width:
        raise ValueError(f"{what} has shape {tuple(v.shape)}; expected ({width},)")


def steering_deltas(
    vectors: Vectors,
    alpha: float = 1.0,
    scale: Scale = DEFAULT_SCALE,
    norms: Mapping[int, float] | None = None,
) -> dict[int, torch.Tensor]:
    """The float32 vector added at each layer, ``alpha`` read in the units of ``scale``."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha}")
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


class InterventionError(RuntimeError):
    """An intervention's hooks did not run where they had to (e.g. inside compiled code)."""


@dataclass(frozen=True, eq=False, repr=False)
class Intervention:
    """Edits of resid_post at some decoder layers, as data, and the tokens they apply to.

    ``adds[L]`` is the float32 vector added to the output of decoder layer ``L``;
    ``ablations[L]`` the float32 unit direction projected out of it (normalised here; where a
    layer has both, the projection comes first). Built by :func:`steering` and
    :func:`ablation`; applied with native hooks by :func:`intervene` (which :func:`steer` and
    :func:`ablate` wrap), or through any backend by :mod:`interp.steer_backends`. Layers are
    0-based and already resolved. Every backend places the edits through one :class:`Applied`
    (positions: :mod:`interp.positions`).
    """

    adds: Mapping[int, torch.Tensor] = field(default_factory=dict)
    ablations: Mapping[int, torch.Tensor] = field(default_factory=dict)
    positions: Positions = "all"
    prompt_length: int | None = None  # None: the whole prompt (see interp.positions)
    # (edit, layer, device, dtype) -> the vector there: one host-to-device copy, not one per decoding step
    _placed: dict[tuple, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        PositionGate(self.positions, self.prompt_length)  # validates both
        for what, vectors in (("adds", self.adds), ("ablations", self.ablations)):
            for layer, v in vectors.items():
                if not isinstance(layer, int) or layer < 0:
                    raise ValueError(f"{what}: layer {layer!r} is not a resolved 0-based index (steering() and ablation() resolve them)")
                if v.ndim != 1:
                    raise ValueError(f"{what}: the vector at layer {layer} has shape {tuple(v.shape)}; expected (d_model,)")
                # Checked here, where every steering path meets: a NaN would make every logit NaN silently.
                if not torch.isfinite(v).all():
                    raise ValueError(f"{what}: the vector at layer {layer} has NaN or infinite values")
        object.__setattr__(self, "adds", {l: v.detach().float() for l, v in sorted(self.adds.items())})
        object.__setattr__(self, "ablations", {l: _unit(v) for l, v in sorted(self.ablations.items())})

    @property
    def layers(self) -> list[int]:
        return sorted({*self.adds, *self.ablations})

    def __repr__(self) -> str:
        def norms(vectors: Mapping[int, torch.Tensor]) -> str:
            return "{" + ", ".join(f"{l}: |v| {float(v.norm()):.3g}" for l, v in vectors.items()) + "}"

        return f"Intervention(adds={norms(self.adds)}, ablations={norms(self.ablations)}, positions={self.positions!r}, prompt_length={self.prompt_length})"

    def _at(self, edit: str, layer: int, v: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (edit, layer, device, dtype)
        if key not in self._placed:
            self._placed[key] = v.to(device=device, dtype=dtype)
        return self._placed[key]

    def apply(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``hidden`` [batch, seq, d_model] with layer's edit applied where ``mask`` [batch, seq, 1] is set."""
        new = hidden
        if layer in self.ablations:
            new = project_out(new, self._at("ablate", layer, self.ablations[layer], hidden.device, torch.float32))
        if layer in self.adds:
            new = new + self._at("add", layer, self.adds[layer], hidden.device, hidden.dtype)
        return new if mask is None else torch.where(mask, new, hidden)


class Applied:
    """One application of an :class:`Intervention` to running model code, for any backend.

    The backend reports each forward call of the model's decoder stack (:meth:`before_call`,
    :meth:`after_call`), each ``generate`` (:meth:`generation`), and asks for each edited
    layer's new hidden states (:meth:`edit`). It raises :class:`InterventionError` when an
    edit did not run: the hooks of a module compiled before they were added are silently
    skipped by ``torch.compile``, and a silent no-op must never pass for a result.
    """

    def __init__(self, intervention: Intervention) -> None:
        self.intervention = intervention
        self.gate = PositionGate(intervention.positions, intervention.prompt_length)
        self.calls = 0
        self._fired: set[int] = set()

    def before_call(self, args: tuple, kwargs: Mapping[str, Any]) -> None:
        self.gate.observe(CallInputs.from_call(args, kwargs))
        self._fired = set()
        self.calls += 1

    def edit(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        self._fired.add(layer)
        return self.intervention.apply(layer, hidden, self.gate.mask(hidden))

    def after_call(self) -> None:
        if missing := set(self.intervention.layers) - self._fired:
            raise InterventionError(
                f"the edits at layers {sorted(missing)} did not run in this forward pass (is the model compiled? "
                "torch.compile skips hooks added after compilation)"
            )

    @contextmanager
    def generation(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> Iterator[None]:
        """Around one generation from ``tokens`` [batch, width] (the prompts) and their mask."""
        calls = self.calls
        self.gate.begin_generation(tokens, attention_mask)
        try:
            yield
        finally:
            self.gate.end_generation()
        if self.intervention.layers and self.calls == calls:
            raise InterventionError("the intervention never ran during generate: the forward pass bypassed its hooks (a compiled model?)")


def _generate_inputs(args: tuple, kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompts and attention mask of a ``generate(inputs, ..., attention_mask=...)`` call."""
    for key in ("input_ids", "inputs", "inputs_embeds"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key], kwargs.get("attention_mask")
    if args and isinstance(args[0], torch.Tensor):
        return args[0], kwargs.get("attention_mask")
    raise PositionError("cannot find the prompts of this generate call (no input_ids)")


@contextmanager
def _generation_entry(model: nn.Module, applied: Applied) -> Iterator[None]:
    """Route every ``generate`` of ``model`` (PEFT wrappers reach the same one) through ``applied``.

    transformers compiles the decoding step itself when the cache is static; compiled code
    would skip the hooks, so such generations run eagerly inside the block.
    """
    target = unwrap(model)
    missing = object()
    saved = target.__dict__.get("generate", missing)
    original = target.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        with applied.generation(*_generate_inputs(args, kwargs)):
            return original(*args, **{**kwargs, "disable_compile": True})

    target.generate = generate
    try:
        yield
    finally:
        if saved is missing:
            del target.generate
        else:
            target.generate = saved


@contextmanager
def applying(model: nn.Module, intervention: Intervention) -> Iterator[Applied]:
    """An :class:`Applied` that sees every forward call and ``generate`` of ``model``; the
    caller routes the edited layers through :meth:`Applied.edit` in its own idiom."""
    _refuse_compiled(model)
    applied = Applied(intervention)
    with around_calls(decoder_stack(model), applied.before_call, applied.after_call), _generation_entry(model, applied):
        yield applied


def _refuse_compiled(model: nn.Module) -> None:
    """A compiled module runs the hooks it had when compiled, not the ones added now."""
    if hasattr(model, "_orig_mod"):
        raise InterventionError("this is a torch.compile'd module, which skips hooks added after compilation: steer the original model")
    for name, module in model.named_modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            raise InterventionError(f"module {name or type(module).__name__!r} was compiled in place (Module.compile), which skips hooks added afterwards")


# The interventions :func:`intervene` is applying to each (unwrapped) model, innermost last,
# with the ids of the hooks each one added, for code that runs the model without its hooks.
_ACTIVE: dict[int, list[tuple[Intervention, frozenset[int]]]] = {}


def active_interventions(model: nn.Module) -> list[tuple[Intervention, frozenset[int]]]:
    """The interventions applied to ``model`` by enclosing :func:`intervene` blocks (innermost
    last), each with the ids of the forward hooks it added to the model's modules."""
    return list(_ACTIVE.get(id(unwrap(model)), ()))


@contextmanager
def intervene(model: nn.Module, intervention: Intervention | SteeringVector) -> Iterator[None]:
    """Apply ``intervention`` (or a steering vector) to ``model``'s forward passes and ``generate`` calls in the block."""
    if isinstance(intervention, SteeringVector):
        intervention = as_intervention(model, intervention)
    before = hook_ids(model)
    with applying(model, intervention) as applied:

        def edit(layer: int) -> HookFn:
            return lambda hidden, kwargs: applied.edit(layer, hidden)

        with hooks(model, {resid_post(layer): edit(layer) for layer in intervention.layers}):
            stack = _ACTIVE.setdefault(id(unwrap(model)), [])
            stack.append((intervention, frozenset(hook_ids(model) - before)))
            try:
                yield
            finally:
                stack.pop()
                if not stack:
                    del _ACTIVE[id(unwrap(model))]


def _check_steering_vector(vector: SteeringVector, kind: str, **given: tuple[Any, Any]) -> None:
    """Refuse a steering vector of the other kind, or one passed with settings of its own."""
    if vector.kind != kind:
        use = "steer()/steering()" if vector.kind == "add" else "ablate()/ablation()"
        raise ValueError(f"this steering vector has kind {vector.kind!r}: use {use}, or intervene(model, vector)")
    if changed := [name for name, (value, default) in given.items() if value != default]:
        raise ValueError(f"a SteeringVector carries its own {', '.join(changed)}: change them with vector.replace(...)")


def as_intervention(model: nn.Module, vector: SteeringVector) -> Intervention:
    """The :class:`Intervention` ``vector`` stands for on ``model`` (layers resolved, widths checked)."""
    return steering(model, vector) if vector.kind == "add" else ablation(model, vector)


def steering(
    model: nn.Module,
    vectors: Vectors | SteeringVector,
    alpha: float = 1.0,
    scale: Scale = DEFAULT_SCALE,
    norms: Mapping[int, float] | None = None,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Intervention:
    """Add ``alpha * vectors[L]`` (in the units of ``scale``) to resid_post of each layer L.

    ``vectors`` may be a :class:`~interp.vectors.SteeringVector` of kind ``"add"``, which
    brings the other arguments with it.
    """
    if isinstance(vectors, SteeringVector):
        _check_steering_vector(vectors, "add", alpha=(alpha, 1.0), scale=(scale, DEFAULT_SCALE), norms=(norms, None), positions=(positions, "all"), prompt_length=(prompt_length, None))
        sv = vectors
        return steering(model, sv.vectors, sv.alpha, sv.scale, sv.norms, sv.positions, sv.prompt_length)
    num_layers, d = n_layers(model), d_model(model)
    vectors = {layer_index(l, num_layers): v for l, v in vectors.items()}
    if norms is not None:
        norms = {layer_index(l, num_layers): n for l, n in norms.items()}
    for layer, v in vectors.items():
        _check_vector(v, d, f"steering vector for layer {layer}")
    return Intervention(adds=steering_deltas(vectors, alpha, scale, norms), positions=positions, prompt_length=prompt_length)


def ablation(
    model: nn.Module,
    directions: torch.Tensor | Vectors | SteeringVector,
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
    prompt_length: int | None = None,
) -> Intervention:
    """Project the unit direction out of resid_post at ``layers`` (default: all).

    ``directions`` is one vector used at every chosen layer, or ``{layer: vector}`` with each
    layer's own direction (then ``layers`` defaults to its keys), or a
    :class:`~interp.vectors.SteeringVector` of kind ``"ablate"`` (which brings its layers and
    positions). Edits each layer's output, so every later layer reads a stream with no
    component along the direction; the embedding output entering layer 0 is left as it is.
    """
    if isinstance(directions, SteeringVector):
        _check_steering_vector(directions, "ablate", layers=(layers, None), positions=(positions, "all"), prompt_length=(prompt_length, None))
        return ablation(model, directions.vectors, None, directions.positions, directions.prompt_length)
    num_layers, d = n_layers(model), d_model(model)
    if isinstance(directions, torch.Tensor):
        chosen = range(num_layers) if layers is None else layers
        per_layer = {layer_index(l, num_layers): directions for l in chosen}
    else:
        per_layer = {layer_index(l, num_layers): v for l, v in directions.items()}
        if layers is not None:
            wanted = {layer_index(l, num_layers) for l in layers}
            if missing := wanted - per_layer.keys():
                raise ValueError(f"no direction given for layers {sorted(missing)}")
            per_layer = {l: per_layer[l] for l in sorted(wanted)}
    for layer, v in per_layer.items():
        _check_vector(v, d, f"ablation direction for layer {layer}")
    return Intervention(ablations=per_layer, positions=positions, prompt_length=prompt_length)


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
    """:func:`steering` applied to ``model`` inside the block."""
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
    """:func:`ablation` applied to ``model`` inside the block."""
    with intervene(model, ablation(model, directions, layers, positions, prompt_length)):
        yield


@torch.no_grad()
def residual_norms(
    model: nn.Module,
    tokenizer,
    conversations: Sequence[Conversation] | Sequence[TokenizedConversation],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    span: Span = DEFAULT_SPAN,
) -> dict[int, float]:
    """Mean L2 norm of resid_post at each layer over answer tokens (the typical stream size).

    Answer tokens only, as in :mod:`interp.cache` (``span`` as there; pass answer records
    through :func:`~interp.base.chat.tokenize_record`): the first tokens of real models carry
    outsized norms (attention sinks) that would inflate a mean over all positions.
    """
    layers = layer_indices(layers, n_layers(model))
    check_span(span)
    items = [as_tokenized(tokenizer, c) for c in conversations]
    if not items:
        raise ValueError("no conversations to measure norms on")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = input_device(model)
    sums = dict.fromkeys(layers, 0.0)
    n_tokens = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), batch_size):
            ids, answer, _ = pad_right(items[start : start + batch_size], pad_id, device, span)

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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m interp.steer`` is a library, not a command: refuse, pointing at the command that steers."""
    raise InputError("interp.steer is a library (steer, ablate, SteeringVector), not a command; to steer from the command line run python -m interp.sweep (see its --help)")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
