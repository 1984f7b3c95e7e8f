"""Features of the probe judge (:mod:`judge_probe`): a causal LM reads the judge prompt, and the
hidden states of a few decoder layers at the prompt's last token (the position whose next token
would be the score) are the features.

Each (question, answer) is filled into the toolkit's judge prompt (:mod:`eval.judges.prompts`)
and put through the model's chat template exactly as the ``hf:`` judge does
(:func:`eval.judges.hf.chat_texts`). A prompt over ``max_tokens`` loses the tail of its answer,
never the instruction after it. Rows are sorted by length and run in batches of at most a token
budget (right padding; each row's last real token is gathered), in chunks of rows written as
safetensors under the work folder as they finish, keyed by what made them: a rerun skips the
finished chunks, and a folder made for other features is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from eval.judges.hf import chat_texts
from eval.judges.prompts import DEFAULT_JUDGE_PROMPTS, render
from interp.base.atomic import save_safetensors_atomic, write_json_atomic
from interp.base.cli import InputError
from interp.base.models import decoder_layers, decoder_stack, input_device


def default_layers(num_layers: int) -> list[int]:
    """Four evenly spaced decoder layers of the upper half, and the last one (0-based)."""
    return sorted({int(round(x)) for x in np.linspace(num_layers // 2, num_layers - 1, 5)})


def _encode(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each judge prompt as the judge model reads it (chat template, generation prompt)."""
    return tokenizer(chat_texts(tokenizer, prompts), add_special_tokens=False)["input_ids"]


def _truncated(tokenizer, template: str, question: str, answer: str, max_tokens: int, over: int) -> list[int]:
    """The prompt's ids with the answer cut short enough to fit ``max_tokens`` (``over`` tokens too many)."""
    ans = tokenizer(answer, add_special_tokens=False)["input_ids"]
    keep = len(ans) - over
    while True:
        keep = max(keep, 0)
        ids = _encode(tokenizer, [render(template, question, tokenizer.decode(ans[:keep]))])[0]
        # Re-tokenizing at the cut can merge differently: shrink until it fits.
        if len(ids) <= max_tokens:
            return ids
        if keep == 0:
            raise InputError(
                f"a judge prompt is {len(ids)} tokens with an empty answer, over --max-tokens {max_tokens}; raise it"
            )
        keep -= len(ids) - max_tokens


def prompt_ids(tokenizer, cols: dict, prompts: Sequence[str], max_tokens: int) -> tuple[list[list[list[int]]], int]:
    """Token ids of every row's judge prompt, per prompt name ([prompt][row]), and how many were truncated."""
    out, truncated = [], 0
    for name in prompts:
        template = DEFAULT_JUDGE_PROMPTS[name]
        texts = [render(template, q, a) for q, a in zip(cols["question"], cols["answer"])]
        ids = _encode(tokenizer, texts)
        for i, seq in enumerate(ids):
            if len(seq) > max_tokens:
                ids[i] = _truncated(
                    tokenizer, template, cols["question"][i], cols["answer"][i], max_tokens, len(seq) - max_tokens
                )
                truncated += 1
        out.append(ids)
    return out, truncated


def token_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices into ``lengths`` in batches, sorted by length, each at most ``batch_tokens`` padded
    tokens (a longer sequence alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        # Sorted ascending, so the newcomer sets the batch's padded length.
        if batches and (len(batches[-1]) + 1) * lengths[i] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class _Stop(Exception):
    """Raised by the hook of the last layer needed: the layers above it are not run."""


@torch.inference_mode()
def last_token_states(model: torch.nn.Module, seqs: Sequence[Sequence[int]], layers: Sequence[int]) -> torch.Tensor:
    """[len(seqs), len(layers) * d_model] float32 (CPU): the output of each decoder layer of
    ``layers`` at each sequence's last token, the sequences right-padded into one batch."""
    device = input_device(model)
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    rows, last = torch.arange(len(seqs), device=device), (lengths - 1).to(device)
    kept: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def keep(module, inputs, output):
            h = output[0] if isinstance(output, tuple) else output
            kept[index] = h[rows, last].float()
            if index == max(layers):
                raise _Stop

        return keep

    blocks = decoder_layers(model)
    handles = [blocks[i].register_forward_hook(hook(i)) for i in layers]
    try:
        # The decoder stack, not the LM: no logits over the vocabulary for every position.
        decoder_stack(model)(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return torch.cat([kept[i] for i in layers], dim=-1).cpu()


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


def chunk_features(
    model: torch.nn.Module, seqs: list[list[list[int]]], rows: np.ndarray, layers: Sequence[int], batch_tokens: int
) -> torch.Tensor:
    """[len(rows), prompts * layers * d] features of ``rows``: each prompt's last-token states side by side."""
    units = [(p, r) for p in range(len(seqs)) for r in range(len(rows))]
    parts: list[list[torch.Tensor | None]] = [[None] * len(rows) for _ in seqs]
    for batch in token_batches([len(seqs[p][rows[r]]) for p, r in units], batch_tokens):
        states = last_token_states(model, [seqs[units[u][0]][rows[units[u][1]]] for u in batch], layers)
        for u, x in zip(batch, states):
            parts[units[u][0]][units[u][1]] = x
    return torch.cat([torch.stack(p) for p in parts], dim=-1)


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
