"""Teacher-forced, batched caching of residual-stream means over answer tokens.

Which positions count. A conversation is a list of chat messages whose last message is the
assistant's answer. It is tokenized in three pieces, exactly as generation produced it: the
prompt (the chat template up to and including the assistant header ``<|im_start|>assistant\\n``),
the answer content, and the template's closing tokens (``<|im_end|>\\n``). The **answer tokens**
are the content tokens only: neither the assistant header nor the closing ``<|im_end|>`` is
in. The **last prompt token** is the last token of the header (the newline after
``assistant``), the position from which the first answer token is predicted.

Three poolings are accumulated in one pass (see :data:`POOLINGS`):

- ``responses`` (default): the mean over each answer's tokens, then the mean over answers,
  so every judged answer weighs the same whatever its length;
- ``tokens``: the sum over all answer tokens of all answers over their total count, so long
  answers weigh more;
- ``last_prompt``: the residual at the last prompt token.

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

import hashlib
import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from interp.atomic import save_safetensors_atomic, write_text_atomic
from interp.backends import DEFAULT_BACKEND, Backend, BackendName, ModelInputs, resolve_backend
from interp.compiled import compiled_layers
from interp.hooks import decoder_layers

Pooling = Literal["responses", "tokens", "last_prompt"]
POOLINGS: tuple[Pooling, ...] = ("responses", "tokens", "last_prompt")
DEFAULT_POOLING: Pooling = "responses"

Message = dict[str, str]
Conversation = Sequence[Message]


@dataclass(frozen=True)
class TokenizedConversation:
    """Token ids of one conversation and the half-open span ``[answer_start, answer_end)``."""

    input_ids: list[int]
    answer_start: int
    answer_end: int

    @property
    def n_answer_tokens(self) -> int:
        return self.answer_end - self.answer_start


def tokenize_conversation(tokenizer, messages: Conversation) -> TokenizedConversation:
    """Tokenize prompt, answer content and template suffix separately; see the module doc."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a conversation must end with an assistant message (the answer)")
    answer = messages[-1]["content"]
    prompt_text = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently with and without the answer")
    rest = full_text[len(prompt_text):]
    at = rest.find(answer)
    if at < 0:
        raise ValueError("the chat template does not render the answer text verbatim")
    head, suffix = rest[: at], rest[at + len(answer):]

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    prompt_ids = ids(prompt_text + head)
    answer_ids = ids(answer)
    return TokenizedConversation(
        input_ids=prompt_ids + answer_ids + ids(suffix),
        answer_start=len(prompt_ids),
        answer_end=len(prompt_ids) + len(answer_ids),
    )


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
    n_tokens: torch.Tensor  # [B] answer tokens per conversation
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
        return {"index": self.index, "n_tokens": self.n_tokens, "response_mean": self.response_mean.cpu(), "last_prompt": self.last_prompt.cpu()}


def _input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def pad_right(items: Sequence[TokenizedConversation], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded token ids [B, T], answer-token mask [B, T] (float32) and last-prompt index [B]."""
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    answer = torch.zeros((len(items), width), dtype=torch.float32)
    for row, it in enumerate(items):
        ids[row, : len(it.input_ids)] = torch.tensor(it.input_ids)
        answer[row, it.answer_start : it.answer_end] = 1.0
    last_prompt = torch.tensor([max(it.answer_start - 1, 0) for it in items])
    return ids.to(device), answer.to(device), last_prompt.to(device)


def masked_sum(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``hidden`` [B, T, d] over the positions where ``mask`` [B, T] is 1: [B, d] float32."""
    if hidden.is_cuda and hidden.dtype in (torch.bfloat16, torch.float16):
        # Half inputs, float32 accumulation and output: no float32 copy of the stream.
        return torch.bmm(mask[:, None, :].to(hidden.dtype), hidden, out_dtype=torch.float32)[:, 0]
    return torch.einsum("btd,bt->bd", hidden.float(), mask.float())


def right_padded_inputs(ids: torch.Tensor) -> ModelInputs:
    """Model inputs for a right-padded batch: positions 0.. and the causal mask alone.

    A real token of a right-padded row only ever attends to real tokens before it, so the
    causal mask alone is exact there, and without a padding mask attention takes the fused
    causal kernel (no [batch, 1, seq, seq] mask, no copies of the grouped KV heads). Pad
    positions compute garbage that callers mask out.
    """
    return ModelInputs(ids, None, torch.arange(ids.shape[1], device=ids.device).expand_as(ids))


@torch.no_grad()
def _run_batch(backend: Backend, items: Sequence[TokenizedConversation], index: Sequence[int], layers: list[int], pad_id: int) -> _Batch:
    device = _input_device(backend.model)
    ids, answer_mask, last_idx = pad_right(items, pad_id, device)
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
        n_tokens=torch.tensor([it.n_answer_tokens for it in items]),  # known without asking the GPU
        response_mean=torch.stack([out_mean[l] for l in layers], 1),
        last_prompt=torch.stack([out_last[l] for l in layers], 1),
    )


def resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    """Sorted, deduplicated decoder-layer indices (negative ones count from the end; None: all)."""
    num_layers = len(decoder_layers(model))
    for l in layers or ():
        if not -num_layers <= l < num_layers:
            raise ValueError(f"layer {l} out of range for a {num_layers}-layer model")
    out = sorted({l % num_layers for l in (range(num_layers) if layers is None else layers)})
    if not out:
        raise ValueError("no layers requested")
    return out


def _fingerprint(items: Sequence[TokenizedConversation], layers: list[int], batch_size: int, model_tag: str, backend: str) -> str:
    h = hashlib.sha256(json.dumps([layers, batch_size, model_tag, backend]).encode())
    for it in items:
        h.update(json.dumps([it.input_ids, it.answer_start, it.answer_end]).encode())
    return h.hexdigest()


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
) -> ActivationMeans:
    """Residual-stream means over answer tokens after each requested decoder layer.

    ``layers`` are decoder-layer indices (default: all). With ``per_sample_dir``, each batch's
    per-answer means and last-prompt activations are written there as a safetensors shard as
    soon as they are computed, and a re-run over the same inputs and backend resumes from those
    shards. ``backend`` is a name from :data:`interp.backends.BACKENDS` or a backend already
    built for ``model`` with :func:`interp.backends.make_backend` (to reuse it across calls).
    ``compile=True`` (``hooks`` backend only) compiles the decoder layers for the run
    (:func:`interp.compiled.compiled_layers`): a one-off warm-up, then a faster forward.
    """
    layers = resolve_layers(model, layers)
    items = [c if isinstance(c, TokenizedConversation) else tokenize_conversation(tokenizer, c) for c in conversations]
    if not items:
        raise ValueError("no conversations to cache")
    # Pre-tokenized inputs need no tokenizer; the pad id is masked out either way.
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    order = sorted(range(len(items)), key=lambda i: -len(items[i].input_ids)) if sort_by_length else list(range(len(items)))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    runner = resolve_backend(backend, model, tokenizer)
    if compile and runner.name != "hooks":
        raise ValueError(f"compile=True needs the hooks backend, not {runner.name!r}")

    d_model = model.get_input_embeddings().weight.shape[1]
    # Sum on the GPU in float64 (MPS has no float64: sum on the CPU there).
    device = _input_device(model) if _input_device(model).type == "cuda" else torch.device("cpu")
    sums = [torch.zeros((len(layers), d_model), dtype=torch.float64, device=device) for _ in range(3)]
    acc = ActivationMeans(layers=list(layers), d_model=d_model, token_sum=sums[0], response_sum=sums[1], last_prompt_sum=sums[2])
    shard_dir = Path(per_sample_dir) if per_sample_dir is not None else None
    if shard_dir is not None:
        tag = f"{getattr(getattr(model, 'config', None), '_name_or_path', '')}"
        fingerprint = _fingerprint(items, layers, batch_size, tag, runner.name)
        shard_dir.mkdir(parents=True, exist_ok=True)
        manifest = shard_dir / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("fingerprint") != fingerprint:
            raise ValueError(f"{shard_dir}: per-sample shards come from other inputs or another backend; use an empty folder")
        write_text_atomic(manifest, json.dumps({"fingerprint": fingerprint, "layers": layers, "backend": runner.name, "n_conversations": len(items), "n_batches": len(batches)}, indent=1))

    was_training = model.training
    model.eval()
    try:
        with compiled_layers(model) if compile else nullcontext():
            for b, idx in enumerate(tqdm(batches, desc=desc, disable=not progress, unit="batch")):
                shard = shard_dir / f"shard_{b:06d}.safetensors" if shard_dir is not None else None
                if shard is not None and shard.exists():
                    batch = _Batch(**load_file(shard))
                else:
                    batch = _run_batch(runner, [items[i] for i in idx], idx, layers, pad_id)
                    if shard is not None:
                        save_safetensors_atomic(batch.tensors(), shard)
                batch.accumulate(acc)
    finally:
        model.train(was_training)
    acc.token_sum, acc.response_sum, acc.last_prompt_sum = (t.cpu() for t in (acc.token_sum, acc.response_sum, acc.last_prompt_sum))
    return acc


def load_per_sample(per_sample_dir: str | Path) -> dict[str, torch.Tensor]:
    """All per-sample shards of a caching run, concatenated and put back in input order."""
    shards = sorted(Path(per_sample_dir).glob("shard_*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{per_sample_dir}: no per-sample shards")
    parts = [load_file(s) for s in shards]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    order = torch.argsort(out["index"])
    return {k: v[order] for k, v in out.items()}
