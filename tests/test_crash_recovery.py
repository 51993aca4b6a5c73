"""Crash consistency (issue 10): a job of each kind killed with SIGKILL mid-run, as an OOM kill or a
node failure would, then the same command run again gives the tables of an uninterrupted run.

One finished demo is the reference; each case works in its own copy of it (hard links for the
read-only parts), forces one job of a rule and everything downstream to run again with
`--forcerun OUTPUT` (one job is what a kill interrupts; forcing all of a rule's jobs took CI minutes
to recompute what no kill touched), kills that job once it runs, and reruns the same command.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clone_run
from test_workflow import snakemake

pytestmark = pytest.mark.workflow

# rule -> the module its job runs (what we look for in /proc to kill it), and the output of the job forced
CASES = {
    "attribute_shard": ("workflow_scripts.attribution", "results/attribution/demo-base/shards/shard-0.npz"),
    "merge_attributions": ("workflow_scripts.shards", "results/attribution/demo-base/attributions.npz"),
    "word_pieces": ("workflow_scripts.word_pieces", "results/word_pieces/demo-base.tsv"),
    "explain_attention_layer": ("workflow_scripts.attention", "results/attention/demo-base/layer-0.tsv"),
    "explain_ffn_layer": ("workflow_scripts.ffn", "results/ffn/demo-base/layer-0.tsv"),
    "annotate_describe": ("workflow_scripts.annotate", "results/annotation/demo/linear_seed0.tsv"),
    "table2_pair": ("workflow_scripts.table1_2", "results/tables/demo/table2.tsv"),
}


@pytest.fixture(scope="module")
def reference(finished_demo):
    """The demo run to the end without interruption (shared by the whole test session)."""
    return finished_demo


def table_files(work: Path) -> dict[str, bytes]:
    """Every table's .tsv and .md, but the annotation cost report: it reports the run that made it
    (a rerun answers from the cache, so its requests and hits differ by design)."""
    files = sorted((work / "results/tables").rglob("*.tsv")) + sorted((work / "results/tables").rglob("*.md"))
    return {str(path.relative_to(work)): path.read_bytes() for path in files if "annotation_cost" not in path.name}


def job_pids(work: Path, module: str) -> list[int]:
    """Processes running `python -m MODULE` in `work` (another test's jobs live elsewhere)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"-m" in argv and module.encode() in argv and Path(cwd) == work:
            pids.append(int(entry.name))
    return pids


def run_and_kill(work: Path, args: list[str], module: str, kill_snakemake: bool = False) -> int:
    """Start `snakemake ARGS` in `work`; SIGKILL the first job running MODULE as soon as it is seen
    (some jobs, a merge or an answer from the cache, end within a second), or Snakemake itself once
    that job runs, if `kill_snakemake`; return Snakemake's exit status."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    with open(work / "interrupted.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=work, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not (pids := job_pids(work, module)):
            if proc.poll() is not None:
                raise AssertionError(f"snakemake ended before a {module} job ran:\n"
                                     + (work / "interrupted.log").read_text()[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"no {module} job within 600 s")
            time.sleep(0.05)
        os.kill(proc.pid if kill_snakemake else pids[0], signal.SIGKILL)
        return proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if kill_snakemake:  # the orphaned job: let it end, as it would on a real machine
            for pid in job_pids(work, module):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("rule", CASES)
def test_a_job_killed_mid_run_then_the_same_command_gives_the_uninterrupted_tables(reference, tmp_path, rule):
    work = clone_run(reference, tmp_path / "work")
    module, output = CASES[rule]
    assert (reference / output).is_file(), output
    command = ["--forcerun", output]
    assert run_and_kill(work, command, module) != 0
    snakemake(work, *command)
    assert table_files(work) == table_files(reference)
    assert "Nothing to be done" in snakemake(work, "--dry-run").stdout


def test_snakemake_itself_killed_asks_for_unlock_then_the_same_command_recovers(reference, tmp_path):
    work = clone_run(reference, tmp_path / "work")
    module, output = CASES["attribute_shard"]
    command = ["--forcerun", output]
    run_and_kill(work, command, module, kill_snakemake=True)
    locked = snakemake(work, *command, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    snakemake(work, "--unlock")
    snakemake(work, *command)
    assert table_files(work) == table_files(reference)
