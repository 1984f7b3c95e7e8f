"""Regional torch.compile of the decoder layers: same means as eager, hooks still fire, layers restored."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from interp.cache import POOLINGS, cache_means
from interp.compiled import compiled_layers
from interp.hooks import decoder_layers


def _assert_same_means(a, b) -> None:
    for pooling in POOLINGS:
        torch.testing.assert_close(a.mean(pooling), b.mean(pooling), rtol=1e-5, atol=1e-6)


def test_compiled_caching_equals_eager(make_model, tokenizer, conversations):
    """The real path (inductor), with an early stop after layer 1 of 3."""
    model = make_model(n_layers=3)
    eager = cache_means(model, tokenizer, conversations, layers=[0, 1], batch_size=4, progress=False)
    compiled = cache_means(model, tokenizer, conversations, layers=[0, 1], batch_size=4, progress=False, compile=True)
    _assert_same_means(compiled, eager)
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))


def test_compiled_peft_model_equals_eager(make_model, tokenizer, conversations):
    torch.manual_seed(3)
    model = get_peft_model(make_model(n_layers=2), LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    eager = cache_means(model, tokenizer, conversations, batch_size=5, progress=False)
    with compiled_layers(model, backend="aot_eager"):
        compiled = cache_means(model, tokenizer, conversations, batch_size=5, progress=False)
    _assert_same_means(compiled, eager)


def test_layers_get_their_own_forward_back_even_after_an_error(make_model):
    model = make_model(n_layers=2)
    layers = decoder_layers(model)
    wrapper = layers[1].forward  # an instance-level forward, as accelerate's device hooks install

    def placed(*args, **kwargs):
        return wrapper(*args, **kwargs)

    layers[1].forward = placed
    with pytest.raises(RuntimeError, match="boom"), compiled_layers(model, backend="aot_eager"):
        assert layers[0].forward is not type(layers[0]).forward
        raise RuntimeError("boom")
    assert "forward" not in layers[0].__dict__
    assert layers[1].forward is placed


def test_compile_needs_the_hooks_backend(make_model, tokenizer, conversations):
    pytest.importorskip("nnsight")
    with pytest.raises(ValueError, match="hooks backend"):
        cache_means(make_model(n_layers=2), tokenizer, conversations, backend="nnsight", compile=True, progress=False)
