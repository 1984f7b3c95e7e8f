"""The distilled judge's weight files (safetensors, metadata as strings): ``distilled-judge-v1``
holds an ensemble of :class:`Head`; ``distilled-judge-v2`` holds a :class:`FinetunedHead` and the
encoder's LoRA factors, merged into the encoder's weights when loaded; ``probe-judge-v1`` holds an
ensemble of :class:`Head` on a causal LM's last-token states (:mod:`eval.judges.probe`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eval.judges.distilled_encoder import OfflineJudgeError
from eval.judges.distilled_heads import OUTPUTS_V2, FinetunedHead, Head
from interp.base.atomic import save_safetensors_atomic
from interp.base.cli import InputError
from interp.base.paths import read_safetensors

FORMAT_V1 = "distilled-judge-v1"
FORMAT_V2 = "distilled-judge-v2"
FORMAT_PROBE = "probe-judge-v1"
# Every linear layer of the 6 transformer layers (q, k, v, attention output, FFN in and out); not the pooler.
LORA_TARGETS = r".*encoder\.layer\.\d+\..*(query|key|value|dense)$"


def _save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], metadata: dict[str, Any]) -> None:
    """Write ``tensors`` with ``meta`` plus the caller's ``metadata`` (non-strings as JSON)."""
    meta = {**meta, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(tensors, path, metadata=meta)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a distilled-judge file; missing or unreadable files are an :class:`OfflineJudgeError`."""
    path = Path(path)
    if not path.is_file():
        raise OfflineJudgeError(
            f"{path}: no distilled-judge weights here; reinstall the toolkit (pip install -e .) or rebuild them with python benchmarks/judge_eval.py --train-shipped"
        )
    try:
        tensors, meta = read_safetensors(path, "safetensors weights file")
    except InputError as e:
        raise OfflineJudgeError(str(e)) from None
    if meta.get("format") not in (FORMAT_V1, FORMAT_V2, FORMAT_PROBE):
        raise OfflineJudgeError(f"{path}: not distilled-judge weights (format {meta.get('format')!r})")
    return tensors, meta


def _read_format(path: str | Path, fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`read_weights`, refusing a file of the other format."""
    tensors, meta = read_weights(path)
    if meta.get("format") != fmt:
        raise OfflineJudgeError(f"{path}: not {fmt} weights (format {meta.get('format')!r})")
    return tensors, meta


def save_heads(path: str | Path, heads: Sequence[Head], metadata: dict[str, Any], fmt: str = FORMAT_V1) -> None:
    """Write ``heads`` (an ensemble of one architecture) as safetensors of format ``fmt``, ``metadata`` as JSON strings."""
    tensors = {
        f"head{k}.{name}": t.detach().to(torch.float32).contiguous()
        for k, h in enumerate(heads)
        for name, t in h.state_dict().items()
    }
    meta = {
        "format": fmt,
        "heads": str(len(heads)),
        "hidden": str(heads[0].net[1].out_features),
        "dim": str(heads[0].mean.numel()),
    }
    _save(path, tensors, meta, metadata)


def load_heads(path: str | Path, fmt: str = FORMAT_V1) -> tuple[list[Head], dict[str, str]]:
    """The ensemble and metadata :func:`save_heads` wrote as ``fmt``; missing or foreign files are an :class:`OfflineJudgeError`."""
    tensors, meta = _read_format(path, fmt)
    heads = []
    for k in range(int(meta["heads"])):
        h = Head(int(meta["dim"]), int(meta["hidden"]))
        h.load_state_dict({n[len(f"head{k}.") :]: t for n, t in tensors.items() if n.startswith(f"head{k}.")})
        heads.append(h.eval())
    return heads, meta


def lora_factors(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``{module path in the encoder: (A, B, scale)}`` of a peft-wrapped encoder's LoRA layers."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            path = name.removeprefix("base_model.model.")
            out[path] = (
                module.lora_A["default"].weight.detach(),
                module.lora_B["default"].weight.detach(),
                float(module.scaling["default"]),
            )
    return out


def save_finetuned(
    path: str | Path,
    lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
    head: FinetunedHead,
    metadata: dict[str, Any],
) -> None:
    """Write v2 weights: each LoRA factor pair (``lora.PATH.A`` / ``.B``, scale folded into B) and the head."""
    if "max_length" not in metadata:
        raise ValueError("v2 weights need their max_length in metadata")
    tensors = {}
    for name, (a, b, scale) in lora.items():
        tensors[f"lora.{name}.A"] = a.detach().to(torch.float32).cpu().contiguous()
        tensors[f"lora.{name}.B"] = (scale * b.detach().to(torch.float32)).cpu().contiguous()
    for name, t in head.state_dict().items():
        tensors[f"head.{name}"] = t.detach().to(torch.float32).cpu().contiguous()
    meta = {
        "format": FORMAT_V2,
        "dim": str(head.net[0].normalized_shape[0]),
        "hidden": str(head.net[2].out_features),
        "outputs": ",".join(OUTPUTS_V2),
    }
    _save(path, tensors, meta, metadata)


def load_finetuned(
    path: str | Path,
) -> tuple[FinetunedHead, dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, str]]:
    """The head, the LoRA factors ``{path: (A, scaled B)}`` and the metadata :func:`save_finetuned` wrote."""
    tensors, meta = _read_format(path, FORMAT_V2)
    head = FinetunedHead(int(meta["dim"]), int(meta["hidden"]))
    head.load_state_dict({n[len("head.") :]: t for n, t in tensors.items() if n.startswith("head.")})
    lora = {
        n[len("lora.") : -len(".A")]: (t, tensors[n[:-2] + ".B"])
        for n, t in tensors.items()
        if n.startswith("lora.") and n.endswith(".A")
    }
    if not lora:
        raise OfflineJudgeError(f"{path}: v2 weights without LoRA factors")
    return head.eval(), lora, meta


@torch.no_grad()
def merge_lora(model: torch.nn.Module, lora: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Add each ``B @ A`` into its linear layer's weight (``model`` is the plain encoder, not peft-wrapped)."""
    for name, (a, b) in lora.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise OfflineJudgeError(f"LoRA factors for {name}, which the encoder lacks") from None
        w = linear.weight
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise OfflineJudgeError(
                f"LoRA factors for {name} have shape {tuple(b.shape)} x {tuple(a.shape)}, not {tuple(w.shape)}"
            )
        w += (b.to(torch.float32) @ a.to(torch.float32)).to(w.device, w.dtype)
