"""Where things are in a decoder-only transformers model, plain, PEFT-wrapped or merged.

One place for what every stage asks of a model: its decoder layers (and the module that runs
them), the device its inputs go to, its width, and what a layer index means.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

# Paths to the decoder-layer list, tried in order on the unwrapped model.
_LAYER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "layers")


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _find_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """(the module that runs the decoder layers, the layer list) of the unwrapped model."""
    base = unwrap(model)
    for path in _LAYER_PATHS:
        parent: Any = base
        *parents, last = path.split(".")
        for part in parents:
            parent = getattr(parent, part, None)
            if parent is None:
                break
        layers = getattr(parent, last, None) if parent is not None else None
        if isinstance(layers, nn.ModuleList):
            return parent, layers
    raise ValueError(f"cannot find decoder layers on {type(base).__name__}; tried {', '.join(_LAYER_PATHS)}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of a plain, PEFT-wrapped or merged causal LM."""
    return _find_layers(model)[1]


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module whose forward runs the decoder layers (``Qwen2Model``, ...): every forward
    pass and every ``generate`` step goes through it with the model's public inputs."""
    return _find_layers(model)[0]


def n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def d_model(model: nn.Module) -> int:
    """Width of the residual stream."""
    return model.get_input_embeddings().weight.shape[1]


def input_device(model: nn.Module) -> torch.device:
    """Where token ids go: the embedding's device (also under ``device_map="auto"``)."""
    return model.get_input_embeddings().weight.device


def layer_index(layer: int, num_layers: int) -> int:
    """0-based index of decoder layer ``layer``; negative ones count from the end."""
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"layer {layer} out of range for a {num_layers}-layer model")
    return layer % num_layers


def layer_indices(layers: Iterable[int] | None, num_layers: int) -> list[int]:
    """Sorted, deduplicated :func:`layer_index` of each (``None``: every layer)."""
    out = sorted({layer_index(l, num_layers) for l in (range(num_layers) if layers is None else layers)})
    if not out:
        raise ValueError("no layers requested")
    return out


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass (non-reentrant), under
    the name this transformers release has (5.25 renamed ``gradient_checkpointing_enable`` to
    ``activation_checkpointing_enable`` and deprecated the old name), and let the inputs carry
    gradients, which LoRA training with frozen embeddings needs for checkpointed layers to backpropagate."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()


def cache_keyword(model: nn.Module) -> str:
    """The keyword the model's forward takes a KV cache by: ``cache`` in the transformers
    releases that have it (``past_key_values`` is deprecated there, gone in 5.40), else
    ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(unwrap(model).forward).parameters else "past_key_values"
