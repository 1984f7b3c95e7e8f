"""The nnsight backend: a trace that saves each requested decoder layer's output.

The model (plain or PEFT-wrapped; LoRA stays unmerged, as the native path runs it) is wrapped
with ``nnsight.NNsight`` through a tensor-sharing copy (:func:`interp.backends.views.shared_view`),
because nnsight installs its controllers on every module it wraps and leaves them there.
The trace stops right after the deepest requested layer, as the native path does. Saved
outputs are whole hidden states, held until the trace ends, so a batch needs more memory
here than with the hooks, which pool inside each hook.
"""

from __future__ import annotations

from collections.abc import Sequence

import nnsight
from torch import nn

from interp.backends import ModelInputs, ResidFn
from interp.backends.views import shared_view
from interp.hooks import _hidden, decoder_layers


class NNsightBackend:
    """``NNsight(model).trace(...)`` over the decoder layers' ``.output``."""

    name = "nnsight"

    def __init__(self, model: nn.Module, tokenizer=None) -> None:
        self.model = model
        view = shared_view(model)
        path = {id(m): name for name, m in view.named_modules()}[id(decoder_layers(view))]
        self.envoy = nnsight.NNsight(view)
        self._layers = self.envoy.get(path)

    def resid_post(self, inputs: ModelInputs, layers: Sequence[int], fn: ResidFn) -> None:
        # Created before the trace and appended to inside it: a name first bound inside the
        # block can be unbound after it when the trace runs in a function (nnsight issue #550).
        saved: list = []
        with self.envoy.trace(**inputs.kwargs(), use_cache=False) as tracer:
            for layer in layers:  # forward order, as nnsight requires
                saved.append(nnsight.save(self._layers[layer].output))
            tracer.stop()
        for layer, output in zip(layers, saved):
            fn(layer, _hidden(output))
