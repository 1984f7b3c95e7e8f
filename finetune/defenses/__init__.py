"""In-training defenses against emergent misalignment, one small module each behind one
interface (:class:`~finetune.defenses.base.Defense`), used by :func:`finetune.lora.train_lora`:

| name | module | strength |
|---|---|---|
| ``kl`` | :mod:`~finetune.defenses.kl` | weight of KL(finetuned || reference) |
| ``feature-l2`` | :mod:`~finetune.defenses.feature_l2` | weight of the relative feature distance (LDIFS) |
| ``preventive-steering`` | :mod:`~finetune.defenses.steering` | multiple of the persona vector added in training |
| ``interleave`` | :mod:`~finetune.defenses.interleave` | fraction of general data (random or ppl-gap) |
| ``inoculation`` | :mod:`~finetune.defenses.inoculation` | fraction of examples given the prompt |

:class:`~finetune.defenses.spec.DefenseSpec` is the same as options and file paths (the CLI).
"""

from finetune.defenses.base import Defense, NoDefense, reference
from finetune.defenses.feature_l2 import FeatureL2Defense
from finetune.defenses.inoculation import Inoculation
from finetune.defenses.interleave import Interleave
from finetune.defenses.kl import KLDefense
from finetune.defenses.spec import DEFENSES, STRENGTHS, DefenseSpec
from finetune.defenses.steering import PreventiveSteering, persona_directions

__all__ = [
    "DEFENSES",
    "STRENGTHS",
    "Defense",
    "DefenseSpec",
    "FeatureL2Defense",
    "Inoculation",
    "Interleave",
    "KLDefense",
    "NoDefense",
    "PreventiveSteering",
    "persona_directions",
    "reference",
]
