"""The ways others cache what the toolkit caches, timed beside it by ``gpu_caching.py``: a plain
forward pass, nnsight as its documentation shows it, and the domain paper's one-at-a-time dump.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy
from interp.base.chat import TokenizedConversation  # noqa: E402
from interp.cache import masked_sum  # noqa: E402


def batches_like_toolkit(items: list[TokenizedConversation], batch_size: int):
    """The toolkit's batches: length-sorted and right-padded; ids, padding mask, answer mask."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i].input_ids))
    for start in range(0, len(order), batch_size):
        chunk = [items[i] for i in order[start : start + batch_size]]
        width = max(len(c.input_ids) for c in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        attn = torch.zeros(len(chunk), width, dtype=torch.long)
        answer = torch.zeros(len(chunk), width)
        for r, c in enumerate(chunk):
            ids[r, : len(c.input_ids)] = torch.tensor(c.input_ids)
            attn[r, : len(c.input_ids)] = 1
            answer[r, c.answer_start : c.answer_end] = 1
        yield ids, attn, answer


@torch.no_grad()
def plain_forward(model, items, batch_size, device, decoder_only: bool, padding_mask: bool = True) -> None:
    """``model(**batch)`` with no hooks; without ``padding_mask``, the causal mask alone, as the
    toolkit runs its right-padded batches."""
    body = model.model if decoder_only else model
    for ids, attn, _ in batches_like_toolkit(items, batch_size):
        body(input_ids=ids.to(device), attention_mask=attn.to(device) if padding_mask else None, use_cache=False)


@torch.no_grad()
def nnsight_as_documented(model, items, batch_size, device) -> torch.Tensor:
    """nnsight as its docs show it: trace the whole model on the padded batch, ``.save()`` every
    decoder layer's output, then pool the answer tokens (as the toolkit pools them)."""
    import nnsight

    from interp.backends.views import shared_view

    lm = nnsight.NNsight(shared_view(model))  # nnsight rewires what it wraps: give it a copy
    L = model.config.num_hidden_layers
    sums = torch.zeros(L, model.config.hidden_size, dtype=torch.float64, device=device)
    for ids, attn, answer in batches_like_toolkit(items, batch_size):
        answer = answer.to(device)
        saved: list = []  # bound before the trace: nnsight issue #550
        with lm.trace(input_ids=ids.to(device), attention_mask=attn.to(device)):
            saved.extend(lm.model.layers[i].output.save() for i in range(L))
        for i, hidden in enumerate(saved):
            sums[i] += (masked_sum(hidden, answer) / answer.sum(1, keepdim=True)).sum(0)
    return (sums / len(items)).cpu()


@torch.no_grad()
def reference_approach(model, items, device) -> None:
    """The domain paper's public approach: one conversation at a time, every layer's per-token
    activations moved to the CPU."""
    kept = []
    for it in items:
        out = model(torch.tensor([it.input_ids], device=device), output_hidden_states=True)
        kept.append([h[0, it.answer_start : it.answer_end].float().cpu() for h in out.hidden_states[1:]])
        kept.clear()  # the reference saves them to disk; we only pay for the transfer
