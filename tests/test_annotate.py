"""Annotation steps without a network: the paper's prompts, replay from annotation files, the
response cache, the output layouts and the cost report."""
import csv
import json
import math
import sqlite3
import threading

import pytest

from workflow_scripts import annotate
from workflow_scripts.annotation_cost import cost_table
from workflow_scripts.annotation_prompts import STEPS, words_message
from workflow_scripts.chat import ChatError, ChatRequest, ChatResponse, request_key
from workflow_scripts.chat_cache import ResponseCache
from workflow_scripts.tsv import LINEAR_COLUMNS, WORDS_COLUMNS, encode_words
from workflow_scripts.table5 import read_seed_file

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


def test_cache_round_trip_is_shared_between_connections_and_first_answer_wins(tmp_path):
    path = tmp_path / "cache.sqlite"
    request = STEPS["level"].request("Concept: Words are dates.", seed=0, max_tokens=8)
    first = ChatResponse("Semantic", "stop", 100, 1, 0.5, "fp_1")
    with ResponseCache(path, "openai", "m") as a, ResponseCache(path, "openai", "m") as b:
        assert a.get(request) is None
        a.put(request, first)
        b.put(request, ChatResponse("Syntax", "stop", 100, 1, 0.5, "fp_2"))
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


def write_replay(folder, seed, described):
    """The paper's per-seed files: described = {words message: (summary, task, level)}."""
    folder.mkdir(exist_ok=True)
    head = "Explainable\tWords\tSummary\t" + LINEAR_HEADER
    rows = [f"{int('cannot tell' not in s.lower())}\t{w}\t{s}\tllama\t7B\t0\tFFN\t0\t1\t0.1\ta|||b"
            for w, (s, _, _) in described.items()]
    (folder / f"linear_seed{seed}.tsv").write_text("\n".join([head, *rows]) + "\n")
    keep = [(r, t, c) for r, (s, t, c) in zip(rows, described.values()) if "cannot tell" not in s.lower()]
    (folder / f"linear_task_seed{seed}.tsv").write_text("\n".join(["Task\t" + head, *(f"{t}\t{r}" for r, t, _ in keep)]) + "\n")
    (folder / f"linear_concept_seed{seed}.tsv").write_text("\n".join(["Concept\t" + head, *(f"{c}\t{r}" for r, _, c in keep)]) + "\n")


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
        ("base", "1", "1", "Dates."), ("base", "2", "0", "Cannot Tell."), ("base", "3", "1", "Programming Languages"),
        ("tuned", "1", "1", "Dates."), ("tuned", "2", "0", "Cannot Tell."), ("tuned", "3", "1", "Programming Languages"),
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


def test_replay_refuses_a_question_its_files_never_asked(tmp_path, shards):
    write_replay(tmp_path / "released", 0, {"Words: other.": ("Dates.", "None", "Semantic")})
    with pytest.raises(ChatError, match=r"linear_seed0\.tsv never asked 'Words: w0x0"):
        run("describe", 0, shards, tmp_path, {"kind": "replay", "path": str(tmp_path / "released")})
    with pytest.raises(ChatError, match=r"linear_seed1\.tsv does not exist"):
        run("describe", 1, shards, tmp_path, {"kind": "replay", "path": str(tmp_path / "released")})
    assert not (tmp_path / "out" / "describe0.tsv").exists()


def test_max_rank_keeps_the_top_components_only(tmp_path, shards):
    answers = {}
    for row in [[f"w{r}x{i}" for i in range(20)] for r in range(3)]:
        answers["Words: {}.".format(", ".join(row[:15]))] = ("Dates.", "None", "Semantic")
        answers["Words: {}.".format(", ".join(row[::-1][:15]))] = ("Dates.", "None", "Semantic")
    write_replay(tmp_path / "released", 0, answers)
    out, _stats = run("describe", 0, shards, tmp_path, {"kind": "replay", "path": str(tmp_path / "released")}, max_rank=2)
    assert [(r["Model"], r["Rank"]) for r in read(out)] == [("base", "1"), ("base", "2"), ("tuned", "1"), ("tuned", "2")]


def test_bad_input_names_the_file_and_line(tmp_path):
    bad = tmp_path / "layer.tsv"
    bad.write_text(LINEAR_HEADER + "\nbase\tNA\t0\tFFN\t0\t1\n")
    with pytest.raises(ValueError, match=r"layer\.tsv:2: 6 fields, expected 8"):
        annotate.read_rows(bad, LINEAR_COLUMNS)


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
                 "refused": 0, "truncated": 1}
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
    assert (total.requests, total.cache_hits, total.truncated) == (7, 5, 3)
    assert total.cost_usd == pytest.approx(0.009)
    assert math.isnan(cost_table(files, {})["cost_usd"].iloc[-1])  # no price: n/a, never 0


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
