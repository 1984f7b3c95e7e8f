"""Per-batch shards of a caching run: written as they are computed, resumed after a crash.

A shard folder holds one safetensors file per batch (``shard_000000.safetensors``, ...) and a
``manifest.json`` whose fingerprint ties them to the inputs that made them (token ids and
spans, layers, batch size, model, backend, compilation). A run over other inputs refuses
the folder instead of mixing two runs' activations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from interp.base.atomic import save_safetensors_atomic, write_json_atomic
from interp.base.chat import TokenizedConversation


def fingerprint(items: Sequence[TokenizedConversation], settings: Mapping[str, Any]) -> str:
    """sha256 over ``settings`` and every conversation's token ids and answer span."""
    h = hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode())
    for it in items:
        h.update(json.dumps([it.input_ids, it.answer_start, it.answer_end]).encode())
    return h.hexdigest()


class ShardStore:
    """The shard folder of one caching run (see the module doc)."""

    def __init__(self, directory: str | Path, fingerprint: str, info: Mapping[str, Any]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "manifest.json"
        if manifest.exists():
            try:
                before = json.loads(manifest.read_text()).get("fingerprint")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                raise ValueError(f"{manifest}: unreadable manifest; use an empty folder") from None
            if before != fingerprint:
                raise ValueError(f"{self.dir}: per-sample shards come from other inputs or settings; use an empty folder")
        write_json_atomic(manifest, {"fingerprint": fingerprint, **info})

    def path(self, batch: int) -> Path:
        return self.dir / f"shard_{batch:06d}.safetensors"

    def load(self, batch: int) -> dict[str, torch.Tensor] | None:
        """Batch ``batch``'s tensors, or None when it has not been written yet."""
        path = self.path(batch)
        return load_file(path) if path.exists() else None

    def save(self, batch: int, tensors: Mapping[str, torch.Tensor]) -> None:
        save_safetensors_atomic(dict(tensors), self.path(batch))


def load_per_sample(per_sample_dir: str | Path) -> dict[str, torch.Tensor]:
    """All per-sample shards of a caching run, concatenated and put back in input order."""
    shards = sorted(Path(per_sample_dir).glob("shard_*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{per_sample_dir}: no per-sample shards")
    parts = [load_file(s) for s in shards]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    order = torch.argsort(out["index"])
    return {k: v[order] for k, v in out.items()}
