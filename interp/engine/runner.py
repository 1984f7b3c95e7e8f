"""The engine: bucketed batches, a compiled decoding step on a static cache, CUDA graphs.

One :class:`Engine` serves one model. :meth:`Engine.generate` takes left-padded prompts the
way transformers' ``generate`` does and returns the same thing, the generated tokens with
padding after each row's EOS, decoded by a :class:`~interp.base.decoding.Decoding` with an
:class:`~interp.engine.edits.EditPlan` applied inside every forward pass.

How it is fast:

- **Buckets.** Rows are sorted by prompt length and cut into batches of at most
  ``max_batch``; each batch is left-padded to a multiple of 16 columns and its row count
  rounded up to a power of two (spare rows are born finished), so a few shapes serve a run.
- **Static cache, compiled step.** Keys and values live in per-shape tensors that never
  move; the decoder layer, the sampler and the bookkeeping are compiled with
  ``torch.compile`` (one compiled layer serves every layer: its weights are inputs).
- **CUDA graphs.** On a GPU the whole decoding step (embedding, every layer with its edit,
  the LM head, the sampler, the position counters) is captured once per shape and replayed:
  one launch per token, no host synchronisation except an "all rows done?" check every
  few steps.
- **Attention reads only the columns written so far**, rounded up to one of at most
  ``spans`` lengths per shape (a step is compiled and captured for each): a step never
  reads the keys and values of tokens not yet generated, which for long answers is most of
  the cache.

Edits are data (per-layer vectors, per-row position bounds) written into the step's static
buffers before each batch, so changing layers, alphas or positions never recompiles or
recaptures, and a compiled step can never skip an edit the way it skips a hook.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._triton import has_triton

from interp.base.decoding import Decoding
from interp.base.models import unwrap
from interp.engine.body import Body, EngineUnsupported
from interp.engine.edits import NO_EDITS, EditPlan, Kind, gate_prompt_lengths
from interp.engine.sampler import SamplerSpec
from interp.engine.slots import COLUMN_STEP, WIDTH_STEP, Slots, Variant, round_up
from interp.engine.step import StepCode

CHECK_EVERY = 8  # decoding steps between checks whether every row has finished
MAX_SHAPES = 4  # (rows, columns) shapes whose caches and graphs are kept
# Relative logit error allowed by the self-check. A misread model is off by order 1; in half
# precision the step's own rounding (attention scores in bf16) already gave 0.039 on a
# random-weight 7B model, whose 28 layers amplify every rounding difference.
_LOGIT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 0.1, torch.bfloat16: 0.1}


class Engine:
    """Fast generation for one model (see the module doc); build with :func:`interp.engine.engine_for`.

    ``compile`` is a ``torch.compile`` backend (a name or a callable), None to run the same step uncompiled, or
    ``"auto"``: inductor on a CUDA device with Triton, uncompiled elsewhere; ``compile_options``
    go to ``torch.compile`` for the decoding step (e.g. ``{"max_autotune_gemm": True}``). CUDA
    graphs are used on CUDA devices unless ``cuda_graphs=False``. ``spans`` is how many
    attention lengths a shape's decoding step is compiled and captured for (1: the whole
    cache always; more: less reading of unwritten columns, more warm-up per shape).
    ``fused_attention``: decoding attention by the fused Triton kernel where it runs (None),
    always (True) or never (False: two matmuls, :mod:`interp.engine.attention`).
    """

    def __init__(
        self,
        model: nn.Module,
        compile: str | Callable | None = "auto",
        cuda_graphs: bool | None = None,
        max_batch: int = 256,
        compile_options: dict | None = None,
        spans: int = 8,
        fused_attention: bool | None = None,
    ) -> None:
        if spans < 1:
            raise ValueError(f"spans must be at least 1, not {spans}")
        self._model = weakref.ref(model)  # the engine lives as long as its model, not longer
        self.fused_attention = fused_attention
        self.body = Body.of(model, fused_attention)
        self.device = self.body.weight.device
        if compile == "auto":
            compile = "inductor" if self.device.type == "cuda" and has_triton() else None
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise EngineUnsupported("CUDA graphs need a CUDA device")
        self.max_batch, self.spans = max_batch, spans
        self.code = StepCode.build(compile, compile_options)
        self._slots: dict[tuple[int, int], Slots] = {}
        self._pool = None
        self._state = _fingerprint(model)
        self._verify()

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the engine's model is gone")
        return model

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoding: Decoding,
        keys: torch.Tensor,
        edits: EditPlan = NO_EDITS,
    ) -> torch.Tensor:
        """Generated tokens [batch, new] of left-padded prompts, padded after each row's EOS (what
        transformers returns after the prompt columns); ``keys`` [batch] are the rows' sampling
        keys (:func:`interp.engine.sampler.row_keys`)."""
        if attention_mask[:, -1].eq(0).any():
            raise ValueError("generation needs left-padded prompts: some row ends with padding")
        if not self._refresh():  # a rebuilt body has just copied the weights
            self.body.sync()
        variant = Variant(edits.kind, SamplerSpec.of(decoding), decoding.eos_ids, decoding.pad_id)
        gate_lengths = gate_prompt_lengths(edits, attention_mask.cpu())
        prompts = [row[m].tolist() for row, m in zip(input_ids.cpu(), attention_mask.bool().cpu())]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: dict[int, list[int]] = {}
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            rows = self._run(
                [prompts[i] for i in chunk], gate_lengths[chunk], keys.cpu()[chunk], decoding, variant, edits
            )
            results.update(zip(chunk, rows))
        out = torch.full((len(prompts), max(len(r) for r in results.values())), decoding.pad_id, dtype=torch.long)
        for i, row in results.items():
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(input_ids.device)

    # -- one bucket ---------------------------------------------------------------------------

    def _run(
        self,
        prompts: list[list[int]],
        gate_lengths: torch.Tensor,
        keys: torch.Tensor,
        decoding: Decoding,
        variant: Variant,
        edits: EditPlan,
    ) -> list[list[int]]:
        """Generate for at most ``max_batch`` prompts: each row's tokens up to and including its EOS."""
        n = len(prompts)
        width = round_up(max(len(p) for p in prompts), WIDTH_STEP)
        s = self._slots_for(
            min(1 << (n - 1).bit_length(), max(self.max_batch, n)),
            round_up(width + decoding.max_new_tokens, COLUMN_STEP),
        )
        self._load(s, variant, edits)
        if variant.eos not in s.stops:  # kept: a captured graph reads this very tensor
            s.stops[variant.eos] = torch.tensor(variant.eos or (-1,), device=self.device)
        eos = s.stops[variant.eos]
        # The step that feeds generated token t writes cache column width + t - 1 and reads up to it.
        spans = [s.span(width + t, self.spans) for t in range(1, decoding.max_new_tokens)]
        graphs = {span: self._graph(s, variant, eos, span) for span in sorted(set(spans))} if self.cuda_graphs else {}
        ids, positions = self._fill(s, prompts, gate_lengths, keys, width)
        self._prefill(s, variant, ids, positions, eos, self.code)
        steps = 1
        while steps < decoding.max_new_tokens:
            span = spans[steps - 1]
            if graphs:
                graphs[span].replay()
            else:
                self._decode(s, variant, eos, self.code, span)
            steps += 1
            if variant.eos and steps % CHECK_EVERY == 0 and bool(s.finished[:n].all()):
                break
        out = s.out[:n, :steps].tolist()
        return [row[: next((i + 1 for i, t in enumerate(row) if t in variant.eos), steps)] for row in out]

    def _fill(
        self, s: Slots, prompts: list[list[int]], gate_lengths: torch.Tensor, keys: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a bucket's prompts into the static buffers; returns the prefill's ids and positions.

        Spare rows (the bucket has more rows than prompts) get one real token and start finished."""
        n, rows = len(prompts), s.rows
        ids = torch.zeros(rows, width, dtype=torch.long)
        valid = torch.zeros(s.valid.shape, dtype=torch.bool)
        valid[:, width:] = True
        valid[n:, width - 1] = True
        lengths = torch.ones(rows, dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p)
            valid[r, width - len(p) : width] = True
            lengths[r] = len(p)
        gates = torch.ones(rows, dtype=torch.long)
        gates[:n] = gate_lengths
        lo, hi = s.plan.bounds(gates)
        padded_keys = torch.zeros(rows, dtype=torch.long)
        padded_keys[:n] = keys
        for buf, value in (
            (s.valid, valid),
            (s.lo, lo),
            (s.hi, hi),
            (s.keys, padded_keys),
            (s.finished, torch.arange(rows) >= n),
            (s.positions, lengths[:, None]),
        ):
            buf.copy_(value)
        s.column.fill_(width)
        s.step.zero_()
        ids = ids.to(self.device)
        if s.seen is not None:
            s.seen.zero_()
            r, c = valid[:, :width].nonzero(as_tuple=True)
            s.seen[r.to(self.device), ids[r, c].to(self.device)] = True
        return ids, (valid[:, :width].long().cumsum(-1) - 1).clamp(min=0).to(self.device)

    def _load(self, s: Slots, variant: Variant, edits: EditPlan) -> None:
        """The plan's vectors into their static buffers (allocated per kind on first use)."""
        s.plan = edits
        if variant.kind != "none":
            d, dtype = self.body.weight.shape[1], self.body.weight.dtype
            vectors = edits.layer_vectors(len(self.body.layers), d, dtype, self.device)
            if variant.kind in s.vectors:
                for buf, v in zip(s.vectors[variant.kind], vectors):
                    buf.copy_(v)
            else:
                s.vectors[variant.kind] = vectors
        if variant.sampler.tracks_seen and s.seen is None:
            s.seen = torch.zeros(s.rows, self.body.weight.shape[0], dtype=torch.bool, device=self.device)

    # -- the forward passes -----------------------------------------------------------------

    def _vectors(self, s: Slots, kind: Kind) -> list[torch.Tensor]:
        # Without edits the layer ignores its vector; any tensor will do.
        return s.vectors[kind] if kind != "none" else [s.lo] * len(self.body.layers)

    def _prefill(
        self, s: Slots, variant: Variant, ids: torch.Tensor, positions: torch.Tensor, eos: torch.Tensor, code: StepCode
    ) -> torch.Tensor | None:
        """The prompts through every layer into the cache, then the first token; returns its
        logits where ``code`` keeps them (eager)."""
        width = ids.shape[1]
        x = self.body.embed(ids)
        cos, sin = self.body.rotary(x, positions)
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        mask = (causal & s.valid[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=self.device)
        gate = (positions >= s.lo[:, None]) & (positions < s.hi[:, None])
        for layer, weights, cache, vector in zip(
            self.body.layers, self.body.layer_weights, s.cache, self._vectors(s, variant.kind)
        ):
            x = code.prefill_layer(
                layer, weights, x, cos, sin, cache, mask[:, None], gate, vector, variant.kind, self.body.shape
            )
        return code.tail(variant)(self.body.norm, self.body.head, x[:, -1], s, eos)

    def _decode(self, s: Slots, variant: Variant, eos: torch.Tensor, code: StepCode, span: int) -> torch.Tensor | None:
        """One decoding step from the static buffers alone (what a CUDA graph captures), attending
        to the first ``span`` cache columns (which must hold the one it writes); returns its
        logits where ``code`` keeps them (eager)."""
        x, cos, sin, bias, gate = code.decode_inputs(self.body.embed, self.body.rotary, s, span)
        for layer, weights, cache, vector in zip(
            self.body.layers, self.body.layer_weights, s.cache, self._vectors(s, variant.kind)
        ):
            x = code.decode_layer(
                layer, weights, x, cos, sin, cache, s.column, bias, gate, vector, variant.kind, self.body.shape
            )
        logits = code.tail(variant)(self.body.norm, self.body.head, x[:, -1], s, eos)
        s.positions += 1
        s.column += 1
        return logits

    def _graph(self, s: Slots, variant: Variant, eos: torch.Tensor, span: int) -> torch.cuda.CUDAGraph:
        """The decoding step of ``variant`` attending to ``span`` columns, captured on shape ``s``
        once; :meth:`_fill` resets every buffer the warm-up steps moved."""
        if (variant, span) not in s.graphs:
            # Warm-up steps run for real: start them at column 0 (a used shape's counters point
            # at its last column, past which a step would write) and with every column visible
            # (a fully masked row would compute NaNs).
            for counter in (s.tokens, s.positions, s.column, s.step):
                counter.zero_()
            s.valid.fill_(True)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # compile and warm up outside the capture
                    self._decode(s, variant, eos, self.code, span)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._pool = self._pool or torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self._decode(s, variant, eos, self.code, span)
            s.graphs[variant, span] = graph
        return s.graphs[variant, span]

    # -- shapes, staleness, checks ----------------------------------------------------------

    def _slots_for(self, rows: int, columns: int) -> Slots:
        """The buffers (and graphs) of a shape; the least recently used shape beyond
        :data:`MAX_SHAPES` is dropped, so a long run over many shapes does not pile up caches."""
        key = (rows, columns)
        s = self._slots.pop(key, None) or Slots.allocate(self.body, rows, columns)
        self._slots[key] = s  # most recently used last
        while len(self._slots) > MAX_SHAPES:
            del self._slots[next(iter(self._slots))]
        return s

    def _refresh(self) -> bool:
        """Drop captured graphs and buffers when the model changed under them (weights moved,
        adapters switched, merged or disabled): a graph replays the pointers it captured.
        Returns whether it rebuilt the engine's view of the model."""
        state = _fingerprint(self.model)
        if state == self._state:
            return False
        self.body = Body.of(self.model, self.fused_attention)
        self._slots.clear()
        self._state = state
        self._verify()
        return True

    @torch.no_grad()
    def _verify(self) -> None:
        """The engine's logits equal the model's own forward pass (prefill and one decoding step,
        eager, left padding): a model the engine misreads is refused, never decoded wrongly."""
        vocab = self.body.weight.shape[0]
        s = Slots.allocate(self.body, 2, COLUMN_STEP)
        variant = Variant("none", SamplerSpec(True, 0.0, 0, 1.0, 1.0), (), 0)
        self._load(s, variant, NO_EDITS)
        eos = torch.tensor([-1], device=self.device)
        zeros = torch.zeros(2, dtype=torch.long)
        ids, positions = self._fill(
            s, [[3 % vocab, 5 % vocab, 7 % vocab], [11 % vocab, 13 % vocab]], zeros, zeros, WIDTH_STEP
        )
        eager = StepCode.build(None)
        got = [self._prefill(s, variant, ids, positions, eos, eager)]
        full = torch.cat([ids, s.tokens], 1)
        got.append(self._decode(s, variant, eos, eager, s.span(ids.shape[1] + 1, self.spans)))
        mask = torch.cat([s.valid[:, : ids.shape[1]], torch.ones_like(s.tokens, dtype=torch.bool)], 1).long()
        want = self.model(
            input_ids=full, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        ).logits.float()
        refs = [want[:, ids.shape[1] - 1 + k] for k in range(len(got))]
        self.verify_errors = [float((logits - ref).norm() / ref.norm()) for logits, ref in zip(got, refs)]
        if not all(
            math.isfinite(e) and e <= _LOGIT_TOLERANCE.get(self.body.weight.dtype, 5e-2) for e in self.verify_errors
        ):
            raise EngineUnsupported(
                f"the engine's logits differ from the model's own (relative errors {self.verify_errors}); this model is not supported"
            )


def _fingerprint(model: nn.Module) -> tuple:
    """What a captured step depends on: where every weight lives, and the adapters' switches and scales."""
    weights = tuple((p.data_ptr(), p.dtype, p.device) for p in model.parameters())
    switches = tuple(
        (
            getattr(m, "disable_adapters", None),
            tuple(getattr(m, "active_adapters", None) or ()),
            tuple(getattr(m, "merged_adapters", None) or ()),
            tuple(sorted((getattr(m, "scaling", None) or {}).items())),
        )
        for m in unwrap(model).modules()
        if hasattr(m, "merged_adapters")
    )
    return weights, switches, model.training
