"""The TransformerLens backend: a ``TransformerBridge`` and ``run_with_cache``.

How the bridge is built, and why:

- ``build_bridge_from_module`` (TransformerLens 4) wraps an in-memory model with no hub access
  and no tokenizer; ``TransformerBridge.boot_transformers(name, hf_model=...)`` does the same
  but needs a tokenizer (or loads one by name) and rewrites it. Token ids are all we pass.
- The bridge replaces the submodules of the model it is given, so it gets a tensor-sharing copy
  (:mod:`interp.backends.views`); the caller's model and config are left alone.
- The bridge computes attention with its own step-by-step (eager) code, whatever the model's
  attention implementation, so that its score and pattern hooks fire. Measured on an H100: its
  means equal those of the HF model run with eager attention bit for bit, in float32 and bf16;
  against sdpa they differ by rounding (float32: 1e-6 relative; bf16, random 7B-shaped
  weights: 2e-2 for answer-token means, 6e-2 for the last prompt token). Compare backends in
  float32, or load the model with ``attn_implementation="eager"``.
- TransformerLens knows nothing of PEFT: a PEFT model is bridged as a merged copy, in which
  only the adapted layers' weights are duplicated. (Bridging the unmerged LoRA model runs the
  adapters in the forward pass, but the bridge's weight views such as ``W_Q`` then show the
  base weights, and ``enable_compatibility_mode()`` fails.) In float32 merged and unmerged
  adapters agree to rounding; in bf16 they are close, not equal (PEFT runs adapters in float32).
- No weight processing: the bridge's default forward uses the raw HF weights, so
  ``hook_resid_post`` equals the HF residual stream. ``enable_compatibility_mode()`` /
  ``process_weights()`` apply HookedTransformer's processing; measured with TransformerLens
  4.3 on Qwen2 (the same code paths serve every RMSNorm model), no option changes resid_post:
  fold_ln folds the norm scales into the next linear maps, center_writing_weights is skipped
  for RMSNorm, fold_value_biases is exact because attention weights sum to one, and
  center_unembed touches only the logits. On LayerNorm models (GPT-2, Pythia)
  center_writing_weights removes each position's mean over d_model from the residual stream,
  so it must stay off there for directions comparable with the HF model's.
- Steering hooks ``blocks.{L}.hook_resid_post``: ``run_with_hooks`` for a forward pass, and
  the bridge's own ``generate`` inside ``bridge.hooks(...)`` for generation, with the tokens
  placed by the same :class:`interp.applied.Applied` as every backend (it watches the bridge's
  forward calls, which carry position ids). The bridge generates **without** the KV cache:
  with TransformerLens 4.3 its cached loop gave other greedy tokens than transformers' own
  ``generate`` under transformers 5.24 (it agreed under 5.17), while the uncached loop agrees
  on both. Its rows that have ended are filled with the EOS token; they are refilled with
  the pad token here, as transformers does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformer_lens.model_bridge.sources import build_bridge_from_module

from interp.applied import Applied
from interp.backends import ResidFn
from interp.backends.views import merged_view
from interp.base.decoding import Decoding
from interp.base.models import input_device
from interp.hooks import around_calls, resid_post
from interp.inputs import ModelInputs
from interp.intervention import Intervention


class TransformerLensBackend:
    """``TransformerBridge.run_with_cache`` filtered to ``blocks.{L}.hook_resid_post``."""

    name = "transformer_lens"

    def __init__(self, model: nn.Module, tokenizer=None) -> None:
        self.model = model
        view = merged_view(model)
        # TransformerLens keys its architecture adapters on the HF class name (Qwen2ForCausalLM, ...).
        self.bridge = build_bridge_from_module(
            view,
            type(view).__name__,
            hf_config=view.config,
            dtype=next(view.parameters()).dtype,
            device=input_device(view),
        )
        self._n_layers = len(self.bridge.blocks)

    def resid_post(self, inputs: ModelInputs, layers: Sequence[int], fn: ResidFn) -> None:
        names = [resid_post(l) for l in layers]
        # stop_at_layer=k ends the pass as block k starts; the last block has nothing after it.
        stop = max(layers) + 1
        _, cache = self.bridge.run_with_cache(
            inputs.input_ids,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            names_filter=names,
            stop_at_layer=stop if stop < self._n_layers else None,
            return_type=None,
            use_cache=False,
        )
        for layer, name in zip(layers, names):
            fn(layer, cache[name])

    @contextmanager
    def _applied(self, intervention: Intervention) -> Iterator[list[tuple[str, Callable]]]:
        """The bridge's forward hooks for ``intervention``, placed by one :class:`Applied`
        that watches the bridge's own forward calls (its generate loop calls it per step)."""
        applied = Applied(intervention)
        with around_calls(self.bridge, applied.before_call, applied.after_call):
            yield (
                [(resid_post(l), lambda hidden, hook, l=l: applied.edit(l, hidden)) for l in intervention.layers],
                applied,
            )

    def logits(self, inputs: ModelInputs, intervention: Intervention) -> torch.Tensor:
        with self._applied(intervention) as (fwd_hooks, applied):
            # run_with_hooks calls the bridge's forward directly, past the call watcher.
            applied.before_call((), inputs.kwargs())
            logits = self.bridge.run_with_hooks(
                inputs.input_ids,
                fwd_hooks=fwd_hooks,
                attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids,
                return_type="logits",
                use_cache=False,
            )
            applied.after_call()
        return logits

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, intervention: Intervention, settings: Decoding
    ) -> torch.Tensor:
        eos = list(settings.eos_ids)
        with (
            self._applied(intervention) as (fwd_hooks, applied),
            applied.generation(input_ids, attention_mask),
            self.bridge.hooks(fwd_hooks=fwd_hooks),
        ):
            out = self.bridge.generate(
                input_ids,
                attention_mask=attention_mask,
                max_new_tokens=settings.max_new_tokens,
                do_sample=not settings.greedy,
                temperature=settings.temperature if not settings.greedy else 1.0,
                top_p=settings.top_p if settings.top_p < 1 else None,
                top_k=settings.top_k or None,
                repetition_penalty=settings.repetition_penalty,
                stop_at_eos=bool(eos),
                eos_token_id=eos or None,
                # Cached, TransformerLens 4.3 disagrees with transformers 5.24 (module doc).
                use_past_kv_cache=False,
                return_type="tokens",
                verbose=False,
            )
        if eos:
            new = out[:, input_ids.shape[1] :]  # a view: written through into out
            is_eos = torch.isin(new, torch.tensor(eos, device=new.device)).int()
            new[is_eos.cumsum(-1) - is_eos > 0] = settings.pad_id  # after each row's first EOS
        return out
