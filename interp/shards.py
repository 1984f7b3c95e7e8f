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

from interp.base.atomic import save_safetensors_atomic, write_json_atomic
from interp.base.chat import TokenizedConversation
from interp.base.cli import InputError
from interp.base.paths import read_safetensors


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
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, RecursionError):
                raise ValueError(f"{manifest}: unreadable manifest; use an empty folder") from None
            if before != fingerprint:
                raise ValueError(
                    f"{self.dir}: per-sample shards come from other inputs or settings; use an empty folder"
                )
        write_json_atomic(manifest, {"fingerprint": fingerprint, **info})

    def path(self, batch: int) -> Path:
        return self.dir / f"shard_{batch:06d}.safetensors"

    def load(self, batch: int) -> dict[str, torch.Tensor] | None:
        """Batch ``batch``'s tensors, or None when it has not been written yet."""
        path = self.path(batch)
        # A damaged shard is one line naming it, not a safetensors traceback mid-run.
        return read_safetensors(path, "per-sample shard")[0] if path.exists() else None

    def save(self, batch: int, tensors: Mapping[str, torch.Tensor]) -> None:
        save_safetensors_atomic(dict(tensors), self.path(batch))


SAMPLE_TENSORS = ("index", "n_tokens", "response_mean", "last_prompt")


def load_per_sample(per_sample_dir: str | Path) -> dict[str, torch.Tensor]:
    """All per-sample shards of a caching run, concatenated and put back in input order.

    A folder that is not such a run's (no shards, a shard that is not safetensors, lacks a
    tensor or does not fit the others, indices that repeat) is one
    :class:`~interp.base.cli.InputError` line naming the folder or shard.
    """
    folder = Path(per_sample_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: no per-sample folder" + (" (it is a file)" if folder.exists() else ""))
    shards = sorted(folder.glob("shard_*.safetensors"))
    if not shards:
        raise InputError(f"{folder}: no per-sample shards")
    parts = []
    for shard in shards:
        tensors, _ = read_safetensors(shard, "per-sample shard")
        if missing := [k for k in SAMPLE_TENSORS if k not in tensors]:
            raise InputError(f"{shard}: not a per-sample shard (no tensor {', '.join(missing)})")
        if tensors["index"].ndim != 1 or len({tensors[k].shape[:1] for k in SAMPLE_TENSORS}) != 1:
            raise InputError(f"{shard}: not a per-sample shard (its tensors hold different numbers of samples)")
        # A NaN activation would turn every null and reliability drawn from this folder into NaN.
        if bad := [
            k for k in SAMPLE_TENSORS if tensors[k].is_floating_point() and not torch.isfinite(tensors[k]).all()
        ]:
            raise InputError(f"{shard}: per-sample tensor {bad[0]!r} has NaN or infinite values")
        parts.append(tensors)
    try:
        out = {k: torch.cat([p[k] for p in parts]) for k in SAMPLE_TENSORS}
    except (RuntimeError, TypeError) as e:  # shards of other layers, widths or dtypes
        raise InputError(f"{folder}: per-sample shards do not fit together ({str(e).splitlines()[0]})") from None
    index = out["index"]
    if index.is_floating_point() or not torch.equal(
        torch.sort(index).values, torch.arange(len(index), dtype=index.dtype)
    ):
        raise InputError(
            f"{folder}: per-sample shards' indices are not 0..{len(index) - 1} each once (shards missing, repeated or of another run)"
        )
    order = torch.argsort(index)
    return {k: v[order] for k, v in out.items()}
