"""Interchangeable ways to run a model and read its residual stream.

Three backends give the same numbers to float rounding (cross-checked in
``tests/test_backends.py``); each stops the forward pass after the deepest requested layer:

- ``hooks`` (default): PyTorch forward hooks on the model's own decoder layers; no copy of
  anything and no library in between, so the leanest.
- ``nnsight``: an nnsight trace that saves each requested decoder layer's output.
- ``transformer_lens``: a TransformerLens ``TransformerBridge`` and ``run_with_cache`` on
  ``blocks.{L}.hook_resid_post``; it always computes attention eagerly (see its module).

Every backend receives one padded batch as :class:`ModelInputs` and passes the position ids
in it to the model unchanged, so all of them see the same positions. nnsight and
TransformerLens rewrite the module tree they are handed, so they get a structural copy that
shares the model's weight tensors (:mod:`interp.backends.views`): the caller's model is never
modified, and hooks added to it after the backend is built do not reach the copy. nnsight and
TransformerLens are optional (``pip install 'emergent-misalignment-toolkit[backends]'``) and
imported only when their backend is built (importing nnsight patches ``torch`` globally).

A backend is an object bound to one model, with one method per way of running it. Caching
uses :meth:`Backend.resid_post`; steering uses :meth:`Backend.logits` and
:meth:`Backend.generate`, which apply an :class:`interp.intervention.Intervention` to the residual
stream after each edited layer in each library's own idiom (cross-checked in
``tests/test_steer_backends.py``; the public entry points are in :mod:`interp.steer_backends`).
Generation always runs with the KV cache, so each forward call after the prompt sees one new
column, and decodes with exactly the settings of a :class:`~interp.base.decoding.Decoding`
(the native backend through :func:`interp.generation.generate`, so on a GPU through the
compiled engine).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch
from torch import nn

from interp.base.decoding import Decoding
from interp.inputs import ModelInputs
from interp.intervention import Intervention

BackendName = Literal["hooks", "nnsight", "transformer_lens"]
DEFAULT_BACKEND: BackendName = "hooks"

# name -> (module, class, the package it needs besides the core dependencies)
_REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "hooks": ("interp.backends.hooks", "HooksBackend", None),
    "nnsight": ("interp.backends.nnsight", "NNsightBackend", "nnsight"),
    "transformer_lens": ("interp.backends.transformer_lens", "TransformerLensBackend", "transformer_lens"),
}
BACKENDS: tuple[BackendName, ...] = tuple(_REGISTRY)  # type: ignore[assignment]
INSTALL_HINT = "pip install 'emergent-misalignment-toolkit[backends]'"

# Called once per requested layer with the residual stream after it, [batch, seq, d_model].
ResidFn = Callable[[int, torch.Tensor], None]


class Backend(Protocol):
    """A way to run one model; see the module docstring."""

    name: str
    model: nn.Module  # the caller's model, as given (plain or PEFT-wrapped)

    def resid_post(self, inputs: ModelInputs, layers: Sequence[int], fn: ResidFn) -> None:
        """Run ``inputs`` and call ``fn(layer, hidden)`` for each of ``layers`` (sorted, unique)."""
        ...

    def logits(self, inputs: ModelInputs, intervention: Intervention) -> torch.Tensor:
        """The logits [batch, seq, vocab] of one forward pass with ``intervention`` applied."""
        ...

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, intervention: Intervention, settings: Decoding
    ) -> torch.Tensor:
        """Prompt and new tokens [batch, prompt + new] of a generation with ``intervention``.

        Prompts are left-padded; rows that end early are filled with ``settings.pad_token_id``.
        """
        ...


def make_backend(name: str, model: nn.Module, tokenizer=None) -> Backend:
    """Build backend ``name`` for ``model``; nnsight and TransformerLens are imported here."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module, cls, package = _REGISTRY[name]
    if package is not None and importlib.util.find_spec(package) is None:
        raise ImportError(f"the {name!r} backend needs the {package} package: {INSTALL_HINT}")
    return getattr(importlib.import_module(module), cls)(model, tokenizer)


def resolve_backend(backend: str | Backend, model: nn.Module, tokenizer=None) -> Backend:
    """Build ``backend`` by name for ``model``, or check that a built one belongs to it."""
    if isinstance(backend, str):
        return make_backend(backend, model, tokenizer)
    if backend.model is not model:
        raise ValueError(f"the {backend.name!r} backend passed was built for another model")
    return backend
