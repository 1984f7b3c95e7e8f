"""Each training step's finiteness and logged values, read back one step late.

Reading a number off the GPU makes the host wait for every kernel queued before it, so a
check right after each step leaves the GPU idle while the host queues the next one (the
toolkit's loop ran at 0.87x a plain PEFT loop with four such reads a step, on the real 1.5B).
Here each step's values go to pinned host memory asynchronously and are read when the next
step has been queued. What keeps NaN out of the weights is not the read but the fused
optimizer's ``found_inf`` flag (:func:`skip_if_not_finite`): a step whose loss or gradient is
not finite changes neither the weights nor the optimizer state, on the device, without a wait.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.checkpoints import TrainLog, _last_kept
from interp.base.cli import InputError


class NonFiniteError(InputError):
    """Training met a non-finite loss, gradient or weight: stopped before that step's update."""


def check_finite_weights(named: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise :class:`NonFiniteError` naming the first tensor of ``named`` with a NaN or infinity."""
    flags = _norms(named).isfinite().cpu()
    if not bool(flags.all()):
        name = list(named)[int((~flags).nonzero()[0])]
        raise NonFiniteError(f"{where}: weight {name} is not finite (--lr, --alpha or --defense-strength too large?)")


def _norms(named: Mapping[str, torch.Tensor]) -> torch.Tensor:
    # One fused norm kernel over every tensor (a NaN or infinity makes its norm non-finite).
    return torch.stack(torch._foreach_norm([t.detach() for t in named.values()]))


def skip_if_not_finite(opt: torch.optim.Optimizer, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """Set the fused optimizer's ``found_inf`` so that its next step is skipped on the device
    when ``loss`` or ``grad_norm`` is not finite; returns the finiteness flag."""
    finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
    opt.found_inf = (~finite).to(torch.float32)
    return finite


@dataclass
class _Pending:
    step: int
    names: list[str]
    values: torch.Tensor  # host: loss, grad norm, step finite, weights finite, then the logged parts
    event: torch.cuda.Event | None


class StepChecks:
    """The steps queued on the device whose values the host has not read yet."""

    def __init__(self, named: Mapping[str, torch.Tensor], folder: Path | None) -> None:
        self.named = named
        self.folder = folder
        self.pending: deque[_Pending] = deque()

    def push(
        self,
        step: int,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
        finite: torch.Tensor,
        parts: Mapping[str, torch.Tensor],
    ) -> None:
        """Queue step ``step``'s values (after its optimizer step) for reading."""
        values = torch.stack(
            [loss.detach().float(), grad_norm.float(), finite.float(), _norms(self.named).isfinite().all().float()]
            + [torch.as_tensor(v, device=loss.device).detach().float() for v in parts.values()]
        )
        cuda = values.is_cuda
        host = torch.empty(values.shape, dtype=torch.float32, pin_memory=cuda)
        host.copy_(values, non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        self.pending.append(_Pending(step, list(parts), host, event))

    def settle(self, log: TrainLog, keep: int = 0) -> None:
        """Read all but the newest ``keep`` queued steps into ``log``; raise :class:`NonFiniteError`
        at the first step whose loss, gradient or weights were not finite."""
        while len(self.pending) > keep:
            item = self.pending.popleft()
            if item.event is not None:
                item.event.synchronize()
            loss, grad_norm, finite, weights = item.values[:4].tolist()
            if not finite:
                self.pending.clear()
                what = f"loss {loss:.4g}" if not math.isfinite(loss) else f"gradient norm {grad_norm:.4g}"
                raise NonFiniteError(
                    f"training stopped at step {item.step}: non-finite {what}; nothing was written for this step (--lr, --alpha or --defense-strength too large, or --max-length too short to keep an answer token?){_last_kept(self.folder)}"
                )
            if not weights:
                self.pending.clear()
                # The steps after it were skipped on the device, so the weights are still those of this step.
                check_finite_weights(self.named, f"training stopped after step {item.step}")
            log.add(dict(zip(item.names, item.values[4:].tolist(), strict=True)))
