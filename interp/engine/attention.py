"""Attention of one new token per row over a static KV cache (the decoding step's attention).

On a CUDA device with Triton it is one fused kernel per layer: each program takes one row and
one key-value head, reads that head's cached keys and values once for all the query heads that
share them (grouped-query attention), and keeps scores, softmax and the weighted sum on chip
with an online softmax, its scores in float32. On an H200 at a batch of 256 (Qwen2.5-7B shape,
80 cache columns: 42 MB of keys and values a layer) it takes 14.6 us a layer against 36.8 us
for two batched cuBLAS matmuls with a softmax between them, whose query dimension is only the
7 heads of a group; in an exploratory run a kernel that only read those bytes with the same
grid took 14.1 us.
Elsewhere, and as the reference the kernel is tested against, it is the two matmuls.

The kernel is a ``torch.library.triton_op``, so ``torch.compile`` puts it inside the compiled
step and its CUDA graph like any other kernel. It takes the whole cache and reads the columns
the bias covers: a slice of the cache as its input would make inductor copy the slice into a
fresh buffer (with other strides than the ones traced) at every layer.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (e.g. a CPU-only install): the matmul path serves
    triton = None

# Launch settings (cache columns a program reads per iteration, warps, pipeline stages). On an
# H200 at a batch of 256 (28 layers, 80 / 128 columns) 16 columns, 2 warps and 2 stages took
# 408 / 568 us, against 602 / 656 us with 64 columns, 4 warps and 3 stages, the first
# version's (``benchmarks/gpu_engine_step.py --parts attention``).
LAUNCH = (16, 2, 2)
MIN_DOT_ROWS = 16  # tl.dot's smallest tile: the query heads of a group are padded to it


def attend_matmul(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention of ``q`` [B, kv heads, groups, hd] over the first ``columns`` of ``keys`` and
    ``values`` [B, kv heads, at least columns, hd] with an additive ``bias`` [B, 1, 1, columns]
    (0 or -inf); [B, kv heads, groups, hd]."""
    columns = bias.shape[-1]
    scores = torch.matmul(q, keys[:, :, :columns].transpose(2, 3)).float() * scaling + bias
    return torch.matmul(scores.softmax(-1).to(values.dtype), values[:, :, :columns])


def fused_supported(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the fused kernel can run: Triton installed, a CUDA device (compute capability 8.0
    or newer for bfloat16), half precision (``tl.dot`` would take float32 as TF32), and a head
    size that is a power of two of at least 16 (``tl.dot``'s smallest)."""
    if triton is None or device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return False
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
        return False
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def attend(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scaling: float, fused: bool
) -> torch.Tensor:
    """:func:`attend_matmul`'s result, by the fused kernel if ``fused`` (see :func:`fused_supported`)."""
    if not fused:
        return attend_matmul(q, keys, values, bias, scaling)
    return torch.ops.em_toolkit.decode_attention(q, keys, values, bias.reshape(bias.shape[0], bias.shape[-1]), scaling)


if triton is not None:
    # Stays one function: a Triton kernel compiles to one GPU program, its online-softmax loop in registers.
    @triton.jit
    def _kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        bias_ptr,
        out_ptr,
        sq_b,
        sq_h,
        sq_g,
        sk_b,
        sk_h,
        sk_c,
        sv_b,
        sv_h,
        sv_c,
        sb_b,
        so_b,
        so_h,
        so_g,
        columns,
        SCALING: tl.constexpr,
        GROUPS: tl.constexpr,
        BLOCK_G: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        row, head = tl.program_id(0), tl.program_id(1)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, HEAD_DIM)
        q = tl.load(
            q_ptr + row * sq_b + head * sq_h + g[:, None] * sq_g + d[None, :], mask=g[:, None] < GROUPS, other=0.0
        )
        top = tl.full([BLOCK_G], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        for start in range(0, columns, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            inside = n < columns
            # Keys and values are loaded together: the value load's latency hides behind the scores.
            k = tl.load(
                k_ptr + row * sk_b + head * sk_h + n[:, None] * sk_c + d[None, :], mask=inside[:, None], other=0.0
            )
            v = tl.load(
                v_ptr + row * sv_b + head * sv_h + n[:, None] * sv_c + d[None, :], mask=inside[:, None], other=0.0
            )
            bias = tl.load(bias_ptr + row * sb_b + n, mask=inside, other=float("-inf"))
            s = tl.dot(q, tl.trans(k)) * SCALING + bias[None, :]
            new_top = tl.maximum(top, tl.max(s, 1))
            # A block a row may not attend to at all (left padding) leaves the maximum at -inf;
            # subtracting 0 instead keeps exp() at 0 rather than NaN.
            shift = tl.where(new_top == float("-inf"), 0.0, new_top)
            p = tl.exp(s - shift[:, None])
            rescale = tl.exp(top - shift)
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
            total = total * rescale + tl.sum(p, 1)
            top = new_top
        out = acc / total[:, None]
        tl.store(
            out_ptr + row * so_b + head * so_h + g[:, None] * so_g + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=g[:, None] < GROUPS,
        )

    @torch.library.triton_op("em_toolkit::decode_attention", mutates_args=())
    def _decode_attention(
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor,
        scaling: float,
        block_columns: int = LAUNCH[0],
        num_warps: int = LAUNCH[1],
        num_stages: int = LAUNCH[2],
    ) -> torch.Tensor:
        if block_columns < MIN_DOT_ROWS or block_columns & (block_columns - 1):
            raise ValueError(f"block_columns must be a power of two of at least {MIN_DOT_ROWS}, not {block_columns}")
        # Contiguous inputs (no copy for the engine's): a layout inductor cannot change after
        # tracing, so the strides given to the kernel stay true.
        q, keys, values, bias = (t.contiguous() for t in (q, keys, values, bias))
        rows, kv_heads, groups, head_dim = q.shape
        out = torch.empty_like(q)
        block_g = max(MIN_DOT_ROWS, triton.next_power_of_2(groups))
        torch.library.wrap_triton(_kernel)[(rows, kv_heads)](
            q,
            keys,
            values,
            bias,
            out,
            *q.stride()[:3],
            *keys.stride()[:3],
            *values.stride()[:3],
            bias.stride(0),
            *out.stride()[:3],
            bias.shape[1],
            SCALING=scaling,
            GROUPS=groups,
            BLOCK_G=block_g,
            HEAD_DIM=head_dim,
            BLOCK_N=block_columns,
            num_warps=num_warps,
            num_stages=num_stages,
        )
        return out
