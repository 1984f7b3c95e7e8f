"""Chat completions from any OpenAI-compatible server, for the judge and for generation.

The official client is made from the environment alone (``OPENAI_API_KEY``,
``OPENAI_BASE_URL``), on first need, so a fully cached run needs no key. Calls are retried
with exponential backoff (and the server's ``retry-after``) on 408/409/429/5xx, timeouts and
connection errors, and run on a thread pool; the key never reaches a log, an error message
or a file.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

import openai
from tqdm.auto import tqdm

from interp.base.cli import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, InputError

K = TypeVar("K")
_RETRY_STATUS = {408, 409, 429}


class APIError(InputError):
    """A call that failed for good (after retries, or at once on e.g. a bad key)."""


def redact(text: str) -> str:
    """Remove the API key (and anything shaped like one) from a message."""
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        text = text.replace(key, "***")
    return re.sub(r"sk-[A-Za-z0-9_\-*]{6,}", "sk-***", text)


class ChatAPI:
    """Retried, concurrent chat-completion calls; ``what`` names the calls in error messages
    (``"openai:gpt-4o: judge call failed after 7 attempts: HTTP 500: ..."``)."""

    def __init__(
        self,
        spec: str,
        what: str,
        concurrency: int = 8,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        client: openai.OpenAI | None = None,
        error: type[APIError] = APIError,
    ) -> None:
        self.spec, self.what, self.error = spec, what, error
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._client = client

    @property
    def client(self) -> openai.OpenAI:
        """Made on first need, so a fully cached run needs no key at all."""
        if self._client is None:
            url = os.environ.get("OPENAI_BASE_URL")
            if url and not re.match(r"https?://[^/\s]", url):  # the client would quote it into a path
                raise self.error(f"OPENAI_BASE_URL {url!r}: not an http:// or https:// URL")
            try:
                self._client = openai.OpenAI(max_retries=0, timeout=self.timeout_s)
            except openai.OpenAIError as e:
                raise self.error(f"cannot create the OpenAI client: {redact(str(e))}") from None
        return self._client

    def complete(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """One chat completion (as a plain dict) with retries."""
        for attempt in range(self.max_retries + 1):
            try:
                return self.client.chat.completions.create(**body).model_dump()
            except openai.APIStatusError as e:
                retry = e.status_code in _RETRY_STATUS or e.status_code >= 500
                error, after = f"HTTP {e.status_code}: {e.message}", e.response.headers.get("retry-after")
            except openai.APIConnectionError as e:  # includes timeouts
                retry, error, after = True, self._connection_error(e), None
            except (openai.APIResponseValidationError, ValueError) as e:  # a 200 whose body is no completion
                retry, error, after = False, f"the reply is not a chat completion ({type(e).__name__}: {e})", None
            if not retry or attempt == self.max_retries:
                tries = f" after {attempt + 1} attempts" if retry else ""
                raise self.error(
                    f"{self.spec}: {self.what} to {self.client.base_url} failed{tries}: {redact(error)}"
                ) from None
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
            if after is not None and after.replace(".", "", 1).isdigit():
                delay = min(self.max_backoff_s, max(delay, float(after)))
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _connection_error(self, e: openai.APIConnectionError) -> str:
        """What went wrong below HTTP, in words: no reply in time, or the transport's own reason (refused, unknown host)."""
        if isinstance(e, openai.APITimeoutError):
            return f"no reply within {self.timeout_s:g} s (a slow server needs a larger --timeout)"
        cause = e.__cause__ or e.__context__
        return (
            f"cannot connect ({cause or e})"
            if cause is not None and str(cause)
            else f"cannot connect ({type(e).__name__})"
        )

    def complete_all(
        self, bodies: Mapping[K, Mapping[str, Any]], progress: bool = False
    ) -> Iterator[tuple[K, dict[str, Any]]]:
        """``(key, completion)`` for each body, as they arrive, ``concurrency`` calls at a time;
        the first call that fails for good cancels the rest and raises."""
        _ = self.client  # made here, not raced for by the worker threads
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = {pool.submit(self.complete, body): key for key, body in bodies.items()}
            for fut in tqdm(
                as_completed(futures),
                total=len(futures),
                desc=f"{self.what}s",
                unit="call",
                disable=not progress,
                leave=False,
            ):
                yield futures[fut], fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
