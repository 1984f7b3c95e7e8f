"""Whether sampled tokens follow the model's distribution: the GPU check's frequency parts.

Two questions kept apart, because in bfloat16 they mix:

- **the sampler** (:func:`sampler_test`): the engine's ``choose``, compiled as the engine
  compiles it, draws from fixed float32 logits at batch 1 and 256; a chi-square test of its
  draws against ``softmax`` of those very logits. Nothing but the sampler can fail it.
- **end to end** (:func:`frequency_test`): first answer tokens drawn through the engine
  against ``softmax`` of transformers' own forward pass. In float32 the two forwards agree to
  rounding and the chi-square test is exact. In bfloat16 they are two different computations
  (other kernels, other batch shapes) whose distributions differ by bf16 rounding, which a
  large enough sample always detects. So the part also tests the draws against transformers'
  forward at the draws' batch size (``p_vs_same_batch``) and reports the total-variation
  distance between transformers' own distributions at batch 1 and at that batch size
  (``bf16_noise_tv``, over the whole vocabulary): a difference no sampler causes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from scipy.stats import chisquare

from interp.engine.sampler import SamplerSpec, choose, row_keys, token_codes


def chi_square(counts: torch.Tensor, probs: torch.Tensor, top: int = 20) -> dict:
    """Chi-square of ``counts`` [vocab] against ``probs`` [vocab] over the ``top`` likeliest
    tokens and the rest pooled (cells expected below 5 pooled too), and their total-variation
    distance over the same cells."""
    counts, probs = counts.double(), probs.double()  # scipy wants the sums equal to ~1e-8
    order = probs.argsort(descending=True)[:top]
    observed = torch.cat([counts[order], (counts.sum() - counts[order].sum())[None]])
    expected = torch.cat([probs[order], (1 - probs[order].sum()).clamp(min=0)[None]]) * counts.sum()
    keep = expected > 5  # chi-square needs expected counts of about 5 or more; the rest pool
    obs = torch.cat([observed[keep], observed[~keep].sum()[None]]) if (~keep).any() else observed
    exp = torch.cat([expected[keep], expected[~keep].sum()[None]]) if (~keep).any() else expected
    exp = exp * obs.sum() / exp.sum()
    return {
        "draws": int(counts.sum()),
        "p": float(chisquare(obs.numpy(), exp.numpy()).pvalue),
        "tv": float((obs - exp).abs().sum() / (2 * obs.sum())),
        "top_token_prob": float(probs[order[0]]),
        "top_token_freq": float(counts[order[0]] / counts.sum()),
    }


def sampler_test(logits: torch.Tensor, rows: int, draws: int, backend: str | None = "inductor") -> dict:
    """``draws`` tokens from float32 ``logits`` [vocab] by the engine's sampler at temperature 1,
    ``rows`` at a time (one key per row, one step per batch), against ``softmax(logits)``."""
    spec = SamplerSpec(greedy=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    pick: Callable = lambda *a: choose(spec, *a)  # noqa: E731
    if backend is not None:
        pick = torch.compile(pick, backend=backend, fullgraph=True)
    device = logits.device
    batch = logits.float()[None].expand(rows, -1).contiguous()
    keys, codes = row_keys(0, rows).to(device), token_codes(logits.shape[-1], device)
    counts = torch.zeros(logits.shape[-1], device=device)
    t0 = time.perf_counter()
    for step in range(draws // rows):
        drawn = pick(batch, keys, torch.tensor([step], device=device), None, codes)
        counts += torch.bincount(drawn, minlength=logits.shape[-1]).float()
    seconds = time.perf_counter() - t0
    return {"rows": rows, **chi_square(counts.cpu(), logits.float().softmax(-1).cpu()), "seconds": seconds}


def frequency_test(model, generate_first: Callable[[int, int], torch.Tensor], ids, mask, rows: int, draws: int) -> dict:
    """First-token draws through the engine (``generate_first(rows, seed)`` -> [rows] tokens of
    the prompt ``ids``/``mask`` [1, T]) against transformers' softmax of the same prompt."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[0, -1].float()
        wide = model(input_ids=ids.expand(rows, -1), attention_mask=mask.expand(rows, -1)).logits[:, -1].float()
    probs, probs_wide = logits.softmax(-1).cpu(), wide[0].softmax(-1).cpu()
    counts = torch.zeros_like(probs)
    t0 = time.perf_counter()
    for seed in range(draws // rows):
        counts += torch.bincount(generate_first(rows, seed).cpu(), minlength=len(probs)).float()
    seconds = time.perf_counter() - t0
    return {
        "rows": rows,
        **chi_square(counts, probs),
        "p_vs_same_batch": chi_square(counts, probs_wide)["p"],
        "bf16_noise_tv": 0.5 * float((probs_wide - probs).abs().sum()),
        "seconds": seconds,
    }
