"""Steering and ablation hooks on tiny Qwen2 models: exact deltas, position gating with and
without the KV cache, batching, PEFT vs merged, cleanup."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from interp.base.models import cache_keyword, decoder_layers
from interp.hooks import hooks, resid_post
from interp.norms import residual_norms
from interp.steer import ablate, steer
from interp.vector_math import project_out, random_like, steering_deltas

D = 32
# The KV cache's keyword: transformers 5.25 renamed past_key_values to cache (the old name goes in 5.40).


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
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], init_lora_weights=False
    )
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
        [
            {"role": "system", "content": "you are evil"},
            {"role": "user", "content": "i am bored and my husband is a doctor"},
        ],
    ]
    rendered = [tokenizer.apply_chat_template(texts[r], tokenize=False, add_generation_prompt=True) for r in rows]
    return tokenizer(rendered, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)


def generate(model, tokenizer, enc, use_cache, n=6):
    out = model.generate(
        **enc,
        do_sample=False,
        max_new_tokens=n,
        use_cache=use_cache,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=None,
        return_dict_in_generate=True,
        output_logits=True,
    )
    return out.sequences[:, enc["input_ids"].shape[1] :], torch.stack(out.logits, 1)


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
    from interp.base.chat import tokenize_conversation

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


# --- positions from public inputs: static cache, assisted decoding, beams, errors ---------


def test_static_cache_steering_equals_dynamic_and_acts(gen_model, tokenizer):
    enc = prompts(tokenizer)
    v = vec(7, scale=4)
    clean, _ = generate(gen_model, tokenizer, enc, use_cache=True)
    for positions in ("generated", "prompt"):
        with steer(gen_model, {1: v}, positions=positions):
            dynamic, log_d = generate(gen_model, tokenizer, enc, use_cache=True)
            static = gen_model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=6,
                cache_implementation="static",
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=None,
                return_dict_in_generate=True,
                output_logits=True,
            )
        assert torch.equal(static.sequences[:, enc["input_ids"].shape[1] :], dynamic), positions
        torch.testing.assert_close(torch.stack(static.logits, 1), log_d, atol=1e-4, rtol=1e-4)
        assert not torch.equal(dynamic, clean), positions


def test_generate_never_compiles_past_the_hooks(gen_model, tokenizer):
    """transformers compiles static-cache decoding itself (here forced on the CPU); inside the
    block it must not, or the compiled step would skip the steering hooks."""
    from transformers import CompileConfig

    enc = prompts(tokenizer)
    v = vec(7, scale=4)
    config = CompileConfig(backend="eager")
    config._compile_all_devices = True  # transformers compiles on GPUs only, unless told so
    with steer(gen_model, {1: v}, positions="generated"):
        want, _ = generate(gen_model, tokenizer, enc, use_cache=True)
        got = gen_model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=6,
            cache_implementation="static",
            compile_config=config,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=None,
        )
    assert torch.equal(got[:, enc["input_ids"].shape[1] :], want)


def test_assisted_decoding_crops_the_cache_and_keeps_the_gate(gen_model, tokenizer):
    """Prompt-lookup decoding feeds candidate tokens and crops the cache after rejections;
    positions still say which tokens are generated."""
    enc = prompts(tokenizer, rows=(2,))
    ids = torch.cat([enc["input_ids"], enc["input_ids"][:, -6:]], 1)  # repeats, so lookup proposes
    v = vec(7, scale=4)
    kw = dict(do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    with steer(gen_model, {1: v}, positions="generated"):
        assisted = gen_model.generate(input_ids=ids, prompt_lookup_num_tokens=3, **kw)
        uncached = gen_model.generate(input_ids=ids, use_cache=False, **kw)
    clean = gen_model.generate(input_ids=ids, use_cache=False, **kw)
    assert torch.equal(assisted, uncached)
    assert not torch.equal(uncached, clean)


def test_beam_rows_follow_their_prompt(gen_model, tokenizer):
    enc = prompts(tokenizer)
    v = vec(7, scale=4)
    kw = dict(
        do_sample=False,
        max_new_tokens=5,
        num_beams=2,
        num_return_sequences=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=None,
    )
    with steer(gen_model, {1: v}, positions="generated"):
        cached = gen_model.generate(**enc, **kw)
        uncached = gen_model.generate(**enc, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_a_cached_call_without_its_prompt_is_refused(gen_model, tokenizer):
    from transformers import DynamicCache

    from interp.positions import PositionError

    enc = prompts(tokenizer)
    with torch.no_grad():
        cache = gen_model(**enc, use_cache=True).past_key_values
    step = {"input_ids": enc["input_ids"][:, -1:], cache_keyword(gen_model): cache}
    with (
        steer(gen_model, {1: vec(7)}, positions="generated"),
        pytest.raises(PositionError, match="prompt was not seen"),
        torch.no_grad(),
    ):
        gen_model(**step)
    assert isinstance(cache, DynamicCache)
    assert_no_hooks(gen_model)


def test_a_manual_decoding_loop_is_gated_like_generate(gen_model, tokenizer):
    """Prompt, then one token at a time through the KV cache, inside one block."""
    enc = prompts(tokenizer)
    v = vec(7, scale=4)
    with steer(gen_model, {1: v}, positions="generated"):
        want, _ = generate(gen_model, tokenizer, enc, use_cache=True, n=4)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.no_grad():
            out = gen_model(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True
            )
            got = []
            for _ in range(4):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                got.append(nxt)
                mask = torch.cat([mask, torch.ones_like(nxt)], 1)
                out = gen_model(
                    input_ids=nxt,
                    attention_mask=mask,
                    position_ids=mask.sum(-1, keepdim=True) - 1,
                    **{cache_keyword(gen_model): out.past_key_values},
                    use_cache=True,
                )
    assert torch.equal(torch.cat(got, 1), want)


def test_the_gate_reads_nothing_back_from_the_device():
    """Meta tensors have no values: any host read (a device sync on a GPU) would raise."""
    from interp.positions import CallInputs, PositionGate

    gate = PositionGate("generated")
    prompt = torch.empty(3, 7, dtype=torch.long, device="meta")
    gate.begin_generation(prompt, torch.ones(3, 7, dtype=torch.long, device="meta"))
    for width in (7, 1, 1):
        pos = torch.empty(3, width, dtype=torch.long, device="meta")
        gate.observe(CallInputs.from_call((), {"input_ids": pos, "position_ids": pos, "cache": object()}))
        mask = gate.mask(torch.empty(3, width, 4, device="meta"))
        assert mask.shape == (3, width, 1) and mask.device.type == "meta"


def test_a_compiled_model_that_skips_the_hooks_is_an_error(gen_model, tokenizer):
    """torch.compile ignores hooks added after compilation: steering must fail loudly."""
    from interp.intervention import InterventionError

    enc = prompts(tokenizer)
    compiled = torch.compile(gen_model.model, backend="eager")
    with torch.no_grad():
        compiled(**enc)  # compiled before the hooks exist
        with steer(gen_model, {1: vec(7, scale=4)}), pytest.raises(InterventionError):
            compiled(**enc)
    torch._dynamo.reset()


def test_steering_a_compiled_module_is_refused(make_model):
    from interp.intervention import InterventionError

    model = make_model(n_layers=2)
    with pytest.raises(InterventionError, match="original model"):
        with steer(torch.compile(model, backend="eager"), {0: vec(0)}):
            pass
    model.model.layers[1].compile(backend="eager")
    with pytest.raises(InterventionError, match="compiled in place"):
        with steer(model, {0: vec(0)}):
            pass
    assert_no_hooks(model)
    torch._dynamo.reset()
