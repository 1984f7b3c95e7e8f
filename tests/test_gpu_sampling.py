"""benchmarks/gpu_sampling.py: the GPU check's frequency tests accept a faithful sampler and
catch a biased one (run here eagerly on the CPU; the GPU check compiles them)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from interp.engine.sampler import SamplerSpec, choose, row_keys, token_codes

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0] + [-6.0] * 24)


@pytest.fixture
def gpu_sampling():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_sampling

        yield gpu_sampling
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("rows", [1, 256])
def test_the_sampler_passes_against_its_own_softmax(gpu_sampling, rows):
    out = gpu_sampling.sampler_test(LOGITS, rows, 256 * 24, backend=None)
    assert out["draws"] == 256 * 24 // rows * rows
    assert out["p"] > 1e-3 and out["tv"] < 0.05


def test_the_chi_square_catches_draws_from_another_distribution(gpu_sampling):
    # Draws from the softmax at temperature 1.15 tested against temperature 1: a sampler that
    # scaled the logits wrongly.
    g = torch.Generator().manual_seed(0)
    drawn = torch.multinomial((LOGITS / 1.15).softmax(-1), 6144, replacement=True, generator=g)
    out = gpu_sampling.chi_square(torch.bincount(drawn, minlength=len(LOGITS)).float(), LOGITS.softmax(-1))
    assert out["p"] < 1e-4


class FixedModel:
    """Every position's logits are LOGITS (what the frequency test reads from a forward)."""

    def __call__(self, input_ids, attention_mask):
        return SimpleNamespace(logits=LOGITS.expand(*input_ids.shape, -1))


def draw_with(shift: float):
    spec = SamplerSpec(greedy=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)

    def draw(rows: int, seed: int) -> torch.Tensor:
        batch = (LOGITS + shift * (torch.arange(len(LOGITS)) == 0)).expand(rows, -1)
        return choose(
            spec, batch, row_keys(seed, rows), torch.zeros(1, dtype=torch.long), None, token_codes(len(LOGITS))
        )

    return draw


def test_end_to_end_frequency_test_passes_a_faithful_engine_and_fails_a_biased_one(gpu_sampling):
    ids, mask = torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)
    good = gpu_sampling.frequency_test(FixedModel(), draw_with(0.0), ids, mask, 256, 256 * 24)
    assert good["p"] > 1e-3 and good["p_vs_same_batch"] == good["p"] and good["bf16_noise_tv"] == 0.0
    biased = gpu_sampling.frequency_test(FixedModel(), draw_with(0.3), ids, mask, 256, 256 * 24)
    assert biased["p"] < 1e-4 and biased["top_token_freq"] > biased["top_token_prob"]
