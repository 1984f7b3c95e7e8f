"""A defense as options and file paths (what ``finetune.train --defense`` takes and records),
checked before any model is loaded, then built into a :class:`finetune.defenses.base.Defense`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from torch import Tensor, nn

from finetune.data import read_chat_jsonl
from finetune.defenses.base import ON, Defense, NoDefense
from finetune.defenses.feature_l2 import FeatureL2Defense
from finetune.defenses.inoculation import Inoculation
from finetune.defenses.interleave import SELECTS, Interleave
from finetune.defenses.kl import KLDefense
from finetune.defenses.steering import PreventiveSteering
from interp.base.cli import InputError
from interp.directions import DirectionSet

DEFENSES = ("none", "kl", "feature-l2", "preventive-steering", "interleave", "inoculation")
# What the strength means, and its default, per defense.
STRENGTHS: dict[str, tuple[str, float]] = {
    "none": ("unused", 0.0),
    "kl": ("weight of the KL term (nats per token, against the answer loss)", 1.0),
    "feature-l2": ("weight of the relative squared feature distance", 1.0),
    "preventive-steering": ("alpha: multiple of the vector added (scale raw) or its length (scale unit)", 1.0),
    "interleave": ("fraction of the training set that is general data, in [0, 1)", 0.1),
    "inoculation": ("fraction of training examples that get the prompt, in [0, 1]", 1.0),
}
# Which option belongs to which defenses (field name -> defenses), for one-line errors on misuse.
_OWNERS: dict[str, tuple[str, ...]] = {
    "on": ("kl", "feature-l2"),
    "layers": ("feature-l2", "preventive-steering"),
    "general": ("kl", "feature-l2", "interleave"),
    "select": ("interleave",),
    "misaligned_system": ("interleave",),
    "misaligned_adapter": ("interleave",),
    "vector": ("preventive-steering",),
    "persona": ("preventive-steering",),
    "scale": ("preventive-steering",),
    "prompt": ("inoculation",),
}
# The finetune.train option that sets each field, named in the errors.
FLAGS: dict[str, str] = {
    "strength": "--defense-strength",
    "on": "--defense-on",
    "layers": "--defense-layers",
    "general": "--general",
    "select": "--select",
    "misaligned_system": "--ppl-misaligned-system",
    "misaligned_adapter": "--ppl-misaligned-adapter",
    "vector": "--steer-vector",
    "persona": "--steer-persona",
    "scale": "--steer-scale",
    "prompt": "--inoculation-prompt",
}


@dataclass(frozen=True)
class DefenseSpec:
    """One defense and its options; every path is read only by :meth:`build`."""

    name: str = "none"
    strength: float | None = None  # None: the defense's default (STRENGTHS)
    on: str = "train"  # kl, feature-l2: the training batch, a general-data batch, or both
    layers: tuple[int, ...] | None = (
        None  # feature-l2: its layers (default 5 spread); preventive-steering: its one layer (default middle)
    )
    general: str | None = None  # chat JSONL of general instruct data
    select: str = "random"  # interleave: random | ppl-gap
    misaligned_system: str | None = None  # ppl-gap: the misaligned model is the reference with this system prompt ...
    misaligned_adapter: str | None = None  # ... or the reference's base with this adapter
    vector: str | None = None  # preventive-steering: a DirectionSet .safetensors (interp.extract) ...
    persona: str | None = None  # ... or a persona system prompt to make one from
    scale: str = "raw"  # preventive-steering: raw | unit (see interp.steer)
    prompt: str | None = None  # inoculation prompt
    seed: int = 0

    @property
    def resolved_strength(self) -> float:
        return STRENGTHS[self.name][1] if self.strength is None else float(self.strength)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first bad option; reads no file, loads no model."""
        if self.name not in DEFENSES:
            raise InputError(f"unknown defense {self.name!r}; expected one of {', '.join(DEFENSES)}")
        defaults = {f.name: f.default for f in fields(self)}
        for option, owners in _OWNERS.items():
            if getattr(self, option) != defaults[option] and self.name not in owners:
                raise InputError(
                    f"defense option {option!r} applies to {' and '.join(owners)}, not to {self.name!r} (drop {FLAGS[option]})"
                )
        s = self.resolved_strength
        if not 0 <= s <= 1e6:  # past 10^6 the term swamps the loss into NaN; also refuses NaN
            raise InputError(f"defense strength (--defense-strength) must be a number from 0 to 1e6, got {s}")
        if self.name == "interleave" and s >= 1:
            raise InputError(
                f"interleave strength (--defense-strength) is the interleaved fraction, in [0, 1); got {s}"
            )
        if self.name == "inoculation" and s > 1:
            raise InputError(
                f"inoculation strength (--defense-strength) is the inoculated fraction, in [0, 1]; got {s}"
            )
        if self.on not in ON:
            raise InputError(f"defense 'on' must be one of {', '.join(ON)}, got {self.on!r}")
        needs_general = self.name == "interleave" or (self.name in ("kl", "feature-l2") and self.on != "train")
        if needs_general and self.general is None:
            raise InputError(
                f"{self.name} {'' if self.name == 'interleave' else f'on {self.on} '}needs general data (--general FILE.jsonl)"
            )
        if self.name in ("kl", "feature-l2") and self.on == "train" and self.general is not None:
            raise InputError(
                f"--general {self.general}: general data is used by kl and feature-l2 only with --defense-on general or both, not --defense-on train"
            )
        if self.select not in SELECTS:
            raise InputError(f"select must be one of {', '.join(SELECTS)}, got {self.select!r}")
        n_misaligned = (self.misaligned_system is not None) + (self.misaligned_adapter is not None)
        if self.select == "ppl-gap" and n_misaligned != 1:
            raise InputError(
                "select ppl-gap needs exactly one misaligned model: a system prompt (--ppl-misaligned-system) or an adapter (--ppl-misaligned-adapter)"
            )
        if self.select == "random" and n_misaligned:
            raise InputError("a misaligned model is used only with select ppl-gap (--select ppl-gap)")
        if self.name == "preventive-steering" and (self.vector is None) == (self.persona is None):
            raise InputError(
                "preventive-steering needs exactly one of a direction file (--steer-vector) or a persona prompt (--steer-persona)"
            )
        if self.scale not in ("raw", "unit"):
            raise InputError(f"steering scale must be raw or unit, got {self.scale!r}")
        if self.name == "preventive-steering" and self.layers is not None and len(self.layers) != 1:
            raise InputError(f"preventive-steering takes one layer (--defense-layers), got {list(self.layers)}")
        if self.layers is not None and not self.layers:
            raise InputError("no defense layers given (--defense-layers)")
        if self.name == "inoculation" and not (self.prompt or "").strip():
            raise InputError(
                "inoculation needs a prompt that asks for the behaviour in the data (--inoculation-prompt)"
            )
        for option in ("general", "vector", "misaligned_adapter"):
            path = getattr(self, option)
            if path is not None and not Path(path).exists():
                raise InputError(f"{FLAGS[option]} {path}: no such file or directory")

    def check_layers(self, num_layers: int) -> None:
        """Raise :class:`InputError` when a requested layer is outside a ``num_layers``-layer model."""
        for layer in self.layers or ():
            if not -num_layers <= layer < num_layers:
                raise InputError(f"--defense-layers: layer {layer} out of range for a {num_layers}-layer model")

    def build(self, load_misaligned: Callable[[str], nn.Module] | None = None, gaps: Tensor | None = None) -> Defense:
        """The defense, with its files read; ``load_misaligned(adapter)`` loads the misaligned
        model for ppl-gap selection when it is given as an adapter; ``gaps``: ppl-gap scores of
        the general data computed earlier with the same two models (reused over many runs)."""
        self.validate()
        s = self.resolved_strength
        general = read_chat_jsonl(self.general) if self.general is not None else []
        layers = list(self.layers) if self.layers is not None else None
        if self.name == "kl":
            return KLDefense(s, on=self.on, general=general, seed=self.seed)
        if self.name == "feature-l2":
            return FeatureL2Defense(s, layers=layers, on=self.on, general=general, seed=self.seed)
        if self.name == "preventive-steering":
            directions = DirectionSet.load(self.vector) if self.vector is not None else None
            source = {"file": str(self.vector), **(directions.metadata if directions else {})} if self.vector else None
            return PreventiveSteering(
                s,
                directions=directions,
                persona_prompt=self.persona,
                layer=layers[0] if layers else None,
                scale=self.scale,
                source=source,
            )
        if self.name == "interleave":
            model = None
            if self.misaligned_adapter is not None:
                if load_misaligned is None:
                    raise InputError("ppl-gap with a misaligned adapter needs a way to load it")
                model = load_misaligned(self.misaligned_adapter)
            return Interleave(
                s,
                general,
                select=self.select,
                misaligned_system=self.misaligned_system,
                misaligned_model=model,
                misaligned_source=self.misaligned_adapter,
                gaps=gaps,
                seed=self.seed,
            )
        if self.name == "inoculation":
            return Inoculation(self.prompt, s, seed=self.seed)
        return NoDefense()
