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

A backend is an object bound to one model; it is meant to grow one method per way of running
it. Caching needs :meth:`Backend.resid_post`; steering will add a forward/generate that applies
per-layer edit functions to the residual stream after each layer, in each library's own idiom.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

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


@dataclass(frozen=True)
class ModelInputs:
    """One padded batch, as every backend hands it to the model."""

    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq], 1 on real tokens
    position_ids: torch.Tensor  # [batch, seq]

    def kwargs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


class Backend(Protocol):
    """A way to run one model; see the module docstring."""

    name: str
    model: nn.Module  # the caller's model, as given (plain or PEFT-wrapped)

    def resid_post(self, inputs: ModelInputs, layers: Sequence[int], fn: ResidFn) -> None:
        """Run ``inputs`` and call ``fn(layer, hidden)`` for each of ``layers`` (sorted, unique)."""
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
