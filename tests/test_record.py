"""record(): activations at the five TransformerLens hook points, against HF's own
``output_hidden_states`` and TransformerLens' ``run_with_cache`` on plain, PEFT and merged
models; edits at those points are exact or refused."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_steer import prompts, vec

from interp.base.models import decoder_layers, unwrap
from interp.hooks import HOOK_POINTS, HookPointError, hook_point, hooks, resid_post
from interp.record import record
from interp.steer import steer

N_LAYERS = 3
ALL_POINTS = [hook_point(l, p) for l in range(N_LAYERS) for p in HOOK_POINTS]


@pytest.fixture
def ids():
    return torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(5))


def lora(model):
    torch.manual_seed(2)
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], init_lora_weights=False
    )
    return get_peft_model(model, config).eval()


@pytest.fixture(params=["plain", "peft", "merged"])
def model(request, make_model):
    model = make_model(n_layers=N_LAYERS)
    if request.param == "plain":
        return model
    model = lora(model)
    return copy.deepcopy(model).merge_and_unload() if request.param == "merged" else model


def assert_no_hooks(model):
    """None of the toolkit's hooks is left (transformers leaves its own output-capturing hooks
    once a model has run with ``output_hidden_states``)."""
    for module in decoder_layers(model).modules():
        for fn in (*module._forward_hooks.values(), *module._forward_pre_hooks.values()):
            assert not fn.__module__.startswith("interp"), fn


def test_resid_post_equals_output_hidden_states(model, ids):
    with record(model, [resid_post(l) for l in range(N_LAYERS)]) as acts, torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in range(N_LAYERS - 1):
        assert torch.equal(acts[resid_post(layer)], hs[layer + 1])
    # The last layer is recorded before the final norm, which hidden_states[-1] applies.
    last = acts[resid_post(N_LAYERS - 1)]
    assert torch.equal(unwrap(model).model.norm(last), hs[-1])
    assert_no_hooks(model)


@pytest.mark.parametrize("peft", [False, True], ids=["plain", "peft"])
def test_every_point_equals_transformer_lens(make_model, ids, peft):
    pytest.importorskip("transformer_lens")
    from interp.backends.transformer_lens import TransformerLensBackend

    model = make_model(n_layers=N_LAYERS)
    if peft:
        model = lora(model)
    with record(model, ALL_POINTS) as acts, torch.no_grad():
        model(input_ids=ids)
    bridge = TransformerLensBackend(model).bridge  # a merged copy for PEFT; eager attention
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=ALL_POINTS, return_type=None)
    for name in ALL_POINTS:
        assert acts[name].dtype == torch.float32
        torch.testing.assert_close(acts[name], cache[name], atol=1e-5, rtol=1e-5, msg=name)
    # The points are related as their names say.
    for l in range(N_LAYERS):
        pre, attn, mid, mlp, post = (acts[hook_point(l, p)] for p in HOOK_POINTS)
        torch.testing.assert_close(mid, pre + attn, atol=1e-6, rtol=0)
        torch.testing.assert_close(post, mid + mlp, atol=1e-6, rtol=0)


def test_positions_detach_device_and_dtype(make_model, ids):
    model = make_model(n_layers=N_LAYERS)
    name = hook_point(1, "attn_out")
    with record(model, name) as full:
        model(input_ids=ids)
    assert not full[name].requires_grad  # detached by default; detach=False keeps the graph
    with (
        record(model, [name], positions=-1, dtype=torch.float64, device="cpu") as last,
        record(model, name, positions=slice(2, 5), detach=False) as mid,
    ):
        out = model(input_ids=ids)
    assert last[name].shape == (2, 1, 32) and last[name].dtype == torch.float64
    torch.testing.assert_close(last[name], full[name][:, -1:].double())
    assert mid[name].shape == (2, 3, 32) and mid[name].grad_fn is not None
    torch.testing.assert_close(mid[name], full[name][:, 2:5])
    out.logits.sum().backward()  # the undetached recording is part of the graph
    assert list(mid) == [name] and len(mid) == 1 and "blocks.0.hook_attn_out" not in mid


def test_a_recording_sees_the_steered_stream(make_model, ids):
    model = make_model(n_layers=N_LAYERS)
    v = vec(0)
    with record(model, resid_post(1)) as clean, torch.no_grad():
        model(input_ids=ids, output_hidden_states=True)  # transformers installs its capturing hooks now
    with steer(model, {1: v}), record(model, resid_post(1)) as steered, torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(steered[resid_post(1)], clean[resid_post(1)] + v, atol=1e-5, rtol=0)
    # hidden_states comes from a hook installed before the steering one: it misses the edit.
    torch.testing.assert_close(hs[2], clean[resid_post(1)])


def test_generation_is_recorded_step_by_step(make_model, tokenizer):
    model = make_model(n_layers=N_LAYERS)
    enc = prompts(tokenizer, rows=(0,))
    with record(model, resid_post(0)) as acts, torch.no_grad():
        out = model.generate(
            **enc, do_sample=False, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=None
        )
    width = enc["input_ids"].shape[1]
    assert [c.shape[1] for c in acts.calls(resid_post(0))] == [width, 1, 1, 1]
    # Concatenated, the KV-cached steps are the stream of one pass over the sequence so far.
    with torch.no_grad():
        hs = model(input_ids=out[:, :-1], output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts[resid_post(0)], hs[1], atol=1e-5, rtol=1e-5)
    assert "4 calls" in repr(acts)


def test_edits_at_attn_out_and_mlp_out_are_exact(make_model, ids):
    model = make_model(n_layers=N_LAYERS)
    v = vec(3)
    names = [hook_point(1, p) for p in HOOK_POINTS]
    with record(model, names) as clean, torch.no_grad():
        model(input_ids=ids)
    for point, moved in (("attn_out", "resid_mid"), ("mlp_out", "resid_post")):
        with hooks(model, {hook_point(1, point): lambda h, kw: h + v}), record(model, names) as edited, torch.no_grad():
            model(input_ids=ids)
        # The edit reaches the residual stream: the next point moves by exactly v.
        torch.testing.assert_close(edited[hook_point(1, moved)], clean[hook_point(1, moved)] + v, atol=1e-5, rtol=0)
        torch.testing.assert_close(edited[hook_point(1, "resid_pre")], clean[hook_point(1, "resid_pre")])


def test_resid_mid_is_read_only_and_other_layouts_are_refused(make_model, ids):
    model = make_model(n_layers=N_LAYERS)
    with (
        pytest.raises(HookPointError, match="resid_mid can be read but not edited"),
        hooks(model, {hook_point(0, "resid_mid"): lambda h, kw: h + 1}),
    ):
        model(input_ids=ids)
    assert_no_hooks(model)
    with pytest.raises(HookPointError, match="point one of resid_pre"), record(model, "blocks.0.hook_resid_middle"):
        pass

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16)).eval()
    with (
        pytest.raises(HookPointError, match="GPT2Block has attn, ln_1, ln_2, mlp"),
        record(gpt2, hook_point(0, "attn_out")),
    ):
        pass
    assert_no_hooks(gpt2)
    with record(gpt2, hook_point(1, "resid_post")) as acts, torch.no_grad():  # resid points work on any layer
        hs = gpt2(torch.tensor([[1, 2, 3]]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(gpt2.transformer.ln_f(acts[hook_point(1, "resid_post")]), hs[-1])
