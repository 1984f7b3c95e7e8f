"""On a GPU: the bf16 pooling path (bmm with float32 output) against a float64 reference.

python benchmarks/check_pooling_precision.py
"""

import torch

torch.manual_seed(0)
h = (torch.randn(16, 460, 3584, device="cuda") * 3 + 50).to(torch.bfloat16)  # mean ~50, as in shared/README
mask = (torch.rand(16, 460, device="cuda") > 0.3).float()
ref = torch.einsum("btd,bt->bd", h.double(), mask.double())
fast = torch.bmm(mask[:, None, :].to(h.dtype), h, out_dtype=torch.float32)[:, 0]
naive = (h * mask[..., None].to(h.dtype)).sum(1)  # bf16 all the way
for name, got in (("bmm, float32 out", fast), ("bf16 sum", naive)):
    rel = ((got.double() - ref).norm() / ref.norm()).item()
    print(f"{name:<18} relative error vs float64: {rel:.2e}")
