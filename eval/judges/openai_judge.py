"""A judge behind any OpenAI-compatible chat-completions API, through the official client.

The key and endpoint come from the environment only (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``)
and never reach a log, an error message or a file. Calls run on a thread pool
(``concurrency``) and are retried with exponential backoff on 408/409/429/5xx, timeouts and
connection errors (:mod:`eval.openai_api`, shared with generation through a server), and
their replies are cached on disk (:mod:`eval.judges.cache`), so a re-run costs nothing.
Token use and cost are counted per run (:class:`Usage`).

For large runs the Batch API is an option (``batch=True``): the uncached calls are written to
batch input JSONL files, uploaded and submitted; the batch ids are saved to a state file
before polling, so an interrupted run resumes by polling the same batches. Replies land in
the same cache; calls a batch failed are then made online.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from eval.judges.base import (
    MIN_NUMBER_MASS,
    MetricScore,
    PromptJudge,
    score_tags,
    score_top_logprobs,
)
from eval.judges.cache import JudgeCache, cache_key, default_cache_path
from eval.openai_api import APIError, ChatAPI, redact
from interp.base.atomic import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

# USD per million tokens (input, output), list prices of 2025: check your provider's page.
# The Batch API bills half of these. Longest matching prefix wins (dated snapshots match).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}
BATCH_DISCOUNT = 0.5
BATCH_MAX_REQUESTS = 50_000  # the Batch API's limit per input file
TOP_LOGPROBS = 20
_TERMINAL = {"completed", "failed", "expired", "cancelled"}


class JudgeError(APIError):
    """A judge call that failed for good (after retries, or at once on e.g. a bad key)."""


def prices_for(model: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for ``model`` from :data:`DEFAULT_PRICES`, if listed."""
    names = [n for n in DEFAULT_PRICES if model == n or model.startswith(n + "-")]
    return DEFAULT_PRICES[max(names, key=len)] if names else None


@dataclass
class Usage:
    """Calls and tokens of one judge; cost from per-million-token prices when known."""

    prices: tuple[float, float] | None = None
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_calls: int = 0
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, usage: dict[str, Any] | None, batch: bool = False) -> None:
        usage = usage or {}
        with self._lock:
            if batch:
                self.batch_calls += 1
                self.batch_prompt_tokens += int(usage.get("prompt_tokens") or 0)
                self.batch_completion_tokens += int(usage.get("completion_tokens") or 0)
            else:
                self.calls += 1
                self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def hit(self) -> None:
        with self._lock:
            self.cache_hits += 1

    def cost(self) -> float | None:
        if self.prices is None:
            return None
        pin, pout = self.prices
        online = self.prompt_tokens * pin + self.completion_tokens * pout
        batch = (self.batch_prompt_tokens * pin + self.batch_completion_tokens * pout) * BATCH_DISCOUNT
        return (online + batch) / 1e6

    def summary(self) -> str:
        cost = self.cost()
        money = (
            f"${cost:.4f}"
            if cost is not None
            else "cost unknown (no prices for this model; pass --price-input/--price-output)"
        )
        return (
            f"judge usage: {self.calls} calls ({self.prompt_tokens} prompt + {self.completion_tokens} completion tokens), "
            f"{self.batch_calls} batch calls ({self.batch_prompt_tokens} + {self.batch_completion_tokens} tokens), "
            f"{self.cache_hits} cache hits, {self.failed} failed; {money}"
        )


class OpenAIJudge(PromptJudge):
    """``openai:MODEL``: judge through an OpenAI-compatible API (module doc)."""

    def __init__(
        self,
        model: str,
        mode: str = "logprobs",
        questions=None,
        cache: JudgeCache | str | Path | None = "default",
        concurrency: int = 8,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 60.0,
        max_reasoning_tokens: int = 1024,
        prices: tuple[float, float] | None = None,
        batch: bool = False,
        batch_state: str | Path | None = None,
        poll_s: float = 30.0,
        min_mass: float = MIN_NUMBER_MASS,
        client: openai.OpenAI | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__(questions, mode, min_mass)
        self.model = model
        self.spec = f"openai:{model}"
        if cache == "default":
            cache = default_cache_path()
        self.cache = JudgeCache(cache) if isinstance(cache, (str, Path)) else cache
        self.api = ChatAPI(
            self.spec,
            "judge call",
            concurrency,
            max_retries,
            backoff_s,
            max_backoff_s,
            timeout_s,
            client,
            error=JudgeError,
        )
        self.max_reasoning_tokens = max_reasoning_tokens
        self.usage = Usage(prices=prices if prices is not None else prices_for(model))
        self.batch = batch
        self.batch_state = Path(batch_state) if batch_state is not None else None
        self.poll_s = poll_s
        self.progress = progress
        self._memo: dict[str, dict[str, Any]] = {}  # replies of this run when there is no disk cache

    @property
    def client(self) -> openai.OpenAI:
        return self.api.client

    # -- requests and replies ---------------------------------------------------------------

    def request_body(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "seed": 0,
        }
        if self.mode == "logprobs":
            body.update(max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
        else:
            body.update(max_tokens=self.max_reasoning_tokens)
        return body

    def _reply(self, completion: dict[str, Any]) -> dict[str, Any]:
        """The part of a chat completion a score is read from, plus its token usage."""
        choice = (completion.get("choices") or [{}])[0]
        usage = completion.get("usage") or {}
        usage = {"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")}
        if self.mode == "logprobs":
            content = ((choice.get("logprobs") or {}).get("content")) or [{}]
            top = [[t["token"], t["logprob"]] for t in content[0].get("top_logprobs") or []]
            return {"top_logprobs": top, "usage": usage}
        return {"content": (choice.get("message") or {}).get("content") or "", "usage": usage}

    def _score(self, reply: dict[str, Any]) -> MetricScore:
        if self.mode == "logprobs":
            return score_top_logprobs(reply["top_logprobs"], self.min_mass)
        return score_tags(reply["content"])

    def _lookup(self, key: str) -> dict[str, Any] | None:
        return self.cache.get(key) if self.cache is not None else self._memo.get(key)

    def _store(self, key: str, reply: dict[str, Any]) -> None:
        if self.cache is not None:
            self.cache.put(key, self.model, self.mode, reply)
        else:
            self._memo[key] = reply

    # -- scoring -----------------------------------------------------------------------------

    def score_prompts(self, prompts: Sequence[str]) -> list[MetricScore]:
        keys = [cache_key(self.model, self.mode, p) for p in prompts]
        replies: dict[str, dict[str, Any]] = {}
        pending: dict[str, str] = {}
        for key, prompt in zip(keys, prompts):
            if key in replies or key in pending:
                continue
            reply = self._lookup(key)
            if reply is not None:
                replies[key] = reply
                self.usage.hit()
            else:
                pending[key] = prompt
        if pending and self.batch:
            for key, reply in self._run_batches(pending).items():
                replies[key] = reply
                pending.pop(key)
        if pending:
            replies.update(self._run_online(pending))
        return [self._score(replies[k]) for k in keys]

    def _run_online(self, pending: dict[str, str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for key, completion in self.api.complete_all(
            {k: self.request_body(p) for k, p in pending.items()}, progress=self.progress
        ):
            reply = self._reply(completion)
            self._store(key, reply)
            self.usage.add(reply.get("usage"))
            out[key] = reply
        return out

    # -- Batch API ---------------------------------------------------------------------------

    def _run_batches(self, pending: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Submit (or resume) batches for ``pending``; return the replies that came back."""
        if self.batch_state is None:
            raise ValueError("batch mode needs a batch_state path to save the batch ids in")
        state = self._load_state()
        if state is None:
            state = {"model": self.model, "mode": self.mode, "batches": []}
            items = list(pending.items())
            for i in range(0, len(items), BATCH_MAX_REQUESTS):
                state["batches"].append(self._submit(items[i : i + BATCH_MAX_REQUESTS], len(state["batches"])))
                write_json_atomic(self.batch_state, state)  # saved per batch: a crash loses no id
        out: dict[str, dict[str, Any]] = {}
        for entry in state["batches"]:
            out.update(self._collect(entry["id"]))
        failed = [k for k in pending if k not in out]
        self.usage.failed += len(failed)
        if failed:
            log.warning("%d batch requests came back without a reply; making them online", len(failed))
        self.batch_state.unlink()
        return {k: v for k, v in out.items() if k in pending}

    def _load_state(self) -> dict[str, Any] | None:
        if self.batch_state is None or not self.batch_state.exists():
            return None
        state = json.loads(self.batch_state.read_text())
        if (state.get("model"), state.get("mode")) != (self.model, self.mode):
            raise JudgeError(
                f"{self.batch_state}: saved batches belong to {state.get('model')} ({state.get('mode')}); remove it or use another --out"
            )
        log.info("resuming %d saved batch(es) from %s", len(state["batches"]), self.batch_state)
        return state

    def _submit(self, items: list[tuple[str, str]], index: int) -> dict[str, Any]:
        path = self.batch_state.with_name(f"{self.batch_state.name}.input{index}.jsonl")
        lines = [
            json.dumps(
                {"custom_id": k, "method": "POST", "url": "/v1/chat/completions", "body": self.request_body(p)},
                ensure_ascii=False,
            )
            for k, p in items
        ]
        write_text_atomic(path, "\n".join(lines) + "\n")
        try:
            with path.open("rb") as f:
                uploaded = self.client.files.create(file=f, purpose="batch")
            batch = self.client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        except openai.APIError as e:
            slow = " (a slow server needs a larger --timeout)" if isinstance(e, openai.APITimeoutError) else ""
            raise JudgeError(
                f"{self.spec}: batch submission to {self.client.base_url} failed: {redact(str(e))}{slow}"
            ) from None
        log.info("submitted batch %s (%d requests, input %s)", batch.id, len(items), path)
        return {"id": batch.id, "input": str(path), "requests": len(items)}

    def _collect(self, batch_id: str) -> dict[str, dict[str, Any]]:
        """Poll one batch to its end; cache and return its successful replies."""
        while True:
            try:
                batch = self.client.batches.retrieve(batch_id)
            except openai.APIError as e:
                raise JudgeError(f"{self.spec}: polling batch {batch_id} failed: {redact(str(e))}") from None
            if batch.status in _TERMINAL:
                break
            counts = batch.request_counts
            log.info(
                "batch %s: %s (%s of %s done)",
                batch_id,
                batch.status,
                counts.completed if counts else "?",
                counts.total if counts else "?",
            )
            time.sleep(self.poll_s)
        if batch.status != "completed":
            log.warning("batch %s ended as %s", batch_id, batch.status)
        out: dict[str, dict[str, Any]] = {}
        if not batch.output_file_id:  # an expired batch may still carry partial output
            return out
        text = self.client.files.content(batch.output_file_id).text
        for line in text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            response = row.get("response") or {}
            if response.get("status_code") != 200:
                continue
            reply = self._reply(response.get("body") or {})
            self._store(row["custom_id"], reply)
            self.usage.add(reply.get("usage"), batch=True)
            out[row["custom_id"]] = reply
        return out
