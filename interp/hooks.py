"""Hook points named like TransformerLens, resolved on any HF decoder-only model.

``blocks.{L}.hook_resid_post`` is the residual stream after decoder layer ``L`` (before the
final norm for the last layer, as in TransformerLens); ``blocks.{L}.hook_resid_pre`` is the
stream entering layer ``L``. The decoder layers are found on plain, PEFT-wrapped and merged
models alike; LoRA leaves them untouched, so a hook there sees adapted activations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from interp.base.models import decoder_layers, layer_index

# A hook function receives the hidden states [batch, seq, d_model] and the layer's call
# kwargs; it returns None to leave them alone or a tensor to replace them.
HookFn = Callable[[torch.Tensor, dict[str, Any]], torch.Tensor | None]


def resid_post(layer: int) -> str:
    """TransformerLens name of the residual stream after decoder layer ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def parse_hook_point(name: str, num_layers: int) -> tuple[int, str]:
    """``blocks.{L}.hook_resid_{pre|post}`` -> (L, "pre"|"post"); negative L counts from the end."""
    m = re.match(r"^blocks\.(-?\d+)\.hook_resid_(pre|post)$", name)
    if not m:
        raise ValueError(f"unknown hook point {name!r}; expected blocks.<L>.hook_resid_post or hook_resid_pre")
    try:
        return layer_index(int(m.group(1)), num_layers), m.group(2)
    except ValueError:
        raise ValueError(f"hook point {name!r}: layer out of range for a {num_layers}-layer model") from None


def _hidden(output: Any) -> torch.Tensor:
    # Decoder layers return a bare tensor in transformers >= 4.57 and a tuple before; taking
    # output[0] of a bare [batch, seq, d] tensor would silently select batch item 0.
    return output if isinstance(output, torch.Tensor) else output[0]


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])


@contextmanager
def hooks(model: nn.Module, fns: Mapping[str, HookFn]) -> Iterator[None]:
    """Run ``fns`` at their hook points inside the block; always removes them, even on error."""
    layers = decoder_layers(model)
    handles = []
    try:
        for name, fn in fns.items():
            layer, kind = parse_hook_point(name, len(layers))
            module = layers[layer]
            if kind == "post":
                def post(mod, args, kwargs, output, fn=fn):
                    new = fn(_hidden(output), kwargs)
                    return None if new is None else _replace_hidden(output, new)

                handles.append(module.register_forward_hook(post, with_kwargs=True))
            else:
                def pre(mod, args, kwargs, fn=fn):
                    hidden = args[0] if args else kwargs["hidden_states"]
                    new = fn(hidden, kwargs)
                    if new is None:
                        return None
                    if args:
                        return (new, *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": new}

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def around_calls(
    module: nn.Module,
    before: Callable[[tuple, dict[str, Any]], None],
    after: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Inside the block, ``before(args, kwargs)`` runs as each call of ``module`` starts and
    ``after()`` as it returns; both are removed when the block ends, even on error."""
    handles = [module.register_forward_pre_hook(lambda mod, args, kwargs: before(args, kwargs), with_kwargs=True)]
    try:
        if after is not None:
            handles.append(module.register_forward_hook(lambda mod, args, output: after()))
        yield
    finally:
        for handle in handles:
            handle.remove()


def hook_ids(model: nn.Module) -> set[int]:
    """Ids of every forward hook and pre-hook on ``model``'s modules, and of the global ones:
    code that runs the modules without calling them (a compiled engine) bypasses all of these."""
    from torch.nn.modules import module as torch_module

    ids = {i for m in model.modules() for d in (m._forward_hooks, m._forward_pre_hooks) for i in d}
    return ids | set(torch_module._global_forward_hooks) | set(torch_module._global_forward_pre_hooks)


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every requested layer has been seen."""


@contextmanager
def stop_after(model: nn.Module, layer: int) -> Iterator[None]:
    """End the forward pass right after decoder layer ``layer`` (swallowing the stop)."""
    def stop(hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
        raise StopForward

    try:
        with hooks(model, {resid_post(layer): stop}):
            yield
    except StopForward:
        pass
