"""The engine's sampler: draws follow the softmax, and what it hands the GPU compiler fits int32."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from torch.fx.experimental.proxy_tensor import make_fx

from interp.engine.sampler import SamplerSpec, choose, row_keys, token_codes

SAMPLED = SamplerSpec(greedy=False, temperature=0.7, top_k=0, top_p=1.0, repetition_penalty=1.0)


def test_compiled_sampler_has_no_constant_beyond_int32_and_no_index_arithmetic():
    # On the GPU, inductor folds `arange * constant` into a Triton index expression computed in
    # int32: a constant of 2**31 or more failed to compile there (real vocabulary, H200), and a
    # smaller one would wrap silently. The CPU build compiles either, so check the graph itself.
    vocab = 151_936
    graph = make_fx(lambda logits, keys, step, codes: choose(SAMPLED, logits, keys, step, None, codes))(
        torch.randn(2, vocab), row_keys(0, 2), torch.zeros(1, dtype=torch.long), token_codes(vocab)
    )
    constants = [a for node in graph.graph.nodes for a in node.args if isinstance(a, int) and not isinstance(a, bool)]
    assert constants and max(abs(c) for c in constants) < 2**31
    assert not any("arange" in str(node.target) for node in graph.graph.nodes)


@pytest.mark.parametrize("rows", [1, 256])
def test_draws_follow_the_softmax(rows):
    # A fixed distribution over 6 tokens; 24,000 draws split over `rows` rows and the steps.
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    probs = torch.softmax(logits / SAMPLED.temperature, -1)
    codes, keys = token_codes(len(logits)), row_keys(1234, rows)
    counts = torch.zeros(len(logits))
    for step in range(24_000 // rows):
        tokens = choose(SAMPLED, logits.expand(rows, -1), keys, torch.tensor([step]), None, codes)
        counts += torch.bincount(tokens, minlength=len(logits))
    p = chisquare(counts.numpy(), (probs * counts.sum()).numpy()).pvalue
    assert p > 1e-3, (counts, probs)
    # and the test has power: a distribution off by 3 points on the top token is rejected
    skewed = probs.clone()
    skewed[0] += 0.03
    skewed[1] -= 0.03
    assert chisquare(counts.numpy(), (skewed * counts.sum()).numpy()).pvalue < 1e-3


def test_top_k_and_top_p_never_draw_outside_their_set():
    logits = torch.tensor([[3.0, 2.9, 0.0, -1.0, -2.0]]).expand(64, -1)
    codes, keys = token_codes(5), row_keys(7, 64)
    top_k = SamplerSpec(False, 1.0, 2, 1.0, 1.0)
    top_p = SamplerSpec(False, 1.0, 0, 0.5, 1.0)
    drawn_k = torch.cat([choose(top_k, logits, keys, torch.tensor([s]), None, codes) for s in range(50)])
    drawn_p = torch.cat([choose(top_p, logits, keys, torch.tensor([s]), None, codes) for s in range(50)])
    assert set(drawn_k.tolist()) == {0, 1}
    assert set(drawn_p.tolist()) <= {0, 1} and 0 in drawn_p.tolist()


def test_row_keys_differ_for_seeds_beyond_31_bits():
    assert not torch.equal(row_keys(1, 4), row_keys(1 + 2**31, 4))
    assert not torch.equal(row_keys(1, 4), row_keys(1 + 2**62, 4))
    assert len(set(row_keys(0, 10_000).tolist())) == 10_000
