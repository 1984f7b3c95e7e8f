"""Data parallel on CPU (gloo): two ranks give the one-process result, for caching and for
sharded generation on the engine."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from interp.base.chat import TokenizedConversation
from interp.base.decoding import Decoding
from interp.cache import POOLINGS, cache_means
from interp.distributed import cache_means_distributed, generate_distributed, shard
from interp.generation import generate


def _items(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 20, (1,), generator=g))
        start = int(torch.randint(1, length - 1, (1,), generator=g))
        out.append(TokenizedConversation(torch.randint(5, 300, (length,), generator=g).tolist(), start, length - 1))
    return out


def _model():
    from conftest import build_tiny_qwen

    return build_tiny_qwen(400, n_layers=2, seed=0)


def _prompts():
    """Left-padded prompts of different lengths, and the sampled decoding they get."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 300, (5, 9), generator=g)
    mask = torch.ones_like(ids)
    for row, pad in enumerate((0, 3, 1, 6, 2)):
        mask[row, :pad] = 0
    return ids * mask, mask, Decoding(max_new_tokens=5, top_k=40, seed=11)


def _worker(rank, world, port, items, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        got = cache_means_distributed(_model(), None, items, batch_size=2, progress=False)
        tokens = generate_distributed(_model(), *_prompts(), engine="fast")
        if rank == 0:
            # Plain lists: a queued tensor lives in this process's shared memory, gone once it exits.
            queue.put(
                {p: got.mean(p).tolist() for p in POOLINGS} | {"n_tokens": got.n_tokens, "generated": tokens.tolist()}
            )
    finally:
        dist.destroy_process_group()


def test_shards_cover_everything_once():
    items = _items(11)
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(id(x) for p in parts for x in p) == sorted(id(x) for x in items)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


@pytest.fixture(scope="module")
def two_ranks():
    """What rank 0 of a two-rank gloo group computed (caching over _items(), generation over _prompts())."""
    items = _items()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, items, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    return got


def test_two_ranks_equal_one_process(two_ranks):
    got = two_ranks
    want = cache_means(_model(), None, _items(), batch_size=2, progress=False)
    assert got["n_tokens"] == want.n_tokens
    for pooling in POOLINGS:
        torch.testing.assert_close(
            torch.tensor(got[pooling], dtype=torch.float64), want.mean(pooling), rtol=1e-9, atol=1e-9
        )


def test_sharded_generation_equals_one_process(two_ranks):
    """Each row keeps its sampling key on whichever rank it lands, so the tokens are one process's."""
    torch.set_num_threads(1)
    want = generate(_model(), *_prompts(), engine="fast")
    assert torch.equal(torch.tensor(two_ranks["generated"]), want)
