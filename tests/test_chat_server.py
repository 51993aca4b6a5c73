"""The local OpenAI-protocol test server (tests/chat_server.py), through the real `openai` client
and through urllib, over TCP. Each fault kind is checked with `max_retries=0` (seen once) and the
client's own retry behaviour on a few of them."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from chat_server import DEFAULT_REFUSAL, ChatServer
from openai.types.chat import ChatCompletion

KEY = "sk-test"


def ask(client, text="hello world", model="test-model", **kwargs):
    return client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        **kwargs,
    )


def make_client(server, max_retries=0, timeout=5.0, api_key=KEY):
    return openai.OpenAI(base_url=server.url, api_key=api_key, max_retries=max_retries, timeout=timeout)


@pytest.fixture
def server():
    with ChatServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def client(server):
    with make_client(server) as c:
        yield c


def post(url, payload: bytes, headers=None):
    """urllib POST without any proxy; returns (status, headers, body bytes) also for HTTP errors."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=payload, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


# --- normal answers ----------------------------------------------------------------------------

def test_normal_completion_parses(server, client):
    completion = ask(client, "hello there world")
    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.model == "test-model"
    assert completion.system_fingerprint == "fp_test"
    assert completion.id.startswith("chatcmpl-")
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello there world"
    assert choice.message.refusal is None
    # words: "be brief" + "hello there world" / "echo: hello there world"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 4)
    assert completion.usage.total_tokens == 9
    (request,) = server.requests
    assert request["messages"][-1]["content"] == "hello there world"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["x-stainless-retry-count"] == "0"
    assert request.status == 200 and request.fault is None
    assert server.completed == [request]
    assert server.counts() == {200: 1}


def test_custom_responder_sees_the_body():
    def responder(body):
        return f"{body['model']}:{len(body['messages'])}"

    with ChatServer(responder=responder) as srv, make_client(srv, api_key="anything") as c:
        assert ask(c, model="m1").choices[0].message.content == "m1:2"


def test_responder_error_is_a_500(server, client):
    server.responder = lambda body: 1 / 0
    with pytest.raises(openai.InternalServerError):
        ask(client)
    assert isinstance(server.requests[0].error, ZeroDivisionError)
    server.responder = lambda body: "fine"
    assert ask(client).choices[0].message.content == "fine"


def test_urllib(server):
    body = {"model": "m", "messages": [{"role": "user", "content": "a b"}]}
    status, headers, raw = post(server.url + "/chat/completions", json.dumps(body).encode(),
                                {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(raw)
    assert data["choices"][0]["message"]["content"] == "echo: a b"
    assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    status, _, raw = post(server.url + "/chat/completions", b"{nope", {"Authorization": f"Bearer {KEY}"})
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, _ = post(server.url + "/embeddings", b"{}", {"Authorization": f"Bearer {KEY}"})
    assert status == 404
    server.add_fault("429", retry_after="3")
    status, headers, raw = post(server.url + "/chat/completions", json.dumps(body).encode(),
                                {"Authorization": f"Bearer {KEY}"})
    assert status == 429 and headers["Retry-After"] == "3"
    assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    assert server.counts() == {200: 1, 400: 1, 404: 1, 429: 1}


def test_wrong_key_is_401(server):
    with make_client(server, api_key="sk-wrong") as c, pytest.raises(openai.AuthenticationError) as info:
        ask(c)
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"
    assert server.counts() == {401: 1} and server.completed == []


# --- faults, seen once (max_retries=0) --------------------------------------------------------

def test_429_with_retry_after(server, client):
    server.add_fault("429", retry_after="0.2")
    with pytest.raises(openai.RateLimitError) as info:
        ask(client)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "0.2"
    assert "retry-after-ms" not in info.value.response.headers
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert info.value.request_id.startswith("req_")
    assert ask(client).choices[0].finish_reason == "stop"  # used up
    assert server.counts() == {429: 1, 200: 1}
    assert [r.fault for r in server.requests] == ["429", None]


def test_429_retry_after_ms_and_no_header(server, client):
    server.add_fault("429", retry_after=None, retry_after_ms=150)
    server.add_fault("429", retry_after=None, headers={"x-should-retry": "false"})
    with pytest.raises(openai.RateLimitError) as info:
        ask(client)
    assert info.value.response.headers["retry-after-ms"] == "150"
    assert "retry-after" not in info.value.response.headers
    with pytest.raises(openai.RateLimitError) as info:
        ask(client)
    assert info.value.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("status", ["500", "503"])
def test_server_errors(server, client, status):
    server.add_fault(status, times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            ask(client)
        assert info.value.status_code == int(status)
        assert info.value.body["type"] == "server_error"
    ask(client)
    assert server.counts() == {int(status): 2, 200: 1}


def test_timeout(server):
    server.add_fault("timeout", delay=0.6)
    with make_client(server, timeout=0.15) as c:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            ask(c)
        assert time.monotonic() - started < 0.5
        # the server notices the client hung up and sends nothing
        assert server.wait_until(lambda: server.requests[0].finished is not None, timeout=3)
        assert server.requests[0].status is None and server.completed == []
        assert ask(c).choices[0].message.content == "echo: hello world"
    assert server.counts() == {None: 1, 200: 1}


def test_timeout_answers_a_patient_client(server, client):
    server.add_fault("timeout", delay=0.1)
    assert ask(client).choices[0].message.content == "echo: hello world"
    assert server.counts() == {200: 1} and server.requests[0].fault == "timeout"


def test_malformed_not_json(server, client):
    server.add_fault("malformed")
    with pytest.raises(json.JSONDecodeError):  # raised as is by the client (not wrapped)
        ask(client)
    server.add_fault("malformed", body="<html>oops</html>", content_type="text/html")
    assert ask(client) == "<html>oops</html>"  # non-JSON content type: the client returns the text
    assert server.counts() == {200: 2} and server.completed == []


def test_malformed_missing_choices(server, client):
    server.add_fault("malformed", missing_choices=True)
    completion = ask(client)  # the client does not validate: choices comes back None
    assert completion.choices is None
    assert completion.system_fingerprint == "fp_test"
    assert server.completed == []


def test_refusal(server, client):
    server.add_fault("refusal")
    (choice,) = ask(client).choices
    assert choice.message.content is None
    assert choice.message.refusal == DEFAULT_REFUSAL
    assert choice.finish_reason == "stop"
    assert len(server.completed) == 1


def test_length(server, client):
    server.add_fault("length", content="cut off mid")
    completion = ask(client)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "cut off mid"
    assert completion.usage.completion_tokens == 3


def test_match_and_order(server, client):
    server.add_fault("500", times=2, match=lambda body: body["messages"][-1]["content"] == "bad")
    server.add_fault("refusal")
    assert ask(client, "good").choices[0].message.refusal == DEFAULT_REFUSAL  # the refusal matched first
    with pytest.raises(openai.InternalServerError):
        ask(client, "bad")
    assert ask(client, "good").choices[0].message.content == "echo: good"
    with pytest.raises(openai.InternalServerError):
        ask(client, "bad")
    assert ask(client, "bad").choices[0].message.content == "echo: bad"
    assert server.pending_faults() == []
    with pytest.raises(ValueError, match="explode"):
        server.add_fault("explode")


# --- hold / release / stop --------------------------------------------------------------------

def test_hold_then_release(server, client):
    server.add_fault("hold", times=2)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(ask, client, f"q{i}") for i in range(2)]
        assert server.wait_held(2)
        time.sleep(0.1)
        assert not any(f.done() for f in futures)
        assert server.completed == [] and server.in_flight == 2
        server.release()
        answers = sorted(f.result(timeout=5).choices[0].message.content for f in futures)
    assert answers == ["echo: q0", "echo: q1"]
    assert server.held == 0 and server.counts() == {200: 2}


def test_stop_drops_held_requests_without_hanging():
    srv = ChatServer(latency=0.0).start()
    srv.add_fault("hold")
    srv.add_fault("timeout", delay=30)
    errors = []

    def call():
        with make_client(srv, api_key="k") as c:
            try:
                ask(c)
            except openai.APIConnectionError as err:
                errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    assert srv.wait_held(1) and srv.wait_until(lambda: srv.in_flight == 2)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2
    for t in threads:
        t.join(timeout=5)
    assert len(errors) == 2 and all(type(e) is openai.APIConnectionError for e in errors)
    assert srv.counts() == {None: 2}


# --- concurrency ------------------------------------------------------------------------------

def test_max_in_flight():
    with ChatServer(latency=0.2) as srv, make_client(srv, api_key="k") as c:
        ask(c)
        ask(c)
        assert srv.max_in_flight == 1
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: ask(c, f"q{i}"), range(6)))
        assert srv.max_in_flight > 1
        assert srv.in_flight == 0 and len(srv.completed) == 8


# --- the client's own retries (max_retries > 0) -----------------------------------------------

def test_client_retries_429_honouring_retry_after(server):
    server.add_fault("429", times=2, retry_after="0.05")
    with make_client(server, max_retries=2) as c:
        started = time.monotonic()
        assert ask(c).choices[0].message.content == "echo: hello world"
        elapsed = time.monotonic() - started
    assert server.counts() == {429: 2, 200: 1}
    assert [r.headers["x-stainless-retry-count"] for r in server.requests] == ["0", "1", "2"]
    assert elapsed < 0.8  # the default backoff would sleep >= 0.375 + 0.75 s


def test_client_retry_after_ms_wins_over_retry_after(server):
    server.add_fault("429", retry_after="60", retry_after_ms=20)
    with make_client(server, max_retries=1) as c:
        started = time.monotonic()
        ask(c)
        assert time.monotonic() - started < 1


@pytest.mark.skipif(not hasattr(openai._constants, "MAX_RETRY_AFTER_DELAY"),
                    reason="openai < 2.52 has no cap on Retry-After (our client retries by itself: max_retries=0)")
def test_client_gives_up_when_retry_after_exceeds_its_cap(server):
    server.add_fault("429", retry_after="121")  # over the client's MAX_RETRY_AFTER_DELAY (120 s)
    with make_client(server, max_retries=2) as c, pytest.raises(openai.RateLimitError):
        ask(c)
    assert server.counts() == {429: 1}


def test_client_retries_5xx_and_timeouts_but_not_malformed(server):
    server.add_fault("503", retry_after="0.01")
    server.add_fault("timeout", delay=0.5)
    with make_client(server, max_retries=2, timeout=0.15) as c:
        assert ask(c).choices[0].finish_reason == "stop"
        assert server.wait_until(lambda: all(r.finished for r in server.requests), timeout=3)
        assert server.counts() == {503: 1, None: 1, 200: 1}
        server.add_fault("malformed")
        with pytest.raises(json.JSONDecodeError):
            ask(c)
        server.add_fault("400")
        with pytest.raises(openai.BadRequestError):
            ask(c)
    assert server.counts() == {503: 1, None: 1, 200: 2, 400: 1}


# --- random faults ----------------------------------------------------------------------------

def test_random_faults_fire_at_the_rate_asked_only_after_the_key_is_checked():
    def drawn(seed):
        with ChatServer(api_key=KEY, fault_rate=0.3, fault_kinds=("429", "500", "malformed"), fault_seed=seed) as srv:
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
            for _ in range(10):  # without the key: 401, and no fault is drawn
                assert post(srv.url + "/chat/completions", body)[0] == 401
            statuses = [post(srv.url + "/chat/completions", body, {"Authorization": f"Bearer {KEY}"})[0]
                        for _ in range(300)]
            return statuses, [r.fault for r in srv.requests]

    statuses, faults = drawn(seed=7)
    assert faults[:10] == [None] * 10
    injected = [f for f in faults[10:] if f is not None]
    assert 60 <= len(injected) <= 120  # 300 draws at 0.3: 90 expected
    assert set(injected) == {"429", "500", "malformed"}
    assert statuses.count(429) == injected.count("429") and statuses.count(500) == injected.count("500")
    assert statuses.count(200) == 300 - statuses.count(429) - statuses.count(500)  # malformed is a 200
    assert drawn(seed=7)[1] == faults  # the seed makes the draws repeatable


def test_random_timeouts_take_their_options():
    with ChatServer(fault_rate=1.0, fault_kinds=("timeout",), fault_options={"timeout": {"delay": 0.3}}) as srv, \
            make_client(srv, api_key="k", timeout=2.0) as c:
        started = time.monotonic()
        assert ask(c).choices[0].message.content == "echo: hello world"  # a patient client gets its answer
        assert 0.3 <= time.monotonic() - started < 2.0
    with pytest.raises(ValueError, match="hold"):
        ChatServer(fault_rate=0.5, fault_kinds=("hold",))
