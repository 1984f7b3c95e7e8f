"""The static buffers of one (rows, columns) shape of the engine, and what one compiled step
is specialised on (:class:`Variant`): every captured CUDA graph reads these buffers, so they
never move; a bucket's prompts, edits and sampling keys are written into them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp.engine.body import Body
from interp.engine.edits import NO_EDITS, EditPlan, Kind
from interp.engine.sampler import SamplerSpec, token_codes

WIDTH_STEP = 16  # prompts are padded to a multiple of this many columns
COLUMN_STEP = 64  # cache lengths are rounded up to a multiple of this


def round_up(n: int, step: int) -> int:
    return -(-n // step) * step


@dataclass
class Slots:
    """The static buffers of one (rows, columns) shape; every captured graph reads these."""

    tokens: torch.Tensor  # [B, 1] the token each row feeds next
    positions: torch.Tensor  # [B, 1] its position
    column: torch.Tensor  # [1] the cache column it is written to
    step: torch.Tensor  # [1] how many tokens have been generated
    valid: torch.Tensor  # [B, columns] cache columns each row attends to
    lo: torch.Tensor  # [B] edit bounds in position space
    hi: torch.Tensor
    keys: torch.Tensor  # [B] sampling keys
    codes: torch.Tensor  # [vocab] per-token sampling codes (an input, so no constant is folded into indexing)
    finished: torch.Tensor  # [B]
    out: torch.Tensor  # [B, columns] generated tokens
    cache: list[tuple[torch.Tensor, torch.Tensor]]
    vectors: dict[Kind, list[torch.Tensor]] = field(default_factory=dict)
    seen: torch.Tensor | None = None  # [B, vocab] tokens a row has seen (repetition penalty)
    graphs: dict[tuple[Variant, int], torch.cuda.CUDAGraph] = field(default_factory=dict)  # by (variant, span)
    stops: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)  # EOS ids as the graphs read them
    plan: EditPlan = NO_EDITS  # the edits loaded into ``vectors``, ``lo`` and ``hi``

    @classmethod
    def allocate(cls, body: Body, rows: int, columns: int) -> Slots:
        device = body.weight.device

        def zeros(*shape, dtype=torch.long):
            return torch.zeros(*shape, dtype=dtype, device=device)

        return cls(
            tokens=zeros(rows, 1),
            positions=zeros(rows, 1),
            column=zeros(1),
            step=zeros(1),
            valid=zeros(rows, columns, dtype=torch.bool),
            lo=zeros(rows),
            hi=zeros(rows),
            keys=zeros(rows),
            codes=token_codes(body.weight.shape[0], device),
            finished=zeros(rows, dtype=torch.bool),
            out=zeros(rows, columns),
            cache=body.kv_cache(rows, columns),
        )

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    def span(self, needed: int, spans: int) -> int:
        """The attention length of a step that must see cache columns ``0..needed-1``: ``needed``
        rounded up to a multiple of 1/``spans`` of the cache (and of :data:`WIDTH_STEP`)."""
        columns = self.valid.shape[1]
        return min(columns, round_up(needed, round_up(-(-columns // spans), WIDTH_STEP)))


@dataclass(frozen=True)
class Variant:
    """What one compiled step does (static): the edit kind, the sampler, the stop tokens."""

    kind: Kind
    sampler: SamplerSpec
    eos: tuple[int, ...]
    pad: int
