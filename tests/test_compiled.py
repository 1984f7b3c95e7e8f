"""Regional torch.compile of the decoder layers: same means as eager, hooks still fire, layers restored."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from interp.base.models import decoder_layers
from interp.cache import POOLINGS, cache_means
from interp.compiled import compiled_layers


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
    model = get_peft_model(
        make_model(n_layers=2), LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    )
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
        assert "forward" in layers[0].__dict__  # the compiled forward, set on the instance
        raise RuntimeError("boom")
    assert "forward" not in layers[0].__dict__
    assert layers[1].forward is placed


def test_compile_needs_the_hooks_backend(make_model, tokenizer, conversations):
    pytest.importorskip("nnsight")
    with pytest.raises(ValueError, match="hooks backend"):
        cache_means(make_model(n_layers=2), tokenizer, conversations, backend="nnsight", compile=True, progress=False)


def test_hooks_act_on_compiled_layers(make_model, tokenizer):
    """Hooks added inside the block, after the layers were compiled, still edit the stream:
    only each layer's forward is compiled, the hooks run around it."""
    from interp.hooks import hooks, resid_post
    from interp.steer import steer

    model = make_model(n_layers=3)
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        with compiled_layers(model, backend="aot_eager"):
            assert all("forward" in layer.__dict__ for layer in decoder_layers(model))
            compiled_clean = model(input_ids=ids).logits
            with hooks(model, {resid_post(1): lambda hidden, kwargs: hidden * 0}):
                zeroed = model(input_ids=ids).logits
            with steer(model, {1: torch.ones(32)}):
                steered = model(input_ids=ids).logits
        with steer(model, {1: torch.ones(32)}):
            eager_steered = model(input_ids=ids).logits
    torch.testing.assert_close(compiled_clean, clean, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(zeroed, clean, atol=1e-3)
    torch.testing.assert_close(steered, eager_steered, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered, clean, atol=1e-3)
