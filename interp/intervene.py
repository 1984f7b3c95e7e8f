"""Apply an :class:`~interp.intervention.Intervention` to a native model with forward hooks,
around whatever runs in the block (forward passes, ``generate``, a sampler), and keep track
of which interventions are active on each model.

:func:`intervene` places the edits at ``blocks.{L}.hook_resid_post`` through
:func:`interp.hooks.hooks` (plain, PEFT-wrapped and merged models alike; the hooks are
always removed when the block ends, also on error), with one :class:`~interp.applied.Applied`
deciding which tokens each call edits and raising when an edit did not run.
:func:`active_interventions` tells code that runs the model without its hooks (the
generation engine, :mod:`interp.generation`) what the enclosing blocks apply, so it can
apply the same edits inside its compiled step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from interp.applied import applying
from interp.base.models import unwrap
from interp.hooks import HookFn, hook_ids, hooks, resid_post
from interp.intervention import Intervention, as_intervention
from interp.vectors import SteeringVector

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
