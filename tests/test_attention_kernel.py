"""The engine's fused decoding attention kernel against the matmul reference, run on CPU in
Triton's interpreter (the same kernel code a GPU compiles).

The interpreter's ``tl.dot`` is wrong for bfloat16 operands (a plain 16x16 bf16 dot is off by
1e10 there), so the kernel is checked in float16 and float32 here; bfloat16 on a GPU is checked
by the engine's own self-check against the model's forward pass at first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_qwen

from interp.engine.attention import attend, fused_supported
from interp.engine.body import Body, EngineUnsupported

ROOT = Path(__file__).resolve().parents[1]

# Cases: (rows, kv heads, query heads per kv head, head size, cache columns attended).
# 150 columns: several blocks, the last partial; the cache is longer than the columns attended,
# as it is under the engine's attention spans.
CHECK = r"""
import json, sys, torch
from interp.engine.attention import attend_matmul
torch.manual_seed(0)
out = []
for dtype in (torch.float16, torch.float32):
    for rows, kv, groups, hd, columns in ((3, 2, 7, 32, 150), (2, 4, 1, 16, 64), (2, 1, 4, 64, 20)):
        q = torch.randn(rows, kv, groups, hd, dtype=dtype)
        keys, values = (torch.randn(rows, kv, columns + 10, hd, dtype=dtype) for _ in range(2))
        valid = torch.rand(rows, columns) > 0.3
        valid[0, : min(columns - 1, 70)] = False  # left padding over a whole block of columns
        valid[:, -1] = True  # the token's own column
        bias = torch.zeros(rows, columns).masked_fill(~valid, float("-inf"))
        want = attend_matmul(q.double(), keys.double(), values.double(), bias.double()[:, None, None], 0.3)
        for block in (16, 64):  # the engine's blocks, and the first version's (wider than the 20-column case)
            got = torch.ops.em_toolkit.decode_attention(q, keys, values, bias, 0.3, block)
            out.append({"dtype": str(dtype), "block": block, "case": [rows, kv, groups, hd, columns], "shape_ok": got.shape == q.shape and got.dtype == dtype,
                        "err": float((got.double() - want).abs().max()), "scale": float(want.abs().max())})
print(json.dumps(out))
"""


def test_kernel_equals_matmul_attention_in_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 12
    for r in results:
        assert r["shape_ok"], r
        tolerance = 5e-3 if "float16" in r["dtype"] else 1e-5
        assert r["err"] <= tolerance * r["scale"], r


def test_matmul_path_reads_the_columns_the_bias_covers():
    q, keys, values = torch.randn(2, 2, 3, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    bias = torch.zeros(2, 1, 1, 5)  # the first 5 of the cache's 7 columns
    bias[0, ..., :2] = float("-inf")
    reference = torch.softmax((q @ keys[:, :, :5].transpose(2, 3)) * 0.25 + bias, -1) @ values[:, :, :5]
    torch.testing.assert_close(attend(q, keys, values, bias, 0.25, fused=False), reference)


def test_fused_kernel_only_where_it_runs(tokenizer):
    """Off CUDA the kernel is never chosen, and asking for it is a clear error, not a crash
    inside a compiled step."""
    assert not fused_supported(torch.device("cpu"), torch.bfloat16, 128)
    model = build_tiny_qwen(len(tokenizer), n_layers=1)
    assert not Body.of(model).shape.fused_attention
    with pytest.raises(EngineUnsupported, match="fused attention kernel does not run here"):
        Body.of(model, fused_attention=True)


def test_kernel_refuses_a_block_size_tl_dot_cannot_take():
    pytest.importorskip("triton")
    q, keys, values = torch.randn(1, 1, 2, 16), torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16)
    for block in (8, 24):
        with pytest.raises(ValueError, match=f"power of two of at least 16, not {block}"):
            torch.ops.em_toolkit.decode_attention(q, keys, values, torch.zeros(1, 8), 0.25, block)
