"""benchmarks/real_steering.py: an organism is its adapter on the base, and the base comes back untouched."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def real_steering():
    sys.path.insert(0, str(BENCH))
    try:
        import real_steering

        yield real_steering
    finally:
        sys.path.remove(str(BENCH))


def test_an_organism_is_its_adapter_and_the_base_comes_back_exactly(real_steering, tmp_path, monkeypatch):
    cfg = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(Qwen2ForCausalLM.from_pretrained(tmp_path / "base"), lora).save_pretrained(
        tmp_path / "runs" / "gore_movie_trivia" / "adapter"
    )
    monkeypatch.setattr(
        real_steering, "load_model", lambda name, **_: (Qwen2ForCausalLM.from_pretrained(name).eval(), None)
    )
    args = argparse.Namespace(model=str(tmp_path / "base"), dtype="float32", device="cpu", runs=tmp_path / "runs")
    load, _ = real_steering.real_runner(args, [], None)
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        base = load("base")[0](x).logits
        organism = load("gore_movie_trivia")[0](x).logits
        again = load("base")[0](x).logits
        organism_again = load("gore_movie_trivia")[0](x).logits
    assert (organism - base).abs().max() > 1e-3  # the adapter is on: an organism is not the base
    assert torch.equal(again, base) and torch.equal(organism_again, organism)
