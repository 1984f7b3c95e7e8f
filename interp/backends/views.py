"""Structural copies of a model that share its weight tensors.

nnsight installs a controller as the ``forward`` of every module it wraps, and TransformerLens
replaces submodules with its bridge components (and may switch attention to eager). Handing
them a copy of the module tree whose parameters and buffers are the caller's own tensors
leaves the caller's model exactly as it was, for the price of the module objects alone.

The copy is a snapshot of the module tree: forward hooks registered on the model when it is
made (a steering hook, say) are copied with it and stay; hooks added later are not seen.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from itertools import chain

import torch
from torch import nn

from interp.base.models import unwrap


def _tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    return chain(module.parameters(), module.buffers())


def shared_view(model: nn.Module, copied: Iterable[torch.Tensor] = ()) -> nn.Module:
    """A deep copy of ``model`` (modules, config) in eval mode that reuses its tensors.

    Every parameter and buffer is the caller's object, except those in ``copied``, which are
    duplicated so that the copy may change them.
    """
    own = {id(t) for t in copied}
    # deepcopy returns whatever the memo holds for an object: here, the tensor itself.
    memo = {id(t): t for t in _tensors(model) if id(t) not in own}
    return copy.deepcopy(model, memo).eval()


def merged_view(model: nn.Module) -> nn.Module:
    """The plain transformers model with any PEFT adapters merged in, sharing the rest.

    Only the adapted layers' weights are copied (PEFT's own ``merge_and_unload`` merges into
    the copies); every other tensor is the caller's. A model without adapters is shared whole.
    """
    if unwrap(model) is model:
        return shared_view(model)
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [t for m in model.modules() if isinstance(m, BaseTunerLayer) for t in _tensors(m)]
    view = shared_view(model, copied=adapted)
    if not callable(getattr(view, "merge_and_unload", None)):
        raise ValueError(f"{type(unwrap(model)).__name__}: its PEFT adapters cannot be merged into the weights")
    return view.merge_and_unload()
