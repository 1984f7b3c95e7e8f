"""Steering through every backend, and the native context managers, checked against a plain
torch reference that shares no code with the toolkit (tiny Qwen2 models, float32, plain and
PEFT-wrapped): same logits to 1e-4, same greedy tokens as an uncached decoding loop."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_steer import prompts, vec

from interp.backends import make_backend
from interp.base.decoding import Decoding
from interp.generation import generate
from interp.inputs import ModelInputs
from interp.intervention import Intervention, ablation, steering
from interp.steer import ablate, steer
from interp.steer_backends import steered_generate, steered_logits

NEW_TOKENS = 6


@pytest.fixture(params=["hooks", "nnsight", "transformer_lens"])
def backend_name(request) -> str:
    """Every backend; a library backend is skipped only where its package is not installed."""
    if request.param != "hooks":
        pytest.importorskip(request.param)
    return request.param


@pytest.fixture(params=[False, True], ids=["plain", "peft"])
def model(request, make_model):
    # seed 3: weights whose greedy tokens react to these vectors (see tests/test_steer.py)
    model = make_model(n_layers=3, seed=3)
    if request.param:
        torch.manual_seed(1)
        # init_lora_weights=False gives B != 0, so the adapter changes the activations.
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(model, config).eval()
    return model


def build(kind: str, model, native: bool = False, **where):
    """The same edit as an Intervention, or (native) as the steer/ablate context manager."""
    if kind == "add":
        # A small step: the stream of these models is short, and a larger one turns every
        # greedy token into the same one, which would hide a wrong position gate.
        return (steer if native else steering)(model, {1: vec(7)}, alpha=0.1, scale="unit", **where)
    return (ablate if native else ablation)(model, vec(10), **where)  # every layer


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def greedy(model, enc, tokenizer, eos_token_id=None):
    """Native generation with the greedy settings every backend gets."""
    settings = Decoding(
        max_new_tokens=NEW_TOKENS, temperature=0, eos_token_id=eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    with torch.no_grad():
        return model.generate(**enc, **settings.hf_kwargs()), settings


# --- a slow, obvious reference that shares no code with the toolkit's steering ---------


def reference_hooks(model, kind: str, columns: torch.Tensor):
    """Plain torch hooks doing ``build(kind)``'s edit on the columns where ``columns`` is set."""
    if kind == "add":
        v = vec(7)
        layers, fn = [1], lambda h: h + 0.1 * v / v.norm()
    else:
        u = vec(10) / vec(10).norm()
        layers, fn = range(3), lambda h: h - (h @ u)[..., None] * u

    def hook(module, args, output):
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        new = torch.where(columns[None, -hidden.shape[1] :, None], fn(hidden), hidden)
        return new if isinstance(output, torch.Tensor) else (new, *output[1:])

    from interp.base.models import decoder_layers

    return [decoder_layers(model)[l].register_forward_hook(hook) for l in layers]


def reference_columns(positions: str, prompt_length: int, width: int) -> torch.Tensor:
    cols = torch.arange(width)
    return {"all": cols >= 0, "prompt": cols < prompt_length, "generated": cols >= prompt_length}[positions]


@torch.no_grad()
def reference_logits(model, inputs, kind, positions, prompt_length):
    handles = reference_hooks(model, kind, reference_columns(positions, prompt_length, inputs["input_ids"].shape[1]))
    try:
        return model(**inputs).logits
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def reference_greedy(model, enc, kind, positions):
    """Greedy decoding without a KV cache: every step re-runs prompt + tokens so far, with the
    edit on the columns that are prompt (``< width``) or generated (``>= width``)."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    width = ids.shape[1]
    for _ in range(NEW_TOKENS):
        columns = reference_columns(positions, width, ids.shape[1])
        handles = reference_hooks(model, kind, columns)
        try:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        finally:
            for h in handles:
                h.remove()
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


@pytest.mark.parametrize("kind", ["add", "ablate"])
def test_steered_logits_equal_a_plain_torch_reference(model, tokenizer, backend_name, kind):
    enc = prompts(tokenizer)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    real = mask.bool()  # logits at padding are not comparable across attention implementations
    inputs = ModelInputs.from_mask(ids, mask).kwargs()
    backend = make_backend(backend_name, model)
    with torch.no_grad():
        clean = model(**inputs).logits
    for positions, prompt_length in (("all", None), ("prompt", 30), ("generated", 30)):
        where = {"positions": positions, "prompt_length": prompt_length}
        want = reference_logits(model, inputs, kind, positions, prompt_length or 0)
        got = steered_logits(model, ids, mask, build(kind, model, **where), backend=backend)
        assert rel(got[real], want[real]) < 1e-4, (positions, rel(got[real], want[real]))
        assert rel(want[real], clean[real]) > 1e-3, positions  # the edit does something
        with build(kind, model, native=True, **where), torch.no_grad():
            native = model(**inputs).logits
        assert rel(native[real], want[real]) < 1e-4, positions
    # No edit lingers in the backend after a steered call.
    assert rel(steered_logits(model, ids, mask, Intervention({}), backend=backend)[real], clean[real]) < 1e-4


@pytest.mark.parametrize("kind", ["add", "ablate"])
def test_steered_greedy_tokens_equal_a_plain_torch_reference(model, tokenizer, backend_name, kind):
    enc = prompts(tokenizer)
    clean, settings = greedy(model, enc, tokenizer)
    backend = make_backend(backend_name, model)
    for positions in ("all", "prompt", "generated"):
        want = reference_greedy(model, enc, kind, positions)
        assert not torch.equal(want, clean), positions  # the edit changes the tokens
        got = steered_generate(
            model,
            enc["input_ids"],
            enc["attention_mask"],
            build(kind, model, positions=positions),
            settings,
            backend=backend,
        )
        assert torch.equal(got, want[:, enc["input_ids"].shape[1] :]), positions  # the new tokens, as generate returns
        with build(kind, model, native=True, positions=positions):
            native, _ = greedy(model, enc, tokenizer)
        assert torch.equal(native, want), positions


def test_rows_that_end_early_are_padded_alike(make_model, tokenizer, backend_name):
    model = make_model(n_layers=3, seed=3)
    enc = prompts(tokenizer)
    width = enc["input_ids"].shape[1]
    with build("add", model, native=True):
        free, _ = greedy(model, enc, tokenizer)
        eos = int(free[1, width + 1])  # row 1 ends at its second new token
        want, settings = greedy(model, enc, tokenizer, eos_token_id=eos)
    # Row 1 is padded after its EOS while another row goes on.
    assert want.shape[1] > width + 2 and (want[1, width + 2 :] == tokenizer.pad_token_id).all()
    got = steered_generate(
        model, enc["input_ids"], enc["attention_mask"], build("add", model), settings, backend=backend_name
    )
    assert torch.equal(got, want[:, width:])


def test_sampling_uses_each_librarys_sampler(make_model, tokenizer, backend_name):
    model = make_model(n_layers=3, seed=3)
    enc = prompts(tokenizer)
    iv = build("add", model, positions="generated")

    def sample(backend: str, seed: int) -> torch.Tensor:
        settings = Decoding(max_new_tokens=NEW_TOKENS, top_k=50, seed=seed, pad_token_id=tokenizer.pad_token_id)
        return steered_generate(model, enc["input_ids"], enc["attention_mask"], iv, settings, backend=backend)

    first = sample(backend_name, 0)
    assert first.shape == (3, NEW_TOKENS)  # the new tokens only, as generate returns
    assert not torch.equal(first, sample(backend_name, 1))  # it samples
    if backend_name == "nnsight":  # transformers' generate underneath, as for the native hooks
        assert torch.equal(first, sample("hooks", 0))


@pytest.mark.parametrize("kind", ["add", "ablate"])
def test_steered_generate_is_generate_with_an_intervention(make_model, tokenizer, kind):
    """One way to generate with an intervention: the native backend's steered_generate is
    interp.generation.generate(intervention=), same tokens, same shape, and the edit acts."""
    model = make_model(n_layers=3, seed=3)
    enc = prompts(tokenizer)
    settings = Decoding(max_new_tokens=NEW_TOKENS, temperature=0, pad_token_id=tokenizer.pad_token_id)
    iv = build(kind, model, positions="generated")
    want = generate(model, enc["input_ids"], enc["attention_mask"], settings, intervention=iv)
    got = steered_generate(model, enc["input_ids"], enc["attention_mask"], iv, settings)
    assert want.shape == (3, NEW_TOKENS) and torch.equal(got, want)
    assert not torch.equal(want, generate(model, enc["input_ids"], enc["attention_mask"], settings)), kind


def test_bad_backend_and_right_padding_are_refused(make_model, tokenizer):
    model = make_model(n_layers=1)
    enc = prompts(tokenizer)
    iv = steering(model, {0: vec(0)})
    with pytest.raises(ValueError, match="unknown backend 'tl'.*transformer_lens"):
        steered_logits(model, enc["input_ids"], enc["attention_mask"], iv, backend="tl")
    right = prompts(tokenizer)
    right["attention_mask"] = right["attention_mask"].flip(-1)
    with pytest.raises(ValueError, match="left-padded"):
        steered_generate(model, right["input_ids"], right["attention_mask"], iv)
