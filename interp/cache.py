"""Teacher-forced, batched caching of residual-stream means over answer tokens.

Which positions count. A conversation is a list of chat messages whose last message is the
assistant's answer, or a :class:`~interp.base.chat.TokenizedConversation` (an answer record's
generated ids: :func:`~interp.base.chat.tokenize_record`). It is tokenized in three pieces,
exactly as generation produced it: the prompt (the chat template up to and including the
assistant header ``<|im_start|>assistant\\n``), the answer, and the template's closing tokens
(``<|im_end|>\\n``). The **span** (:data:`~interp.base.chat.SPANS`) says which tokens are
averaged: ``answer`` (default: the answer content only, neither the header nor
``<|im_end|>``), ``answer+eos`` (plus the ``<|im_end|>`` that ends it: what the model
generated) or ``header+answer+eos`` (the header, the answer and ``<|im_end|>\\n``); see
:mod:`interp.base.chat` for which published code uses which. The **last prompt token** is the
last token of the header (the newline after ``assistant``), the position from which the first
answer token is predicted, whatever the span: just before the ``answer`` and ``answer+eos``
spans, the last header token inside ``header+answer+eos``.

Three poolings are accumulated in one pass (see :data:`POOLINGS`):

- ``responses`` (default): the mean over each answer's span, then the mean over answers,
  so every judged answer weighs the same whatever its length;
- ``tokens``: the sum over the span tokens of all answers over their total count, so long
  answers weigh more;
- ``last_prompt``: the residual at the last prompt token (the span does not apply).

Sums are kept in float64 whatever the model's dtype; the per-row sums are taken from a
float32 copy of the hidden states (on a GPU, a bf16 matmul with float32 accumulation), so a
bf16 model gives float32-accurate means. Batches are right-padded and run under the causal
mask alone, which is exact for every real token (see :func:`_run_batch`); padding is masked
out of the pooling. The forward pass stops after the deepest requested layer, which skips
the rest of the network and the logits. ``compile=True`` runs the decoder layers through
``torch.compile`` (:mod:`interp.compiled`), worth its warm-up on long GPU runs.

Backends. The residual stream of each padded batch comes from a backend (see
:mod:`interp.backends`): native forward hooks (``"hooks"``, the default and the fastest), an
nnsight trace (``"nnsight"``) or a TransformerLens bridge (``"transformer_lens"``). All three
get the same token ids and position ids (and no padding mask) and hand the hidden states to the same
pooling code here, so they give the same means to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from interp.backends import DEFAULT_BACKEND, Backend, BackendName, resolve_backend
from interp.base.chat import (
    DEFAULT_SPAN,
    Conversation,
    Span,
    TokenizedConversation,
    as_tokenized,
    check_span,
)
from interp.base.models import d_model, input_device, layer_indices, n_layers
from interp.compiled import compiled_layers
from interp.inputs import pad_right, right_padded_inputs
from interp.shards import ShardStore, fingerprint

Pooling = Literal["responses", "tokens", "last_prompt"]
POOLINGS: tuple[Pooling, ...] = ("responses", "tokens", "last_prompt")
DEFAULT_POOLING: Pooling = "responses"


def describe_positions(span: Span, pooling: Pooling) -> str:
    """The token positions a mean averages over, in words (recorded in artifacts)."""
    if pooling == "last_prompt":
        return (
            "the last prompt token (the newline ending the assistant header), one per answer; the span does not apply"
        )
    what = {
        "answer": "answer content tokens",
        "answer+eos": "answer content tokens and the <|im_end|> after them",
        "header+answer+eos": "the assistant header, the answer content and <|im_end|>\\n",
    }[check_span(span)]
    return f"{what} (span '{span}'), pooled by '{pooling}' (see interp.cache)"


@dataclass
class ActivationMeans:
    """Streaming sums and counts per requested layer; :meth:`mean` turns them into means."""

    layers: list[int]
    d_model: int
    token_sum: torch.Tensor = field(default=None)  # [n_layers, d_model] float64
    response_sum: torch.Tensor = field(default=None)  # sum of per-answer means
    last_prompt_sum: torch.Tensor = field(default=None)
    n_tokens: int = 0
    n_responses: int = 0  # answers with at least one token
    n_conversations: int = 0
    span: Span = DEFAULT_SPAN  # the tokens the token and response means run over

    def __post_init__(self) -> None:
        shape = (len(self.layers), self.d_model)
        for name in ("token_sum", "response_sum", "last_prompt_sum"):
            if getattr(self, name) is None:
                setattr(self, name, torch.zeros(shape, dtype=torch.float64))

    def count(self, pooling: Pooling) -> int:
        return {"tokens": self.n_tokens, "responses": self.n_responses, "last_prompt": self.n_conversations}[pooling]

    def mean(self, pooling: Pooling = DEFAULT_POOLING) -> torch.Tensor:
        """[n_layers, d_model] float64 mean under ``pooling``."""
        total = {"tokens": self.token_sum, "responses": self.response_sum, "last_prompt": self.last_prompt_sum}[pooling]
        count = self.count(pooling)
        if count == 0:
            raise ValueError(f"no samples to average under pooling {pooling!r}")
        return total / count

    def add_(self, other: ActivationMeans) -> ActivationMeans:
        """Merge another accumulator over the same layers (e.g. another data-parallel shard)."""
        if other.layers != self.layers or other.d_model != self.d_model:
            raise ValueError("cannot merge activation means over different layers")
        if other.span != self.span:
            raise ValueError(f"cannot merge activation means over different spans ({self.span!r}, {other.span!r})")
        self.token_sum += other.token_sum
        self.response_sum += other.response_sum
        self.last_prompt_sum += other.last_prompt_sum
        self.n_tokens += other.n_tokens
        self.n_responses += other.n_responses
        self.n_conversations += other.n_conversations
        return self


@dataclass
class _Batch:
    """Pooled activations of one batch, layers in request order.

    ``response_mean`` and ``last_prompt`` (float32) stay on the model's device, so caching
    never waits on the GPU between batches; ``index`` and ``n_tokens`` are on the CPU.
    """

    index: torch.Tensor  # [B] positions in the caller's list
    n_tokens: torch.Tensor  # [B] span tokens per conversation
    response_mean: torch.Tensor  # [B, n_layers, d]; zero for an answer without tokens
    last_prompt: torch.Tensor  # [B, n_layers, d]

    def accumulate(self, acc: ActivationMeans) -> None:
        device = acc.token_sum.device
        means = self.response_mean.to(device=device, dtype=torch.float64)
        acc.token_sum += torch.einsum("bld,b->ld", means, self.n_tokens.to(device=device, dtype=torch.float64))
        acc.response_sum += means.sum(0)  # answers without tokens add zeros
        acc.last_prompt_sum += self.last_prompt.to(device=device, dtype=torch.float64).sum(0)
        acc.n_tokens += int(self.n_tokens.sum())
        acc.n_responses += int((self.n_tokens > 0).sum())
        acc.n_conversations += len(self.index)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "index": self.index,
            "n_tokens": self.n_tokens,
            "response_mean": self.response_mean.cpu(),
            "last_prompt": self.last_prompt.cpu(),
        }


def masked_sum(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``hidden`` [B, T, d] over the positions where ``mask`` [B, T] is 1: [B, d] float32."""
    if hidden.is_cuda and hidden.dtype in (torch.bfloat16, torch.float16):
        # Half inputs, float32 accumulation and output: no float32 copy of the stream.
        return torch.bmm(mask[:, None, :].to(hidden.dtype), hidden, out_dtype=torch.float32)[:, 0]
    return torch.einsum("btd,bt->bd", hidden.float(), mask.float())


@torch.no_grad()
def _run_batch(
    backend: Backend,
    items: Sequence[TokenizedConversation],
    index: Sequence[int],
    layers: list[int],
    pad_id: int,
    span: Span,
) -> _Batch:
    device = input_device(backend.model)
    ids, answer_mask, last_idx = pad_right(items, pad_id, device, span)
    n_tok = answer_mask.sum(1)
    rows = torch.arange(len(items), device=device)
    out_mean: dict[int, torch.Tensor] = {}
    out_last: dict[int, torch.Tensor] = {}

    def pool(layer: int, hidden: torch.Tensor) -> None:
        # Layers may sit on different devices under device_map="auto".
        dev = hidden.device
        sums = masked_sum(hidden, answer_mask.to(dev))
        # Results stay on the device until the batch is done: a .cpu() here would stall the
        # GPU once per layer.
        out_mean[layer] = (sums / n_tok.to(dev).clamp(min=1)[:, None]).to(device)
        out_last[layer] = hidden[rows.to(dev), last_idx.to(dev)].float().to(device)

    backend.resid_post(right_padded_inputs(ids), layers, pool)
    return _Batch(
        index=torch.tensor(list(index)),
        n_tokens=torch.tensor(
            [end - start for start, end in (it.span(span) for it in items)]
        ),  # known without asking the GPU
        response_mean=torch.stack([out_mean[l] for l in layers], 1),
        last_prompt=torch.stack([out_last[l] for l in layers], 1),
    )


def cache_means(
    model: nn.Module,
    tokenizer,
    conversations: Sequence[Conversation] | Sequence[TokenizedConversation],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    per_sample_dir: str | Path | None = None,
    sort_by_length: bool = True,
    progress: bool = True,
    desc: str = "caching",
    backend: BackendName | Backend = DEFAULT_BACKEND,
    compile: bool = False,
    span: Span = DEFAULT_SPAN,
) -> ActivationMeans:
    """Residual-stream means over answer tokens after each requested decoder layer.

    ``span`` picks the tokens averaged (``answer``, ``answer+eos``, ``header+answer+eos``; see
    the module doc); pass answer records as :func:`~interp.base.chat.tokenize_record` gives
    them, so that what the model generated is teacher-forced.

    ``layers`` are decoder-layer indices (default: all). With ``per_sample_dir``, each batch's
    per-answer means and last-prompt activations are written there as a safetensors shard as
    soon as they are computed, and a re-run over the same inputs and backend resumes from those
    shards. ``backend`` is a name from :data:`interp.backends.BACKENDS` or a backend already
    built for ``model`` with :func:`interp.backends.make_backend` (to reuse it across calls).
    ``compile=True`` (``hooks`` backend only) compiles the decoder layers for the run
    (:func:`interp.compiled.compiled_layers`): a one-off warm-up, then a faster forward.
    """
    layers = layer_indices(layers, n_layers(model))
    items = _checked_items(tokenizer, conversations, span)
    # Pre-tokenized inputs need no tokenizer; the pad id is masked out either way.
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    order = (
        sorted(range(len(items)), key=lambda i: -len(items[i].input_ids)) if sort_by_length else list(range(len(items)))
    )
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    runner = resolve_backend(backend, model, tokenizer)
    if compile and runner.name != "hooks":
        raise ValueError(f"compile=True needs the hooks backend, not {runner.name!r}")
    acc = _accumulator(model, layers, span)
    store = None
    if per_sample_dir is not None:
        store = _shard_store(per_sample_dir, model, items, layers, batch_size, runner.name, compile, span, len(batches))
    _run_batches(model, runner, items, batches, layers, pad_id, span, store, acc, compile, progress, desc)
    acc.token_sum, acc.response_sum, acc.last_prompt_sum = (
        t.cpu() for t in (acc.token_sum, acc.response_sum, acc.last_prompt_sum)
    )
    return acc


def _shard_store(
    per_sample_dir: str | Path,
    model: nn.Module,
    items: list[TokenizedConversation],
    layers: list[int],
    batch_size: int,
    backend: str,
    compile: bool,
    span: Span,
    n_batches: int,
) -> ShardStore:
    """The per-sample shards of this run's inputs and settings: a re-run of the same resumes them."""
    settings = {
        "layers": layers,
        "batch_size": batch_size,
        "model": getattr(getattr(model, "config", None), "_name_or_path", ""),
        "backend": backend,
        "compiled": compile,
        "span": span,
    }
    return ShardStore(
        per_sample_dir,
        fingerprint(items, settings),
        {**settings, "n_conversations": len(items), "n_batches": n_batches},
    )


def _run_batches(
    model: nn.Module,
    runner: Backend,
    items: list[TokenizedConversation],
    batches: list[list[int]],
    layers: list[int],
    pad_id: int,
    span: Span,
    store: ShardStore | None,
    acc: ActivationMeans,
    compile: bool,
    progress: bool,
    desc: str,
) -> None:
    """Every batch into ``acc``, in eval mode: read from ``store`` when it holds the batch, else
    run (and saved there)."""
    was_training = model.training
    model.eval()
    try:
        with compiled_layers(model) if compile else nullcontext():
            for b, idx in enumerate(tqdm(batches, desc=desc, disable=not progress, unit="batch")):
                saved = store.load(b) if store is not None else None
                batch = (
                    _Batch(**saved)
                    if saved is not None
                    else _run_batch(runner, [items[i] for i in idx], idx, layers, pad_id, span)
                )
                if store is not None and saved is None:
                    store.save(b, batch.tensors())
                batch.accumulate(acc)
    finally:
        model.train(was_training)


def _checked_items(
    tokenizer, conversations: Sequence[Conversation] | Sequence[TokenizedConversation], span: Span
) -> list[TokenizedConversation]:
    """The conversations tokenized, each checked to have ``span``: a span they lack fails
    here, not after hours of caching."""
    check_span(span)
    items = [as_tokenized(tokenizer, c) for c in conversations]
    if not items:
        raise ValueError("no conversations to cache")
    for it in items:
        it.span(span)
    return items


def _accumulator(model: nn.Module, layers: list[int], span: Span) -> ActivationMeans:
    """Empty sums for ``layers``, on the GPU in float64 when the model is on one (MPS has no
    float64: on the CPU there)."""
    width = d_model(model)
    device = input_device(model) if input_device(model).type == "cuda" else torch.device("cpu")
    sums = [torch.zeros((len(layers), width), dtype=torch.float64, device=device) for _ in range(3)]
    return ActivationMeans(
        layers=list(layers), d_model=width, token_sum=sums[0], response_sum=sums[1], last_prompt_sum=sums[2], span=span
    )
