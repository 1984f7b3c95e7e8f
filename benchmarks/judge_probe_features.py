"""The probe judge's features for the benchmark (:mod:`judge_probe`): every row's features
(:mod:`eval.judges.probe_features`), in chunks of rows sorted by length, written as safetensors
under the work folder as they finish and keyed by what made them: a rerun skips the finished
chunks, and a folder made for other features is refused."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from eval.judges.probe_features import chunk_features
from interp.base.atomic import save_safetensors_atomic, write_json_atomic
from interp.base.cli import InputError


class FeatureStore:
    """Chunks of features under ``work``, each a safetensors file; ``key.json`` says what made them."""

    def __init__(self, work: Path, key: dict) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        key = json.loads(json.dumps(key))
        path = work / "key.json"
        if path.is_file():
            found = json.loads(path.read_text())
            if found != key:
                diff = ", ".join(f"{k}: {found.get(k)!r} -> {key.get(k)!r}" for k in key if found.get(k) != key.get(k))
                raise InputError(
                    f"--work {work} holds features made otherwise ({diff}); use another --work or delete it"
                )
        else:
            write_json_atomic(path, key)

    def path(self, k: int) -> Path:
        return self.work / f"chunk{k:04d}.safetensors"

    def load(self, k: int, rows: np.ndarray) -> tuple[np.ndarray, dict]:
        """Chunk ``k``'s features (checked to be of ``rows``) and its metadata."""
        from safetensors import safe_open

        t = load_file(str(self.path(k)))
        with safe_open(str(self.path(k)), "pt") as f:
            meta = json.loads(f.metadata()["info"])
        if not np.array_equal(t["rows"].numpy(), rows):
            raise InputError(f"{self.path(k)}: holds other rows than this run's chunk {k}; delete --work {self.work}")
        return t["features"].numpy(), meta

    def save(self, k: int, rows: np.ndarray, feats: torch.Tensor, meta: dict) -> None:
        tensors = {"rows": torch.as_tensor(rows, dtype=torch.int64), "features": feats}
        save_safetensors_atomic(tensors, self.path(k), metadata={"info": json.dumps(meta)})


def extract_all(
    model: torch.nn.Module,
    seqs: list[list[list[int]]],
    store: FeatureStore,
    layers: Sequence[int],
    chunk_rows: int,
    batch_tokens: int,
    device_name: str,
    progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """Every row's features (float32), chunk by chunk (finished chunks read back), and the
    seconds, rows and tokens the chunks took when they were computed."""
    n = len(seqs[0])
    lengths = np.array([sum(len(s[i]) for s in seqs) for i in range(n)])
    order = np.argsort(lengths, kind="stable")  # similar lengths share a chunk: less padding
    out: np.ndarray | None = None
    totals = {"features_s": 0.0, "rows": 0, "tokens": 0, "chunks_computed_now": 0, "devices": []}
    with tqdm(total=n, unit="row", desc="probe features", disable=not progress) as bar:
        for k, start in enumerate(range(0, n, chunk_rows)):
            rows = order[start : start + chunk_rows]
            if store.path(k).is_file():
                x, meta = store.load(k, rows)
            else:
                t = time.perf_counter()
                feats = chunk_features(model, seqs, rows, layers, batch_tokens)
                meta = {"seconds": time.perf_counter() - t, "tokens": int(lengths[rows].sum()), "device": device_name}
                if not torch.isfinite(feats).all():
                    raise InputError(
                        f"non-finite features in chunk {k} (rows {rows[:3].tolist()}...); try --dtype float32"
                    )
                store.save(k, rows, feats, meta)
                x, totals["chunks_computed_now"] = feats.numpy(), totals["chunks_computed_now"] + 1
            out = np.zeros((n, x.shape[1]), dtype=np.float32) if out is None else out
            out[rows] = x
            totals["features_s"] += meta["seconds"]
            totals["rows"] += len(rows)
            totals["tokens"] += meta["tokens"]
            totals["devices"] = sorted({*totals["devices"], meta["device"]})
            bar.update(len(rows))
    if not np.isfinite(out).all():
        raise InputError(f"non-finite features read back from --work {store.work}; delete it and rerun")
    return out, totals
