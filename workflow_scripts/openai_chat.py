"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server) as a provider.

Requests run concurrently on a thread pool and are yielded as they complete, so the caller can
cache each answer at once. Retries are ours, not the client's (it gets max_retries=0), so that
every kind of transient failure gets the same policy and the same log line: rate limits (429,
waiting at least what Retry-After / retry-after-ms asks), 408, 409, server errors (5xx), timeouts,
dropped connections and malformed bodies, with exponential backoff and jitter. A request still
failing after `max_retries` retries raises ChatError; so does, at once, any other client error
(400, 401, 404), a spent quota (429 `insufficient_quota`) and an answer saying
`x-should-retry: false`. The API key comes from the environment variable named in the config (only
its name travels through the workflow), read when the first request is about to be sent: a job
whose answers are all cached needs no key. It is never logged.
"""
from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from .chat import ChatError, ChatRequest, ChatResponse

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://api.openai.com/v1"  # given to the client explicitly: it never reads OPENAI_BASE_URL
MAX_WAIT_S = 300.0  # never sleep longer than this on one retry, whatever a server asks


class MalformedResponse(Exception):
    """A 200 answer without a usable completion (not JSON, no choices, no message)."""


def api_key_from_env(variable: str | None) -> str:
    """The key, or a clear error naming the variable. No variable: a keyless local server."""
    if not variable:
        return "not-needed"
    key = os.environ.get(variable, "")
    if not key:
        raise ChatError(f"the environment variable {variable} (annotation.provider.api_key_env) is not set: "
                        f"export {variable}=... with the key of the annotation endpoint")
    return key


def retry_after_s(error) -> float | None:
    """What a 429/503 answer asks us to wait, from retry-after-ms or Retry-After (seconds or a date);
    None for a value that is no finite, non-negative number."""
    wait_s = _asked_wait_s(error)
    return wait_s if wait_s is not None and math.isfinite(wait_s) and wait_s >= 0 else None


def _asked_wait_s(error) -> float | None:
    response = getattr(error, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class OpenAIChat:
    provider = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 6, timeout_s: float = 60.0,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0):
        import openai

        self._openai = openai
        self.model = model
        # two endpoints may serve different models under one name: the endpoint is part of the cache key,
        # and the one the client sends to (the planner resolved OPENAI_BASE_URL into base_url)
        base_url = base_url or DEFAULT_ENDPOINT
        self.cache_scope = f"openai:{base_url.rstrip('/')}"
        self.fingerprint = ""
        self.concurrency = concurrency
        self.chunk = max(64, 8 * concurrency)  # requests claimed at a time in a shared cache
        self.max_retries = max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.base_url, self.api_key_env, self.timeout_s = base_url, api_key_env, timeout_s
        self._client = None
        self.retries = 0  # attempts that failed transiently and were retried (the cost report's count)
        self._retries_lock = threading.Lock()
        self._stop = threading.Event()  # set when the stream is abandoned: backoff sleeps end at once
        self.unyielded: list[tuple[int, ChatResponse]] = []  # answers received after the stream was abandoned

    @property
    def client(self):
        """The openai client, made when first needed: the key is read then, not before."""
        if self._client is None:
            self._client = self._openai.OpenAI(base_url=self.base_url, api_key=api_key_from_env(self.api_key_env),
                                               max_retries=0, timeout=self.timeout_s)
        return self._client

    def _transient(self, error: Exception) -> bool:
        """What waiting may cure, as the openai client decides (408, 409, 429, 5xx, timeouts, dropped
        connections; `x-should-retry` overrides the status), plus malformed bodies; never a spent quota."""
        openai = self._openai
        if isinstance(error, openai.APIStatusError):
            should = error.response.headers.get("x-should-retry", "").lower()
            if should in ("true", "false"):
                return should == "true"
            if getattr(error, "code", None) == "insufficient_quota":
                return False
            return error.status_code in (408, 409, 429) or error.status_code >= 500
        return isinstance(error, (MalformedResponse, openai.APITimeoutError, openai.APIConnectionError,
                                  openai.APIResponseValidationError, ValueError))

    def _create(self, request: ChatRequest) -> ChatResponse:
        started = time.perf_counter()
        completion = self.client.chat.completions.create(
            model=self.model,
            messages=[dict(m) for m in request.messages],
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            seed=request.seed,
        )
        choices = getattr(completion, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise MalformedResponse(f"no choices in the answer: {str(completion)[:200]!r}")
        choice = choices[0]
        refusal = getattr(choice.message, "refusal", None)
        if refusal is None and choice.message.content is None:
            if choice.finish_reason == "content_filter":
                refusal = "content_filter"
            elif choice.finish_reason != "length":  # cut before its first token: an answer, empty, not a fault
                raise MalformedResponse("an answer with neither content nor refusal")
        usage = completion.usage
        return ChatResponse(
            text=choice.message.content or "",
            finish_reason="refusal" if refusal is not None else (choice.finish_reason or "stop"),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_s=time.perf_counter() - started,
            fingerprint=completion.system_fingerprint or completion.model or "",
            refusal=refusal,
        )

    def complete_one(self, request: ChatRequest) -> ChatResponse:
        for attempt in range(self.max_retries + 1):
            try:
                return self._create(request)
            except Exception as error:
                if not self._transient(error):
                    raise ChatError(f"{self.model}: the endpoint refused the request: {error}") from error
                if attempt == self.max_retries:
                    raise ChatError(f"{self.model}: still failing after {self.max_retries} retries: "
                                    f"{type(error).__name__}: {error}") from error
                # the server's wait is a floor under our backoff, never a replacement: a Retry-After of 0
                # (or OpenAI's few-ms retry-after-ms) would otherwise spend every retry at once
                wait_s = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
                wait_s = min(max(wait_s, retry_after_s(error) or 0.0), MAX_WAIT_S)
                with self._retries_lock:
                    self.retries += 1
                log.warning("%s (attempt %d of %d); retrying in %.2f s", type(error).__name__, attempt + 1,
                            self.max_retries + 1, wait_s)
                if self._stop.wait(wait_s):
                    raise ChatError(f"{self.model}: stopped while waiting to retry") from error
        raise AssertionError("unreachable")

    def stream(self, requests: list[ChatRequest]) -> Iterator[tuple[int, ChatResponse]]:
        """(index, response) as each completes, `concurrency` at a time. On a failure, the requests
        already running finish (and are yielded, so they get cached) before ChatError is raised.

        Abandoned (Ctrl-C, or the caller closing the stream on an error of its own): no request is
        started, backoff sleeps end, and the answers still in flight are awaited (each within the
        request timeout: they are paid for) and left in `unyielded` for the caller to keep."""
        pending = iter(enumerate(requests))
        self.client  # noqa: B018 - the key is checked here, before any thread starts
        self._stop.clear()
        self.unyielded = []
        with ThreadPoolExecutor(self.concurrency) as pool:
            running = {}
            try:
                yield from self._run(pool, running, pending)
            except BaseException:
                self._stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                done, _ = wait(running, timeout=self.timeout_s + 1)
                self.unyielded = [(running[f], f.result()) for f in done if not f.cancelled() and not f.exception()]
                raise

    def _run(self, pool, running: dict, pending) -> Iterator[tuple[int, ChatResponse]]:
        """Submit and yield, `concurrency` in flight; `running` maps each future to its index."""
        failure = None

        def submit_next() -> None:
            for index, request in pending:
                running[pool.submit(self.complete_one, request)] = index
                return

        for _ in range(self.concurrency):
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                try:
                    yield index, future.result()
                except ChatError as error:
                    failure = failure or error
                if failure is None:
                    submit_next()
        if failure is not None:
            raise failure
