"""Which tokens of each forward call an intervention edits, read from the model's public inputs.

An intervention applies to ``"all"`` tokens, to the ``"prompt"`` or to the ``"generated"``
tokens. The gate decides per row in **position space**: a token is generated when its
position (the rotary position the model gives it) is at or past its row's prompt length in
real tokens. Both come from public inputs only:

- the positions of a call are its ``position_ids`` (``generate`` passes them at every step,
  counted over the attention mask, so left padding is handled); without them, the cached
  length plus ``0, 1, ...``, which is what the model itself uses;
- each row's prompt length is set at the **entry to** ``generate`` (the attention mask's real
  tokens in the first ``prompt_length`` columns, or in all columns), or, outside ``generate``,
  by the first call of a sequence (a call with nothing cached): that whole call is prompt,
  unless ``prompt_length`` (a column count) says where in it the prompt ends.

Because the gate compares positions, it is right with and without the KV cache, with the
static cache, when assisted decoding feeds several candidate tokens and crops the cache, and
under beam search (rows expanded from the prompt's). Nothing is read back from the device:
the comparisons run where the tensors are. Where the positions cannot be told (no
``position_ids``, a cache whose length is unknown, rows that match no prompt) it raises
:class:`PositionError` rather than guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

Positions = Literal["all", "prompt", "generated"]
POSITIONS: tuple[Positions, ...] = ("all", "prompt", "generated")

# Names under which transformers has passed the KV cache to a model's forward (5.24 renamed it).
_CACHE_KWARGS = ("cache", "past_key_values")
# Names of the token input: transformers models, and TransformerLens' bridge (``input``).
_TOKEN_KWARGS = ("input_ids", "inputs_embeds", "input")


class PositionError(RuntimeError):
    """The token positions of a forward call could not be determined."""


@dataclass(frozen=True)
class CallInputs:
    """What the gate needs of one forward call of the model (or of its decoder stack)."""

    batch: int
    width: int
    device: torch.device
    position_ids: torch.Tensor | None  # [batch or 1, width]
    attention_mask: torch.Tensor | None  # [batch, cached + width], 2-D masks only
    cached: Callable[[], int]  # tokens already in the KV cache; called only when needed

    @classmethod
    def from_call(cls, args: tuple, kwargs: Mapping[str, Any]) -> CallInputs:
        """Read a call such as ``model(input_ids, attention_mask=..., position_ids=..., cache=...)``."""
        tokens = next((kwargs[k] for k in _TOKEN_KWARGS if kwargs.get(k) is not None), None)
        if tokens is None and args and isinstance(args[0], torch.Tensor):
            tokens = args[0]
        if tokens is None:
            raise PositionError("cannot find the input tokens of this forward call (no input_ids or inputs_embeds)")
        if tokens.ndim < 2:
            raise PositionError(f"expected batched input tokens [batch, seq], got shape {tuple(tokens.shape)}")
        cache = next((kwargs[k] for k in _CACHE_KWARGS if kwargs.get(k) is not None), None)
        mask = kwargs.get("attention_mask")
        position_ids = kwargs.get("position_ids")
        if position_ids is not None and position_ids.ndim != 2:
            raise PositionError(
                f"position_ids of shape {tuple(position_ids.shape)}: only [batch, seq] positions are supported"
            )
        return cls(
            batch=tokens.shape[0],
            width=tokens.shape[1],
            device=tokens.device,
            position_ids=position_ids,
            attention_mask=mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None,
            cached=lambda: _cached_length(cache),
        )

    def positions(self) -> torch.Tensor:
        """[batch or 1, width] positions of this call's tokens, as the model counts them."""
        if self.position_ids is not None:
            return self.position_ids
        if self.attention_mask is not None:
            # Counted over real tokens, as generate does; the last `width` columns are this call's.
            return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -self.width :]
        start = self.cached()
        return torch.arange(start, start + self.width, device=self.device)[None, :]


def _cached_length(cache: Any) -> int:
    if cache is None:
        return 0
    get = getattr(cache, "get_seq_length", None)
    if not callable(get):
        raise PositionError(f"cannot tell how many tokens a {type(cache).__name__} holds; pass position_ids")
    return int(get())


class PositionGate:
    """Per forward call, a [batch, width] mask of the tokens to edit (None: every token)."""

    def __init__(self, positions: Positions = "all", prompt_length: int | None = None) -> None:
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; expected one of {', '.join(POSITIONS)}")
        if prompt_length is not None and prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {prompt_length}")
        self.positions = positions
        self.prompt_length = prompt_length
        self._in_generation = False
        self._prompt: torch.Tensor | None = None  # [rows] prompt length per row, in positions
        self._mask: torch.Tensor | None = None
        self._shape: tuple[int, int] | None = None  # (batch, width) of the call the mask is for

    def begin_generation(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """A ``generate`` call starts with prompts ``tokens`` [batch, width] (left-padded)."""
        self._in_generation = True
        if self.positions == "all":
            return
        width = tokens.shape[1]
        cut = width if self.prompt_length is None else self.prompt_length
        if cut > width:
            raise PositionError(f"prompt_length {cut} is longer than the prompts given to generate ({width} columns)")
        if attention_mask is None:
            self._prompt = torch.full((tokens.shape[0],), cut, device=tokens.device)
        else:
            self._prompt = attention_mask[:, :cut].long().sum(-1)

    def end_generation(self) -> None:
        self._in_generation = False

    def observe(self, call: CallInputs) -> None:
        """Work out the mask for the call about to run."""
        self._shape = (call.batch, call.width)
        if self.positions == "all":
            self._mask = None
            return
        new_sequence = not self._in_generation and call.cached() == 0
        if new_sequence:
            cut = call.width if self.prompt_length is None else self.prompt_length
            if not 0 <= cut <= call.width:
                raise PositionError(f"prompt_length {cut} is longer than the forward call's {call.width} columns")
            positions = call.positions()
            # The prompt ends where column `cut` begins; a row's prompt length is in positions.
            self._prompt = (
                positions[:, cut - 1] + 1
                if cut > 0
                else torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
            )
        if self._prompt is None:
            raise PositionError(
                f"positions={self.positions!r}: this call continues a cached sequence whose prompt was not "
                "seen inside the intervention; run the prompt (or generate) inside it"
            )
        prompt = self._rows(self._prompt, call.batch)
        positions = call.positions()
        generated = positions.to(prompt.device) >= prompt[:, None]
        self._mask = generated if self.positions == "generated" else ~generated

    def _rows(self, prompt: torch.Tensor, batch: int) -> torch.Tensor:
        if prompt.shape[0] == batch:
            return prompt
        if prompt.shape[0] > 0 and batch % prompt.shape[0] == 0:
            # generate expands each prompt row in place for beams and num_return_sequences.
            return prompt.repeat_interleave(batch // prompt.shape[0])
        raise PositionError(f"a forward call of {batch} rows does not match the {prompt.shape[0]} prompt rows seen")

    def mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """[batch, width, 1] bool for ``hidden`` [batch, width, d] (None: edit everything)."""
        if self.positions == "all":
            return None
        if self._shape is None:
            raise PositionError("an edited layer ran before the model's forward call was seen; cannot place its tokens")
        if (hidden.shape[0], hidden.shape[1]) != self._shape:
            raise PositionError(
                f"hidden states of shape {tuple(hidden.shape[:2])} do not match the forward call seen "
                f"({self._shape[0]} rows x {self._shape[1]} tokens)"
            )
        return self._mask.to(hidden.device)[..., None]
