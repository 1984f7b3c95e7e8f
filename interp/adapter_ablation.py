"""Weight-space ablation: project residual-stream directions out of a LoRA adapter.

A LoRA module adds ``B A x`` (times a scale) to its base layer's output. What projecting a
residual direction ``u`` means depends on where that output goes; the module of decoder
layer ``L`` is edited with the direction for layer ``L`` (the stream that
``blocks.{L}.hook_resid_post`` reads, which these modules write into):

- ``o_proj`` and ``down_proj`` write into the residual stream: ``B <- (I - u u^T) B`` (and
  the LoRA bias, if any), so the adapter's delta has no component along ``u`` for any input.
- ``v_proj`` writes values, which reach the stream through the base ``o_proj``, mixed per
  query head by the attention pattern. Given the base model, each key-value group's rows of
  ``B`` are projected off the span of ``W_o^h^T u`` over the query heads ``h`` that read the
  group, so ``u . W_o^h dV = 0`` for every head and every attention pattern: the value
  delta's contribution to the stream is orthogonal to ``u``. (With ``o_proj`` also adapted
  and ablated, ``u^T (W_o + B'A) = u^T W_o``, so this stays exact.) Without the base model
  these modules are left as they are.
- ``q_proj``, ``k_proj``, ``gate_proj``, ``up_proj`` (and embeddings, ``lm_head``) act through
  attention patterns or the MLP's nonlinearity; no projection of their weights removes a
  residual direction, so they are left as they are.

Every module is listed in the returned report (and ``ablation.json``) with what was done.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from interp.base.atomic import (
    save_safetensors_atomic,
    write_json_atomic,
    write_text_atomic,
)
from interp.base.models import decoder_layers
from interp.base.provenance import provenance
from interp.vector_math import project_out

RESIDUAL_WRITERS = ("o_proj", "down_proj")
VALUE_MODULE = "v_proj"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# e.g. base_model.model.model.layers.3.self_attn.o_proj.lora_B.weight (an adapter name may
# sit before the last part in some saves).
_LORA_B = re.compile(
    r"^(?P<module>.*\.layers\.(?P<layer>\d+)\.(?:.*\.)?(?P<name>\w+))\.lora_B\.(?:\w+\.)?(?:weight|bias)$"
)


def _unit64(v: torch.Tensor) -> torch.Tensor:
    v = v.detach().double()
    if v.norm() == 0:
        raise ValueError("cannot ablate a zero direction")
    return v / v.norm()


def project_rows_out(b: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``(I - u u^T) b`` for ``b`` of shape [d] or [d, r]: columns of a lora_B freed of ``u``."""
    return project_out(b.T, u).T if b.ndim == 2 else project_out(b, u)


def value_projectors(o_weight: torch.Tensor, u: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """[n_kv_heads, head_dim, head_dim] projectors that make a value delta invisible along ``u``.

    ``o_weight`` is the base o_proj weight [d, n_heads * head_dim]; query head ``h`` reads
    key-value group ``h // (n_heads // n_kv_heads)``, as in Llama/Qwen2's ``repeat_kv``.
    """
    head_dim = o_weight.shape[1] // n_heads
    rep = n_heads // n_kv_heads
    # w[h] = W_o^h^T u: what a value vector of head h contributes along u.
    w = (o_weight.double().T @ _unit64(u).to(o_weight.device)).reshape(n_heads, head_dim)
    out = []
    for g in range(n_kv_heads):
        span = w[g * rep : (g + 1) * rep].T  # [head_dim, rep]
        q, s, _ = torch.linalg.svd(span, full_matrices=False)
        q = q[:, s > s.max().clamp(min=1e-300) * 1e-10]
        out.append(torch.eye(head_dim, dtype=torch.float64, device=w.device) - q @ q.T)
    return torch.stack(out)


def project_value_b(b: torch.Tensor, projectors: torch.Tensor) -> torch.Tensor:
    """Apply each group's projector to its rows of a v_proj lora_B ([n_kv*hd] or [n_kv*hd, r])."""
    n_kv, hd, _ = projectors.shape
    grouped = b.double().reshape(n_kv, hd, -1)
    return torch.einsum("gij,gjr->gir", projectors.to(b.device), grouped).reshape(b.shape).to(b.dtype)


def _per_layer(directions: torch.Tensor | Mapping[int, torch.Tensor]):
    if isinstance(directions, torch.Tensor):
        return lambda layer: directions
    return lambda layer: directions.get(layer)


def ablate_adapter(
    adapter_dir: str | Path,
    directions: torch.Tensor | Mapping[int, torch.Tensor],
    out_dir: str | Path,
    base_model: nn.Module | None = None,
) -> dict[str, Any]:
    """Save a copy of a PEFT LoRA adapter with ``directions`` projected out (see module doc).

    ``directions`` is one residual vector for every layer or ``{layer: vector}`` (layers not
    in it are left alone). ``base_model`` (the unadapted model) enables the exact v_proj
    projection. Writes ``adapter_model.safetensors``, ``adapter_config.json`` and
    ``ablation.json`` to ``out_dir``; returns the report written to ``ablation.json``.
    """
    src, dst = Path(adapter_dir), Path(out_dir)
    if not (src / ADAPTER_WEIGHTS).exists():
        raise FileNotFoundError(f"{src}: no {ADAPTER_WEIGHTS}")
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: refusing to overwrite the source adapter; choose another out_dir")
    config_text = (src / ADAPTER_CONFIG).read_text()
    if json.loads(config_text).get("use_dora"):
        raise ValueError(f"{src}: DoRA rescales the base weight; projecting lora_B does not remove a direction from it")
    with safe_open(str(src / ADAPTER_WEIGHTS), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    direction_at = _per_layer(directions)
    base_layers = decoder_layers(base_model) if base_model is not None else None
    edits: dict[str, str] = {}
    for key, b in tensors.items():
        m = _LORA_B.match(key)
        if m is None:
            continue
        module, layer, name = m["module"], int(m["layer"]), m["name"]
        u = direction_at(layer)
        if u is None:
            edits[module] = "left: no direction for this layer"
        elif name in RESIDUAL_WRITERS:
            tensors[key] = project_rows_out(b, _unit64(u))
            edits[module] = "projected: writes into the residual stream"
        elif name == VALUE_MODULE and base_layers is not None:
            n_heads = base_model.config.num_attention_heads
            o_weight = base_layers[layer].self_attn.o_proj.weight.detach()
            head_dim = o_weight.shape[1] // n_heads
            projectors = value_projectors(o_weight, u, n_heads, b.shape[0] // head_dim)
            tensors[key] = project_value_b(b, projectors)
            edits[module] = "projected: value delta made orthogonal to u through the base o_proj"
        elif name == VALUE_MODULE:
            edits[module] = "left: the value projection needs base_model"
        else:
            edits[module] = "left: acts through attention patterns or the MLP nonlinearity"

    report = provenance(
        source=str(src),
        directions="one vector for all layers" if isinstance(directions, torch.Tensor) else sorted(directions),
        modules=dict(sorted(edits.items())),
    )
    save_safetensors_atomic(tensors, dst / ADAPTER_WEIGHTS, metadata=metadata)
    write_text_atomic(dst / ADAPTER_CONFIG, config_text)
    write_json_atomic(dst / "ablation.json", report)
    return report
