"""Resumable training checkpoints: the weights, optimizer state, RNG states and log of a run.

:func:`finetune.sft.train` saves one every ``checkpoint_every`` steps and resumes from one it
finds; :func:`check_checkpoint` reads one before any model is loaded. The tensors are
safetensors (no pickle); ``state.json`` names the step, and a checkpoint counts only once it is
in place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from interp.base.atomic import save_safetensors_atomic, write_json_atomic
from interp.base.cli import InputError


@dataclass
class TrainLog:
    """Per optimizer step: the answer loss, and each other logged term of the objective."""

    losses: list[float] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=dict)

    def add(self, parts: Mapping[str, torch.Tensor | float]) -> None:
        self.losses.append(float(parts["task"]))
        for name, value in parts.items():
            if name != "task":
                self.terms.setdefault(name, []).append(float(value))


def _save_checkpoint(
    folder: Path,
    params: dict[str, nn.Parameter],
    opt: torch.optim.Optimizer,
    g: torch.Generator,
    step: int,
    order: list[int],
    log: TrainLog,
    settings: Any,
) -> None:
    """Trainable weights, AdamW moments and RNG states as safetensors (no pickle), then the
    JSON that names the step: a checkpoint counts only once its JSON is in place."""
    tensors = {f"param.{n}": p.detach().cpu() for n, p in params.items()}
    for n, p in params.items():
        for k, v in opt.state.get(p, {}).items():
            tensors[f"opt.{n}.{k}"] = v.detach().cpu().reshape(-1) if v.dim() == 0 else v.detach().cpu()
    tensors["rng.order"] = g.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    save_safetensors_atomic(tensors, folder / "state.safetensors", metadata={"step": str(step)})
    write_json_atomic(
        folder / "state.json",
        {"step": step, "order": order, "losses": log.losses, "terms": log.terms, "settings": settings},
    )


def _load_checkpoint(
    folder: Path, params: dict[str, nn.Parameter], opt: torch.optim.Optimizer, g: torch.Generator, settings: Any
) -> tuple[int, list[int], TrainLog]:
    meta = _checkpoint_state(folder)
    if meta.get("settings") != settings:
        raise InputError(
            f"{folder}: checkpoint was written with other settings (adapter, optimisation or defense); use another folder"
        )
    try:
        with safe_open(str(folder / "state.safetensors"), framework="pt") as f:
            saved_step = (f.metadata() or {}).get("step")
        if saved_step != str(meta["step"]):
            # A crash between the two writes leaves the tensors of one step beside the JSON of another.
            raise InputError(
                f"{folder}: damaged checkpoint (its tensors are of step {saved_step}, its state.json of step {meta['step']}); remove it to start over"
            )
        tensors = load_file(str(folder / "state.safetensors"))
        if set(params) != {k[len("param.") :] for k in tensors if k.startswith("param.")}:
            raise InputError(f"{folder}: checkpoint is of other trainable parameters; use another folder")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(tensors[f"param.{n}"])
                state = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"opt.{n}.")}
                if state:
                    opt.state[p] = {k: (v.reshape(()) if k == "step" else v.to(p.device)) for k, v in state.items()}
        g.set_state(tensors["rng.order"])
        torch.set_rng_state(tensors["rng.torch"])
    except (SafetensorError, OSError, KeyError, RuntimeError) as e:  # truncated, or tensors of another shape
        raise _damaged(folder, e) from None
    return meta["step"], meta["order"], TrainLog(meta["losses"], meta.get("terms", {}))


def _last_kept(folder: Path | None) -> str:
    """What a stopped run leaves to resume from, for its error message."""
    if folder is None or not (folder / "state.json").exists():
        return ""
    try:
        return f"; the last good checkpoint (step {json.loads((folder / 'state.json').read_text())['step']}) is kept in {folder}"
    except (OSError, ValueError, KeyError):
        return f"; the checkpoint in {folder} is kept"


def check_checkpoint(folder: Path) -> None:
    """Raise :class:`InputError` unless ``folder`` holds a readable checkpoint, before any model is loaded."""
    _checkpoint_state(folder)
    try:
        with safe_open(str(folder / "state.safetensors"), framework="pt"):
            pass  # opening reads the header and checks the file holds every tensor it announces
    except (SafetensorError, OSError) as e:
        raise _damaged(folder, e) from None


def _checkpoint_state(folder: Path) -> dict[str, Any]:
    """``state.json``: the step, the batch order left and the losses so far."""
    try:
        meta = json.loads((folder / "state.json").read_text())
        if not (isinstance(meta["step"], int) and isinstance(meta["order"], list) and isinstance(meta["losses"], list)):
            raise TypeError("fields of the wrong type")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _damaged(folder, e) from None
    return meta


def _damaged(folder: Path, error: BaseException) -> InputError:
    """The one line for a checkpoint that cannot be read."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return InputError(f"{folder}: damaged checkpoint ({reason}); remove it to start over")
