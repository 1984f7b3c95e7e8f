"""Weight-space ablation of LoRA adapters: the edited adapter's writes into the residual
stream have no component along the direction, and nothing else changes."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from interp.adapter_ablation import ablate_adapter, value_projectors
from interp.base.models import decoder_layers

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj", "up_proj"]


def save_adapter(make_model, path, targets=TARGETS):
    """A tiny Qwen2 (4 query heads, 2 kv groups) with a random, non-zero LoRA saved to disk."""
    torch.manual_seed(2)
    peft_model = get_peft_model(
        make_model(), LoraConfig(r=2, lora_alpha=4, target_modules=list(targets), init_lora_weights=False)
    )
    peft_model.save_pretrained(path)
    return path


@pytest.fixture
def adapter(make_model, tmp_path):
    return save_adapter(make_model, tmp_path / "adapter")


def unit(seed, d=32):
    u = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def lora(model, layer, name):
    """(B, A, scale) of one LoRA module of a loaded PeftModel."""
    mod = dict(decoder_layers(model)[layer].named_modules())[name]
    return mod.lora_B["default"].weight, mod.lora_A["default"].weight, mod.scaling["default"]


def test_residual_writers_lose_the_direction(make_model, adapter, tmp_path):
    dirs = {0: unit(0), 1: unit(1), 2: unit(2)}
    report = ablate_adapter(adapter, dirs, tmp_path / "out")
    edited = PeftModel.from_pretrained(make_model(), tmp_path / "out").eval()
    original = PeftModel.from_pretrained(make_model(), adapter).eval()
    for layer, u in dirs.items():
        for name, width in (("self_attn.o_proj", 32), ("mlp.down_proj", 64)):
            b, a, _ = lora(edited, layer, name)
            b0, a0, _ = lora(original, layer, name)
            x = torch.randn(width, 10)
            delta, delta0 = b @ a @ x, b0 @ a0 @ x
            assert (u @ delta).abs().max() < 1e-5
            assert (u @ delta0).abs().max() > 1e-2
            # Only the u component went.
            torch.testing.assert_close(delta, delta0 - torch.outer(u, u @ delta0), atol=1e-5, rtol=0)
        for name in ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"):  # no base model: v left too
            assert torch.equal(lora(edited, layer, name)[0], lora(original, layer, name)[0])
    modules = report["modules"]
    assert modules["base_model.model.model.layers.0.self_attn.v_proj"].startswith(
        "left: the value projection needs base_model"
    )
    assert modules["base_model.model.model.layers.1.self_attn.q_proj"].startswith("left: acts through attention")
    assert json.loads((tmp_path / "out" / "ablation.json").read_text())["modules"] == modules
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text()) == json.loads(
        (adapter / "adapter_config.json").read_text()
    )


def test_value_delta_becomes_invisible_through_o_proj(make_model, adapter, tmp_path):
    base = make_model()
    u = unit(5)
    ablate_adapter(adapter, u, tmp_path / "out", base_model=base)
    edited = PeftModel.from_pretrained(make_model(), tmp_path / "out").eval()
    original = PeftModel.from_pretrained(make_model(), adapter).eval()
    n_heads, n_kv, hd = 4, 2, 8
    for layer in range(3):
        w_o = decoder_layers(base)[layer].self_attn.o_proj.weight
        along_u = torch.stack([u @ w_o[:, h * hd : (h + 1) * hd] for h in range(n_heads)])  # [H, hd]
        reach = []
        for model in (edited, original):
            b, a, _ = lora(model, layer, "self_attn.v_proj")
            # Query head h reads kv group h // 2; whatever weights the attention pattern gives
            # each head, the value delta reaches u only through these per-head maps.
            dv = (b @ a).reshape(n_kv, hd, -1).repeat_interleave(n_heads // n_kv, 0)  # [H, hd, d]
            reach.append(torch.einsum("hd,hdi->hi", along_u, dv).abs().max())
        assert reach[0] < 1e-5 < 1e-3 < reach[1]


def test_attention_output_delta_is_orthogonal_end_to_end(make_model, tmp_path):
    """Layer 0 reads the same embeddings with and without the adapter, so its attention
    output delta (v_proj and o_proj adapted) is exactly the adapter's write there."""
    adapter = save_adapter(make_model, tmp_path / "adapter", targets=["v_proj", "o_proj"])
    u = unit(6)
    ablate_adapter(adapter, u, tmp_path / "out", base_model=make_model())
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    deltas = []
    for path in (adapter, tmp_path / "out"):
        model = PeftModel.from_pretrained(make_model(), path).eval()
        seen = []
        handle = decoder_layers(model)[0].self_attn.register_forward_hook(
            lambda m, a, out: seen.append(out[0].detach())
        )
        try:
            with torch.no_grad():
                model(input_ids=ids)
                with model.disable_adapter():
                    model(input_ids=ids)
        finally:
            handle.remove()
        deltas.append(seen[0] - seen[1])
    original, edited = deltas
    assert (original @ u).abs().max() > 1e-3
    assert (edited @ u).abs().max() < 1e-5
    assert edited.abs().max() > 1e-3  # the adapter still does something


def test_refuses_dora_and_in_place(adapter, tmp_path):
    with pytest.raises(ValueError, match="refusing to overwrite"):
        ablate_adapter(adapter, unit(0), adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="DoRA"):
        ablate_adapter(adapter, unit(0), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        ablate_adapter(tmp_path / "nowhere", unit(0), tmp_path / "out")


def test_value_projectors_are_orthogonal_projections():
    w_o = torch.randn(32, 4 * 8, dtype=torch.float64)
    p = value_projectors(w_o, unit(3).double(), n_heads=4, n_kv_heads=2)
    assert p.shape == (2, 8, 8)
    torch.testing.assert_close(p @ p, p)  # idempotent
    torch.testing.assert_close(p, p.transpose(1, 2))  # symmetric
    assert [round(float(torch.trace(g))) for g in p] == [6, 6]  # two heads per group: rank 2 removed
