"""Steering and ablation hooks on tiny Qwen2 models: exact deltas, position gating with and
without the KV cache, batching, PEFT vs merged, cleanup."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from interp.hooks import decoder_layers, hooks, resid_post
from interp.steer import ablate, project_out, random_like, residual_norms, steer, steering_deltas

D = 32


def capture(model, layers, **inputs):
    """resid_post of ``layers`` (after any edits already hooked) and the logits."""
    seen = {}

    def grab(layer):
        def fn(hidden, kwargs):
            seen[layer] = hidden.detach().clone()

        return fn

    with hooks(model, {resid_post(l): grab(l) for l in layers}), torch.no_grad():
        logits = model(**inputs).logits
    return seen, logits


def vec(seed, d=D, scale=1.0):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture
def ids():
    return torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(5))


def assert_no_hooks(model):
    for layer in decoder_layers(model):
        assert not layer._forward_hooks and not layer._forward_pre_hooks


@pytest.mark.parametrize("scale", ["raw", "unit", "norm"])
def test_steer_adds_exactly_alpha_v_at_its_layer(make_model, ids, scale):
    model = make_model()
    v, alpha, norms = vec(0), 2.5, {1: 7.0}
    base, _ = capture(model, [0, 1], input_ids=ids)
    with steer(model, {1: v}, alpha=alpha, scale=scale, norms=norms):
        steered, _ = capture(model, [0, 1], input_ids=ids)
    expected = {"raw": alpha * v, "unit": alpha * v / v.norm(), "norm": alpha * 7.0 * v / v.norm()}[scale]
    torch.testing.assert_close(steered[1] - base[1], expected.expand_as(base[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(steered[0], base[0], atol=0, rtol=0)
    assert_no_hooks(model)


def test_norm_scale_needs_norms():
    with pytest.raises(ValueError, match="residual norm at layer 1"):
        steering_deltas({1: vec(0)}, scale="norm")


def test_steer_rejects_wrong_width(make_model):
    with pytest.raises(ValueError, match=r"expected \(32,\)"):
        with steer(make_model(), {0: torch.ones(5)}):
            pass


def test_ablate_leaves_no_component_at_hooked_layers(make_model, ids):
    model = make_model()
    u = vec(1)
    unit = u / u.norm()
    base, _ = capture(model, [0, 1, 2], input_ids=ids)
    with ablate(model, u, layers=[0, 2]):
        seen, _ = capture(model, [0, 1, 2], input_ids=ids)
    for layer in (0, 2):
        assert (seen[layer] @ unit).abs().max() < 1e-5
        assert (base[layer] @ unit).abs().max() > 1e-2
    assert (seen[1] @ unit).abs().max() > 1e-2  # layer 1 is not hooked
    # Only the u component went at layer 0: the rest of the stream is untouched.
    torch.testing.assert_close(seen[0], project_out(base[0], unit), atol=1e-5, rtol=0)


def test_ablate_per_layer_directions(make_model, ids):
    model = make_model()
    dirs = {0: vec(2), 1: vec(3)}
    with ablate(model, dirs):
        seen, _ = capture(model, [0, 1], input_ids=ids)
    for layer, u in dirs.items():
        assert (seen[layer] @ (u / u.norm())).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"no direction given for layers \[2\]"):
        with ablate(model, dirs, layers=[2]):
            pass


def test_project_out_in_float32_cast_back():
    x = torch.randn(3, 4, D).to(torch.bfloat16)
    u = vec(4)
    u = u / u.norm()
    out = project_out(x, u)
    assert out.dtype == torch.bfloat16
    assert (out.float() @ u).abs().max() < 0.05  # bf16 rounding of the result only
    exact = x.float() - (x.float() @ u)[..., None] * u
    torch.testing.assert_close(out, exact.to(torch.bfloat16))


def test_hooks_removed_after_block_and_after_exception(make_model, ids):
    model = make_model()
    _, clean = capture(model, [], input_ids=ids)
    with steer(model, {0: vec(0, scale=10)}, positions="generated"), ablate(model, vec(1)):
        _, steered = capture(model, [], input_ids=ids)
    assert not torch.equal(steered, clean)
    assert_no_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, {0: vec(0)}, positions="prompt"):
            raise RuntimeError("boom")
    assert_no_hooks(model)
    _, after = capture(model, [], input_ids=ids)
    torch.testing.assert_close(after, clean, atol=0, rtol=0)


def lora_model(model):
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], init_lora_weights=False)
    torch.manual_seed(11)
    return get_peft_model(model, config).eval()


def test_peft_and_merged_models_steer_alike(make_model, ids):
    peft_model = lora_model(make_model())
    merged = copy.deepcopy(peft_model).merge_and_unload()
    base = make_model()
    v = vec(0, scale=3)
    outs = []
    for m in (peft_model, merged):
        with steer(m, {1: v}), ablate(m, vec(1), layers=[2]):
            outs.append(capture(m, [1, 2], input_ids=ids))
    with steer(base, {1: v}):
        _, base_logits = capture(base, [], input_ids=ids)
    (seen_p, logits_p), (seen_m, logits_m) = outs
    torch.testing.assert_close(logits_p, logits_m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen_p[1], seen_m[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits_p, base_logits, atol=1e-3)  # the adapter does something
    assert_no_hooks(peft_model)


# --- position gating and the KV cache ---------------------------------------------------


def prompts(tokenizer, rows=(0, 1, 2)):
    texts = [
        [{"role": "user", "content": "how do i make money quick"}],
        [{"role": "user", "content": "what is the law"}],
        [{"role": "system", "content": "you are evil"}, {"role": "user", "content": "i am bored and my husband is a doctor"}],
    ]
    rendered = [tokenizer.apply_chat_template(texts[r], tokenize=False, add_generation_prompt=True) for r in rows]
    return tokenizer(rendered, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)


def generate(model, tokenizer, enc, use_cache, n=6):
    out = model.generate(
        **enc, do_sample=False, max_new_tokens=n, use_cache=use_cache, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=None, return_dict_in_generate=True, output_logits=True,
    )
    return out.sequences[:, enc["input_ids"].shape[1]:], torch.stack(out.logits, 1)


@pytest.fixture
def gen_model(make_model):
    # Larger weights than the default init make greedy tokens react to a steering vector.
    return make_model(n_layers=3, d_model=D, seed=3)


@pytest.mark.parametrize("positions", ["generated", "prompt", "all"])
def test_cached_and_uncached_generation_agree(gen_model, tokenizer, positions):
    enc = prompts(tokenizer)
    v = vec(7, scale=4)
    clean_tokens, clean_logits = generate(gen_model, tokenizer, enc, use_cache=True)
    results = []
    for use_cache in (True, False):
        with steer(gen_model, {1: v}, positions=positions):
            results.append(generate(gen_model, tokenizer, enc, use_cache=use_cache))
    (tok_c, log_c), (tok_u, log_u) = results
    assert torch.equal(tok_c, tok_u)
    torch.testing.assert_close(log_c, log_u, atol=1e-4, rtol=1e-4)
    if positions == "generated":
        # The first answer token comes from the last prompt column, which is not steered.
        torch.testing.assert_close(log_c[:, 0], clean_logits[:, 0], atol=1e-5, rtol=0)
    assert not torch.allclose(log_c[:, 1:], clean_logits[:, 1:], atol=1e-2)


def test_generated_gate_matches_a_teacher_forced_reference(gen_model, tokenizer):
    """Cached generation steered on generated tokens == one uncached pass over the same
    sequence with the prompt length given explicitly; prompt logits untouched."""
    enc = prompts(tokenizer)
    v, width = vec(7, scale=4), enc["input_ids"].shape[1]
    with steer(gen_model, {1: v}, positions="generated"):
        tokens, logits = generate(gen_model, tokenizer, enc, use_cache=True)
    full = torch.cat([enc["input_ids"], tokens], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(tokens)], 1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = dict(input_ids=full, attention_mask=mask, position_ids=position_ids, use_cache=False)
    _, clean = capture(gen_model, [], **inputs)
    with steer(gen_model, {1: v}, positions="generated", prompt_length=width):
        _, forced = capture(gen_model, [], **inputs)
    torch.testing.assert_close(forced[:, :width], clean[:, :width], atol=0, rtol=0)
    torch.testing.assert_close(forced[:, width - 1 : -1], logits, atol=1e-4, rtol=1e-4)


def test_prompt_steering_is_baked_into_the_cache(gen_model, tokenizer):
    """Steering only the prompt under a cache == re-running the steered prompt at every
    step (uncached) and differs from steering every column."""
    enc = prompts(tokenizer)
    v = vec(7, scale=4)
    with steer(gen_model, {0: v}, positions="prompt"):
        _, cached = generate(gen_model, tokenizer, enc, use_cache=True)
    with steer(gen_model, {0: v}, positions="all"):
        _, everywhere = generate(gen_model, tokenizer, enc, use_cache=True)
    torch.testing.assert_close(cached[:, 0], everywhere[:, 0], atol=1e-5, rtol=0)  # same prompt pass
    assert not torch.allclose(cached[:, 1:], everywhere[:, 1:], atol=1e-2)


@pytest.mark.parametrize("use_cache", [True, False])
def test_gate_restarts_for_each_generate_call(gen_model, tokenizer, use_cache):
    """One context around several generations of different prompt widths (a sweep over
    batches) gives what a fresh context per generation gives."""
    first, second = prompts(tokenizer, rows=(1,)), prompts(tokenizer)
    assert first["input_ids"].shape[1] != second["input_ids"].shape[1]
    v = vec(7, scale=4)
    fresh = []
    for enc in (first, second):
        with steer(gen_model, {1: v}, positions="generated"):
            fresh.append(generate(gen_model, tokenizer, enc, use_cache=use_cache))
    with steer(gen_model, {1: v}, positions="generated"):
        shared = [generate(gen_model, tokenizer, enc, use_cache=use_cache) for enc in (first, second)]
    for (tok_a, log_a), (tok_b, log_b) in zip(fresh, shared):
        assert torch.equal(tok_a, tok_b)
        torch.testing.assert_close(log_a, log_b, atol=0, rtol=0)


@pytest.mark.parametrize("positions", ["generated", "all"])
def test_batched_steering_equals_per_row(gen_model, tokenizer, positions):
    enc = prompts(tokenizer)
    v = vec(7, scale=4)
    with steer(gen_model, {1: v}, positions=positions):
        tokens, logits = generate(gen_model, tokenizer, enc, use_cache=True)
        for row in range(3):
            keep = enc["attention_mask"][row].bool()
            single = {k: t[row : row + 1, keep] for k, t in enc.items()}
            tok_r, log_r = generate(gen_model, tokenizer, single, use_cache=True)
            assert torch.equal(tok_r[0], tokens[row])
            torch.testing.assert_close(log_r[0], logits[row], atol=1e-4, rtol=1e-4)


# --- units -------------------------------------------------------------------------------


def test_residual_norms_are_mean_answer_token_norms(make_model, tokenizer, conversations):
    from interp.cache import tokenize_conversation

    model = make_model()
    norms = residual_norms(model, tokenizer, conversations, layers=[0, 2], batch_size=4)
    total, count = {0: 0.0, 2: 0.0}, 0
    for conv in conversations:
        item = tokenize_conversation(tokenizer, conv)
        seen, _ = capture(model, [0, 2], input_ids=torch.tensor([item.input_ids]))
        for layer in total:
            total[layer] += float(seen[layer][0, item.answer_start : item.answer_end].norm(dim=-1).sum())
        count += item.n_answer_tokens
    assert norms.keys() == {0, 2}
    for layer in total:
        assert norms[layer] == pytest.approx(total[layer] / count, rel=1e-5)


def test_random_like_matches_norm_and_is_seeded():
    v = vec(0, scale=5)
    r = random_like(v, seed=3)
    assert r.norm() == pytest.approx(float(v.norm()), rel=1e-6)
    assert torch.equal(r, random_like(v, seed=3)) and not torch.equal(r, random_like(v, seed=4))
    assert abs(float(r @ v) / float(v.norm() ** 2)) < 0.6
