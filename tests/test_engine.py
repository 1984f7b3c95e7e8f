"""The compiled engine on the CPU (tiny Qwen2 models, float32): its real fast path, forced on
with a torch.compile backend that records every graph it is given (CUDA graphs are GPU-only).

A compiled step must never drop an edit silently: steered tokens differ from unsteered ones
and equal the eager reference (native hooks + transformers' generate), for add and ablate,
positions generated/prompt/all, a left-padded batch and a PEFT LoRA model, and the edit is
read inside the compiled graphs, not by a hook."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import build_tiny_qwen
from peft import LoraConfig, get_peft_model
from test_steer import prompts, vec
from test_steer_backends import build

from interp.base.decoding import Decoding
from interp.engine import EngineUnsupported, engine_for
from interp.engine.body import PROJECTIONS
from interp.generation import generate
from interp.hooks import hooks, resid_post
from interp.steer import steer

NEW = 6


class Recorder:
    """A ``torch.compile`` backend that runs graphs as traced and keeps them for inspection."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs) -> object:
        self.graphs.append(gm)
        return gm.forward

    def read_vectors(self) -> bool:
        """Some compiled graph takes a per-layer edit vector as an input (and so uses it)."""
        return any("vector" in node.name for gm in self.graphs for node in gm.graph.nodes if node.op == "placeholder")


def _tiny(tokenizer, peft: bool):
    model = build_tiny_qwen(len(tokenizer), n_layers=3, seed=3)
    if peft:
        torch.manual_seed(1)
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        ).eval()
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


def _compiled(tokenizer, peft: bool):
    """(model, recorder): a model whose engine compiles through a recording backend."""
    model = _tiny(tokenizer, peft)
    recorder = Recorder()
    engine_for(model, compile=recorder)
    return model, recorder


@pytest.fixture(scope="module")
def plain(tokenizer):
    return _compiled(tokenizer, peft=False)


@pytest.fixture(scope="module")
def peft(tokenizer):
    return _compiled(tokenizer, peft=True)


@pytest.fixture(params=["plain", "peft"])
def compiled(request):
    return request.getfixturevalue(request.param)


def greedy(tokenizer, eos=None) -> Decoding:
    return Decoding(max_new_tokens=NEW, temperature=0, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)


def run(model, enc, decoding, intervention=None, engine="fast"):
    return generate(model, enc["input_ids"], enc["attention_mask"], decoding, intervention, engine=engine)


@pytest.mark.parametrize("kind", ["add", "ablate"])
def test_steering_runs_inside_the_compiled_step(compiled, tokenizer, kind):
    model, recorder = compiled
    enc = prompts(tokenizer)  # left-padded, rows of different lengths
    assert enc["attention_mask"][:, 0].eq(0).any()
    settings = greedy(tokenizer)
    clean = run(model, enc, settings)
    assert torch.equal(clean, run(model, enc, settings, engine="hf"))
    for positions in ("generated", "prompt", "all"):
        graphs = len(recorder.graphs)
        got = run(model, enc, settings, build(kind, model, positions=positions))
        want = run(model, enc, settings, build(kind, model, positions=positions), engine="hf")  # native hooks
        assert not torch.equal(got, clean), positions  # the edit was applied...
        assert torch.equal(got, want), positions  # ...with the hooks' meaning
        if positions != "generated":  # positions are data: no new graph for them
            assert len(recorder.graphs) == graphs, positions
    assert recorder.read_vectors()  # the edit is an input of the compiled graphs, not a hook


def test_compile_options_reach_the_decoding_step_only(tokenizer):
    """``compile_options`` go to the compilation of the decoding step (the graphs that take the
    cache column), and to no other compiled function."""
    calls: list[tuple[bool, object]] = []

    def backend(gm: torch.fx.GraphModule, example_inputs, **kwargs) -> object:
        calls.append((any("column" in n.name for n in gm.graph.nodes if n.op == "placeholder"), kwargs.get("options")))
        return gm.forward

    model = _tiny(tokenizer, peft=False)
    engine_for(model, compile=backend, compile_options={"max_autotune_gemm": True})
    enc = prompts(tokenizer)
    run(model, enc, greedy(tokenizer))
    assert {decoding for decoding, _ in calls} == {True, False}
    assert all((options == {"max_autotune_gemm": True}) == decoding for decoding, options in calls)


def test_steer_context_reaches_the_engine(plain, tokenizer):
    """``with steer(...)`` around a generation (as the sweeps do) runs in the compiled step."""
    model, _ = plain
    enc = prompts(tokenizer)
    settings = greedy(tokenizer)
    with steer(model, {1: vec(7)}, alpha=0.1, scale="unit", positions="generated"):
        inside = run(model, enc, settings)
        native = run(model, enc, settings, engine="hf")
    assert torch.equal(inside, native) and not torch.equal(inside, run(model, enc, settings))


def test_rows_end_at_their_eos_like_transformers(plain, tokenizer):
    model, _ = plain
    enc = prompts(tokenizer)
    free = run(model, enc, greedy(tokenizer))
    eos = int(free[1, 1])  # row 1 ends at its second new token
    got = run(model, enc, greedy(tokenizer, eos))
    assert torch.equal(got, run(model, enc, greedy(tokenizer, eos), engine="hf"))
    assert (got[1, 2:] == tokenizer.pad_token_id).all()


def test_sampling_is_reproducible_per_row(plain, tokenizer):
    model, _ = plain
    enc = prompts(tokenizer)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    settings = Decoding(
        max_new_tokens=NEW, top_k=50, top_p=0.95, repetition_penalty=1.2, seed=5, pad_token_id=tokenizer.pad_token_id
    )
    first = generate(model, ids, mask, settings, engine="fast")
    assert torch.equal(first, generate(model, ids, mask, settings, engine="fast"))
    other = generate(model, ids, mask, replace(settings, seed=6), engine="fast")
    assert not torch.equal(first, other)
    # Row 2 alone, re-padded, keeps its key: the same tokens whatever else is in the batch.
    alone = prompts(tokenizer, rows=(2,))
    solo = generate(model, alone["input_ids"], alone["attention_mask"], settings, engine="fast", rows=torch.tensor([2]))
    assert torch.equal(solo[0, : first.shape[1]], first[2, : solo.shape[1]])


def test_foreign_hooks_send_generation_to_transformers(plain, tokenizer):
    model, _ = plain
    enc = prompts(tokenizer)
    with hooks(model, {resid_post(0): lambda h, kw: h * 1.5}):
        with pytest.raises(EngineUnsupported, match="forward hook"):
            run(model, enc, greedy(tokenizer))
        auto = run(model, enc, greedy(tokenizer), engine="auto")  # the hook runs there
    assert not torch.equal(auto, run(model, enc, greedy(tokenizer), engine="auto"))


def test_adapters_switched_off_are_seen(tokenizer):
    model = _tiny(tokenizer, peft=True)
    engine_for(model, compile=None)
    enc = prompts(tokenizer)
    with_lora = run(model, enc, greedy(tokenizer))
    with model.disable_adapter():
        without = run(model, enc, greedy(tokenizer))
        assert torch.equal(without, run(model, enc, greedy(tokenizer), engine="hf"))
    assert not torch.equal(with_lora, without)
    assert torch.equal(with_lora, run(model, enc, greedy(tokenizer)))


def test_fused_qkv_follow_weights_changed_in_place(tokenizer):
    """Plain q/k/v projections run on a fused copy of their weights; a weight changed in place
    between calls (same memory, so no rebuild) is seen by the next call. PEFT-wrapped
    projections are not fused."""
    model, _ = _compiled(tokenizer, peft=False)
    engine = engine_for(model)
    assert all(f is not None for f in engine.body.qkv)
    enc = prompts(tokenizer)
    before = run(model, enc, greedy(tokenizer))
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight.mul_(-5)
    after = run(model, enc, greedy(tokenizer))
    assert not torch.equal(after, before)
    assert torch.equal(after, run(model, enc, greedy(tokenizer), engine="hf"))
    peft_model, _ = _compiled(tokenizer, peft=True)  # LoRA on q and v: their base weights are fused
    body = engine_for(peft_model).body
    assert all(f is not None for f in body.qkv)
    assert all([lora is not None for lora in layer[:3]] == [True, False, True] for layer in body.loras)


def _all_linear_lora(tokenizer, dtype: torch.dtype):
    model = build_tiny_qwen(len(tokenizer), n_layers=2, seed=3).to(dtype)
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(PROJECTIONS), init_lora_weights=False)
    return get_peft_model(model, config).eval()


def test_lora_on_every_projection_equals_peft(tokenizer):
    """The engine's own LoRA branch on all seven projections gives PEFT's tokens, steered or not."""
    model = _all_linear_lora(tokenizer, torch.float32)
    engine_for(model, compile=Recorder())
    assert all(lora is not None for layer in engine_for(model).body.loras for lora in layer)
    enc = prompts(tokenizer)
    iv = build("add", model, positions="generated")
    for intervention in (None, iv):
        assert torch.equal(
            run(model, enc, greedy(tokenizer), intervention),
            run(model, enc, greedy(tokenizer), intervention, engine="hf"),
        )


def test_lora_in_another_dtype_runs_from_fresh_copies(tokenizer):
    """PEFT keeps a bf16 model's adapters in float32; the engine runs them from bf16 copies that
    it rewrites at every call, so an adapter weight changed in place is seen."""
    model = _all_linear_lora(tokenizer, torch.bfloat16)
    down = model.base_model.model.model.layers[0].mlp.down_proj.lora_B["default"].weight
    assert down.dtype == torch.float32
    engine = engine_for(model, compile=None)
    assert all(lora[0].dtype == lora[1].dtype == torch.bfloat16 for layer in engine.body.loras for lora in layer)
    enc = prompts(tokenizer)
    before = run(model, enc, greedy(tokenizer))
    with model.disable_adapter():
        assert not torch.equal(run(model, enc, greedy(tokenizer)), before)  # the adapter acts
    with torch.no_grad():
        down.mul_(-30)
    after = run(model, enc, greedy(tokenizer))
    assert torch.equal(engine.body.loras[0][6][1], down.to(torch.bfloat16))
    assert not torch.equal(after, before)


def test_attention_reads_only_the_columns_written(tokenizer):
    """Over a long generation the decoding step attends to a growing span of the cache (one
    compiled step per span), and the tokens stay transformers' own, steered or not."""
    model, recorder = _compiled(tokenizer, peft=False)
    enc = prompts(tokenizer)
    settings = replace(greedy(tokenizer), max_new_tokens=40)
    iv = build("add", model, positions="generated")
    assert torch.equal(run(model, enc, settings), run(model, enc, settings, engine="hf"))
    assert torch.equal(run(model, enc, settings, iv), run(model, enc, settings, iv, engine="hf"))
    assert len(_decoding_spans(recorder)) >= 3
    whole = Recorder()
    engine_for(model, compile=whole, spans=1)  # one span: the whole cache, every step
    assert torch.equal(run(model, enc, settings, iv), run(model, enc, settings, iv, engine="hf"))
    assert len(_decoding_spans(whole)) == 1


def _decoding_spans(recorder: Recorder) -> set[int]:
    """The numbers of cache columns the recorded decoding-step graphs (those taking the cache
    column) attend to: their attention bias's width."""
    return {
        n.meta["example_value"].shape[-1]
        for gm in recorder.graphs
        for n in gm.graph.nodes
        if n.op == "placeholder" and n.name == "l_bias_" and any(m.name == "l_column_" for m in gm.graph.nodes)
    }


def test_unsupported_models_are_refused(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer))).eval()
    with pytest.raises(EngineUnsupported, match="gpt2"):
        engine_for(gpt2)
    model = _tiny(tokenizer, peft=False).train()
    with pytest.raises(EngineUnsupported, match="training mode"):
        run(model, prompts(tokenizer), greedy(tokenizer))
