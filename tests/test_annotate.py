"""Annotation steps without a network: the paper's prompts, replay from annotation files, the
response cache, the output layouts and the cost report."""
import csv
import json
import logging
import math
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from workflow_scripts import annotate
from workflow_scripts.annotation_cost import cost_table
from workflow_scripts.annotation_cost import main as cost_main
from workflow_scripts.annotation_prompts import STEPS, concept_message, words_message
from workflow_scripts.chat import ChatError, ChatRequest, ChatResponse, messages, request_key
from workflow_scripts.chat_cache import ResponseCache
from workflow_scripts.table5 import read_seed_file
from workflow_scripts.tsv import LINEAR_COLUMNS, WORDS_COLUMNS, encode_words

LINEAR_HEADER = "\t".join(LINEAR_COLUMNS)


def layer_shard(path, model, layer, top_ks):
    """A lossless FFN layer shard (tsv.WORDS_COLUMNS), as explain_layer writes it."""
    lines = ["\t".join(WORDS_COLUMNS)]
    for rank, words in enumerate(top_ks, start=1):
        lines.append(f"{model}\tNA\t{layer}\tFFN\t0\t{rank}\t0.{rank:04d}\t{encode_words(words)}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def shards(tmp_path):
    words = [[f"w{r}x{i}" for i in range(20)] for r in range(3)]
    return [layer_shard(tmp_path / "base-0.tsv", "base", 0, words),
            layer_shard(tmp_path / "tuned-0.tsv", "tuned", 0, [w[::-1] for w in words])]


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_prompts_follow_the_paper():
    request = STEPS["describe"].request(words_message(["a", "b", "c"], 2), seed=3, max_tokens=40)
    assert request.messages[-1] == {"role": "user", "content": "Words: a, b."}
    assert request.messages[0]["role"] == "system" and "neuron interpreter" in request.messages[0]["content"]
    shots = request.messages[1:-1]
    assert [m["name"] for m in shots[:2]] == ["example_user", "example_assistant"]
    assert len(shots) == 10 and all(m["role"] == "system" for m in shots)
    assert (request.temperature, request.top_p, request.seed, request.max_tokens) == (1.0, 0.9, 3, 40)
    assert (STEPS["task"].temperature, STEPS["level"].temperature) == (0.0, 0.0)
    assert len(STEPS["task"].examples) == 8 and len(STEPS["level"].examples) == 10


def test_the_task_step_lower_cases_the_summary_and_the_level_step_sends_it_as_written():
    """The paper lower-cased the summary in the task prompt only: the message is what the endpoint reads,
    what the cache is keyed by and what replay looks the answer up by."""
    assert concept_message("Programming Languages.", "task") == "Concept: Words are programming languages."
    assert concept_message("Programming Languages.", "level") == "Concept: Words are Programming Languages."
    request = STEPS["level"].request(concept_message("Dates", "level"), seed=0, max_tokens=8)
    assert request.messages[-1] == {"role": "user", "content": "Concept: Words are Dates"}


def test_the_few_shot_examples_keep_the_papers_spelling():
    """The examples' misspellings are the paper's prompt (its numbers came from it); a corrected word
    would change every request, and with it every cache key and every answer."""
    describe = dict(STEPS["describe"].examples)
    assert "abbrevations and acronyms." in describe.values() and "programing languages." in describe.values()
    level = dict(STEPS["level"].examples)
    assert level["Concept: words are medical abbrivations."] == "Semantic"
    assert level["Concept: Words are programming languges."] == "Semantic"
    assert level["Concept: Words are abbrevations and acronyms."] == "Morphology"
    assert "can the given concept is used for?" in STEPS["task"].system and "seperate with ';'" in STEPS["task"].system


def test_request_key_covers_everything_that_changes_an_answer():
    base = STEPS["task"].request("Concept: Words are x", seed=0, max_tokens=8)
    key = request_key("openai", "m", base)
    assert request_key("openai", "m", STEPS["task"].request("Concept: Words are x", seed=0, max_tokens=8)) == key
    variants = [
        request_key("local", "m", base),
        request_key("openai", "m2", base),
        request_key("openai", "m", STEPS["task"].request("Concept: Words are y", seed=0, max_tokens=8)),
        request_key("openai", "m", STEPS["task"].request("Concept: Words are x", seed=1, max_tokens=8)),
        request_key("openai", "m", STEPS["task"].request("Concept: Words are x", seed=0, max_tokens=9)),
        request_key("openai", "m", STEPS["level"].request("Concept: Words are x", seed=0, max_tokens=8)),
    ]
    assert len({key, *variants}) == 7


def test_request_key_changes_with_temperature_and_top_p():
    """Sampling parameters change an answer: a cached greedy answer must not answer a sampled request."""
    def key(temperature, top_p):
        return request_key("openai", "m", ChatRequest(messages({"role": "user", "content": "x"}), temperature, top_p,
                                                      8, 0))

    assert len({key(0.0, 1.0), key(0.7, 1.0), key(0.0, 0.9)}) == 3


def test_request_key_does_not_depend_on_the_order_of_a_messages_fields():
    a = ChatRequest(messages({"role": "user", "content": "x", "name": "n"}), 0.0, 1.0, 8, 0)
    b = ChatRequest(messages({"name": "n", "content": "x", "role": "user"}), 0.0, 1.0, 8, 0)
    assert request_key("openai", "m", a) == request_key("openai", "m", b)


def test_request_key_of_a_request_is_the_one_earlier_versions_filed_its_answer_under():
    """Cached answers were paid for: the key of a request (non-ASCII text included, as UTF-8 and not as
    `\\u` escapes) must stay what it was, or every cached answer would be asked and billed again."""
    request = ChatRequest(messages({"role": "system", "content": "R\u00e9ponds en une phrase."},
                                   {"role": "user", "content": "Mots : caf\u00e9, na\u00efve"}), 0.0, 1.0, 64, 0)
    assert request_key("openai", "gpt-4o-mini", request) == \
        "d245aa557c744c67e8949d54e06adf48320cdeb535667e1df1ca0f1226e8e548"


def test_cache_round_trip_is_shared_between_connections_and_first_answer_wins(tmp_path):
    path = tmp_path / "cache.sqlite"
    request = STEPS["level"].request("Concept: Words are dates.", seed=0, max_tokens=8)
    first = ChatResponse("Semantic", "stop", 100, 1, 0.5, "fp_1")
    with ResponseCache(path, "openai", "m") as a, ResponseCache(path, "openai", "m") as b:
        assert a.get(request) is None
        assert a.put(request, first) == first
        assert b.put(request, ChatResponse("Syntax", "stop", 100, 1, 0.5, "fp_2")) == first  # what the cache holds
        assert b.get(request) == first
        assert ResponseCache(path, "openai", "other").get(request) is None
    rows = sqlite3.connect(path).execute("SELECT provider, model, request, response FROM responses").fetchall()
    assert len(rows) == 1 and json.loads(rows[0][3])["fingerprint"] == "fp_1"
    assert json.loads(rows[0][2])["seed"] == 0


def test_cache_survives_concurrent_writers(tmp_path):
    path = tmp_path / "cache.sqlite"

    def writer(offset):
        with ResponseCache(path, "openai", "m") as cache:
            for i in range(50):
                cache.put(STEPS["task"].request(f"Concept: Words are {offset + i}", 0, 8),
                          ChatResponse("None", "stop", 1, 1, 0.0, ""))

    threads = [threading.Thread(target=writer, args=(k * 25,)) for k in range(4)]  # overlapping keys
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with ResponseCache(path, "openai", "m") as cache:
        assert len(cache) == 125


def open_together(path, openers: int = 8) -> list[sqlite3.Error]:
    """Open one cache file from `openers` threads at the same moment; the errors they met."""
    barrier, errors = threading.Barrier(openers), []

    def open_cache():
        barrier.wait()
        try:
            with ResponseCache(path, "openai", "m") as cache:
                len(cache)
        except sqlite3.Error as error:
            errors.append(error)

    threads = [threading.Thread(target=open_cache) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_jobs_opening_a_new_cache_at_the_same_moment_all_open_it(tmp_path):
    """Annotation jobs of one run start together on a cache nobody has made yet. Switching a new
    file to WAL takes an exclusive lock, and SQLite answers a second switcher "database is locked"
    at once, without its busy timeout, where waiting could deadlock. A race: about one try in 50
    failed before the fix, so 8 openers try 400 times (threads: the locks are the file's)."""
    for trial in range(400):
        assert open_together(tmp_path / f"try{trial}" / "cache.sqlite") == [], f"try {trial}"


class RecordingProvider:
    """A provider that answers each request with `answer(request)` and records the last message of each asked."""
    provider, model = "openai", "m"

    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def stream(self, batch):
        self.asked.extend(r.messages[-1]["content"] for r in batch)
        for index, request in enumerate(batch):
            yield index, self.answer(request)


def test_a_job_writes_the_answer_the_cache_holds_when_another_job_answered_first(tmp_path):
    path = tmp_path / "cache.sqlite"
    requests = [STEPS["level"].request(f"Concept: Words are {w}.", 0, 8) for w in ("dates", "verbs", "dates")]

    class Racing:
        """Answers 'Semantic'; meanwhile another job (a connection of its own) files 'Syntax' for dates."""
        provider, model, retries = "openai", "m", 2

        def stream(self, asked):
            with ResponseCache(path, "openai", "m") as other:
                other.put(requests[0], ChatResponse("Syntax", "stop", 5, 1, 0.1, "fp_other"))
            for index, _ in enumerate(asked):
                yield index, ChatResponse("Semantic", "stop", 7, 1, 0.1, "fp_mine")

    with ResponseCache(path, "openai", "m") as cache:
        responses, counts = annotate.answer_all(requests, Racing(), cache, "t")
    assert [r.text for r in responses] == ["Syntax", "Semantic", "Syntax"]
    assert (counts["requests"], counts["superseded"], counts["new_prompt_tokens"], counts["retries"]) == (2, 1, 14, 2)
    assert counts["prompt_tokens"] == 5 + 7  # the distinct answers used, as the cache holds them, each once


def insert_claim(path, key, host, pid, started, heartbeat):
    db = sqlite3.connect(path)
    db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
               (key, f"{host}:{pid}:x", host, pid, started, heartbeat))
    db.commit()
    db.close()


def test_claims_hold_for_live_jobs_and_pass_on_when_the_claimant_is_gone(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    from workflow_scripts.chat_cache import process_start

    path = tmp_path / "cache.sqlite"
    keys = ["k1", "k2", "k3", "k4"]
    with ResponseCache(path, "openai", "m") as a, ResponseCache(path, "openai", "m", stale_after_s=60) as b:
        assert a.claim(keys, limit=2) == ["k1", "k2"]
        assert b.claim(keys, limit=10) == ["k3", "k4"]  # a is alive: its claims hold
        assert a.claim(keys, limit=10) == ["k1", "k2"]  # its own claims stay its own
        b.release()
        assert a.claim(keys, limit=10) == keys  # released claims are anyone's
        a.release()

        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        here, now = socket.gethostname(), time.time()
        insert_claim(path, "k1", here, gone.pid, "1", now)  # a process that has exited
        insert_claim(path, "k2", here, os.getpid(), "1", now)  # this pid, but started at another time: reused
        insert_claim(path, "k3", "elsewhere", 1, "1", now - 61)  # another host, silent for too long
        insert_claim(path, "k4", "elsewhere", 1, "1", now - 5)  # another host, beating
        assert b.claim(keys, limit=10) == ["k1", "k2", "k3"]
        insert_claim(path, "k4", here, os.getpid(), process_start(os.getpid()), now)  # alive here
        assert a.claim(["k4"], limit=10) == []


def test_a_claim_of_a_killed_but_unreaped_job_passes_on(tmp_path):
    """A zombie (killed, its parent has not collected it) still has a /proc entry: it must count as gone."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    from workflow_scripts.chat_cache import process_start

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = process_start(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    for _ in range(100):  # not waited for: a zombie until child.wait()
        if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    try:
        assert started and process_start(child.pid) is None
        path = tmp_path / "cache.sqlite"
        with ResponseCache(path, "openai", "m") as cache:
            insert_claim(path, "k1", socket.gethostname(), child.pid, started, time.time())
            assert cache.claim(["k1"], limit=1) == ["k1"]
    finally:
        child.wait()


def test_a_working_jobs_heartbeat_keeps_its_claims_past_the_stale_age(tmp_path):
    """Claims are refreshed every stale_after_s / 4 while the job runs; without that, a job slower than the
    stale age lost its claims and its requests were asked (and paid) twice."""
    import time

    path = tmp_path / "cache.sqlite"
    with ResponseCache(path, "openai", "m", stale_after_s=2) as working:
        assert working.claim(["k1"], limit=1) == ["k1"]
        time.sleep(3)
        with ResponseCache(path, "openai", "m", stale_after_s=2) as other:
            assert other.claim(["k1"], limit=1) == []  # still held: its heartbeat is recent


def test_a_job_answers_only_what_it_claimed_and_waits_for_the_rest(tmp_path):
    import time

    path = tmp_path / "cache.sqlite"
    requests = [STEPS["task"].request(f"Concept: Words are {i}.", 0, 8) for i in range(4)]
    other = ResponseCache(path, "openai", "m")
    held = [other.key(r) for r in requests[2:]]
    assert other.claim(held, limit=10) == held  # a live job is asking the last two
    provider = RecordingProvider(lambda request: ChatResponse("Writing", "stop", 1, 1, 0.0, ""))

    def answer_later():
        time.sleep(0.5)
        for request in requests[2:]:
            other.put(request, ChatResponse("Coding", "stop", 1, 1, 0.0, ""))

    thread = threading.Thread(target=answer_later)
    thread.start()
    with ResponseCache(path, "openai", "m") as cache:
        responses, counts = annotate.answer_all(requests, provider, cache, "t", poll_s=0.05)
    thread.join()
    other.close()
    assert provider.asked == ["Concept: Words are 0.", "Concept: Words are 1."]
    assert [r.text for r in responses] == ["Writing", "Writing", "Coding", "Coding"]
    assert (counts["requests"], counts["from_other_jobs"], counts["cache_hits"]) == (2, 2, 2)


def test_a_rerun_of_more_requests_than_one_cache_query_holds_asks_nothing_again(tmp_path):
    """The cache is read 500 keys to a query: a job of more requests (a 7B pair has thousands) must find
    every answer it holds at once, the first and last of each query too, never as another job's answer."""
    requests = [STEPS["level"].request(f"Concept: Words are {i}.", 0, 8) for i in range(1001)]
    provider = RecordingProvider(
        lambda request: ChatResponse(request.messages[-1]["content"].split()[-1], "stop", 3, 1, 0.0, ""))
    with ResponseCache(tmp_path / "cache.sqlite", "openai", "m") as cache:
        annotate.answer_all(requests, provider, cache, "t", chunk=1001)
    assert len(provider.asked) == 1001
    provider.asked.clear()
    with ResponseCache(tmp_path / "cache.sqlite", "openai", "m") as cache:
        responses, counts = annotate.answer_all(requests, provider, cache, "t")
    # every answer found as this job's own cache hit: none waited for as if a concurrent job held it
    assert provider.asked == []
    assert (counts["requests"], counts["cache_hits"], counts["from_other_jobs"]) == (0, 1001, 0)
    assert [r.text for r in responses[498:502]] == ["498.", "499.", "500.", "501."]


def write_replay(folder, seed, described, paper_header=False):
    """The per-seed files: described = {words message: (summary, task, level)}. `paper_header`: exactly
    as the paper's `run_chatgpt_annotate.py` wrote them, the question column headed `Tokens` and its
    newlines and tabs written `/n` and `/t`."""
    folder.mkdir(exist_ok=True)
    head = f"Explainable\t{'Tokens' if paper_header else 'Words'}\tSummary\t" + LINEAR_HEADER
    rows = [f"{int('cannot tell' not in s.lower())}\t{w.replace(chr(10), '/n').replace(chr(9), '/t')}\t{s}\t"
            "llama\t7B\t0\tFFN\t0\t1\t0.1\ta|||b" for w, (s, _, _) in described.items()]
    (folder / f"linear_seed{seed}.tsv").write_text("\n".join([head, *rows]) + "\n")
    keep = [(r, t, c) for r, (s, t, c) in zip(rows, described.values()) if "cannot tell" not in s.lower()]
    tasks = ["Task\t" + head, *(f"{t}\t{r}" for r, t, _ in keep)]
    concepts = ["Concept\t" + head, *(f"{c}\t{r}" for r, _, c in keep)]
    (folder / f"linear_task_seed{seed}.tsv").write_text("\n".join(tasks) + "\n")
    (folder / f"linear_concept_seed{seed}.tsv").write_text("\n".join(concepts) + "\n")


def run(step, seed, inputs, tmp_path, provider, **kwargs):
    out = tmp_path / "out" / f"{step}{seed}.tsv"
    stats = tmp_path / "out" / f"{step}{seed}.json"
    annotate.run_step(step, seed, inputs, str(out), str(stats), provider, str(tmp_path / "cache.sqlite"), **kwargs)
    return out, json.loads(stats.read_text())


def test_replay_reproduces_all_three_steps_in_the_paper_layout(tmp_path, shards):
    def words(model_rows, rank):
        return "Words: {}.".format(", ".join(model_rows[rank][:15]))

    base = [[f"w{r}x{i}" for i in range(20)] for r in range(3)]
    tuned = [w[::-1] for w in base]
    answers = {}
    for k, row in enumerate(base + tuned):
        summary = ["Dates.", "Cannot Tell.", "Programming Languages"][k % 3]
        answers["Words: {}.".format(", ".join(row[:15]))] = (summary, "coding" if k % 3 == 2 else "None", "Semantic")
    write_replay(tmp_path / "released", 2, answers)
    provider = {"kind": "replay", "path": str(tmp_path / "released")}

    described, stats = run("describe", 2, shards, tmp_path, provider)
    rows = read(described)
    assert list(rows[0]) == ["Explainable", "Words", "Summary", *LINEAR_COLUMNS]
    assert [(r["Model"], r["Rank"], r["Explainable"], r["Summary"]) for r in rows] == [
        ("base", "1", "1", "Dates."),
        ("base", "2", "0", "Cannot Tell."),
        ("base", "3", "1", "Programming Languages"),
        ("tuned", "1", "1", "Dates."),
        ("tuned", "2", "0", "Cannot Tell."),
        ("tuned", "3", "1", "Programming Languages"),
    ]
    assert rows[0]["Words"] == words(base, 0)
    assert rows[0]["TopK"] == "|||".join(base[0])  # the paper's layout
    assert stats["rows"] == 6 and stats["described"] == 4 and stats["requests"] == 6 and stats["cache_hits"] == 0

    tasks, stats = run("task", 2, [str(described)], tmp_path, provider)
    assert [r["Task"] for r in read(tasks)] == ["None", "coding", "None", "coding"]
    assert stats["rows"] == 4
    levels, _ = run("level", 2, [str(described)], tmp_path, provider)
    assert [r["Concept"] for r in read(levels)] == ["Semantic"] * 4
    # the files Table 5 reads
    assert len(read_seed_file(tasks, "Task")) == 4 and len(read_seed_file(levels, "Concept")) == 4
    # replay answers are never written to the response cache
    assert not (tmp_path / "cache.sqlite").exists()


def test_replay_finds_the_task_and_level_answers_of_a_summary_written_with_extra_spaces(tmp_path, shards):
    """The paper deleted an answer's line breaks and tabs but kept its spaces, so a released Summary can
    end in one or hold two; describe writes it folded to one line, and task and level ask with that:
    the replay once looked them up as written and stopped ("never asked 'Concept: Words are dates.'")."""
    answers = {}
    for k, row in enumerate([[f"w{r}x{i}" for i in range(20)] for r in range(3)]):
        for words in (row, row[::-1]):
            summary, task = [("Dates. ", "None"), ("Programming  Languages", "coding"), (" Months\u00a0", "writing")][k]
            answers["Words: {}.".format(", ".join(words[:15]))] = (summary, task, "Semantic")
    write_replay(tmp_path / "released", 0, answers)
    provider = {"kind": "replay", "path": str(tmp_path / "released")}
    described, _ = run("describe", 0, shards, tmp_path, provider)
    assert [r["Summary"] for r in read(described)] == ["Dates.", "Programming Languages", "Months"] * 2
    tasks, _ = run("task", 0, [str(described)], tmp_path, provider)
    assert [r["Task"] for r in read(tasks)] == ["None", "coding", "writing"] * 2
    levels, _ = run("level", 0, [str(described)], tmp_path, provider)
    assert [r["Concept"] for r in read(levels)] == ["Semantic"] * 6


def test_replay_says_how_many_rows_of_its_file_the_run_never_asked(tmp_path, shards, caplog):
    """Rows a run does not ask (components beyond max_rank, another pair's models, a file of a larger
    run) are legitimate, but a Table 5 from fewer rows than the file holds should say so in the log."""
    answers = {"Words: {}.".format(", ".join(row[:15])): ("Dates.", "None", "Semantic")
               for row in [[f"w{r}x{i}" for i in range(20)] for r in range(3)] for row in (row, row[::-1])}
    answers["Words: asked by nobody."] = ("Months.", "None", "Semantic")
    write_replay(tmp_path / "released", 0, answers)
    provider = {"kind": "replay", "path": str(tmp_path / "released")}
    with caplog.at_level(logging.INFO, logger="workflow_scripts.annotate"):
        described, _ = run("describe", 0, shards, tmp_path, provider)
    assert "1 of 7 rows of" in caplog.text and "linear_seed0.tsv were not asked by this run" in caplog.text
    assert "'Words: asked by nobody.'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workflow_scripts.annotate"):
        run("task", 0, [str(described)], tmp_path, provider)
    assert "1 of 7 rows of" in caplog.text and "linear_task_seed0.tsv were not asked" in caplog.text


def test_replay_counts_the_rows_it_never_asked_not_the_questions(tmp_path, shards):
    """A question the run never asked can stand on several rows of the file (one per model): the log line
    says how many rows the tables lack, so each of them counts."""
    answers = {"Words: {}.".format(", ".join(row[:15])): ("Dates.", "None", "Semantic")
               for row in [[f"w{r}x{i}" for i in range(20)] for r in range(3)] for row in (row, row[::-1])}
    answers["Words: asked by nobody."] = ("Months.", "None", "Semantic")
    write_replay(tmp_path / "released", 0, answers)
    described = tmp_path / "released" / "linear_seed0.tsv"
    unasked = described.read_text().splitlines()[-1]
    described.write_text(described.read_text() + unasked.replace("\tllama\t", "\tvicuna\t") + "\n")
    replay = annotate.make_provider({"kind": "replay", "path": str(tmp_path / "released")}, "describe", 0, {})
    list(replay.stream(annotate.describe_requests(
        [row for shard in shards for row in annotate.component_rows(shard)], 0, 15, 64)))
    assert replay.not_asked().startswith(f"replay: 2 of 8 rows of {described} were not asked by this run")


def test_replayed_answers_are_neither_truncated_nor_refused(tmp_path, shards, caplog):
    """An answer read back from a file is whole: the stats (the cost report's truncated and refused
    columns) count none, and the log warns of none."""
    answers = {"Words: {}.".format(", ".join(row[:15])): ("Dates.", "None", "Semantic")
               for row in [[f"w{r}x{i}" for i in range(20)] for r in range(3)] for row in (row, row[::-1])}
    write_replay(tmp_path / "released", 0, answers)
    with caplog.at_level(logging.WARNING, logger="workflow_scripts.annotate"):
        _, stats = run("describe", 0, shards, tmp_path, {"kind": "replay", "path": str(tmp_path / "released")})
    assert (stats["rows"], stats["described"], stats["truncated"], stats["refused"], stats["empty"]) == (6, 6, 0, 0, 0)
    assert "length answer" not in caplog.text


def test_replay_refuses_a_question_its_files_never_asked(tmp_path, shards):
    write_replay(tmp_path / "released", 0, {"Words: other.": ("Dates.", "None", "Semantic")})
    with pytest.raises(ChatError, match=r"linear_seed0\.tsv never asked 'Words: w0x0"):
        run("describe", 0, shards, tmp_path, {"kind": "replay", "path": str(tmp_path / "released")})
    with pytest.raises(ChatError, match=r"linear_seed1\.tsv does not exist"):
        run("describe", 1, shards, tmp_path, {"kind": "replay", "path": str(tmp_path / "released")})
    assert not (tmp_path / "out" / "describe0.tsv").exists()


def test_replay_reads_the_papers_own_released_files(tmp_path):
    """The paper's files head the question column `Tokens` (ours: `Words`) and escape its newlines and
    tabs; a word holding one (the lossless layer files keep any word) is asked, written and replayed."""
    words = [["line\nbreak", "tab\tbed", *(f"w0x{i}" for i in range(18))], [f"w1x{i}" for i in range(20)]]
    shard = layer_shard(tmp_path / "base-0.tsv", "base", 0, words)
    answers = {words_message(words[0], 15): ("Odd Words.", "None", "Morphology"),
               words_message(words[1], 15): ("Dates.", "coding", "Semantic")}
    write_replay(tmp_path / "released", 0, answers, paper_header=True)
    replay = {"kind": "replay", "path": str(tmp_path / "released")}
    described, stats = run("describe", 0, [shard], tmp_path, replay)
    rows = read(described)
    assert [r["Summary"] for r in rows] == ["Odd Words.", "Dates."] and stats["described"] == 2
    assert rows[0]["Words"].startswith("Words: line/nbreak, tab/tbed, w0x0")  # one line, the paper's escapes
    tasks, _ = run("task", 0, [str(described)], tmp_path, replay)
    levels, _ = run("level", 0, [str(described)], tmp_path, replay)
    assert [r["Task"] for r in read(tasks)] == ["None", "coding"]
    assert [r["Concept"] for r in read(levels)] == ["Morphology", "Semantic"]


def test_replay_gives_each_row_its_own_answer_where_a_question_repeats(tmp_path):
    """The paper asked every row on its own at temperature 1, so two models' components with the same
    words can hold different answers; each row gets its own, never the first row's."""
    words = [f"w{i}" for i in range(20)]
    shards = [layer_shard(tmp_path / f"{model}-3.tsv", model, 3, [words]) for model in ("base", "tuned")]
    question = words_message(words, 15)
    folder = tmp_path / "released"
    folder.mkdir()
    head = "Explainable\tTokens\tSummary\t" + LINEAR_HEADER
    rows = [f"1\t{question}\tDates.\tbase\t7B\t3\tFFN\t0\t1\t0.1\ta",
            f"0\t{question}\tCannot Tell.\ttuned\t7B\t3\tFFN\t0\t1\t0.1\ta"]
    (folder / "linear_seed0.tsv").write_text("\n".join([head, *rows]) + "\n")
    described, stats = run("describe", 0, shards, tmp_path, {"kind": "replay", "path": str(folder)})
    assert [(r["Model"], r["Summary"], r["Explainable"]) for r in read(described)] == [
        ("base", "Dates.", "1"), ("tuned", "Cannot Tell.", "0")]
    assert stats["described"] == 1

    # a file naming its models otherwise cannot tell whose answer is whose: an error, not a guess
    (folder / "linear_seed0.tsv").write_text("\n".join(
        [head, *(r.replace("base\t", "llama\t").replace("tuned\t", "vicuna\t") for r in rows)]) + "\n")
    with pytest.raises(ChatError, match=r"linear_seed0\.tsv answers 'Words: w0, .* differently .* llama, vicuna"):
        run("describe", 0, shards, tmp_path, {"kind": "replay", "path": str(folder)})


def test_max_rank_keeps_the_top_components_only(tmp_path, shards):
    answers = {}
    for row in [[f"w{r}x{i}" for i in range(20)] for r in range(3)]:
        answers["Words: {}.".format(", ".join(row[:15]))] = ("Dates.", "None", "Semantic")
        answers["Words: {}.".format(", ".join(row[::-1][:15]))] = ("Dates.", "None", "Semantic")
    write_replay(tmp_path / "released", 0, answers)
    replay = {"kind": "replay", "path": str(tmp_path / "released")}
    out, _stats = run("describe", 0, shards, tmp_path, replay, max_rank=2)
    ranks = [(r["Model"], r["Rank"]) for r in read(out)]
    assert ranks == [("base", "1"), ("base", "2"), ("tuned", "1"), ("tuned", "2")]


def test_a_local_model_is_named_as_the_config_says_else_after_its_folder(tmp_path):
    """The name goes into the stats (the cost report's model column) and the cache key: `model:` names it,
    `model: null` takes the folder's name."""
    folder = tmp_path / "SmolLM2-135M-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # a model folder: fingerprinted, never loaded here
    named = annotate.make_provider({"kind": "local", "path": str(folder), "model": "smol"}, "describe", 0, {})
    assert named.model == "smol" and named.cache_model.startswith(f"smol {named.fingerprint} ")
    unnamed = annotate.make_provider({"kind": "local", "path": str(folder), "model": None}, "describe", 0, {})
    assert unnamed.model == "SmolLM2-135M-Instruct" and unnamed.fingerprint == named.fingerprint


def test_bad_input_names_the_file_and_line(tmp_path):
    bad = tmp_path / "layer.tsv"
    bad.write_text("\t".join(WORDS_COLUMNS) + "\nbase\tNA\t0\tFFN\t0\t1\n")
    with pytest.raises(ValueError, match=r"layer\.tsv: line 2: expected 8 tab-separated fields .* found 6"):
        annotate.component_rows(bad)


def test_labels_record_refusals_and_strip_layout_characters():
    refused = ChatResponse("", "refusal", 10, 0, 0.1, "", refusal="I can't\thelp.")
    assert annotate.label_of(refused) == "Refused: I can't help."
    assert not annotate.is_described(annotate.label_of(refused), refused)
    ok = ChatResponse("Programming\nlanguages.\t", "stop", 10, 3, 0.1, "")
    assert annotate.label_of(ok) == "Programming languages."
    assert annotate.is_described("Programming languages.", ok)
    assert not annotate.is_described("cannot tell.", ok) and not annotate.is_described("", ok)


def test_cost_report_prices_tokens_per_model(tmp_path):
    files = []
    for seed, step, requests, hits in ((0, "task", 3, 1), (0, "describe", 4, 0), (1, "describe", 0, 4)):
        stats = {"pair": "p", "step": step, "seed": seed, "provider": "openai", "model": "gpt", "rows": 4,
                 "requests": requests, "cache_hits": hits, "prompt_tokens": 1000, "completion_tokens": 100,
                 "new_prompt_tokens": 250 * requests, "new_completion_tokens": 25 * requests,
                 "refused": 0, "truncated": 1, "retries": seed + 2}
        path = tmp_path / f"{step}{seed}.json"
        path.write_text(json.dumps(stats))
        files.append(str(path))
    table = cost_table(files, {"gpt": {"prompt": 2.0, "completion": 10.0}})
    assert list(table["step"]) == ["describe", "task", "describe", "total"]
    assert list(table["seed"][:3]) == [0, 0, 1]
    # 1000 prompt tokens at $2/M + 100 completion tokens at $10/M = $0.003 per step
    assert table["cost_usd"].iloc[0] == pytest.approx(0.003)
    assert table["cost_usd_last_run"].tolist()[:3] == pytest.approx([0.003, 0.00225, 0.0])
    total = table.iloc[-1]
    assert (total.requests, total.cache_hits, total.truncated, total.retries) == (7, 5, 3, 2 + 2 + 3)
    assert total.cost_usd == pytest.approx(0.009)
    assert math.isnan(cost_table(files, {})["cost_usd"].iloc[-1])  # no price: n/a, never 0


def write_stats(path, **fields):
    stats = {"pair": "p", "step": "describe", "seed": 0, "provider": "openai", "model": "gpt", "rows": 4,
             "requests": 4, "cache_hits": 0, "prompt_tokens": 1000, "completion_tokens": 100,
             "new_prompt_tokens": 1000, "new_completion_tokens": 100, "refused": 0, "truncated": 0,
             "retries": 0, "shared": 0, "empty": 0, **fields}
    path.write_text(json.dumps({k: v for k, v in stats.items() if v is not None}))
    return str(path)


def test_cost_report_orders_the_steps_describe_task_level_within_a_seed(tmp_path):
    files = [write_stats(tmp_path / f"{step}.json", step=step) for step in ("level", "describe", "task")]
    assert list(cost_table(files, {})["step"]) == ["describe", "task", "level", "total"]


def test_cost_report_prices_a_local_annotator_at_zero_not_n_a(tmp_path):
    files = [write_stats(tmp_path / "describe.json", provider="local", model="smollm2-135m-instruct")]
    table = cost_table(files, {"gpt": {"prompt": 2.0, "completion": 10.0}})
    assert table["cost_usd"].tolist() == [0.0, 0.0] and table["cost_usd_last_run"].tolist() == [0.0, 0.0]


def test_cost_report_counts_empty_answers_and_leaves_counts_old_stats_lack_n_a(tmp_path):
    """`empty` is the stats file's count; stats written before `retries`, `shared` and `empty` were counted
    give n/a in those columns and their total, never a made-up 0."""
    files = [write_stats(tmp_path / "new.json", empty=2, retries=1, shared=1),
             write_stats(tmp_path / "old.json", step="task", retries=None, shared=None, empty=None)]
    table = cost_table(files, {})
    assert table["empty"].iloc[0] == 2 and table["retries"].iloc[0] == 1 and table["shared"].iloc[0] == 1
    for column in ("empty", "retries", "shared"):
        assert math.isnan(table[column].iloc[1]) and math.isnan(table[column].iloc[-1]), column


def test_cost_report_command_titles_the_table_with_its_pair(tmp_path):
    stats = write_stats(tmp_path / "describe.json")
    cost_main(["--stats", stats, "--pair", "demo", "--output", str(tmp_path / "cost.tsv")])
    assert (tmp_path / "cost.md").read_text().startswith("# Annotation cost (demo)\n")
    cost_main(["--stats", stats, "--title", "Spend", "--output", str(tmp_path / "spend.tsv")])
    assert (tmp_path / "spend.md").read_text().startswith("# Spend\n")


def test_request_json_round_trip():
    request = ChatRequest(({"role": "user", "content": "x"},), 0.0, 0.9, 8, 1)
    response = ChatResponse("a", "length", 3, 8, 0.2, "fp", None)
    assert ChatResponse.from_json(json.loads(json.dumps(response.to_json()))) == response
    assert request.to_json()["messages"] == [{"role": "user", "content": "x"}]


def test_describe_reads_separator_words_from_the_lossless_shards(tmp_path):
    """`|` and `||` are vocabulary words: the question lists them as they are, and the output's TopK
    is the escaped export (tsv.join_words), which reads back to the same words."""
    from workflow_scripts.tsv import split_words

    top = ["|", "||", "a", "|||", "b=c"] + [f"w{i}" for i in range(15)]
    shard = layer_shard(tmp_path / "m-0.tsv", "m", 0, [top])
    answers = {"Words: |, ||, a, |||, b=c, w0, w1, w2, w3, w4, w5, w6, w7, w8, w9.": ("Pipes.", "None", "Semantic")}
    write_replay(tmp_path / "released", 0, answers)
    described, _ = run("describe", 0, [shard], tmp_path, {"kind": "replay", "path": str(tmp_path / "released")})
    (out,) = read(described)
    assert out["Summary"] == "Pipes." and out["Explainable"] == "1"
    assert split_words(out["TopK"]) == top


MOUNTS = """overlay / overlay rw 0 0
/dev/sda1 /home ext4 rw 0 0
server:/export /home/shared nfs4 rw,vers=4.2 0 0
/dev/sdb1 /home/shared/local\\040disk xfs rw 0 0
"""


def test_a_cache_on_a_network_filesystem_is_named_by_its_longest_mount_point(tmp_path):
    """SQLite's WAL needs one host and locks a network filesystem may not keep: the job warns."""
    from workflow_scripts.chat_cache import network_filesystem

    assert network_filesystem(Path("/home/shared/run/resources"), MOUNTS) == "nfs4"
    assert network_filesystem(Path("/home/shared"), MOUNTS) == "nfs4"
    assert network_filesystem(Path("/home/shared/local disk/cache"), MOUNTS) is None  # xfs below the nfs mount
    assert network_filesystem(Path("/home/sharedness"), MOUNTS) is None  # a prefix is not a parent
    assert network_filesystem(tmp_path) is None  # this machine's own mount table: a local disk


def test_of_two_mounts_on_one_point_the_later_one_the_path_is_on_is_named(tmp_path):
    """/proc/self/mounts lists a mount over another on the same point after it, and the later one is what
    the path is on: an autofs direct map (common on clusters) mounts NFS over its own autofs entry."""
    from workflow_scripts.chat_cache import network_filesystem

    mounts = "auto.direct /data autofs rw 0 0\nserver:/export /data nfs4 rw 0 0\n"
    assert network_filesystem(Path("/data/run/resources/annotation"), mounts) == "nfs4"
    assert network_filesystem(Path("/data/run"), "server:/export /data nfs4 rw 0 0\ntmpfs /data tmpfs rw 0 0\n") is None


def test_replay_refuses_a_row_that_does_not_fill_its_header_and_keeps_a_carriage_return_in_its_answer(tmp_path, shards):
    """The replay read its files with the csv module: a short row gave the answer None, a lone carriage
    return ended a row (the answer cut there, the rest read as another row), extra fields were dropped."""
    write_replay(tmp_path / "released", 0, {"Words: other.": ("Dates.", "None", "Semantic")})
    described = tmp_path / "released" / "linear_seed0.tsv"
    head, first = described.read_text().splitlines()
    described.write_text(f"{head}\n{first}\n1\tWords: short.\tSummary only\n")
    with pytest.raises(ValueError, match=r"linear_seed0\.tsv: line 3: expected 11 tab-separated fields"):
        run("describe", 0, shards, tmp_path, {"kind": "replay", "path": str(tmp_path / "released")})
    from workflow_scripts.replay import answers

    described.write_text(head + "\n" + first.replace("Dates.", "Dates,\rTimes.") + "\n")
    assert answers(tmp_path / "released", "describe", 0) == {
        "Words: other.": [(("llama", "0", "1"), "Dates,\rTimes.")]}
