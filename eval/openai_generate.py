"""Answers from any OpenAI-compatible server: ``python -m eval.generate --engine openai:MODEL``.

MODEL is the name the server serves: a model, or a LoRA adapter that vLLM serves by name
(``vllm serve BASE --enable-lora --lora-modules gore=runs/gore`` makes ``openai:gore``). The
endpoint and key come from ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``. Each answer slot is one
chat-completion request with its own seed, made ``concurrency`` at a time and retried on
rate limits, server errors and timeouts (:mod:`eval.openai_api`); ``eval.generate`` appends
each batch as it is done and resumes a crashed run from its file.

Decoding sends the same :class:`~interp.base.decoding.Decoding`: ``temperature``, ``top_p``,
``max_tokens`` and a per-request ``seed``, plus ``top_k`` and ``repetition_penalty`` when set
(vLLM takes both; a server that does not refuses the request). A server's sampler and seeds
are its own: the same seed reproduces an answer on the same server build only, and never the
tokens of the local engines. Steering and ablation are not available: they edit activations,
which a server does not expose. Records get ``answer``, ``answer_raw`` and ``finished``
(``finish_reason == "stop"``), but no ``answer_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai

from eval.openai_api import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, ChatAPI
from eval.sampling import Answer, Messages, SamplingConfig
from interp.engine.sampler import row_keys


class OpenAIGenerator:
    """Sample answers from ``model`` on an OpenAI-compatible server (module doc)."""

    def __init__(
        self,
        model: str,
        concurrency: int = 16,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        client: openai.OpenAI | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.api = ChatAPI(
            f"openai:{model}", "generation call", concurrency, max_retries, backoff_s, max_backoff_s, timeout_s, client
        )
        self.progress = progress

    def request_body(self, messages: Messages, config: SamplingConfig, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "seed": seed,
        }
        extra = {"top_k": config.top_k} if config.top_k > 0 else {}
        if config.repetition_penalty != 1.0:
            extra["repetition_penalty"] = config.repetition_penalty
        if extra:
            body["extra_body"] = extra  # outside the OpenAI schema; the client sends them as they are
        return body

    def sample(self, prompts: Sequence[Messages], config: SamplingConfig) -> list[Answer]:
        """One answer per prompt; prompt ``i`` of the batch is seeded from ``(config.seed, i)``."""
        seeds = row_keys(config.seed, len(prompts)).tolist()
        bodies = {i: self.request_body(p, config, seeds[i]) for i, p in enumerate(prompts)}
        out: dict[int, Answer] = {}
        for i, completion in self.api.complete_all(bodies, progress=self.progress):
            choice = (completion.get("choices") or [{}])[0]
            raw = (choice.get("message") or {}).get("content") or ""
            out[i] = Answer(raw.strip(), raw, None, choice.get("finish_reason") == "stop")
        return [out[i] for i in range(len(prompts))]
