"""The nnsight backend: traces that read and edit the decoder layers' outputs.

The model (plain or PEFT-wrapped; LoRA stays unmerged, as the native path runs it) is wrapped
with ``nnsight.NNsight`` through a tensor-sharing copy (:func:`interp.backends.views.shared_view`),
because nnsight installs its controllers on every module it wraps and leaves them there.
The trace stops right after the deepest requested layer, as the native path does. Saved
outputs are whole hidden states, held until the trace ends, so a batch needs more memory
here than with the hooks, which pool inside each hook.

Steering assigns the edited hidden states to each edited layer's ``.output``: once in a
forward trace, and at every step of a traced ``generate`` (``tracer.all()``). That open loop
ends, by nnsight's design, when it asks for a step the generation never makes, which nnsight
reports with a warning; this backend silences that one warning and reads the generated ids in
a second, empty invoke that runs once the generation has returned.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import nnsight
import torch
from torch import nn

from interp.applied import Applied, applying
from interp.backends import ResidFn
from interp.backends.views import shared_view
from interp.base.decoding import Decoding, check_generation_config
from interp.base.models import decoder_layers
from interp.hooks import _hidden, _replace_hidden
from interp.inputs import ModelInputs
from interp.intervention import Intervention

# The start of the warning nnsight gives when an open tracer.all() loop outruns the generation.
_LOOP_END_WARNING = r".*was never reached: the loop asked for a step the run did not make"


class NNsightBackend:
    """``NNsight(model).trace(...)`` over the decoder layers' ``.output``."""

    name = "nnsight"

    def __init__(self, model: nn.Module, tokenizer=None) -> None:
        self.model = model
        self._view = view = shared_view(model)
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

    def _edit(self, applied: Applied) -> None:
        """Inside a trace: replace each edited layer's output with its edited hidden states."""
        for layer in applied.intervention.layers:  # forward order, as nnsight requires
            output = self._layers[layer].output
            self._layers[layer].output = _replace_hidden(output, applied.edit(layer, _hidden(output)))

    def logits(self, inputs: ModelInputs, intervention: Intervention) -> torch.Tensor:
        saved: list = []
        with applying(self._view, intervention) as applied, self.envoy.trace(**inputs.kwargs(), use_cache=False):
            self._edit(applied)
            saved.append(nnsight.save(self.envoy.output.logits))
        return saved[0]

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, intervention: Intervention, settings: Decoding
    ) -> torch.Tensor:
        check_generation_config(self._view)
        saved: list = []
        with applying(self._view, intervention) as applied, warnings.catch_warnings():
            # The settings ride on fn: keyword arguments to trace() would count as an input row
            # and leave no room for the invokes.
            run = functools.partial(self._view.generate, **settings.hf_kwargs())
            warnings.filterwarnings("ignore", message=_LOOP_END_WARNING, category=UserWarning)
            with self.envoy.trace(fn=run) as tracer:
                with tracer.invoke(input_ids=input_ids, attention_mask=attention_mask):
                    if intervention.layers:  # a loop that asks for nothing would never end
                        for _ in tracer.all():
                            self._edit(applied)
                with tracer.invoke():
                    saved.append(nnsight.save(tracer.result))
        return saved[0]
