"""The probe judge's features: a causal LM reads the judge prompt, and the hidden states of a few
decoder layers at the prompt's last token (the position whose next token would be the score)
are the features that :mod:`eval.judges.probe`'s heads (and ``benchmarks/judge_probe.py``'s
cross-validation) read.

Each (question, answer) is filled into the toolkit's judge prompt (:mod:`eval.judges.prompts`)
and put through the model's chat template exactly as the ``hf:`` judge does
(:func:`eval.judges.hf.chat_texts`). A prompt over ``max_tokens`` loses the tail of its answer,
never the instruction after it. Rows run in batches of at most a token budget, sorted by
length (right padding; each row's last real token is gathered).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from eval.judges.hf import chat_texts
from eval.judges.prompts import DEFAULT_JUDGE_PROMPTS, render
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
