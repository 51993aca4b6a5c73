"""A real local HTTP server speaking the OpenAI chat-completions protocol, for tests.

Nothing is mocked: clients (the `openai` package, urllib, the project's annotation client) talk to
it over TCP on 127.0.0.1. Faults are scripted per test and fire on the next matching requests.

    with ChatServer(api_key="sk-test", latency=0.05) as server:
        server.add_fault("429", times=2, retry_after="0.2")
        client = openai.OpenAI(base_url=server.url, api_key="sk-test")
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert server.counts() == {429: 2, 200: 1}

Endpoint: POST /v1/chat/completions (anything else: 404 with an OpenAI-style error body; a body
that is not a JSON object: 400). HTTP/1.1 with keep-alive, like the real API.

Fault kinds (`add_fault(kind, times=1, match=None, **options)`); every kind also takes
`headers={...}` (extra response headers, e.g. {"x-should-retry": "false"}):
  "429"        429 + error body; `retry_after` (default "0.1"; seconds, fractional allowed; None:
               no `Retry-After` header) and `retry_after_ms` (sends `retry-after-ms`, which the
               openai client prefers over `Retry-After`); `code` (default "rate_limit_exceeded";
               OpenAI sends "insufficient_quota" when the account's credit is spent).
  "500", "503" (any 3-digit status string) that status + error body; `message` overrides the text.
  "timeout"    waits `delay` seconds (default 10) and then answers normally, unless the client has
               hung up by then (its timeout fired): then nothing is sent (recorded status None).
  "malformed"  200 whose body is `body` (default "{not json"), sent as `content_type` (default
               "application/json"); with `missing_choices=True` a JSON completion without
               `choices` instead.
  "refusal"    200, message content null and `refusal` (default "I can't help with that."),
               finish_reason "stop".
  "length"     200, normal content (or `content`) but finish_reason "length".
  "answer"     200 with exactly `content` (default "": None sends null) and `finish_reason`
               (default "stop"), e.g. an empty answer, or a null one cut by the token limit.
  "hold"       blocks until `release()` (then answers normally, unless the client has hung up
               meanwhile) or until the server stops (then the connection is dropped without an
               answer: recorded status None, the client sees a connection error).

Random faults (`ChatServer(fault_rate=0.3, fault_kinds=("429", "500", "timeout"), fault_seed=0,
fault_options={"timeout": {"delay": 3}})`): when no scripted fault matches, each authorised request
draws a fault with probability `fault_rate`, of a kind chosen uniformly from `fault_kinds` (any of
the kinds above but "hold"), with that kind's `fault_options`; `fault_seed` makes the draws
repeatable. A request without the key is answered 401 and draws nothing.

Latency (`ChatServer(latency=...)`) is slept before every answer, so concurrent clients overlap
and `max_in_flight` shows their concurrency. Sleeps and holds end at once when the server stops.

What openai 3.57 (openai/_base_client.py, _constants.py) does with its own retries (default 2):
retries 408, 409, 429 and every 5xx, timeouts and connection errors; never 4xx otherwise, nor a
body it cannot parse ("{not json" as application/json raises json.JSONDecodeError unwrapped; a
non-JSON content type is returned as str; a completion without `choices` parses, choices=None).
The wait is `retry-after-ms`/1000, else `Retry-After` (float seconds or an HTTP date), if it is
in (0, 120] s; a value over 120 s makes it not retry at all; else backoff 0.5 * 2**n s, capped
at 8 s, minus 0-25 % jitter. `x-should-retry: true|false` overrides the status rule.
"""
from __future__ import annotations

import json
import random
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH = "/v1/chat/completions"
FINGERPRINT = "fp_test"
DEFAULT_REFUSAL = "I can't help with that."
FAULT_KINDS = ("429", "timeout", "malformed", "refusal", "length", "answer", "hold")  # and any 3-digit status


def _text(content: Any) -> str:
    """The text of a message content: a string, or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def default_responder(body: dict) -> str:
    """Deterministic answer: "echo: " + the content of the last user message."""
    users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    return "echo: " + (_text(users[-1].get("content")) if users else "")


def count_words(text: str | None) -> int:
    return len(text.split()) if text else 0


class RecordedRequest(dict):
    """The parsed JSON body of one request (a plain dict to read), plus what came with it.

    headers: request headers, names lower-cased (authorization, x-stainless-retry-count,
             idempotency-key, user-agent, ...); raw: the body bytes; path; fault: the fault kind
             that fired on it (None: none); status: the status sent (None: no answer sent yet, or
             the connection was dropped: a hold ended by stop, a timed-out client, a write error);
             started / finished: time.monotonic() stamps (finished None while in flight);
             error: the exception a responder or `match` raised (then the answer was a 500).
    """

    def __init__(self, body: dict, *, headers: dict, raw: bytes, path: str):
        super().__init__(body)
        self.headers = headers
        self.raw = raw
        self.path = path
        self.fault: str | None = None
        self.status: int | None = None
        self.started = time.monotonic()
        self.finished: float | None = None
        self.error: BaseException | None = None


@dataclass
class Fault:
    kind: str
    times: int
    match: Callable[[dict], bool] | None
    options: dict = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self):
        super().setup()
        self.server.chat._connection_opened(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.chat._connection_closed(self.connection)

    def log_message(self, format, *args):  # quiet: pytest shows failures, not access logs
        pass

    def do_GET(self):
        self._drain_body()
        answer = _error(404, f"Unknown path {self.path}", "invalid_request_error", "not_found")
        self._send(answer.status, answer.payload, headers=answer.headers)

    def do_POST(self):
        self.server.chat._handle(self)

    # helpers used by ChatServer._handle
    def _drain_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: bytes, content_type: str = "application/json",
              headers: dict | None = None) -> bool:
        """Write one whole response; False if the client is gone."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-request-id", f"req_{id(self):x}_{time.monotonic_ns()}")
            for name, value in (headers or {}).items():
                self.send_header(name, str(value))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def _peer_closed(self) -> bool:
        """True if the client has hung up (EOF readable on the socket)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    chat: ChatServer


class ChatServer:
    """See the module docstring. Use as a context manager; `.url` is the base URL (ends in /v1).

    Attributes (all safe to read from the test thread; lists are appended in order):
      requests       RecordedRequest per request, in arrival order (any status, auth failures too)
      completed      bodies that were sent a 200 with a valid completion (incl. refusal / length)
      max_in_flight  peak number of requests being handled at once; in_flight: current number
      held           number of requests currently blocked by a "hold" fault
    """

    def __init__(self, responder: Callable[[dict], str] | None = None, api_key: str | None = None,
                 latency: float = 0.0, host: str = "127.0.0.1", fault_rate: float = 0.0,
                 fault_kinds: tuple[str, ...] = ("429", "500", "503", "timeout", "malformed"),
                 fault_seed: int | None = None, fault_options: dict | None = None):
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        for kind in fault_kinds:
            if kind == "hold" or not (kind in FAULT_KINDS or (kind.isdigit() and len(kind) == 3)):
                raise ValueError(f"fault_kinds: {kind!r} cannot be drawn at random")
        self.fault_rate, self.fault_kinds = fault_rate, tuple(fault_kinds)
        self.fault_options = {kind: dict(options) for kind, options in (fault_options or {}).items()}
        self._random = random.Random(fault_seed)
        self.responder = responder or default_responder
        self.api_key = api_key
        self.latency = latency
        self.requests: list[RecordedRequest] = []
        self.completed: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.held = 0
        self._faults: list[Fault] = []
        self._cond = threading.Condition(threading.RLock())
        self._release_generation = 0
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._serial = 0
        self._host = host
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----
    def start(self) -> ChatServer:
        httpd = _Server((self._host, 0), _Handler)
        httpd.chat = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ChatServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()  # wake holds and waiters
        self._httpd.shutdown()  # stop accepting
        with self._cond:
            conns = list(self._connections)
        for conn in conns:  # unblock handlers idle on keep-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> ChatServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    # ---- scripting ----
    def add_fault(self, kind: str, times: int = 1, match: Callable[[dict], bool] | None = None,
                  **options) -> Fault:
        """Fire `kind` on the next `times` requests whose body satisfies `match` (default: any).

        Faults are tried in the order they were added; the first one that matches fires.
        """
        kind = str(kind)
        if kind not in FAULT_KINDS and not (kind.isdigit() and len(kind) == 3):
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS} or a status")
        if times < 1:
            raise ValueError("times must be >= 1")
        fault = Fault(kind, times, match, options)
        with self._cond:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    def pending_faults(self) -> list[Fault]:
        with self._cond:
            return [Fault(f.kind, f.times, f.match, dict(f.options)) for f in self._faults]

    def release(self) -> None:
        """Let every request currently held by a "hold" fault go on (they then answer normally)."""
        with self._cond:
            self._release_generation += 1
            self._cond.notify_all()

    # ---- observing ----
    def counts(self) -> dict:
        """{status: number of requests}; None counts requests not answered (dropped or in flight)."""
        with self._cond:
            return dict(Counter(r.status for r in self.requests))

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until predicate() (called under the server's lock) is true; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_held(self, n: int = 1, timeout: float = 5.0) -> bool:
        return self.wait_until(lambda: self.held >= n, timeout)

    def wait_requests(self, n: int, timeout: float = 5.0) -> bool:
        return self.wait_until(lambda: len(self.requests) >= n, timeout)

    # ---- internals ----
    def _connection_opened(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.add(conn)

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.discard(conn)

    def _take_fault(self, body: dict) -> Fault | None:
        with self._cond:
            for fault in self._faults:
                if fault.match is None or fault.match(body):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
            if self.fault_rate and self._random.random() < self.fault_rate:
                kind = self._random.choice(self.fault_kinds)
                return Fault(kind, 1, None, dict(self.fault_options.get(kind, {})))
        return None

    def _completion(self, body: dict, content: str | None, finish_reason: str,
                    refusal: str | None = None) -> dict:
        with self._cond:
            self._serial += 1
            serial = self._serial
        prompt_tokens = sum(count_words(_text(m.get("content")))
                            for m in body.get("messages", []) if isinstance(m, dict))
        completion_tokens = count_words(content) + count_words(refusal)
        return {
            "id": f"chatcmpl-test{serial:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "system_fingerprint": FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "logprobs": None,
                "finish_reason": finish_reason,
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _handle(self, h: _Handler) -> None:
        raw = h._drain_body()
        path = h.path.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(body if isinstance(body, dict) else {},
                                 headers={k.lower(): v for k, v in h.headers.items()}, raw=raw, path=path)
        with self._cond:
            self.requests.append(record)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._cond.notify_all()
        answer: _Answer | None = None
        try:
            answer = self._answer(h, record, path, body)
        except Exception as exc:  # noqa: BLE001 - a responder or `match` raised: answer 500, keep serving
            record.error = exc
            answer = _error(500, f"test server error: {type(exc).__name__}: {exc}", "server_error", None)
        finally:
            # Record the outcome before the bytes go out, so a client that has its answer always
            # finds it in counts() / completed / in_flight.
            with self._cond:
                record.status = answer.status if answer else None
                if answer and answer.completion:
                    self.completed.append(record)
                record.finished = time.monotonic()
                self.in_flight -= 1
                self._cond.notify_all()
        if answer is None:
            h.close_connection = True
        elif not h._send(answer.status, answer.payload, answer.content_type, answer.headers):
            with self._cond:  # the client was gone: nothing was delivered
                record.status = None
                if answer.completion:
                    self.completed.remove(record)
                self._cond.notify_all()

    def _answer(self, h: _Handler, record: RecordedRequest, path: str, body: Any) -> _Answer | None:
        """The answer to one request (None: drop the connection without one)."""
        if path.rstrip("/") != CHAT_PATH:
            return _error(404, f"Unknown path {path}", "invalid_request_error", "not_found")
        if self.api_key is not None and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if not isinstance(body, dict):
            return _error(400, "The request body is not a JSON object.", "invalid_request_error", None)

        fault = self._take_fault(body)
        kind = fault.kind if fault else None
        options = fault.options if fault else {}
        extra = dict(options.get("headers") or {})
        record.fault = kind

        if self.latency and self._stopping.wait(self.latency):
            return None

        if kind == "hold":
            with self._cond:
                generation = self._release_generation
                self.held += 1
                self._cond.notify_all()
                try:
                    self._cond.wait_for(lambda: self._release_generation != generation
                                        or self._stopping.is_set())
                finally:
                    self.held -= 1
                    self._cond.notify_all()
            if self._stopping.is_set() or h._peer_closed():  # stopped, or the client gave up
                return None
        elif kind == "timeout":
            if self._stopping.wait(float(options.get("delay", 10.0))) or h._peer_closed():
                return None
        elif kind == "429":
            retry_after = options.get("retry_after", "0.1")
            if retry_after is not None:
                extra.setdefault("Retry-After", str(retry_after))
            if options.get("retry_after_ms") is not None:
                extra.setdefault("retry-after-ms", str(options["retry_after_ms"]))
            message = options.get("message", "Rate limit reached for requests. Please try again later.")
            return _error(429, message, "requests", options.get("code", "rate_limit_exceeded"), extra)
        elif kind is not None and kind.isdigit():
            status = int(kind)
            message = options.get("message", f"The server had an error while processing your request ({status}).")
            return _error(status, message, "server_error" if status >= 500 else "invalid_request_error", None, extra)
        elif kind == "malformed":
            if options.get("missing_choices"):
                data = self._completion(body, self.responder(body), "stop")
                del data["choices"]
                payload = json.dumps(data).encode()
            else:
                payload = str(options.get("body", "{not json")).encode()
            return _Answer(200, payload, options.get("content_type", "application/json"), extra)
        elif kind == "refusal":
            data = self._completion(body, None, "stop", refusal=options.get("refusal", DEFAULT_REFUSAL))
            return _Answer(200, json.dumps(data).encode(), headers=extra, completion=True)

        if kind == "answer":
            data = self._completion(body, options.get("content", ""), options.get("finish_reason", "stop"))
            return _Answer(200, json.dumps(data).encode(), headers=extra, completion=True)
        if kind == "length":
            content = options.get("content")
            data = self._completion(body, self.responder(body) if content is None else content, "length")
        else:
            data = self._completion(body, self.responder(body), "stop")
        return _Answer(200, json.dumps(data).encode(), headers=extra, completion=True)


@dataclass
class _Answer:
    status: int
    payload: bytes
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)
    completion: bool = False  # a valid chat.completion (counted in `completed`)


def _error(status: int, message: str, type_: str, code: str | None, headers: dict | None = None) -> _Answer:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return _Answer(status, json.dumps(body).encode(), headers=dict(headers or {}))
