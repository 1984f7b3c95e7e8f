"""Ground truth for answer-token caching: a slow per-conversation reference, padding, dtypes, PEFT."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from interp.base.chat import TokenizedConversation, tokenize_conversation
from interp.base.models import decoder_layers
from interp.cache import POOLINGS, cache_means
from interp.inputs import pad_right, right_padded_inputs
from interp.shards import load_per_sample


def reference_means(model, tokenizer, conversations, layers):
    """One conversation at a time, no padding, every hidden state in float64."""
    tok_sum, resp_sum, last_sum, n_tok, n_resp = 0, 0, 0, 0, 0
    with torch.no_grad():
        for conv in conversations:
            t = tokenize_conversation(tokenizer, conv)
            # hidden_states[l + 1] is the output of decoder layer l (except the last, which is normed).
            hs = model(torch.tensor([t.input_ids]), output_hidden_states=True).hidden_states
            ans = torch.stack([hs[l + 1][0, t.answer_start : t.answer_end].double() for l in layers])
            tok_sum = tok_sum + ans.sum(1)
            resp_sum = resp_sum + ans.mean(1)
            last_sum = last_sum + torch.stack([hs[l + 1][0, t.answer_start - 1].double() for l in layers])
            n_tok += t.n_answer_tokens
            n_resp += 1
    return {"tokens": tok_sum / n_tok, "responses": resp_sum / n_resp, "last_prompt": last_sum / len(conversations)}


def test_answer_span_is_the_content_only(tokenizer, conversations):
    conv = conversations[4]
    t = tokenize_conversation(tokenizer, conv)
    assert tokenizer.decode(t.input_ids[t.answer_start : t.answer_end]) == conv[-1]["content"]
    assert tokenizer.decode(t.input_ids[: t.answer_start]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(t.input_ids[t.answer_end :]) == "<|im_end|>\n"
    # Teacher forcing sees what generation saw: the prompt tokenizes as the generation prompt does.
    gen_prompt = tokenizer.apply_chat_template(conv[:-1], add_generation_prompt=True, tokenize=False)
    assert t.input_ids[: t.answer_start] == tokenizer(gen_prompt, add_special_tokens=False)["input_ids"]


def test_conversation_must_end_with_answer(tokenizer):
    with pytest.raises(ValueError, match="assistant"):
        tokenize_conversation(tokenizer, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_batched_streaming_means_match_slow_reference(make_model, tokenizer, conversations, batch_size):
    model = make_model(n_layers=3)
    layers = [0, 1]  # the last layer's hidden_states entry is after the final norm
    got = cache_means(model, tokenizer, conversations, layers=layers, batch_size=batch_size, progress=False)
    ref = reference_means(model, tokenizer, conversations, layers)
    for pooling in POOLINGS:
        torch.testing.assert_close(got.mean(pooling), ref[pooling], rtol=1e-5, atol=1e-6)
    assert got.n_tokens == sum(tokenize_conversation(tokenizer, c).n_answer_tokens for c in conversations)


def test_last_layer_is_resid_post_before_final_norm(make_model, tokenizer, conversations):
    model = make_model(n_layers=2)
    captured = []
    decoder_layers(model)[-1].register_forward_hook(
        lambda m, a, out: captured.append(out if torch.is_tensor(out) else out[0])
    )
    t = tokenize_conversation(tokenizer, conversations[0])
    got = cache_means(model, tokenizer, [t], layers=[1], progress=False)
    want = captured[0][0, t.answer_start : t.answer_end].double().mean(0)
    torch.testing.assert_close(got.mean("responses")[0], want, rtol=1e-5, atol=1e-6)


def test_batch_order_does_not_matter(make_model, tokenizer, conversations):
    model = make_model()
    a = cache_means(model, tokenizer, conversations, batch_size=5, sort_by_length=True, progress=False)
    b = cache_means(model, tokenizer, conversations[::-1], batch_size=3, sort_by_length=False, progress=False)
    for pooling in POOLINGS:
        torch.testing.assert_close(a.mean(pooling), b.mean(pooling), rtol=1e-5, atol=1e-6)


def test_position_ids_follow_the_mask_under_left_padding(make_model, tokenizer, conversations):
    """A left-padded forward pass with mask-derived positions equals the unpadded pass."""
    model = make_model()
    t = tokenize_conversation(tokenizer, conversations[1])
    ids = torch.tensor([t.input_ids])
    pad = 5
    ids_left = torch.cat([torch.full((1, pad), tokenizer.pad_token_id), ids], 1)
    attn = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(ids)], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        plain = model(ids, output_hidden_states=True).hidden_states[1][0]
        padded = model(ids_left, attention_mask=attn, position_ids=pos, output_hidden_states=True).hidden_states[1][
            0, pad:
        ]
    torch.testing.assert_close(plain, padded, rtol=1e-5, atol=1e-6)


def test_bf16_model_gives_float32_accurate_means(make_model, tokenizer, conversations):
    model = make_model(dtype=torch.bfloat16)
    # Make activations large, where bf16 accumulation would lose digits.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(400)
    got = cache_means(model, tokenizer, conversations * 4, layers=[0, 1], batch_size=8, progress=False)
    ref = reference_means(model, tokenizer, conversations * 4, [0, 1])
    for pooling in POOLINGS:
        rel = ((got.mean(pooling) - ref[pooling]).norm() / ref[pooling].norm()).item()
        assert rel < 1e-6, (pooling, rel)
    assert got.token_sum.dtype == torch.float64


class _OldStyleLayer(torch.nn.Module):
    """A decoder layer as transformers < 4.57 wrote them: the hidden state inside a tuple."""

    def __init__(self, d, as_tuple):
        super().__init__()
        self.proj, self.as_tuple = torch.nn.Linear(d, d), as_tuple

    def forward(self, hidden, **kwargs):
        out = hidden + torch.tanh(self.proj(hidden))
        return (out, None) if self.as_tuple else out


class _OldStyleLM(torch.nn.Module):
    """Just enough of a causal LM for caching: embeddings, model.layers, a loop over them."""

    def __init__(self, vocab, d=16, n_layers=3, as_tuple=True):
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(vocab, d)
        self.model.layers = torch.nn.ModuleList(_OldStyleLayer(d, as_tuple) for _ in range(n_layers))

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids, **kwargs):
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
        return h


def test_tuple_and_tensor_layer_outputs_give_the_same_means(tokenizer, conversations):
    tupled = _OldStyleLM(len(tokenizer), as_tuple=True)
    plain = _OldStyleLM(len(tokenizer), as_tuple=False)
    a = cache_means(tupled, tokenizer, conversations, layers=[0, 2], batch_size=4, progress=False)
    b = cache_means(plain, tokenizer, conversations, layers=[0, 2], batch_size=4, progress=False)
    for pooling in POOLINGS:
        torch.testing.assert_close(a.mean(pooling), b.mean(pooling))
    # Taking output[0] of a bare tensor would have pooled batch item 0 only: check a real value.
    t = tokenize_conversation(tokenizer, conversations[0])
    h = plain.model.embed_tokens(torch.tensor([t.input_ids]))
    h = plain.model.layers[0](h)
    one = cache_means(tupled, tokenizer, [t], layers=[0], progress=False)
    torch.testing.assert_close(
        one.mean("responses")[0], h[0, t.answer_start : t.answer_end].double().mean(0), rtol=1e-5, atol=1e-6
    )


def test_hooks_replace_inside_tuple_outputs(tokenizer):
    from interp.hooks import hooks, resid_post

    model = _OldStyleLM(len(tokenizer), as_tuple=True)
    hidden = torch.randn(3, 5, 16)
    with hooks(model, {resid_post(0): lambda h, kw: h * 0 + 7}):
        out = model.model.layers[0](hidden)
    assert isinstance(out, tuple) and out[1] is None and torch.all(out[0] == 7)


def _lora(model, seed=0):
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(model, cfg)


def test_peft_wrapped_and_merged_models_agree(make_model, tokenizer, conversations):
    base_plain = make_model()
    base = cache_means(base_plain, tokenizer, conversations, batch_size=4, progress=False)
    peft_model = _lora(make_model())
    wrapped = cache_means(peft_model, tokenizer, conversations, batch_size=4, progress=False)
    merged_model = copy.deepcopy(peft_model).merge_and_unload()
    merged = cache_means(merged_model, tokenizer, conversations, batch_size=4, progress=False)
    for pooling in POOLINGS:
        torch.testing.assert_close(wrapped.mean(pooling), merged.mean(pooling), rtol=1e-4, atol=1e-5)
    # The adapter is not a no-op: otherwise the comparison above would prove nothing.
    assert (wrapped.mean("tokens") - base.mean("tokens")).abs().max() > 1e-3


def test_forward_stops_after_deepest_requested_layer(make_model, tokenizer, conversations):
    model = make_model(n_layers=3)
    calls = []
    decoder_layers(model)[2].register_forward_hook(lambda *a: calls.append(1))
    model.lm_head.register_forward_hook(lambda *a: calls.append("logits"))
    shallow = cache_means(model, tokenizer, conversations, layers=[0], batch_size=4, progress=False)
    assert calls == []
    full = cache_means(model, tokenizer, conversations, layers=[0, 2], batch_size=4, progress=False)
    assert "logits" not in calls and len(calls) > 0
    torch.testing.assert_close(shallow.mean("tokens")[0], full.mean("tokens")[0])


def test_hooks_removed_even_when_forward_raises(make_model, tokenizer, conversations):
    model = make_model()
    bad = TokenizedConversation(input_ids=[10**6], answer_start=0, answer_end=1)  # id out of range
    with pytest.raises(Exception):
        cache_means(model, tokenizer, [bad], progress=False)
    assert all(not l._forward_hooks and not l._forward_pre_hooks for l in decoder_layers(model))


def test_per_sample_shards_and_resume(make_model, tokenizer, conversations, tmp_path):
    model = make_model()
    folder = tmp_path / "per_sample"
    first = cache_means(
        model, tokenizer, conversations, layers=[0, 2], batch_size=4, per_sample_dir=folder, progress=False
    )
    per = load_per_sample(folder)
    assert per["response_mean"].shape == (len(conversations), 2, 32)
    assert per["index"].tolist() == list(range(len(conversations)))
    # Per-sample rows equal a single-conversation run.
    one = cache_means(model, tokenizer, conversations[3:4], layers=[0, 2], progress=False)
    torch.testing.assert_close(per["response_mean"][3].double(), one.mean("responses"), rtol=1e-5, atol=1e-6)
    # Resume: drop a shard, poison the model so only recomputed shards could differ, and rerun.
    shards = sorted(folder.glob("shard_*.safetensors"))
    shards[1].unlink()
    resumed = cache_means(
        model, tokenizer, conversations, layers=[0, 2], batch_size=4, per_sample_dir=folder, progress=False
    )
    for pooling in POOLINGS:
        torch.testing.assert_close(first.mean(pooling), resumed.mean(pooling), rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)
    reused = cache_means(
        model, tokenizer, conversations, layers=[0, 2], batch_size=4, per_sample_dir=folder, progress=False
    )
    torch.testing.assert_close(first.mean("tokens"), reused.mean("tokens"), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="other inputs"):
        cache_means(
            model, tokenizer, conversations[:5], layers=[0, 2], batch_size=4, per_sample_dir=folder, progress=False
        )


def test_right_padding_needs_no_padding_mask(make_model, tokenizer, conversations):
    """The causal mask alone gives every real token of a right-padded batch its exact state."""
    model = make_model(n_layers=2)
    items = [tokenize_conversation(tokenizer, c) for c in conversations[:6]]
    ids, _, _ = pad_right(items, tokenizer.pad_token_id, torch.device("cpu"))
    real = torch.zeros_like(ids, dtype=torch.bool)
    for row, it in enumerate(items):
        real[row, : len(it.input_ids)] = True
    assert not real.all()  # the batch is padded
    with torch.no_grad():
        causal = model(**right_padded_inputs(ids).kwargs(), output_hidden_states=True).hidden_states
        masked = model(input_ids=ids, attention_mask=real.long(), output_hidden_states=True).hidden_states
    for a, b in zip(causal, masked):
        torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-6)
