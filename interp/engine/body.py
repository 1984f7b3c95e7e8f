"""The decoder forward pass the engine runs, from the model's own modules, on a static KV cache.

The engine does not call the model's ``forward``: it calls the embedding, each decoder
layer's norms, projections (plain or PEFT LoRA) and MLP, the final norm and the LM head
itself, and does attention against a static cache it owns. So nothing in transformers'
private decoder-layer interface (renamed between 5.17 and 5.24) is in the way, the position
of every token is a tensor the step computes, and an :class:`~interp.engine.edits.EditPlan`
is applied after each layer inside the compiled code, never through a hook.

Supported: the Llama-style decoder layer of Qwen2 / Qwen2.5 and Llama (full attention, rotary
positions, grouped-query attention); :meth:`Body.of` refuses anything else, and the engine
checks its logits against the model's own forward pass before first use.

Where a layer's q, k and v projections are plain ``nn.Linear`` or plain LoRA over one (their
base weights), the engine runs them as one GEMM on a fused copy of their weights: at a batch
of 256 the k and v GEMMs alone are too small to use the GPU well. The copy costs 6% of a
Qwen2.5-7B's weights.

A plain LoRA projection (PEFT's ``lora.Linear`` over an ``nn.Linear``, one active adapter,
unmerged, no variant such as DoRA, no LoRA bias) runs as ``base(x) + B(A(x)) * scaling`` with
A and B in the model's dtype: PEFT keeps adapters in float32 and runs that branch on CUDA
cores, which at a batch of 256 took most of a LoRA model's step. Anything else runs as PEFT
runs it. Copies (fused weights, adapters in another dtype) are rewritten from the model's own
weights at every call (:meth:`Body.sync`), so an in-place change is never missed.

Layout: every row of a batch is left-padded to the same width ``W``; the prompt fills cache
columns ``0..W-1`` and generated token ``t`` column ``W + t``. ``valid`` [batch, columns]
marks the columns a row may attend to (its real prompt tokens and everything generated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from interp.base.models import unwrap
from interp.engine.attention import attend, fused_supported
from interp.engine.edits import Kind
from interp.vector_math import project_out

SUPPORTED_TYPES = ("qwen2", "llama")


class EngineUnsupported(ValueError):
    """A model (or a setting) the engine cannot run; callers fall back to transformers' generate."""


@dataclass(frozen=True)
class Shape:
    """Attention geometry, and whether decoding attention runs the fused kernel: the same for
    every layer (constants of the compiled code)."""

    n_heads: int
    n_kv: int
    head_dim: int
    fused_attention: bool = False


Fused = tuple[torch.Tensor, torch.Tensor | None]  # one layer's fused q/k/v weight [out, d] and bias
Lora = tuple[torch.Tensor, torch.Tensor, float]  # A [r, in], B [out, r] in the model's dtype, and scaling
Weights = tuple[Fused | None, tuple[Lora | None, ...]]  # what a compiled layer is given besides the layer itself
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Body:
    """The modules of a supported model that the engine calls, its attention geometry, and per
    layer the fused q/k/v weights (None where they cannot be fused) and each projection's LoRA
    in the model's dtype (in :data:`PROJECTIONS` order, None where it runs as its module does)."""

    embed: nn.Module
    layers: tuple[nn.Module, ...]
    norm: nn.Module
    head: nn.Module
    rotary: nn.Module
    shape: Shape
    qkv: tuple[Fused | None, ...]
    loras: tuple[tuple[Lora | None, ...], ...]

    @classmethod
    def of(cls, model: nn.Module, fused_attention: bool | None = None) -> Body:
        """The body of ``model``; decoding attention by the fused kernel where it is supported
        (``fused_attention`` None), always (True: an error where it is not) or never (False)."""
        base = unwrap(model)
        config = getattr(base, "config", None)
        kind = getattr(config, "model_type", None)
        if kind not in SUPPORTED_TYPES:
            raise EngineUnsupported(f"the engine runs {', '.join(SUPPORTED_TYPES)} models, not {kind!r}")
        inner = getattr(base, "model", None)
        parts = [getattr(inner, n, None) for n in ("embed_tokens", "layers", "norm", "rotary_emb")]
        if any(p is None for p in parts) or base.get_output_embeddings() is None:
            raise EngineUnsupported(f"{type(base).__name__} does not have the expected decoder layout")
        embed, layers, norm, rotary = parts
        for layer in layers:
            if getattr(layer.self_attn, "sliding_window", None) is not None:
                raise EngineUnsupported("sliding-window attention is not supported by the engine")
        if len({p.device for p in base.parameters()}) > 1:
            raise EngineUnsupported("the model is spread over several devices")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        supported = fused_supported(embed.weight.device, embed.weight.dtype, head_dim)
        if fused_attention and not supported:
            raise EngineUnsupported(
                f"the fused attention kernel does not run here ({embed.weight.dtype} on {embed.weight.device}, head size {head_dim})"
            )
        shape = Shape(
            config.num_attention_heads,
            config.num_key_value_heads,
            head_dim,
            supported if fused_attention is None else fused_attention,
        )
        loras = tuple(
            tuple(_lora_buffers(_projection(layer, p), embed.weight.dtype) for p in PROJECTIONS) for layer in layers
        )
        body = cls(
            embed, tuple(layers), norm, base.get_output_embeddings(), rotary, shape, _fused_buffers(layers), loras
        )
        body.sync()
        return body

    @property
    def weight(self) -> torch.Tensor:
        return self.embed.weight

    @property
    def layer_weights(self) -> tuple[Weights, ...]:
        """Per layer, the fused q/k/v weights and the projections' LoRA, as the step takes them."""
        return tuple(zip(self.qkv, self.loras))

    @torch.no_grad()
    def sync(self) -> None:
        """Copy each layer's q, k and v weights into its fused buffers, and adapters into their
        model-dtype copies (in place: captured graphs keep reading the same memory)."""
        for layer, fused, loras in zip(self.layers, self.qkv, self.loras):
            if fused is not None:
                for buffer, name in zip(fused, ("weight", "bias")):
                    if buffer is not None:
                        torch.cat([getattr(_base(_projection(layer, p)), name) for p in _QKV], out=buffer)
            for name, lora in zip(PROJECTIONS, loras):
                if lora is not None:
                    a, b, _ = _adapter(_projection(layer, name))
                    for buffer, weight in ((lora[0], a), (lora[1], b)):
                        if buffer is not weight:
                            buffer.copy_(weight)

    def kv_cache(self, batch: int, columns: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Zeroed key and value tensors [batch, kv heads, columns, head_dim] per layer."""
        s, w = self.shape, self.weight
        return [
            tuple(torch.zeros(batch, s.n_kv, columns, s.head_dim, dtype=w.dtype, device=w.device) for _ in range(2))
            for _ in self.layers
        ]


_QKV = ("q_proj", "k_proj", "v_proj")


def _projection(layer: nn.Module, name: str) -> nn.Module:
    return getattr(layer.mlp if name in ("gate_proj", "up_proj", "down_proj") else layer.self_attn, name)


def _adapter(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(A, B, scaling) of a plain LoRA projection (see the module doc), else None."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return None
    if type(module) is not LoraLinear or module.disable_adapters or module.merged or module.fan_in_fan_out:
        return None
    active = [a for a in module.active_adapters if a in module.lora_A]
    if len(active) != 1 or type(module.base_layer) is not nn.Linear:
        return None
    name = active[0]
    a, b = module.lora_A[name], module.lora_B[name]
    if (
        name in getattr(module, "lora_variant", {})
        or module.use_dora.get(name)
        or a.bias is not None
        or b.bias is not None
    ):
        return None
    return a.weight, b.weight, float(module.scaling[name])


def _base(module: nn.Module) -> nn.Module:
    """The ``nn.Linear`` a plain LoRA projection adapts, or the module itself."""
    return module.base_layer if _adapter(module) is not None else module


def _lora_buffers(module: nn.Module, dtype: torch.dtype) -> Lora | None:
    """A plain LoRA projection's A and B as the step uses them: the adapter's own weights when
    they are in ``dtype``, else uninitialised copies (written by :meth:`Body.sync`)."""
    adapter = _adapter(module)
    if adapter is None:
        return None
    a, b, scaling = adapter
    copy = lambda w: w if w.dtype == dtype else torch.empty(w.shape, dtype=dtype, device=w.device)  # noqa: E731
    return copy(a), copy(b), scaling


def _fused_buffers(layers: list[nn.Module]) -> tuple[Fused | None, ...]:
    """Uninitialised fused q/k/v buffers per layer where all three projections are plain
    ``nn.Linear`` (not quantised: exactly the class) or plain LoRA over one, of one dtype,
    with or without bias."""
    out: list[Fused | None] = []
    for layer in layers:
        projs = [_base(_projection(layer, p)) for p in _QKV]
        plain = (
            all(type(p) is nn.Linear for p in projs)
            and len({(p.weight.dtype, p.weight.device, p.bias is None) for p in projs}) == 1
        )
        if not plain:
            out.append(None)
            continue
        w = projs[0].weight
        rows = sum(p.out_features for p in projs)
        bias = None if projs[0].bias is None else torch.empty(rows, dtype=w.dtype, device=w.device)
        out.append((torch.empty(rows, w.shape[1], dtype=w.dtype, device=w.device), bias))
    return tuple(out)


def head_logits(norm: nn.Module, head: nn.Module, last: torch.Tensor) -> torch.Tensor:
    """float32 [batch, vocab] logits of the last hidden state ``last`` [batch, d]."""
    return head(norm(last)).float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _delta(lora: Lora | None, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` plus the LoRA branch of ``x`` (PEFT's order: B(A(x)) * scaling), if any."""
    return out if lora is None else out + F.linear(F.linear(x, lora[0]), lora[1]) * lora[2]


def _project(module: nn.Module, lora: Lora | None, x: torch.Tensor) -> torch.Tensor:
    """A projection as the engine runs it: its base plus the LoRA branch, or the module itself."""
    return module(x) if lora is None else _delta(lora, x, module.base_layer(x))


def _mlp(layer: nn.Module, loras: tuple[Lora | None, ...], x: torch.Tensor) -> torch.Tensor:
    mlp = layer.mlp
    gate, up, down = loras[4:]
    return _project(mlp.down_proj, down, mlp.act_fn(_project(mlp.gate_proj, gate, x)) * _project(mlp.up_proj, up, x))


def _qkv(
    layer: nn.Module, weights: Weights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, shape: Shape
) -> tuple[torch.Tensor, ...]:
    """Queries [B, heads, T, hd], rotated keys and values [B, kv heads, T, hd] of ``x`` [B, T, d]."""
    attn = layer.self_attn
    fused, loras = weights
    h = layer.input_layernorm(x)
    if fused is None:
        q, k, v = (_project(getattr(attn, p), lora, h) for p, lora in zip(_QKV, loras))
    else:
        q, k, v = F.linear(h, *fused).split([shape.n_heads * shape.head_dim] + [shape.n_kv * shape.head_dim] * 2, -1)
        q, k, v = (_delta(lora, h, out) for lora, out in zip(loras, (q, k, v)))
    q = q.unflatten(-1, (shape.n_heads, shape.head_dim)).transpose(1, 2)
    k = k.unflatten(-1, (shape.n_kv, shape.head_dim)).transpose(1, 2)
    v = v.unflatten(-1, (shape.n_kv, shape.head_dim)).transpose(1, 2)
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v


def _finish(
    layer: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    attended: torch.Tensor,
    gate: torch.Tensor,
    vector: torch.Tensor,
    kind: Kind,
) -> torch.Tensor:
    """Output projection, MLP, and the plan's edit of resid_post where ``gate`` [B, T] is set."""
    b, t = x.shape[:2]
    loras = weights[1]
    x = x + _project(layer.self_attn.o_proj, loras[3], attended.transpose(1, 2).reshape(b, t, -1))
    x = x + _mlp(layer, loras, layer.post_attention_layernorm(x))
    if kind == "add":
        return torch.where(gate[..., None], x + vector, x)
    if kind == "ablate":
        return torch.where(gate[..., None], project_out(x, vector), x)
    return x


def prefill_layer(
    layer: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
    gate: torch.Tensor,
    vector: torch.Tensor,
    kind: Kind,
    shape: Shape,
) -> torch.Tensor:
    """One decoder layer over the prompts ``x`` [B, W, d]; writes their keys and values to cache
    columns ``0..W-1``. ``mask`` [B, 1, W, W] is causal over real tokens (each padding query
    sees itself, so nothing is NaN)."""
    q, k, v = _qkv(layer, weights, x, cos, sin, shape)
    width = x.shape[1]
    cache[0][:, :, :width].copy_(k)
    cache[1][:, :, :width].copy_(v)
    groups = shape.n_heads // shape.n_kv
    attended = F.scaled_dot_product_attention(
        q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), attn_mask=mask, scale=layer.self_attn.scaling
    )
    return _finish(layer, weights, x, attended, gate, vector, kind)


def decode_layer(
    layer: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor],
    column: torch.Tensor,
    bias: torch.Tensor,
    gate: torch.Tensor,
    vector: torch.Tensor,
    kind: Kind,
    shape: Shape,
) -> torch.Tensor:
    """One decoder layer for one new token per row, ``x`` [B, 1, d], written to cache column
    ``column`` [1]; it attends to the first ``columns`` of the cache, where ``bias`` [B, 1, 1,
    columns] is 0 where a row may attend and -inf elsewhere.

    Grouped-query attention reads each cached key and value once (no repeated heads), by one
    fused kernel where ``shape.fused_attention`` (:mod:`interp.engine.attention`)."""
    q, k, v = _qkv(layer, weights, x, cos, sin, shape)
    keys, values = cache
    keys.index_copy_(2, column, k)
    values.index_copy_(2, column, v)
    b, groups = x.shape[0], shape.n_heads // shape.n_kv
    attended = attend(
        q.reshape(b, shape.n_kv, groups, shape.head_dim),
        keys,
        values,
        bias,
        layer.self_attn.scaling,
        shape.fused_attention,
    )
    return _finish(layer, weights, x, attended.reshape(b, shape.n_heads, 1, shape.head_dim), gate, vector, kind)
