"""KL regularisation toward the reference model (defense ``kl``).

Loss = answer loss + strength x KL(finetuned || reference), the KL divergence of the
finetuned model's next-token distribution from the reference's, averaged over the positions
where the answer loss is taken (the answer tokens and the closing end-of-turn). The reference
is the same LoRA model with its adapters disabled: one extra forward pass without gradients,
no second copy of the weights. At step 0 (LoRA B = 0) the two are the same model and the KL
is exactly 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from finetune.defenses.base import ReferenceRegularizer, reference
from finetune.functional import token_kl
from finetune.sft import labelled_logits


class KLDefense(ReferenceRegularizer):
    name = "kl"
    term_name = "kl"

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, targets = labelled_logits(model, batch)
        with reference(model):
            ref, _ = labelled_logits(model, batch)
        return F.cross_entropy(logits.float(), targets), token_kl(logits, ref)
