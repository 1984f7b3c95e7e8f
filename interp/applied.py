"""One application of an :class:`~interp.intervention.Intervention` to running model code,
shared by every backend: which tokens each forward call edits, and an error when an edit
did not run.

A backend reports each forward call of the model's decoder stack and each ``generate`` to an
:class:`Applied`, and asks it for each edited layer's new hidden states. :func:`applying`
does the reporting for a native model and leaves the editing to the caller's idiom (forward
hooks in :mod:`interp.intervene`, nnsight's traces in :mod:`interp.backends.nnsight`).

Why the entry to ``generate`` is wrapped (:func:`_generation_entry`, an attribute set on the
model for the block and removed after it) rather than left to a plain function: code inside
``steer(...)`` calls the model's own ``generate``, and no forward call tells its first step
from a new prompt when it runs without the KV cache (``use_cache=False`` re-runs the whole
sequence with nothing cached, every step), so the prompt length of ``positions="generated"``
must be read when ``generate`` starts. The same wrapper turns off transformers' own
compilation of static-cache decoding, which would skip the hooks, and raises when a
``generate`` ran no edited forward pass. :func:`interp.generation.generate` is the plain
function for a generation with an intervention; the wrapper serves the context managers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from interp.base.models import decoder_stack, unwrap
from interp.hooks import around_calls
from interp.intervention import Intervention, InterventionError
from interp.positions import CallInputs, PositionError, PositionGate


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
            raise InterventionError(
                "the intervention never ran during generate: the forward pass bypassed its hooks (a compiled model?)"
            )


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
        raise InterventionError(
            "this is a torch.compile'd module, which skips hooks added after compilation: steer the original model"
        )
    for name, module in model.named_modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            raise InterventionError(
                f"module {name or type(module).__name__!r} was compiled in place (Module.compile), which skips hooks added afterwards"
            )
