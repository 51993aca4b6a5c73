"""The annotation jobs against a real local HTTP server speaking the OpenAI chat protocol, through
the real `openai` client: prompts and parameters, the cache, concurrency, injected faults, a
process killed mid-way, refusals, truncation and keys."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from chat_server import ChatServer

from workflow_scripts import annotate
from workflow_scripts.annotation_prompts import STEPS
from workflow_scripts.chat import ChatError
from workflow_scripts.chat_cache import ResponseCache
from workflow_scripts.tsv import WORDS_COLUMNS, encode_words

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "SHIFTLENS_TEST_KEY"
KEY = "sk-test-secret-123"
FAST = {"concurrency": 4, "max_retries": 4, "timeout_s": 5.0, "backoff_s": 0.01}


def responder(body):
    """Describe: 'Cannot Tell' for every third component, else a concept; task and level: a label."""
    user = body["messages"][-1]["content"]
    system = body["messages"][0]["content"]
    if "neuron interpreter" in system:
        rank = int(re.search(r"[bt]r(\d+)x", user).group(1))
        return "Cannot Tell." if rank % 3 == 2 else f"concept {rank}."
    return "coding; translation" if "assistant tasks" in system else "Semantic"


@pytest.fixture
def shards(tmp_path):
    return wide_shards(tmp_path, ranks=6)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with ChatServer(responder=responder, api_key=KEY) as running:
        yield running


def provider(server):
    return {"kind": "openai", "model": "gpt-test", "base_url": server.url, "api_key_env": KEY_ENV}


def run(step, seed, inputs, tmp_path, server, runtime=FAST, name=None):
    out = tmp_path / "out" / f"{name or step}_seed{seed}.tsv"
    stats = out.with_suffix(".json")
    annotate.run_step(step, seed, inputs, str(out), str(stats), provider(server), str(tmp_path / "cache.sqlite"),
                      words=15, max_tokens=32, runtime=runtime, pair="p")
    return out, json.loads(stats.read_text())


def rows(path):
    lines = Path(path).read_text().splitlines()
    return [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]


def user_messages(requests):
    return [r["messages"][-1]["content"] for r in requests]


def test_prompts_and_parameters_per_step_and_seed(tmp_path, shards, server):
    described, stats = run("describe", 3, shards, tmp_path, server)
    first = server.requests[0]
    assert first["model"] == "gpt-test" and first["seed"] == 3 and first["max_tokens"] == 32
    assert (first["temperature"], first["top_p"]) == (1.0, 0.9)
    expected = STEPS["describe"].request("x", 3, 32).messages[:-1]
    assert first["messages"][:-1] == [dict(m) for m in expected]  # system + few-shot, names included
    assert sorted(user_messages(server.requests)) == sorted(
        "Words: {}.".format(", ".join(f"{m}r{r}x{i}" for i in range(15))) for m in "bt" for r in range(1, 7))
    assert first.headers["authorization"] == f"Bearer {KEY}"
    out = rows(described)
    assert len(out) == 12 and stats["requests"] == 12 and stats["described"] == 8
    assert [r["Explainable"] for r in out[:6]] == ["1", "0", "1", "1", "0", "1"]

    count = len(server.requests)
    tasks, _ = run("task", 3, [str(described)], tmp_path, server)
    task_requests = server.requests[count:]
    assert {(r["temperature"], r["top_p"], r["seed"]) for r in task_requests} == {(0.0, 0.9, 3)}
    # the task step lower-cases the summary (as the paper); the level step keeps it
    assert "Concept: Words are concept 1." in user_messages(task_requests)
    assert "assistant tasks" in task_requests[0]["messages"][0]["content"]
    assert [r["Task"] for r in rows(tasks)] == ["coding; translation"] * 8
    count = len(server.requests)
    levels, _ = run("level", 3, [str(described)], tmp_path, server)
    assert "linguist" in server.requests[count]["messages"][0]["content"]
    assert [r["Concept"] for r in rows(levels)] == ["Semantic"] * 8
    assert list(rows(levels)[0])[:4] == ["Concept", "Explainable", "Words", "Summary"]


def test_second_run_makes_zero_requests_and_another_seed_asks_again(tmp_path, shards, server):
    first, stats = run("describe", 0, shards, tmp_path, server)
    assert stats["requests"] == 12
    sent, text = len(server.requests), first.read_text()
    first.unlink()  # as if results/ were deleted
    again, stats = run("describe", 0, shards, tmp_path, server)
    assert len(server.requests) == sent and stats["requests"] == 0 and stats["cache_hits"] == 12
    assert again.read_text() == text
    assert stats["prompt_tokens"] > 0  # token counts come from the cached answers
    _, stats = run("describe", 1, shards, tmp_path, server)
    assert stats["requests"] == 12 and len(server.requests) == sent + 12
    with ResponseCache(tmp_path / "cache.sqlite", "x", "y") as cache:
        assert len(cache) == 24


def test_requests_run_concurrently(tmp_path, shards, server):
    server.latency = 0.15
    started = time.perf_counter()
    run("describe", 0, shards, tmp_path, server, runtime={**FAST, "concurrency": 4})
    assert server.max_in_flight == 4
    assert time.perf_counter() - started < 12 * 0.15  # faster than one at a time


def test_faults_are_retried_without_lost_or_duplicated_rows(tmp_path, shards, server):
    clean, _ = run("describe", 0, shards, tmp_path, server, name="clean")
    reference = rows(clean)
    server.requests.clear()
    server.completed.clear()
    server.add_fault("429", times=2, retry_after="0.3")
    server.add_fault("500", times=2)
    server.add_fault("503", times=1)
    server.add_fault("timeout", times=1, delay=3)
    server.add_fault("malformed", times=1)
    server.add_fault("malformed", times=1, missing_choices=True)
    started = time.perf_counter()
    out, stats = run("describe", 7, shards, tmp_path, server, runtime={**FAST, "timeout_s": 0.5})
    assert not server.pending_faults()
    got = rows(out)
    # the same rows as a clean run, each asked successfully exactly once
    def key(r):
        return r["Model"], r["Rank"], r["Words"]

    assert [key(r) for r in got] == [key(r) for r in reference]
    assert Counter(user_messages(server.completed)) == Counter(r["Words"] for r in got)
    assert max(Counter(user_messages(server.completed)).values()) == 1
    assert stats["requests"] == 12
    assert time.perf_counter() - started >= 0.3  # the 429's Retry-After was waited
    retried = [r for r in server.requests if r.fault == "429"]
    # our retries, not the client's
    assert retried and all(r.headers.get("x-stainless-retry-count") == "0" for r in retried)


@pytest.mark.parametrize("header", [{"retry_after": "0"}, {"retry_after": None, "retry_after_ms": "0"},
                                    {"retry_after": None, "retry_after_ms": "5"},
                                    {"retry_after": "-1"}, {"retry_after": "nan"}])
def test_a_retry_waits_at_least_its_backoff_whatever_retry_after_asks(server, caplog, header):
    """`Retry-After: 0` (or OpenAI's few-ms `retry-after-ms`) replaced the backoff, so seven 429s spent
    every retry in half a second; -1 and nan stopped the job with a ValueError from time.sleep."""
    from workflow_scripts.openai_chat import OpenAIChat

    server.add_fault("429", times=3, **header)
    chat = OpenAIChat("gpt-test", server.url, KEY_ENV, concurrency=1, max_retries=3, backoff_s=0.05)
    with caplog.at_level("WARNING", logger="workflow_scripts.openai_chat"):
        response = chat.complete_one(STEPS["task"].request("Concept: Words are dates.", 0, 16))
    assert response.text == "coding; translation" and server.counts() == {429: 3, 200: 1}
    waits = [float(w) for w in re.findall(r"retrying in ([\d.]+) s", caplog.text)]
    assert len(waits) == 3 and all(w >= 0.05 * 2 ** n * 0.5 - 0.005 for n, w in enumerate(waits)), waits


def test_a_server_asking_for_milliseconds_is_waited_milliseconds_and_one_saying_no_retry_is_not_retried(server):
    """`retry-after-ms` counts milliseconds (read as seconds, a 250 ms ask slept 250 s, capped at five
    minutes), and `x-should-retry: false` overrides the status: a 500 so marked fails at once."""
    from workflow_scripts.openai_chat import OpenAIChat, retry_after_s

    request = STEPS["task"].request("Concept: Words are dates.", 0, 16)
    server.add_fault("429", times=1, retry_after="7", retry_after_ms="250")
    chat = OpenAIChat("gpt-test", server.url, KEY_ENV, concurrency=1, max_retries=0, backoff_s=0.01)
    with pytest.raises(ChatError, match="still failing after 0 retries") as failure:
        chat.complete_one(request)
    assert retry_after_s(failure.value.__cause__) == pytest.approx(0.25)

    server.add_fault("500", times=3, headers={"x-should-retry": "false"})
    chat = OpenAIChat("gpt-test", server.url, KEY_ENV, concurrency=1, max_retries=3, backoff_s=0.01)
    with pytest.raises(ChatError, match="refused the request"):
        chat.complete_one(request)
    assert server.counts() == {429: 1, 500: 1} and chat.retries == 0


@pytest.mark.parametrize("status", ["408", "409"])
def test_request_timeout_and_conflict_are_retried_as_the_openai_client_does(server, status):
    from workflow_scripts.openai_chat import OpenAIChat

    server.add_fault(status, times=2)
    chat = OpenAIChat("gpt-test", server.url, KEY_ENV, concurrency=1, max_retries=3, backoff_s=0.01)
    assert chat.complete_one(STEPS["task"].request("Concept: Words are dates.", 0, 16)).text
    assert server.counts() == {int(status): 2, 200: 1}


def test_a_spent_quota_fails_at_once_instead_of_retrying_like_a_rate_limit(server):
    """429 `insufficient_quota` does not pass with waiting: every thread of every job used to sleep
    through its whole backoff (about a minute) before the job failed."""
    from workflow_scripts.openai_chat import OpenAIChat

    server.add_fault("429", times=5, retry_after=None, code="insufficient_quota",
                     message="You exceeded your current quota, please check your plan and billing details.")
    chat = OpenAIChat("gpt-test", server.url, KEY_ENV, concurrency=1, max_retries=4, backoff_s=0.01)
    with pytest.raises(ChatError, match="refused the request.*exceeded your current quota"):
        chat.complete_one(STEPS["task"].request("Concept: Words are dates.", 0, 16))
    assert server.counts() == {429: 1}


def test_a_request_failing_for_good_fails_the_job_and_keeps_the_answers_it_had(tmp_path, shards, server):
    doomed = "Words: {}.".format(", ".join(f"tr4x{i}" for i in range(15)))
    server.add_fault("500", times=100, match=lambda body: body["messages"][-1]["content"] == doomed)
    with pytest.raises(ChatError, match="still failing after 2 retries"):
        run("describe", 0, shards, tmp_path, server, runtime={**FAST, "max_retries": 2})
    assert not (tmp_path / "out" / "describe_seed0.tsv").exists()
    server.clear_faults()
    before = len(server.requests)
    _, stats = run("describe", 0, shards, tmp_path, server)
    assert user_messages(server.requests[before:]) == [doomed]  # only the failed one is asked again
    assert stats["cache_hits"] == 11


def test_refusals_and_truncated_answers_are_recorded(tmp_path, shards, server):
    refuse = "Words: {}.".format(", ".join(f"br1x{i}" for i in range(15)))
    cut = "Words: {}.".format(", ".join(f"br3x{i}" for i in range(15)))
    server.add_fault("refusal", match=lambda b: b["messages"][-1]["content"] == refuse)
    server.add_fault("length", match=lambda b: b["messages"][-1]["content"] == cut, content="programming lang")
    out, stats = run("describe", 0, shards, tmp_path, server)
    got = {r["Words"]: r for r in rows(out)}
    assert (got[refuse]["Explainable"], got[refuse]["Summary"]) == ("0", "Refused: I can't help with that.")
    assert got[cut]["Summary"] == "programming lang"
    assert (stats["refused"], stats["truncated"]) == (1, 1)
    log = ResponseCache(tmp_path / "cache.sqlite", f"openai:{server.url}", "gpt-test")
    assert log.get(STEPS["describe"].request(refuse, 0, 32)).finish_reason == "refusal"


def test_an_answer_withheld_by_the_content_filter_is_recorded_as_a_refusal(tmp_path, shards, server):
    """A null answer whose finish_reason is `content_filter` is the endpoint refusing: written `Refused: ...`,
    counted refused and not described, never an empty summary."""
    withheld = "Words: {}.".format(", ".join(f"br1x{i}" for i in range(15)))
    server.add_fault("answer", match=lambda b: b["messages"][-1]["content"] == withheld, content=None,
                     finish_reason="content_filter")
    out, stats = run("describe", 0, shards, tmp_path, server)
    got = {r["Words"]: r for r in rows(out)}
    assert (got[withheld]["Explainable"], got[withheld]["Summary"]) == ("0", "Refused: content_filter")
    assert (stats["refused"], stats["empty"], stats["truncated"]) == (1, 0, 0)


def test_empty_answers_are_counted_and_warned_and_a_null_one_cut_short_is_not_paid_again(tmp_path, shards, server,
                                                                                          caplog):
    """An empty (or blank) answer silently became "not described": no count, no warning. A null answer cut
    by the token limit was taken as malformed and retried, each retry a paid 200, then failed the job."""
    empty = "Words: {}.".format(", ".join(f"br1x{i}" for i in range(15)))
    cut = "Words: {}.".format(", ".join(f"br3x{i}" for i in range(15)))
    server.add_fault("answer", content="   ", match=lambda b: b["messages"][-1]["content"] == empty)
    server.add_fault("answer", content=None, finish_reason="length",
                     match=lambda b: b["messages"][-1]["content"] == cut)
    with caplog.at_level("WARNING", logger="workflow_scripts.annotate"):
        out, stats = run("describe", 0, shards, tmp_path, server)
    got = {r["Words"]: r for r in rows(out)}
    assert (got[empty]["Explainable"], got[empty]["Summary"]) == ("0", "")
    assert (got[cut]["Explainable"], got[cut]["Summary"]) == ("0", "")
    assert server.counts() == {200: 12} and stats["retries"] == 0
    assert (stats["empty"], stats["truncated"]) == (2, 1)
    for rank in (1, 3):
        assert f"empty answer for base layer 0 rank {rank}" in caplog.text


def test_the_cost_counts_a_request_shared_by_several_rows_once(tmp_path, server):
    """Components of both models with the same words are one request; the tokens (and so cost_usd) were
    summed over rows, twice what was billed, and the shared rows were counted under no column."""
    folder = tmp_path / "in"
    folder.mkdir()
    shards = []
    for model in ("base", "tuned"):  # the same words in both models
        lines = ["\t".join(WORDS_COLUMNS)]
        lines += [f"{model}\tNA\t0\tFFN\t0\t{rank}\t0.1\t" + encode_words(f"br{rank}x{i}" for i in range(20))
                  for rank in range(1, 5)]
        (folder / f"{model}.tsv").write_text("\n".join(lines) + "\n")
        shards.append(str(folder / f"{model}.tsv"))
    _, stats = run("describe", 0, shards, tmp_path, server)
    billed = [sum(len(m["content"].split()) for m in r["messages"]) for r in server.completed]
    assert (stats["rows"], stats["requests"], stats["cache_hits"], stats["shared"]) == (8, 4, 0, 4)
    assert stats["prompt_tokens"] == stats["new_prompt_tokens"] == sum(billed)
    _, again = run("describe", 0, shards, tmp_path, server, name="again")
    assert (again["requests"], again["cache_hits"], again["shared"]) == (0, 8, 0)  # rows, as the first run's
    assert again["prompt_tokens"] == sum(billed) and again["new_prompt_tokens"] == 0


def test_bad_or_missing_key_fails_clearly_without_leaking_it(tmp_path, shards, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-456")
    with pytest.raises(ChatError, match="refused the request") as failure:
        run("describe", 0, shards, tmp_path, server)
    assert "sk-wrong-key-456" not in str(failure.value)
    assert len(server.requests) <= FAST["concurrency"]  # a 401 is not retried
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ChatError, match=f"environment variable {KEY_ENV} .* is not set"):
        run("describe", 0, shards, tmp_path, server)


def test_the_job_sends_to_the_endpoint_it_was_given_never_to_one_its_environment_names(monkeypatch):
    """The planner resolves OPENAI_BASE_URL into the job's endpoint; a variable set only where the job
    runs (a cluster node) would otherwise send its requests elsewhere than its params and cache say."""
    from workflow_scripts.openai_chat import OpenAIChat

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv(KEY_ENV, KEY)
    chat = OpenAIChat("gpt-test", None, KEY_ENV)
    assert str(chat.client.base_url).rstrip("/") == "https://api.openai.com/v1"
    assert chat.cache_scope == "openai:https://api.openai.com/v1"


def test_a_job_given_no_runtime_retries_and_times_out_as_the_configs_defaults_say(tmp_path, monkeypatch):
    """`python -m workflow_scripts.annotate` run by hand without --runtime takes the provider's code
    defaults: they must be the schema's, or such a job would give up (or wait) otherwise than the workflow's."""
    import yaml

    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    settings = schema["properties"]["annotation"]["properties"]["provider"]["properties"]
    monkeypatch.setenv(KEY_ENV, KEY)
    chat = annotate.make_provider({"kind": "openai", "model": "gpt-test", "api_key_env": KEY_ENV}, "describe", 0, {})
    assert (chat.concurrency, chat.max_retries, chat.timeout_s) == (
        settings["concurrency"]["default"], settings["max_retries"]["default"], settings["timeout_s"]["default"])
    assert chat.client.max_retries == 0 and chat.client.timeout == settings["timeout_s"]["default"]
    (tmp_path / "config.json").write_text("{}")  # a model folder: the local provider fingerprints it, loads nothing
    local = annotate.make_provider({"kind": "local", "path": str(tmp_path), "model": "m"}, "describe", 0, {})
    assert local.batch_size == settings["batch_size"]["default"]


def test_a_killed_job_resumes_without_repeating_a_completed_request(tmp_path, shards, server):
    held = "Words: {}.".format(", ".join(f"tr5x{i}" for i in range(15)))
    server.add_fault("hold", match=lambda b: b["messages"][-1]["content"] == held)
    cache = tmp_path / "cache.sqlite"
    out = tmp_path / "out" / "describe_seed0.tsv"
    command = [sys.executable, "-m", "workflow_scripts.annotate", "describe", "--seed", "0", "--inputs", *shards,
               "--output", str(out), "--stats", str(out.with_suffix(".json")),
               "--provider", json.dumps(provider(server)),
               "--cache", str(cache), "--runtime", json.dumps({**FAST, "concurrency": 2})]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert server.wait_held(1, timeout=60)
        # every other request is answered and cached while one stays held
        assert server.wait_until(lambda: len(server.completed) == 11, timeout=60)
        deadline = time.time() + 30
        while time.time() < deadline:
            with ResponseCache(cache, "x", "y") as reader:
                if len(reader) == 11:
                    break
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert not out.exists()
    completed_before = Counter(user_messages(server.completed))
    server.release()
    start = len(server.requests)
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    asked_again = user_messages(server.requests[start:])
    assert asked_again == [held]
    assert not set(asked_again) & set(completed_before)
    assert len(rows(out)) == 12


@pytest.fixture
def ctrl_c_reaches_children():
    """Jobs started as from an interactive shell, where Ctrl-C is delivered: pytest run in the background
    (`nohup ... &`, some CI runners) ignores SIGINT, every child inherits the ignore, and the job rightly
    keeps it. A handled signal is reset to its default at exec, so the job gets Python's usual Ctrl-C."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_keeps_the_answers_in_flight_and_does_not_wait_out_a_backoff(tmp_path, shards, monkeypatch,
                                                                             ctrl_c_reaches_children):
    """On SIGINT the thread pool's exit waited for every running request, including one sleeping in its
    backoff (here 30 s), and the answers that then arrived were thrown away: paid for, never cached."""
    monkeypatch.setenv(KEY_ENV, KEY)
    sleeper = "Words: {}.".format(", ".join(f"br1x{i}" for i in range(15)))
    with ChatServer(responder=responder, api_key=KEY, latency=2.0) as slow:
        slow.add_fault("429", retry_after="30", match=lambda b: b["messages"][-1]["content"] == sleeper)
        cache = tmp_path / "cache.sqlite"
        out = tmp_path / "out" / "describe_seed0.tsv"
        command = [sys.executable, "-m", "workflow_scripts.annotate", "describe", "--seed", "0", "--inputs", *shards,
                   "--output", str(out), "--stats", str(out.with_suffix(".json")),
                   "--provider", json.dumps(provider(slow)), "--api-key-env", KEY_ENV,
                   "--cache", str(cache), "--runtime", json.dumps({**FAST, "concurrency": 4})]
        job = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert slow.wait_until(lambda: len(slow.requests) >= 4, timeout=60)
            time.sleep(0.5)  # four in flight; the 429 comes with the others' answers, then its wait of 30 s
            interrupted = time.perf_counter()
            job.send_signal(signal.SIGINT)
            job.wait(timeout=60)
            stopped_s = time.perf_counter() - interrupted
        finally:
            if job.poll() is None:
                job.kill()
        in_flight = Counter(user_messages(slow.completed))
        assert job.returncode != 0 and not out.exists()
        assert stopped_s < 15, f"waited {stopped_s:.1f} s after Ctrl-C"
        with ResponseCache(cache, "x", "y") as reader:
            kept = len(reader)
        assert len(in_flight) == 3 and kept == 3  # every answer received was kept
        start = len(slow.requests)
        slow.clear_faults()
        subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
                       capture_output=True, timeout=120)
        assert not set(user_messages(slow.requests[start:])) & set(in_flight)  # none paid twice
        assert len(rows(out)) == 12


# --- concurrent jobs sharing one cache: each request is sent once, and every job writes what the cache holds ---

def wide_shards(folder: Path, ranks: int = 30) -> list[str]:
    """Lossless layer TSVs of two models with `ranks` components each (2 x ranks describe requests)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for model in ("base", "tuned"):
        lines = ["\t".join(WORDS_COLUMNS)]
        for rank in range(1, ranks + 1):
            words = encode_words(f"{model[0]}r{rank}x{i}" for i in range(20))
            lines.append(f"{model}\tNA\t0\tFFN\t0\t{rank}\t0.1\t{words}")
        path = folder / f"{model}.tsv"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    return paths


class SerialResponder:
    """A different answer every time, even to the same question: a request sent twice shows."""

    def __init__(self):
        self.count, self.lock = 0, threading.Lock()

    def __call__(self, body):
        with self.lock:
            self.count += 1
            return f"concept {self.count}."


def job_command(server, shards, workdir: Path, cache: Path, concurrency: int = 2) -> list[str]:
    return [sys.executable, "-m", "workflow_scripts.annotate", "describe", "--seed", "0", "--inputs", *shards,
            "--output", "out/describe_seed0.tsv", "--stats", "out/describe_seed0.json",
            "--provider", json.dumps({k: v for k, v in provider(server).items() if k != "api_key_env"}),
            "--api-key-env", KEY_ENV, "--cache", str(cache),
            "--runtime", json.dumps({**FAST, "concurrency": concurrency})]


def start_job(command, workdir: Path) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "job.log", "w")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


def cached_summaries(cache_path: Path, server, described: Path) -> list[str]:
    """What the cache holds for each row's request, as the describe step writes it."""
    with ResponseCache(cache_path, f"openai:{server.url}", "gpt-test") as cache:
        return [annotate.label_of(cache.get(STEPS["describe"].request(row["Words"], 0, 64)))
                for row in rows(described)]


@pytest.fixture
def serial_server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with ChatServer(responder=SerialResponder(), api_key=KEY, latency=0.3) as running:
        yield running


def test_two_processes_in_two_directories_send_each_request_once(tmp_path, serial_server):
    server = serial_server
    shards = wide_shards(tmp_path / "shards")
    cache = tmp_path / "shared" / "cache.sqlite"
    jobs = [start_job(job_command(server, shards, tmp_path / name, cache), tmp_path / name) for name in ("a", "b")]
    for name, job in zip(("a", "b"), jobs):
        assert job.wait(timeout=180) == 0, (tmp_path / name / "job.log").read_text()
    asked = Counter(user_messages(server.requests))
    assert len(asked) == 60 and max(asked.values()) == 1  # 60 requests, each sent once
    outputs = [tmp_path / name / "out" / "describe_seed0.tsv" for name in ("a", "b")]
    assert outputs[0].read_text() == outputs[1].read_text()
    assert [r["Summary"] for r in rows(outputs[0])] == cached_summaries(cache, server, outputs[0])
    stats = [json.loads((tmp_path / name / "out" / "describe_seed0.json").read_text()) for name in ("a", "b")]
    assert sum(s["requests"] for s in stats) == 60  # paid once in all
    assert all(s["requests"] + s["cache_hits"] == 60 for s in stats)
    assert any(s["from_other_jobs"] > 0 for s in stats)  # the jobs did overlap: one waited for the other's answers


def test_a_request_claimed_by_a_live_job_waits_for_it_and_a_killed_claimant_is_taken_over(tmp_path, serial_server):
    server = serial_server
    server.latency = 0.0
    shards = wide_shards(tmp_path / "shards", ranks=6)
    held = "Words: {}.".format(", ".join(f"tr5x{i}" for i in range(15)))
    server.add_fault("hold", match=lambda b: b["messages"][-1]["content"] == held)
    cache = tmp_path / "shared" / "cache.sqlite"
    first = start_job(job_command(server, shards, tmp_path / "a", cache), tmp_path / "a")
    second = None
    try:
        assert server.wait_held(1, timeout=60)
        assert server.wait_until(lambda: len(server.completed) == 11, timeout=60)
        second = start_job(job_command(server, shards, tmp_path / "b", cache), tmp_path / "b")
        deadline = time.time() + 60  # the second job answers 11 from the cache and waits for the claimed one
        while "claimed by other jobs" not in (tmp_path / "b" / "job.log").read_text() and time.time() < deadline:
            time.sleep(0.1)
        assert "claimed by other jobs" in (tmp_path / "b" / "job.log").read_text()
        time.sleep(1.0)
        assert second.poll() is None and user_messages(server.requests).count(held) == 1  # not asked again
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert second.wait(timeout=60) == 0, (tmp_path / "b" / "job.log").read_text()
    finally:
        for job in (first, second):
            if job is not None and job.poll() is None:
                job.kill()
                job.wait()
        server.release()
    assert user_messages(server.requests).count(held) == 2  # the killed job's, never answered, and the taker's
    assert Counter(user_messages(server.completed))[held] == 1
    output = tmp_path / "b" / "out" / "describe_seed0.tsv"
    assert len(rows(output)) == 12
    assert [r["Summary"] for r in rows(output)] == cached_summaries(cache, server, output)
