"""Hook points named like TransformerLens, resolved on any HF decoder-only model.

Layer ``L`` means decoder layer ``L`` (0-based), whose output is HF's ``hidden_states[L + 1]``
(for the last layer, the output before the final norm, which ``hidden_states[-1]`` applies):

- ``blocks.{L}.hook_resid_pre``: the residual stream entering layer ``L`` (the embeddings for
  ``L = 0``);
- ``blocks.{L}.hook_attn_out``: the attention block's output, before it is added to the stream;
- ``blocks.{L}.hook_resid_mid``: the stream between attention and MLP, ``resid_pre + attn_out``;
- ``blocks.{L}.hook_mlp_out``: the MLP's output, before it is added to the stream;
- ``blocks.{L}.hook_resid_post``: the stream leaving layer ``L``, ``resid_mid + mlp_out``.

``resid_pre`` and ``resid_post`` work on any decoder layer. The other three need the pre-norm
sequential layout of Llama, Qwen2/3 and Mistral (a layer whose children are exactly
``input_layernorm``, ``self_attn``, ``post_attention_layernorm`` and ``mlp``); they are read from
``self_attn``'s and ``mlp``'s outputs and from ``post_attention_layernorm``'s input. Other
layouts (GPT-2, Gemma 2's extra norms, parallel attention) are refused with an error rather
than read at the wrong place. The decoder layers are found on plain, PEFT-wrapped and merged
models alike; LoRA leaves them untouched, so a hook there sees adapted activations.

Every point can be read. A hook that returns a tensor replaces the value there, exactly:
the whole rest of the network sees the new value. ``resid_mid`` is read-only, because the
norm's input, the only place it exists as a tensor, feeds the MLP branch but not the residual
add; a hook that edits it raises :class:`HookPointError` (edit ``hook_attn_out`` instead, which
moves ``resid_mid`` and everything after it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from interp.base.models import decoder_layers, layer_index

# A hook function receives the activations [batch, seq, d_model] and the kwargs of the module
# call at that point; it returns None to leave them alone or a tensor to replace them.
HookFn = Callable[[torch.Tensor, dict[str, Any]], torch.Tensor | None]

HookPoint = Literal["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"]
HOOK_POINTS: tuple[HookPoint, ...] = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")  # forward order

# The children of a pre-norm sequential decoder layer (Llama, Qwen2/3, Mistral), and where
# each inner point is found among them.
_PRE_NORM_LAYOUT = frozenset({"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"})
_INNER = {"attn_out": "self_attn", "resid_mid": "post_attention_layernorm", "mlp_out": "mlp"}


class HookPointError(ValueError):
    """A hook point that does not exist on this model, or that cannot be edited."""


def hook_point(layer: int, point: HookPoint = "resid_post") -> str:
    """TransformerLens name of ``point`` at decoder layer ``layer``: ``blocks.{layer}.hook_{point}``."""
    if point not in HOOK_POINTS:
        raise HookPointError(f"unknown hook point {point!r}; expected one of {', '.join(HOOK_POINTS)}")
    return f"blocks.{layer}.hook_{point}"


def resid_post(layer: int) -> str:
    """TransformerLens name of the residual stream after decoder layer ``layer``."""
    return hook_point(layer, "resid_post")


def parse_hook_point(name: str, num_layers: int) -> tuple[int, HookPoint]:
    """``blocks.{L}.hook_{point}`` -> (L, point); negative L counts from the end."""
    m = re.match(rf"^blocks\.(-?\d+)\.hook_({'|'.join(HOOK_POINTS)})$", name)
    if not m:
        raise HookPointError(
            f"unknown hook point {name!r}; expected blocks.<L>.hook_<point>, point one of {', '.join(HOOK_POINTS)}"
        )
    try:
        return layer_index(int(m.group(1)), num_layers), m.group(2)  # type: ignore[return-value]
    except ValueError:
        raise HookPointError(f"hook point {name!r}: layer out of range for a {num_layers}-layer model") from None


def _inner_module(layer: nn.Module, point: HookPoint) -> nn.Module:
    """The submodule of a pre-norm sequential decoder layer where ``point`` is read."""
    children = {name for name, _ in layer.named_children()}
    if children != _PRE_NORM_LAYOUT:
        raise HookPointError(
            f"hook_{point} needs a Llama/Qwen/Mistral-style decoder layer (children exactly "
            f"{', '.join(sorted(_PRE_NORM_LAYOUT))}); {type(layer).__name__} has {', '.join(sorted(children))}. "
            "hook_resid_pre and hook_resid_post work on any layer"
        )
    return getattr(layer, _INNER[point])


def _hidden(output: Any) -> torch.Tensor:
    # Decoder layers return a bare tensor in transformers >= 4.57 and a tuple before; taking
    # output[0] of a bare [batch, seq, d] tensor would silently select batch item 0.
    return output if isinstance(output, torch.Tensor) else output[0]


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])


def _on_output(fn: HookFn) -> Callable:
    def hook(mod: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        new = fn(_hidden(output), kwargs)
        return None if new is None else _replace_hidden(output, new)

    return hook


def _on_input(fn: HookFn, read_only: str | None = None) -> Callable:
    """A pre-hook on the module's first input (``hidden_states``); ``read_only`` names a hook
    point whose edits are refused."""

    def hook(mod: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        new = fn(hidden, kwargs)
        if new is None:
            return None
        if read_only is not None:
            raise HookPointError(
                f"{read_only} can be read but not edited: editing the norm's input would change the MLP's "
                "input but not the residual stream; edit hook_attn_out (or resid_pre/resid_post) instead"
            )
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return hook


@contextmanager
def hooks(model: nn.Module, fns: Mapping[str, HookFn]) -> Iterator[None]:
    """Run ``fns`` at their hook points inside the block; always removes them, even on error.

    Hooks at one point run in the order they were added, each seeing the value the previous
    ones left (so a reading hook added inside a steering block sees the steered stream).
    """
    layers = decoder_layers(model)
    handles = []
    try:
        for name, fn in fns.items():
            index, point = parse_hook_point(name, len(layers))
            layer = layers[index]
            if point == "resid_post":
                handles.append(layer.register_forward_hook(_on_output(fn), with_kwargs=True))
            elif point == "resid_pre":
                handles.append(layer.register_forward_pre_hook(_on_input(fn), with_kwargs=True))
            elif point == "resid_mid":
                handles.append(
                    _inner_module(layer, point).register_forward_pre_hook(
                        _on_input(fn, read_only=name), with_kwargs=True
                    )
                )
            else:
                handles.append(_inner_module(layer, point).register_forward_hook(_on_output(fn), with_kwargs=True))
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
