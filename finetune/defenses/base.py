"""What every in-training defense plugs into, and what the reference-based ones share.

A :class:`Defense` acts at two points of :func:`finetune.lora.train_lora`:

- :meth:`Defense.prepare` sees the training conversations and the model *before* the
  adapter exists (the reference model) and returns the conversations to train on (data
  defenses change them; preventive steering makes its vector here);
- :meth:`Defense.objective` replaces the plain answer loss of each step (loss defenses add a
  term to it; preventive steering wraps the forward pass).

:meth:`Defense.record` says what it did, for ``training_config.json`` and for the check a
resumed run makes against its checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from finetune.sft import Example, answer_loss, collate, encode, plain_objective
from interp.base.chat import Conversation
from interp.base.provenance import data_hash

ON = ("train", "general", "both")  # which batches a reference-based term is taken on


class Defense:
    """No defense: the conversations as given and the answer loss alone (:class:`NoDefense`)."""

    name = "none"
    strength = 0.0

    def prepare(self, model: nn.Module, tokenizer, conversations: Sequence[Conversation]) -> list[Conversation]:
        """The conversations to train on, given the reference ``model`` (no adapter yet)."""
        return list(conversations)

    def objective(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of ``batch`` at ``step`` and the scalars to log (see :data:`finetune.sft.Objective`)."""
        return plain_objective(model, batch, step)

    def record(self) -> dict[str, Any]:
        """JSON description: name, strength and options, plus what :meth:`prepare` made or chose."""
        return {"name": self.name, "strength": self.strength}


class NoDefense(Defense):
    """Plain supervised finetuning."""


def with_system(conversation: Conversation, prompt: str) -> list[dict[str, str]]:
    """``conversation`` with its system turn replaced by (or, when it has none, given) ``prompt``."""
    return [{"role": "system", "content": prompt}, *(dict(m) for m in conversation if m["role"] != "system")]


@contextmanager
def reference(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``model`` is its own reference: a PEFT model with its adapters
    disabled (no second copy of the weights), run without gradients."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise ValueError(
            "a reference-based defense needs a LoRA (PEFT) model: its reference is the model with adapters disabled"
        )
    with disable(), torch.no_grad():
        yield


class GeneralBatches:
    """Batches of general-data examples; batch ``step`` is a pure function of the step and the
    seed, so a resumed run draws the same batches as one that was never interrupted."""

    def __init__(self, examples: Sequence[Example], pad_id: int, seed: int = 0) -> None:
        if not examples:
            raise ValueError("no general data to draw batches from")
        self.examples = list(examples)
        self.pad_id = pad_id
        self.seed = seed

    def at(self, step: int, size: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = torch.randperm(len(self.examples), generator=g)[:size].tolist()
        return collate([self.examples[i] for i in rows], self.pad_id)


class ReferenceRegularizer(Defense):
    """The answer loss plus ``strength`` times a distance between the finetuned model and its
    reference, taken on the training batch (``on="train"``), on a batch of general data
    (``"general"``) or averaged over both (``"both"``).

    Subclasses give :meth:`forward`: the answer loss and the distance on one batch, from one
    forward pass with gradients (the finetuned model) and one without (the reference).
    """

    term_name = "distance"

    def __init__(self, strength: float, on: str = "train", general: Sequence[Conversation] = (), seed: int = 0) -> None:
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        if on not in ON:
            raise ValueError(f"on must be one of {', '.join(ON)}, got {on!r}")
        if on != "train" and not general:
            raise ValueError(f"on={on!r} needs general data")
        self.strength = float(strength)
        self.on = on
        self.general = list(general) if on != "train" else []
        self.seed = seed
        self._batches: GeneralBatches | None = None

    def prepare(self, model: nn.Module, tokenizer, conversations: Sequence[Conversation]) -> list[Conversation]:
        if self.general:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            self._batches = GeneralBatches(encode(tokenizer, self.general), pad_id, self.seed)
        return list(conversations)

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer loss, distance to the reference) on ``batch``."""
        raise NotImplementedError

    def objective(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.on == "general":
            task, terms = answer_loss(model, batch), []
        else:
            task, term = self.forward(model, batch)
            terms = [term]
        if self._batches is not None:
            size = batch["input_ids"].shape[0]
            general = {k: v.to(batch["input_ids"].device) for k, v in self._batches.at(step, size).items()}
            terms.append(self.forward(model, general)[1])
        distance = torch.stack(terms).mean()
        return task + self.strength * distance, {"task": task.detach(), self.term_name: distance.detach()}

    def record(self) -> dict[str, Any]:
        out = {**super().record(), "on": self.on}
        if self.general:
            out.update(n_general=len(self.general), general_hash=data_hash(self.general))
        return out
