"""The paid annotation path as users run it: real Snakemake on a copy of the workflow, the openai
provider pointed at the local chat server (tests/chat_server.py) that requires a bearer key and
injects faults; where the key check sits (dry runs, --summary, --list-changes, real runs with and
without outputs); what changing only the key's name reruns.

To stay fast, the demo config is restricted: two tiny random LLaMA models (2 layers, built here,
not trained), the top 2 components of each layer annotated, one seed. The FFN outputs are built
once per module by Snakemake (`snakemake ffn`), then the annotation runs on top of them.
"""
import os
import time
import zlib
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from chat_server import ChatServer
from conftest import clone_run
from test_workflow import copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.workflow

KEY_ENV = "SHIFTLENS_WORKFLOW_TEST_KEY"
KEY = "sk-wf-7f3a9c41e2d8b6"  # a value to grep for: it must reach the server and no file
LAYERS, MAX_RANK = 2, 2
DESCRIBE_ROWS = 2 * LAYERS * MAX_RANK  # two models


def responder(body):
    """Describe: 'Cannot Tell' for about a quarter of the components, else a concept; task and level: a label."""
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    if "neuron interpreter" in system:
        return "Cannot Tell." if zlib.crc32(user.encode()) % 4 == 0 else f"concept {zlib.crc32(user.encode()) % 97}."
    return "Coding" if "assistant tasks" in system else "Semantic"


def tiny_models(folder: Path) -> None:
    """Two untrained LLaMA models sharing a tokenizer, and a vocabulary of the words they know."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workflow_scripts.demo_models import train_tokenizer

    words = [f"{a}{b}" for a in ("cat", "dog", "sun", "sea", "tree", "rain", "book", "song") for b in ("", "s", "ly")]
    (folder / "corpus.txt").write_text(" ".join(words * 30) + "\n")
    (folder / "vocabulary.tsv").write_text("".join(f"{w}\t{100 - i}\n" for i, w in enumerate(words)))
    for seed, name in enumerate(("demo-base", "demo-tuned")):
        train_tokenizer(folder / "corpus.txt", folder / name, vocab_size=300)
        tokenizer = AutoTokenizer.from_pretrained(folder / name)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
                                             num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2))
        model.save_pretrained(folder / name)


def annotation_config(work: Path, server: ChatServer, **provider) -> dict:
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["models"] = {name: {"path": f"models/{name}", "gpus": 0} for name in ("demo-base", "demo-tuned")}
    config["vocabulary"] = "models/vocabulary.tsv"
    config["ffn"] = {"rank": 4, "top_k": 20, "gpus": 0}
    config["annotation"].update(seeds=[0], max_rank=MAX_RANK, cache="resources/annotation/cache.sqlite")
    config["annotation"]["provider"] = {"kind": "openai", "model": "gpt-test", "base_url": server.url,
                                        "api_key_env": KEY_ENV, "concurrency": 4, "max_retries": 10,
                                        "timeout_s": 1, **provider}
    return config


def write_config(work: Path, name: str, config: dict) -> str:
    (work / name).write_text(yaml.safe_dump(config))
    return name


@pytest.fixture(scope="module")
def server():
    """Requires the key; 30 % of the authorised requests get a 429, 500, 503, timeout or malformed answer."""
    with ChatServer(responder=responder, api_key=KEY, fault_rate=0.3, fault_seed=10,
                    fault_kinds=("429", "500", "503", "timeout", "malformed"),
                    fault_options={"timeout": {"delay": 3}}) as running:
        yield running


@pytest.fixture(scope="module")
def ffn_work(tmp_path_factory, server):
    """A workflow copy whose FFN layer outputs Snakemake has built (no annotation yet)."""
    work = copy_workflow(tmp_path_factory.mktemp("annotation-workflow"))
    (work / "models").mkdir()
    tiny_models(work / "models")
    write_config(work, "openai.yaml", annotation_config(work, server))
    snakemake(work, "ffn", "--configfile", "openai.yaml")  # no annotation job: needs no key
    return work


@pytest.fixture(scope="module")
def annotated(ffn_work, server):
    """`snakemake table5` with the key in the environment; the server's requests of that run."""
    os.environ[KEY_ENV] = KEY
    try:
        before = len(server.requests)
        run = snakemake(ffn_work, "table5", "--configfile", "openai.yaml")
    finally:
        del os.environ[KEY_ENV]
    return ffn_work, server.requests[before:], run


def test_the_paid_path_sends_the_key_completes_every_row_counts_retries_and_stores_no_key(annotated):
    work, requests, _ = annotated
    assert requests and all(r.headers.get("authorization") == f"Bearer {KEY}" for r in requests)
    assert 401 not in Counter(r.status for r in requests)
    faults = Counter(r.fault for r in requests if r.fault)
    assert sum(faults.values()) >= 0.15 * len(requests) and len(faults) >= 4  # faults of most kinds did fire
    answered = Counter((r["messages"][0]["content"], r["messages"][-1]["content"])  # (step's system prompt, question)
                       for r in requests if r.status == 200 and r.fault is None)
    assert max(answered.values()) == 1  # every question answered once

    annotation = work / "results/annotation/demo"
    described = pd.read_csv(annotation / "linear_seed0.tsv", sep="\t", keep_default_na=False, quoting=3)
    assert len(described) == DESCRIBE_ROWS and (described["Summary"] != "").all()
    assert 0 < described["Explainable"].sum() < DESCRIBE_ROWS
    for name, label in (("linear_task_seed0.tsv", "Task"), ("linear_concept_seed0.tsv", "Concept")):
        table = pd.read_csv(annotation / name, sep="\t", keep_default_na=False, quoting=3)
        assert len(table) == described["Explainable"].sum() and set(table[label]) == {
            "Coding" if label == "Task" else "Semantic"}
    concepts = set(described.loc[described["Explainable"] == 1, "Summary"])  # one task and one level question each
    assert len(answered) == described["Words"].nunique() + 2 * len(concepts)

    cost = pd.read_csv(work / "results/tables/demo/annotation_cost.tsv", sep="\t", keep_default_na=False)
    steps, total = cost.iloc[:-1], cost.iloc[-1]
    assert list(steps["step"]) == ["describe", "task", "level"] and set(steps["provider"]) == {"openai"}
    assert int(total["requests"]) == len(answered)
    assert int(total["retries"]) == sum(faults.values())  # every fault was one retry, and counted

    # the key's value is in no file the run wrote: outputs, logs, benchmarks, cache, .snakemake
    written = [path for path in work.rglob("*") if path.is_file()]
    assert any(".snakemake" in path.parts for path in written) and (work / "logs/annotate/demo").is_dir()
    assert work / "resources/annotation/cache.sqlite" in written
    assert [path for path in written if KEY.encode() in path.read_bytes()] == []


def test_changing_only_the_key_name_reruns_nothing(annotated, server):
    work, _, _ = annotated
    assert planned_jobs(work, "table5", "--configfile", "openai.yaml") == {}
    renamed = write_config(work, "renamed.yaml", annotation_config(work, server, api_key_env="ANOTHER_KEY_NAME"))
    assert planned_jobs(work, "table5", "--configfile", renamed) == {}
    out = snakemake(work, "table5", "--configfile", renamed)  # nothing to do: no key needed
    assert "Nothing to be done" in out.stdout + out.stderr


def test_a_run_that_would_ask_the_provider_without_its_key_fails_before_any_job_even_with_outputs(annotated,
                                                                                                    server):
    work, _, _ = annotated
    other = write_config(work, "other-model.yaml", annotation_config(work, server, model="gpt-test-2"))
    assert KEY_ENV not in os.environ
    # the outputs exist, but the new model makes them stale: the annotation is planned (a dry run needs no key)
    jobs = planned_jobs(work, "table5", "--configfile", other)
    assert jobs["annotate_describe"] == 1 and jobs["annotate_task"] == 1
    files = {path: path.stat().st_mtime_ns for path in (work / "results").rglob("*") if path.is_file()}
    logs = sorted((work / "logs").rglob("*"))
    asked = len(server.requests)
    out = snakemake(work, "table5", "--configfile", other, check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert f"the environment variable {KEY_ENV} is not set" in text and "annotation.provider.api_key_env" in text
    assert "Traceback" not in text
    assert len(server.requests) == asked and sorted((work / "logs").rglob("*")) == logs  # no job started
    assert {path: path.stat().st_mtime_ns for path in (work / "results").rglob("*") if path.is_file()} == files
    assert planned_jobs(work, "table5", "--configfile", other)["annotate_describe"] == 1  # no lock left behind


@pytest.mark.parametrize("change", ["an openai provider without a model", "more words than a component keeps"])
def test_a_config_error_in_planned_annotation_is_never_a_silent_up_to_date(annotated, server, change):
    """These checks ran inside the steps' input functions, whose errors Snakemake takes as "this rule cannot
    make the file" and then keeps the file where it exists: the dry run said nothing was to be done, a real
    run did nothing, and Table 5 stayed from the old settings. Now the stale steps are planned, and a real
    run stops before any job, naming the key."""
    work, _, _ = annotated
    config = annotation_config(work, server, **({"model": None} if change.startswith("an openai") else {}))
    if change.startswith("more words"):
        config["annotation"]["words"] = config["ffn"]["top_k"] + 1
    name = write_config(work, "bad-annotation.yaml", config)
    assert planned_jobs(work, "table5", "--configfile", name).get("annotate_describe") == 1
    files = {path: path.stat().st_mtime_ns for path in (work / "results").rglob("*") if path.is_file()}
    logs = sorted((work / "logs").rglob("*"))
    os.environ[KEY_ENV] = KEY
    try:
        out = snakemake(work, "table5", "--configfile", name, check=False)
    finally:
        del os.environ[KEY_ENV]
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert ("annotation.provider.model: required for the openai provider" if change.startswith("an openai") else
            "annotation.words: 21 words shown to the describer, but ffn.top_k gives each component 20") in text
    assert sorted((work / "logs").rglob("*")) == logs  # no job started
    assert {path: path.stat().st_mtime_ns for path in (work / "results").rglob("*") if path.is_file()} == files


NO_KEY_NEEDED = [("--dry-run", "table5"), ("--summary",), ("--dry-run", "--summary"), ("--list-changes", "params"),
                 ("--list-changes", "code")]


def assert_no_key_asked(work: Path, *args: str) -> None:
    out = snakemake(work, *args, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "is not set" not in text, text[-3000:]


@pytest.mark.parametrize("args", NO_KEY_NEEDED)
def test_dry_runs_summaries_and_change_lists_need_no_key(tmp_path, monkeypatch, args):
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["annotation"]["provider"] = {"kind": "openai", "model": "gpt-test", "api_key_env": KEY_ENV}
    write_config(work, "openai.yaml", config)
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert_no_key_asked(work, *args, "--configfile", "openai.yaml")


@pytest.mark.parametrize("args", [("--dry-run", "--summary"), ("--list-changes", "params")])
def test_the_paper_configs_summary_and_change_list_need_no_key(tmp_path, monkeypatch, paper_dir, args):
    work = copy_workflow(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert_no_key_asked(work, *args, "--configfile", "config/paper.yaml", "--config", f"paper_data={paper_dir}")


def test_the_endpoint_the_openai_client_takes_from_its_environment_is_the_jobs_param(tmp_path, monkeypatch):
    """With `base_url: null` the openai client sends to OPENAI_BASE_URL when it is set, but the params,
    the provenance page and the cache's keys said OpenAI's: answers of a local vLLM were kept as
    OpenAI's and given back, unasked, to a run against another endpoint. The planner now resolves the
    variable into the endpoint the jobs are given (and that reruns them when it changes)."""
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["annotation"]["provider"] = {"kind": "openai", "model": "gpt-test", "api_key_env": KEY_ENV}
    write_config(work, "openai.yaml", config)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    out = snakemake(work, "--dry-run", "-p", "table5", "--configfile", "openai.yaml")
    assert '"base_url": "http://127.0.0.1:9/v1"' in out.stdout and '"base_url": null' not in out.stdout
    monkeypatch.setenv("OPENAI_BASE_URL", "https://me:sk-Secret123@llm.example.org/v1")
    out = snakemake(work, "--dry-run", "table5", "--configfile", "openai.yaml", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "OPENAI_BASE_URL" in text and "holds credentials" in text
    assert "sk-Secret123" not in text


def test_hostile_strings_in_the_annotation_config_reach_the_job_verbatim_and_run_nothing(annotated, server):
    work, _, _ = annotated
    model = "gpt-test$(touch pwned1)`touch pwned2`'; touch pwned3 #\" x"
    key_env = "KEY_4_pwned"  # a hostile name is refused by the config check (test_config_cli)
    hostile = write_config(work, "hostile.yaml", annotation_config(work, server, model=model, api_key_env=key_env))
    asked = len(server.requests)
    os.environ[key_env] = KEY
    try:
        snakemake(work, "results/annotation/demo/linear_seed0.tsv", "--configfile", hostile)
    finally:
        del os.environ[key_env]
    requests = server.requests[asked:]
    assert requests and {r["model"] for r in requests} == {model}
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in requests)
    assert not [path for path in work.parent.rglob("pwned*")] and not list(Path.cwd().glob("pwned*"))


def test_replaying_the_answers_from_files_in_the_papers_layout_gives_the_same_table5(annotated, tmp_path):
    """The `replay` provider fed this run's answers rewritten as the paper's released files (question
    column headed `Tokens`): every annotation job reruns without a server and Table 5 is unchanged."""
    work = clone_run(annotated[0], tmp_path / "work")
    released = work / "released"
    released.mkdir()
    for name in ("linear_seed0.tsv", "linear_task_seed0.tsv", "linear_concept_seed0.tsv"):
        header, rows = (work / "results/annotation/demo" / name).read_text().split("\n", 1)
        assert "\tWords\t" in header
        (released / name).write_text(header.replace("\tWords\t", "\tTokens\t") + "\n" + rows)
    config = yaml.safe_load((work / "openai.yaml").read_text())
    config["annotation"]["provider"] = {"kind": "replay", "path": "released"}
    tables = [work / "results/tables/demo" / f"table5_{kind}.tsv" for kind in ("tasks", "levels")]
    before = [table.read_bytes() for table in tables]
    assert planned_jobs(work, "table5", "--configfile", write_config(work, "replay.yaml", config)) == {
        "annotate_describe": 1, "annotate_task": 1, "annotate_level": 1, "annotation_cost": 1, "table5_pair": 1,
        "table5": 1}
    snakemake(work, "table5", "--configfile", "replay.yaml")
    assert [table.read_bytes() for table in tables] == before
    # an answers file replaced by other answers reruns the step that reads it (Snakemake skips an
    # input whose content it has seen, so a mere touch would not)
    task_file = released / "linear_task_seed0.tsv"
    header, first, rest = task_file.read_text().split("\n", 2)
    task_file.write_text("\n".join([header, "coding\t" + first.split("\t", 1)[1], rest]))
    os.utime(task_file, (time.time() + 5, time.time() + 5))
    jobs = planned_jobs(work, "table5", "--configfile", "replay.yaml")
    assert jobs.get("annotate_task") == 1 and "annotate_describe" not in jobs and "annotate_level" not in jobs


@pytest.mark.parametrize("where", ["elsewhere", "the demo's folder"])
@pytest.mark.parametrize("args", [("--forcerun", "annotate_describe"), ("--forceall",)])
def test_a_local_annotator_of_ones_own_is_never_rebuilt_over(tmp_path, args, where):
    """Only a provider with `build:` has a demo_annotator rule: a model directory of the user's, given as
    `path` alone, was deleted and replaced by SmolLM2 under -F, -R demo_annotator or --delete-all-output,
    and still was after a first fix when it sat in the demo's own folder (build: removed to keep it)."""
    (tmp_path / "work").mkdir()
    work = copy_workflow(tmp_path / "work")
    own = tmp_path / "my-annotator" if where == "elsewhere" else work / "resources/models/smollm2-135m-instruct"
    own.mkdir(parents=True)
    (own / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["annotation"]["provider"] = {"kind": "local", "path": str(own.relative_to(work) if work in own.parents
                                                                     else own)}
    write_config(work, "own.yaml", config)
    planned = snakemake(work, "--dry-run", "table5", *args, "--configfile", "own.yaml")
    assert "rule demo_annotator" not in planned.stdout
    assert "output: resources/models/smollm2" not in planned.stdout and f"output: {own}" not in planned.stdout
    deleted = snakemake(work, "--delete-all-output", "--dry-run", "table5", "--configfile", "own.yaml")
    assert own.name not in deleted.stdout + deleted.stderr


@pytest.mark.parametrize("path", ["HuggingFaceTB/SmolLM2-135M-Instruct", "empty-folder"])
def test_a_local_annotator_that_is_no_model_folder_is_reported_before_any_job(tmp_path, path):
    """The local provider reads a folder (its answers are keyed by the files' fingerprint): a hub id or a
    folder without config.json failed only in the first annotation job, after the FFN layer jobs had run (a
    missing folder is a configured input, checked with the others)."""
    work = copy_workflow(tmp_path)
    (work / "empty-folder").mkdir()
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["annotation"]["provider"] = {"kind": "local", "path": path}
    out = snakemake(work, "--dry-run", "table5", "--configfile", write_config(work, "own.yaml", config), check=False)
    assert out.returncode != 0
    assert f"annotation.provider.path: {path} is not a model folder (no config.json)" in out.stdout + out.stderr
    assert "hf download" in out.stdout + out.stderr
