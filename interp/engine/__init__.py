"""Generation at the speed of the hardware: a static KV cache, a compiled decoding step
replayed as a CUDA graph, bucketed batches, and steering inside the compiled step.

:func:`engine_for` gives the :class:`~interp.engine.runner.Engine` of a model (built once,
kept while the model lives). Most code never calls it: :func:`interp.generation.generate`
(behind ``eval.generate``, ``steered_generate``, the sweeps and the cross-domain experiment)
uses the engine where it can run and transformers' ``generate`` elsewhere.

- ``runner``: the engine (buckets, prefill, the step, CUDA graphs, checks).
- ``slots``: the static buffers of one (rows, columns) shape, and what a compiled step is specialised on.
- ``step``: the functions a step runs, compiled or eagerly (inputs, layer, next-token tail).
- ``body``: the decoder forward pass on a static cache, from the model's own modules.
- ``edits``: an :class:`~interp.intervention.Intervention` as per-layer vectors and position bounds.
- ``sampler``: greedy and sampled choice of the next token, reproducible per row.
"""

from __future__ import annotations

import weakref

from torch import nn

from interp.engine.body import EngineUnsupported
from interp.engine.edits import EditPlan, EditsUnsupported, plan
from interp.engine.runner import Engine
from interp.engine.sampler import row_keys

__all__ = ["Engine", "EditPlan", "EditsUnsupported", "EngineUnsupported", "engine_for", "plan", "row_keys"]

_ENGINES: weakref.WeakKeyDictionary[nn.Module, Engine] = weakref.WeakKeyDictionary()


def engine_for(model: nn.Module, **options) -> Engine:
    """The engine of ``model``, built on first use; ``options`` (``compile``, ``cuda_graphs``,
    ``max_batch``, ``spans``, ``fused_attention``, see :class:`Engine`) rebuild it when given. Raises :class:`EngineUnsupported`
    for a model the engine cannot run."""
    engine = _ENGINES.get(model)
    if engine is None or options:
        engine = _ENGINES[model] = Engine(model, **options)
    return engine
