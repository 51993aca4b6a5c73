"""The DAG tells the truth: a table is never left built from other inputs than the config says.

Real Snakemake runs: the demo's attribution targets (table1, table2) in one scratch copy, and the
paper's released-data tables next to a dry run of the computed paper config.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import copy_workflow, planned_jobs, snakemake

from workflow_scripts import demo_models
from workflow_scripts.attribution_model import load_model
from workflow_scripts.attribution_tokens import generate_responses
from workflow_scripts.dataset import read_dataset
from workflow_scripts.shards import load_shard

pytestmark = pytest.mark.workflow

MERGED = "results/attribution/demo-base/attributions.npz"
DATASET = "datasets/demo data.tsv"  # a space in the path, through every job


@pytest.fixture(scope="module")
def attributed(tmp_path_factory):
    """The demo's Tables 1 and 2 computed by Snakemake from a small pair of the demo's architecture.

    The pair is built here with a few training steps (the demo's own builds take minutes), as local
    model directories the config points at; the dataset path has a space in it.
    """
    work = copy_workflow(tmp_path_factory.mktemp("provenance"))
    (work / DATASET).write_text((work / "datasets/demo.tsv").read_text())
    demo_models.build_corpus(work / "corpus.txt", work / DATASET, max_bytes=60_000)
    demo_models.train_tokenizer(work / "corpus.txt", work / "tokenizer", vocab_size=600)
    demo_models.pretrain(work / "corpus.txt", work / "tokenizer", work / "models/demo-base", steps=5, seed=0)
    demo_models.finetune(work / "models/demo-base", work / "models/demo-tuned", work / DATASET, steps=5, seed=0)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["dataset"]["samples"] = DATASET
    config["attribution"]["shard_size"] = 22  # two shards per model
    for model in ("demo-base", "demo-tuned"):
        config["models"][model] = {"path": f"models/{model}", "gpus": 0}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(work, "table1", "table2")
    return work


def edited_in_place(path: Path, edit):
    """Apply `edit` to the lines of `path`; the returned function restores content and mtime."""
    original, stat = path.read_text(), path.stat()
    lines = original.splitlines(keepends=True)
    edit(lines)
    path.write_text("".join(lines))

    def restore():
        path.write_text(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    return restore


def test_a_dataset_row_that_lost_a_column_fails_planning_where_outputs_exist(attributed):
    assert planned_jobs(attributed, "table1", "table2") == {}
    restore = edited_in_place(attributed / DATASET,
                              lambda lines: lines.__setitem__(5, lines[5].rsplit("\t", 1)[0] + "\n"))
    try:
        out = snakemake(attributed, "--dry-run", "table1", "table2", check=False)
    finally:
        restore()
    assert out.returncode != 0
    assert re.search(r"datasets/demo data.tsv:6: expected 4 tab-separated fields", out.stdout + out.stderr)


def test_a_sample_edited_in_place_plans_its_shard_the_merges_and_the_tables(attributed):
    restore = edited_in_place(attributed / DATASET,
                              lambda lines: lines.__setitem__(20, lines[20].replace("\t", "\tNow: ", 1)))
    try:
        jobs = planned_jobs(attributed, "table1", "table2")
    finally:
        restore()
    assert jobs == {"attribute_shard": 2, "merge_attributions": 2, "table1_pair": 1, "table2_pair": 1,
                    "table1": 1, "table2": 1}
    assert planned_jobs(attributed, "table1", "table2") == {}


def test_a_number_typed_on_the_command_line_reruns_only_the_tables(attributed):
    """Issue 15, point 3: --config values are strings to Snakemake; the schema types them."""
    jobs = planned_jobs(attributed, "table1", "table2", "--config", "analysis={threshold: 6}")
    assert jobs == {"table1_pair": 1, "table2_pair": 1, "table1": 1, "table2": 1}


def test_a_damaged_shard_is_deleted_and_the_command_its_error_gives_recomputes_it(attributed):
    """The error said "the next run recomputes it", but a rerun planned nothing: the failed merge's output was
    removed, and Snakemake rebuilds a missing file only for a job that has to run (the tables had)."""
    shard = attributed / "results/attribution/demo-base/shards/shard-1.npz"
    good = shard.read_bytes()
    shard.write_bytes(b"a disk's bad sector" * 64)
    failed = snakemake(attributed, "table1", "table2", check=False)
    text = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "shard-1.npz: cannot read attribution shard" in text, text[-3000:]
    assert not shard.exists()
    command = re.search(r"`(--forcerun [^`]+)`", text.split("cannot read attribution shard", 1)[1]).group(1)
    snakemake(attributed, "table1", "table2", *command.split())
    assert shard.read_bytes() == good  # recomputed, the same bytes (a CPU run is deterministic)
    assert planned_jobs(attributed, "table1", "table2") == {}


def kill_when_running(process: subprocess.Popen, workdir: Path, *argv_parts: str) -> bool:
    """SIGKILL the first process running in `workdir` whose argv holds every one of `argv_parts`
    (as an OOM kill would), while `process` runs. Only this test's own jobs can match."""
    wanted = [part.encode() for part in argv_parts]
    workdir = str(workdir.resolve())
    while process.poll() is None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if not all(any(arg.startswith(part) for arg in argv) for part in wanted):
                    continue
                if os.readlink(f"/proc/{pid}/cwd") != workdir:
                    continue
            except OSError:
                continue
            os.kill(int(pid), signal.SIGKILL)
            return True
        time.sleep(0.002)
    return False


def test_a_precision_change_replans_only_that_models_shards_and_what_reads_them(attributed):
    """Issue 14: one model's precision is a param of its own shards only; the other model's shards,
    merge and Table 1 (which reads the tuned model alone) stay done; the speed knob reruns nothing."""
    base = planned_jobs(attributed, "table1", "table2", "--config", "models={demo-base: {precision: bfloat16}}")
    assert base == {"attribute_shard": 2, "merge_attributions": 1, "table2_pair": 1, "table2": 1}
    tuned = planned_jobs(attributed, "table1", "table2", "--config", "models={demo-tuned: {precision: tf32}}")
    assert tuned == {"attribute_shard": 2, "merge_attributions": 1, "table1_pair": 1, "table1": 1,
                     "table2_pair": 1, "table2": 1}
    both = planned_jobs(attributed, "table1", "table2", "--config", "attribution={precision: bfloat16}")
    assert both["attribute_shard"] == 4 and both["merge_attributions"] == 2
    assert planned_jobs(attributed, "table1", "table2", "--config", "attribution={backward_batch: 3}") == {}
    assert planned_jobs(attributed, "table1", "table2", "--config", "attribution={generate_batch: 4}") == {}


def test_a_shards_generated_responses_come_in_batches_and_are_each_prompts_own(attributed, tmp_path):
    """Issue 14: under `response: generate` the job generates a shard's prompts `generate_batch` at a time
    (the rule passes the key); each response is the one the model gives its prompt alone, and the shard
    says how they were made."""
    work = tmp_path / "generate"
    shutil.copytree(attributed, work, ignore=shutil.ignore_patterns(".snakemake", "results", "logs", "benchmarks"))
    shard = "results/attribution/demo-base/shards/shard-0.npz"
    snakemake(work, shard, "--config", "attribution={response: generate, max_new_tokens: 6, generate_batch: 5}")
    computed = load_shard(work / shard)
    meta, samples = computed.meta, computed.samples
    assert (meta["source"], meta["generate_batch"], len(samples)) == ("computed:generate", 5, 22)
    model, tokenizer = load_model(str(work / "models/demo-base"), "float32")
    prompts = {s.id: s.prompt for s in read_dataset(str(work / DATASET))}
    solo = [generate_responses(model, tokenizer, [prompts[s.id]], 6)[0].response_text for s in samples]
    assert [s.response for s in samples] == solo and len(set(solo)) > 1


def test_a_merge_killed_after_a_precision_change_leaves_no_stale_table(attributed):
    """Issue 10, defect 1: change a model's precision, SIGKILL its merge, rerun the same command."""
    old_table2 = (attributed / "results/tables/demo/table2.tsv").read_text()
    command = ["table1", "table2", "--config", "models={demo-base: {precision: bfloat16}}"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *command], cwd=attributed, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = kill_when_running(run, attributed, "workflow_scripts.shards", "merge", "results/attribution/demo-base/")
    output = run.communicate(timeout=1800)[0]
    assert killed, f"the merge of demo-base was not seen running:\n{output[-3000:]}"
    assert run.returncode != 0 and not (attributed / MERGED).exists()

    snakemake(attributed, *command)  # the same command again
    recovered = (attributed / "results/tables/demo/table2.tsv").read_text()
    assert planned_jobs(attributed, *command) == {}
    # an uninterrupted run from the same (deterministic) bfloat16 shards gives the same table
    snakemake(attributed, "table1", "table2", "--forcerun", "merge_attributions", *command[2:])
    assert (attributed / "results/tables/demo/table2.tsv").read_text() == recovered != old_table2


def test_released_tables_never_stand_in_for_computed_ones(tmp_path, paper_dir):
    """Issue 15, point 1: the released-data tables, then the computed paper config's plan."""
    work = copy_workflow(tmp_path)
    released = ("--configfile", "config/paper-released.yaml", "--config", f"paper_data={paper_dir}")
    snakemake(work, "table1", "table2", *released)
    copy = tmp_path / "paper-copy"  # the sequence: the same data from another folder
    copy.symlink_to(paper_dir)
    computed = planned_jobs(work, "table2", "--configfile", "config/paper.yaml", "--config", f"paper_data={copy}")
    # the same checksummed data from another folder: no fetch again (tests/test_paper_data_workflow.py)
    assert computed == {"attribute_shard": 80, "merge_attributions": 2, "table2_pair": 1, "table2": 1}
    assert planned_jobs(work, "table1", "table2", *released) == {}

    restore = edited_in_place(work / "resources/paper/datasets/FinalDataset.tsv",
                              lambda lines: lines.__setitem__(5, lines[5].rsplit("\t", 1)[0] + "\n"))
    out = snakemake(work, "--dry-run", "table2", *released, check=False)
    assert out.returncode != 0
    assert re.search(r"FinalDataset.tsv:6: expected 4 tab-separated fields", out.stdout + out.stderr)
    restore()
    assert planned_jobs(work, "table1", "table2", *released) == {}
