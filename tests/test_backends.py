"""nnsight and TransformerLens as caching backends, cross-checked against the native hooks."""

from __future__ import annotations

import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from interp.backends import BACKENDS, make_backend
from interp.base.models import decoder_layers
from interp.cache import POOLINGS, cache_means
from interp.directions import DirectionSet, extract_directions
from interp.inputs import ModelInputs


@pytest.fixture(params=["nnsight", "transformer_lens"])
def library(request) -> str:
    """A library backend, skipped only where its package is not installed."""
    pytest.importorskip(request.param)
    return request.param


def _lora(model):
    torch.manual_seed(1)
    # init_lora_weights=False gives B != 0, so the adapter changes the activations.
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(model, cfg).eval()


def _perturb_norms_and_biases(model, seed=3):
    """Random norm scales and biases, so that folding them (TransformerLens) is not a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def _assert_same_means(got, want, tol=1e-4):
    for pooling in POOLINGS:
        a, b = got.mean(pooling), want.mean(pooling)
        rel = ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()  # worst layer
        assert rel < tol, (pooling, rel)


@pytest.mark.parametrize("peft", [False, True], ids=["plain", "peft"])
def test_backend_means_equal_native_hooks(make_model, tokenizer, conversations, library, peft):
    model = make_model(n_layers=3)
    if peft:
        base = cache_means(model, tokenizer, conversations, batch_size=4, progress=False)
        model = _lora(model)
    want = cache_means(model, tokenizer, conversations, batch_size=4, progress=False)
    got = cache_means(
        model, tokenizer, conversations, batch_size=4, progress=False, backend=make_backend(library, model, tokenizer)
    )
    _assert_same_means(got, want)
    assert (got.n_tokens, got.n_responses, got.n_conversations) == (
        want.n_tokens,
        want.n_responses,
        want.n_conversations,
    )
    if peft:  # the adapter is not a no-op, or the PEFT comparison would prove nothing
        assert (want.mean("tokens") - base.mean("tokens")).abs().max() > 1e-3


def test_backend_stops_after_deepest_requested_layer(make_model, tokenizer, conversations, library):
    model = make_model(n_layers=3)
    calls = []
    # Hooks on the caller's modules travel into the backends' tensor-sharing copies.
    decoder_layers(model)[2].register_forward_hook(lambda *a: calls.append("layer 2"))
    model.lm_head.register_forward_hook(lambda *a: calls.append("logits"))
    backend = make_backend(library, model, tokenizer)
    shallow = cache_means(model, tokenizer, conversations, layers=[1], batch_size=4, progress=False, backend=backend)
    assert calls == []
    want = cache_means(model, tokenizer, conversations, layers=[1], batch_size=4, progress=False)
    _assert_same_means(shallow, want)


def test_backend_passes_position_ids_through(make_model, tokenizer, library):
    # Rotary attention sees only relative positions, so a backend that dropped position_ids
    # would still agree on contiguous ones: stretch them to make the check bite.
    model = make_model(n_layers=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(tokenizer), (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0

    def run(backend, positions):
        out = {}
        with torch.no_grad():
            backend.resid_post(ModelInputs(ids, mask, positions), [0, 1], lambda l, h: out.__setitem__(l, h.clone()))
        return torch.stack([out[0], out[1]])[:, mask.bool()]

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    native = make_backend("hooks", model)
    want = run(native, 40 * positions)
    assert rel(run(native, positions), want) > 1e-3
    assert rel(run(make_backend(library, model, tokenizer), 40 * positions), want) < 1e-5


def test_backend_leaves_the_callers_model_as_it_was(make_model, tokenizer, conversations, library):
    model = _lora(make_model(n_layers=2))
    params = dict(model.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    modules = [(type(m), vars(m).get("forward")) for m in model.modules()]
    attn = model.config._attn_implementation
    pad_side = tokenizer.padding_side
    backend = make_backend(library, model, tokenizer)
    cache_means(model, tokenizer, conversations[:4], batch_size=2, progress=False, backend=backend)
    # Same module types (LoRA layers included) and no nnsight controller installed as forward.
    assert [(type(m), vars(m).get("forward")) for m in model.modules()] == modules
    assert any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert model.config._attn_implementation == attn and tokenizer.padding_side == pad_side
    assert all(params[k] is v and torch.equal(v, before[k]) for k, v in model.named_parameters())
    # No second copy of the unadapted weights: the backend runs on the caller's tensors.
    view = backend.envoy._module if library == "nnsight" else backend.bridge.original_model
    assert view.get_input_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_transformer_lens_attention_is_eager_bit_for_bit(make_model, tokenizer, conversations):
    """The bridge recomputes attention step by step: against HF's eager attention nothing differs."""
    pytest.importorskip("transformer_lens")
    model = make_model(n_layers=2, dtype=torch.bfloat16)
    model.set_attn_implementation("eager")
    want = cache_means(model, tokenizer, conversations, batch_size=4, progress=False)
    got = cache_means(model, tokenizer, conversations, batch_size=4, progress=False, backend="transformer_lens")
    assert all(torch.equal(got.mean(p), want.mean(p)) for p in POOLINGS)


def test_transformer_lens_weight_processing_keeps_qwen2_resid_post(make_model, tokenizer, conversations):
    """RMSNorm models: HookedTransformer-style processing changes no residual stream."""
    pytest.importorskip("transformer_lens")
    model = _perturb_norms_and_biases(make_model(n_layers=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    want = cache_means(model, tokenizer, conversations, batch_size=4, progress=False)
    backend = make_backend("transformer_lens", model, tokenizer)
    backend.bridge.enable_compatibility_mode(disable_warnings=True)  # fold_ln, centering, value biases
    got = cache_means(model, tokenizer, conversations, batch_size=4, progress=False, backend=backend)
    _assert_same_means(got, want)
    # The processing ran (norm scales folded away) and wrote nothing into the shared tensors.
    assert torch.allclose(backend.bridge.blocks[0].ln1.weight, torch.ones(1))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_transformer_lens_centering_moves_layernorm_resid_post(tokenizer, conversations):
    """LayerNorm models: center_writing_weights must stay off (see interp.backends.transformer_lens)."""
    pytest.importorskip("transformer_lens")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = _perturb_norms_and_biases(
        GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4)).eval()
    )
    want = cache_means(model, tokenizer, conversations, batch_size=4, progress=False)
    raw = cache_means(model, tokenizer, conversations, batch_size=4, progress=False, backend="transformer_lens")
    _assert_same_means(raw, want)
    backend = make_backend("transformer_lens", model, tokenizer)
    backend.bridge.enable_compatibility_mode(
        disable_warnings=True, fold_ln=False, center_writing_weights=True, center_unembed=False, fold_value_biases=False
    )
    centered = cache_means(model, tokenizer, conversations, batch_size=4, progress=False, backend=backend)
    assert (centered.mean("tokens") - want.mean("tokens")).norm() > 1e-3 * want.mean("tokens").norm()


def test_nnsight_reads_tuple_layer_outputs(tokenizer, conversations):
    pytest.importorskip("nnsight")
    from test_cache import (
        _OldStyleLM,  # decoder layers returning (hidden, None), as before transformers 4.57
    )

    model = _OldStyleLM(len(tokenizer), as_tuple=True)
    want = cache_means(model, tokenizer, conversations, layers=[0, 2], batch_size=4, progress=False)
    got = cache_means(model, tokenizer, conversations, layers=[0, 2], batch_size=4, progress=False, backend="nnsight")
    _assert_same_means(got, want, tol=1e-6)


def test_backend_is_recorded_in_direction_provenance(make_model, tokenizer, conversations, tmp_path):
    pytest.importorskip("nnsight")
    model = make_model(n_layers=2)
    mis, ali = conversations[:6], conversations[6:]
    native = extract_directions(model, tokenizer, mis, ali, progress=False, metadata={"domain": "x"})
    traced = extract_directions(model, tokenizer, mis, ali, progress=False, metadata={"domain": "x"}, backend="nnsight")
    assert native.metadata == {"domain": "x", "backend": "hooks"}
    loaded = DirectionSet.load(traced.save(tmp_path / "d.safetensors"))
    assert loaded.metadata["backend"] == "nnsight"
    torch.testing.assert_close(loaded.directions, native.directions, rtol=1e-4, atol=1e-6)


def test_missing_library_names_the_pip_extra(make_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "nnsight", None)  # what find_spec reports for a missing package
    with pytest.raises(ImportError, match=r"nnsight.*\[backends\]"):
        make_backend("nnsight", make_model(n_layers=1))


def test_unknown_backend_and_foreign_backend_are_refused(make_model, tokenizer, conversations):
    model = make_model(n_layers=1)
    with pytest.raises(ValueError, match="unknown backend 'tl'.*transformer_lens"):
        cache_means(model, tokenizer, conversations, progress=False, backend="tl")
    other = make_backend("hooks", make_model(n_layers=1))
    with pytest.raises(ValueError, match="another model"):
        cache_means(model, tokenizer, conversations, progress=False, backend=other)
    assert BACKENDS == ("hooks", "nnsight", "transformer_lens")
