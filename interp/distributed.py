"""Data-parallel caching with torch.distributed: each rank caches a shard, sums are all-reduced.

Launch one process per GPU (``torchrun --nproc_per_node=N script.py``); every rank calls
:func:`cache_means_distributed` with the same full list of conversations and gets the same
result, equal to a one-GPU run up to the order of float64 additions. Models that do not fit
one GPU are the other case: load them once with ``device_map="auto"`` and call
:func:`interp.cache.cache_means` in a single process (hooks move the masks to each layer's device).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from interp.base.chat import (
    DEFAULT_SPAN,
    Conversation,
    Span,
    TokenizedConversation,
    as_tokenized,
)
from interp.base.models import d_model, layer_indices, n_layers
from interp.cache import ActivationMeans, cache_means


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """This rank's share of ``items``: every ``world_size``-th item of the length-sorted order.

    Sorting first, then dealing round-robin, gives every rank the same mix of lengths, so no
    rank waits on another holding all the long answers.
    """
    order = sorted(range(len(items)), key=lambda i: -len(items[i].input_ids))
    return [items[i] for i in order[rank::world_size]]


def cache_means_distributed(
    model: nn.Module,
    tokenizer,
    conversations: Sequence[Conversation] | Sequence[TokenizedConversation],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    compile: bool = False,
    span: Span = DEFAULT_SPAN,
) -> ActivationMeans:
    """:func:`cache_means` over this rank's shard, all-reduced across the process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return cache_means(model, tokenizer, conversations, layers=layers, batch_size=batch_size, progress=progress, compile=compile, span=span)
    rank, world = dist.get_rank(), dist.get_world_size()
    items = [as_tokenized(tokenizer, c) for c in conversations]
    mine = shard(items, rank, world)
    if mine:
        local = cache_means(model, tokenizer, mine, layers=layers, batch_size=batch_size, progress=progress and rank == 0, desc=f"caching (rank {rank})", compile=compile, span=span)
    else:  # fewer conversations than ranks: this rank still joins the all-reduce
        local = ActivationMeans(layer_indices(layers, n_layers(model)), d_model(model), span=span)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    sums = torch.stack([local.token_sum, local.response_sum, local.last_prompt_sum]).to(device)
    counts = torch.tensor([local.n_tokens, local.n_responses, local.n_conversations], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    dist.all_reduce(counts)
    sums, counts = sums.cpu(), counts.cpu()
    return ActivationMeans(
        layers=local.layers,
        d_model=local.d_model,
        token_sum=sums[0],
        response_sum=sums[1],
        last_prompt_sum=sums[2],
        n_tokens=int(counts[0]),
        n_responses=int(counts[1]),
        n_conversations=int(counts[2]),
        span=span,
    )
