"""Steering vectors as data: per-layer vectors and how to apply them, saved and loaded.

A :class:`SteeringVector` holds everything a steering run needs besides the model: the vector
at each decoder layer, what to do with it (``kind``: ``"add"`` it to the residual stream, or
``"ablate"``, i.e. project its direction out), ``alpha`` in the units of ``scale`` (with the
layer ``norms`` that ``scale="norm"`` needs), and the ``positions`` it applies to::

    sv = DirectionSet.load("gore.safetensors").steering_vector([12], alpha=4.0, positions="generated")
    sv.save("steer/gore_l12.safetensors")
    with steer(model, SteeringVector.load("steer/gore_l12.safetensors")):
        out = model.generate(**inputs)

:func:`interp.intervention.steering`, :func:`~interp.intervention.ablation`, :func:`interp.steer.steer`,
:func:`~interp.steer.ablate` and :func:`interp.intervene.intervene` accept one wherever they take
vectors; the meaning of every field is documented in :mod:`interp.steer`. A file is a
safetensors file (never a pickle): the tensors ``vectors`` [n_layers, d_model] and ``layers``,
and in its header the settings, where the vectors came from (``metadata``) and provenance
(package versions, time); a JSON copy of the header is written beside it for reading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open

from interp.base.atomic import json_safe, save_safetensors_atomic, write_json_atomic
from interp.base.cli import InputError
from interp.base.provenance import provenance
from interp.positions import PositionGate, Positions

Scale = Literal["raw", "unit", "norm"]
SCALES: tuple[Scale, ...] = ("raw", "unit", "norm")
DEFAULT_SCALE: Scale = "raw"

Kind = Literal["add", "ablate"]
KINDS: tuple[Kind, ...] = ("add", "ablate")

FORMAT = "steering_vector"  # safetensors header key "format"; tells our files from others
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """Per-layer vectors and how to apply them (see the module doc).

    ``vectors`` maps decoder-layer indices (negative ones count from the end, resolved
    against the model at steering time) to 1-D tensors of one width and dtype. For
    ``kind="ablate"`` the vectors are directions (any length) and ``alpha``/``scale`` keep their
    defaults. ``metadata`` is JSON-safe free text about where the vectors came from.
    """

    vectors: Mapping[int, torch.Tensor]
    kind: Kind = "add"
    alpha: float = 1.0
    scale: Scale = DEFAULT_SCALE
    norms: Mapping[int, float] | None = None
    positions: Positions = "all"
    prompt_length: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("a steering vector needs a vector for at least one layer")
        vectors = {int(l): v.detach() for l, v in sorted(self.vectors.items(), key=lambda kv: int(kv[0]))}
        shapes = {tuple(v.shape) for v in vectors.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"the vectors must be 1-D and of one width; got shapes {sorted(shapes)}")
        if len({v.dtype for v in vectors.values()}) != 1:
            raise ValueError("the vectors must share one dtype")
        if not next(iter(vectors.values())).is_floating_point():
            raise ValueError(f"the vectors must be floating point, got {next(iter(vectors.values())).dtype}")
        # A NaN or infinity here would turn every steered logit into NaN without a word.
        if bad := [l for l, v in vectors.items() if not torch.isfinite(v).all()]:
            raise ValueError(f"the vector at layer {bad[0]} has NaN or infinite values")
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be a finite number, got {self.alpha}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; expected one of {', '.join(SCALES)}")
        PositionGate(self.positions, self.prompt_length)  # validates both
        norms = None if self.norms is None else {int(l): float(n) for l, n in self.norms.items()}
        if norms is not None and (bad := [l for l, n in norms.items() if not math.isfinite(n)]):
            raise ValueError(f"the residual norm of layer {bad[0]} is {norms[bad[0]]}; expected a finite number")
        if self.kind == "ablate" and (self.alpha != 1.0 or self.scale != DEFAULT_SCALE or norms is not None):
            raise ValueError("an ablation projects its direction out: alpha, scale and norms do not apply")
        if self.scale == "norm" and (norms is None or set(vectors) - set(norms)):
            raise ValueError(
                f"scale='norm' needs the residual norm of every layer {sorted(vectors)}; pass norms (see interp.norms.residual_norms)"
            )
        try:
            metadata = json.loads(json.dumps(dict(self.metadata)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata must be JSON-serialisable ({e})") from None
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "norms", norms)
        object.__setattr__(self, "metadata", metadata)

    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    @property
    def d_model(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def replace(self, **changes: Any) -> SteeringVector:
        """A copy with ``changes`` to its fields, e.g. ``sv.replace(alpha=8.0)``."""
        return dataclasses.replace(self, **changes)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SteeringVector:
        """A copy whose vectors are on ``device`` and/or in ``dtype``."""
        return self.replace(vectors={l: v.to(device=device, dtype=dtype) for l, v in self.vectors.items()})

    def info(self) -> dict[str, Any]:
        """A JSON-safe record of this steering vector, for provenance: its settings, the norm of
        each vector and a sha256 of their float32 values."""
        stacked = torch.stack([v.detach().cpu().float() for v in self.vectors.values()])
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "layers": self.layers,
            "d_model": self.d_model,
            "alpha": self.alpha,
            "scale": self.scale,
            "norms": None if self.norms is None else {str(l): n for l, n in self.norms.items()},
            "positions": self.positions,
            "prompt_length": self.prompt_length,
            "vector_norms": {str(l): n for l, n in zip(self.layers, stacked.norm(dim=-1).tolist())},
            "sha256": hashlib.sha256(stacked.numpy().tobytes()).hexdigest(),
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors) and ``path`` with a ``.json`` suffix, both atomically."""
        path = Path(path)
        info = json_safe(provenance(**self.info()))
        tensors = {
            "vectors": torch.stack([v.detach().cpu() for v in self.vectors.values()]),
            "layers": torch.tensor(self.layers, dtype=torch.int64),
        }
        save_safetensors_atomic(tensors, path, metadata={"format": FORMAT, "info": json.dumps(info)})
        write_json_atomic(path.with_suffix(".json"), info)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a file written by :meth:`save` (safetensors only: nothing is unpickled).

        The header must agree with the tensors (layers, width, sha256 of the values): a file
        whose vectors were changed after it was written, or whose header was, is refused with
        an :class:`~interp.base.cli.InputError` naming the field.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such steering vector file")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise InputError(f"{path}: not a safetensors file ({e})") from None
        if header.get("format") != FORMAT:
            hint = (
                ": it is a direction artifact; use DirectionSet.load(path).steering_vector(...)"
                if "directions" in tensors
                else ""
            )
            raise InputError(f"{path}: not a steering vector file{hint}")
        try:
            info = json.loads(header["info"])
            if info["format_version"] != FORMAT_VERSION:
                raise ValueError(f"format version {info['format_version']}, this code reads {FORMAT_VERSION}")
            vectors, layers = tensors["vectors"], tensors["layers"]
            if vectors.ndim != 2 or layers.shape != (vectors.shape[0],):
                raise ValueError(
                    f"'vectors' of shape {tuple(vectors.shape)} for 'layers' of shape {tuple(layers.shape)}"
                )
            if layers.is_floating_point() or layers.dtype == torch.bool:
                raise ValueError(f"tensor 'layers' must hold integers, got {layers.dtype}")
            if len(set(layers.tolist())) != len(layers):
                raise ValueError(f"tensor 'layers' repeats a layer: {layers.tolist()}")
            sv = cls(
                dict(zip(layers.tolist(), vectors)),
                kind=info["kind"],
                alpha=info["alpha"],
                scale=info["scale"],
                norms=info["norms"],
                positions=info["positions"],
                prompt_length=info["prompt_length"],
                metadata=info["metadata"],
            )
            actual = sv.info()
            if lies := [k for k in ("layers", "d_model", "sha256") if info[k] != actual[k]]:
                raise ValueError(
                    f"header field {lies[0]!r} is {info[lies[0]]!r} but the tensors give {actual[lies[0]]!r}"
                )
            return sv
        except (KeyError, TypeError, ValueError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e)
            raise InputError(f"{path}: invalid steering vector file ({what})") from None

    def __repr__(self) -> str:
        norms = [float(v.float().norm()) for v in self.vectors.values()]
        if len(self.layers) <= 6:
            where = f"layers {self.layers}"
            sizes = ", ".join(f"{l}: {n:.3g}" for l, n in zip(self.layers, norms))
        else:
            where = f"{len(self.layers)} layers {self.layers[0]}..{self.layers[-1]}"
            sizes = f"{min(norms):.3g}..{max(norms):.3g}"
        parts = [f"{self.kind} at {where}", f"|v| {sizes}"]
        if self.kind == "add":
            parts.append(f"alpha={self.alpha:g}, scale={self.scale!r}")
        parts.append(
            f"positions={self.positions!r}"
            + (f", prompt_length={self.prompt_length}" if self.prompt_length is not None else "")
        )
        v = next(iter(self.vectors.values()))
        parts.append(f"d_model={self.d_model}, {str(v.dtype).removeprefix('torch.')} on {v.device}")
        return f"SteeringVector({'; '.join(parts)})"
