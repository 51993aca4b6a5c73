"""The SLURM profile (profiles/slurm): what a dry run of the paper asks for, and the demo run for real
through a SLURM cluster.

The live tests need a SLURM controller that answers, with a node offering a `gpu` GRES; they are
skipped without one. `bash scripts/slurm/up.sh` starts such a cluster on this machine (fake GPUs),
and .ci/run does so before the tests.
"""
import functools
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
from conftest import clone_run
from test_workflow import REPO, copy_workflow

PROFILE = ("--profile", "profiles/slurm")  # what users type (profiles/default applies on top)
# the profile's status checks, made quick: the demo's jobs take seconds
QUICK = ("--slurm-init-seconds-before-status-checks", "2")
GPU_RULES = {"attribute_shard", "explain_attention_layer", "explain_ffn_layer"}
LOCAL_RULES = {"paper_datasets", "paper_released_attributions", "demo_annotator", "annotate_describe",
               "annotate_task", "annotate_level", "annotation_cost"}
SUBMITTED = re.compile(r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def run_snakemake(workdir: Path, *args: str, timeout: int = 2400) -> tuple[int, str]:
    """Return code and output (stdout and stderr) of Snakemake; on a timeout, interrupt it (the
    executor then cancels its SLURM jobs) and fail with the output's end."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    process = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"snakemake {' '.join(args)} ran over {timeout} s:\n{output[-6000:]}")
    return process.returncode, output


@functools.cache
def slurm_problem() -> str | None:
    """Why the live tests cannot run here, or None when a controller answers and offers a GPU."""
    if shutil.which("scontrol") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed (bash scripts/slurm/up.sh sets up a local cluster)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30, check=False)
        gres = subprocess.run(["sinfo", "-h", "-o", "%G %T"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "the SLURM controller does not answer within 30 s"
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        answer = (ping.stdout + ping.stderr).strip().splitlines()
        return f"no SLURM controller answers (scontrol ping: {answer[0] if answer else ping.returncode})"
    if not re.search(r"gpu\S*\s+(idle|mixed|allocated|completing)", gres.stdout):
        return f"no usable SLURM node offers a gpu GRES (sinfo: {gres.stdout.strip() or gres.stderr.strip()})"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)


def slurm_job(job_id: str) -> dict[str, str]:
    """State, allocated TRES, memory and time limit of one job: from sacct, or from scontrol on a
    cluster without accounting (or before the accounting database has the job)."""
    acct = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,AllocTRES,ReqMem,Timelimit"],
                          capture_output=True, text=True, timeout=60, check=False)
    rows = acct.stdout.splitlines() if acct.returncode == 0 else []
    if rows and rows[0].split("|")[1]:
        state, tres, memory, limit = rows[0].split("|")
        return {"state": state.split()[0], "tres": tres, "memory": memory, "time": limit}
    show = subprocess.run(
        ["scontrol", "show", "job", "-d", "-o", job_id], capture_output=True, text=True, timeout=60, check=False
    )
    assert show.returncode == 0, f"SLURM knows no job {job_id}: {show.stderr}"
    fields = dict(item.split("=", 1) for item in show.stdout.split() if "=" in item)
    tres = fields.get("TRES", "")
    # without accounting, gres/gpu is no tracked TRES: the job's allocated GRES says it (gpu:1 or gpu:1(IDX:0))
    gres = re.match(r"gpu(?::[^:(]+)?:(\d+)", fields.get("JOB_GRES", ""))
    if gres and "gres/gpu" not in tres:
        tres += f",gres/gpu={gres.group(1)}"
    return {"state": fields["JobState"], "tres": tres, "memory": fields.get("MinMemoryNode", ""),
            "time": fields["TimeLimit"]}


def submissions(output: str) -> dict[str, list[tuple[str, Path]]]:
    """Rule -> (SLURM job id, SLURM log) of every job the executor submitted."""
    jobs: dict[str, list[tuple[str, Path]]] = {}
    for job_id, log in SUBMITTED.findall(output):
        rule = re.search(r"/slurm_logs/(?:rule|group)_(\w+)/", log).group(1)
        jobs.setdefault(rule, []).append((job_id, Path(log)))
    return jobs


@pytest.fixture(scope="module")
def slurm_demo(slurm, finished_demo, tmp_path_factory):
    """The demo's analysis run through SLURM, with the layer jobs asking for one GPU each: a copy of the local
    demo run without its results, and its tuned model forced (a 2-thread job), so that every job from the
    tuned model's training to the browser runs again. The base model, tokenizer and annotator are the local
    run's (training the base again took CI four minutes more), and so are the annotation answers: the
    annotation jobs still run, on the submitting node (asserted below), and answer from the copied cache."""
    work = clone_run(finished_demo, tmp_path_factory.mktemp("slurm-demo") / "work")
    shutil.rmtree(work / "results")
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["attention"]["gpus"] = config["ffn"]["gpus"] = 1
    (work / "gpu-layers.yaml").write_text(yaml.safe_dump(config))
    started = time.monotonic()
    returncode, output = run_snakemake(work, "all", *PROFILE, *QUICK, "--slurm-keep-successful-logs",
                                       "--configfile", "gpu-layers.yaml", "--forcerun", "demo_tuned_model")
    print(f"demo through SLURM: {time.monotonic() - started:.0f} s")
    assert returncode == 0, f"the demo failed through SLURM:\n{output[-8000:]}"
    return work, output


@pytest.mark.cluster
def test_demo_through_slurm_writes_every_table(slurm_demo):
    work, _ = slurm_demo
    for path in ("results/tables/demo/table1.tsv", "results/tables/demo/table2.tsv", "results/tables/demo/table3.tsv",
                 "results/attention/bilinear_words.tsv", "results/ffn/linear_words.tsv"):
        assert (work / path).stat().st_size > 0, path


@pytest.mark.cluster
def test_every_compute_job_is_a_completed_slurm_job_and_the_local_rules_are_not(slurm_demo):
    _, output = slurm_demo
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    remote = re.findall(r"^rule (\w+):", output, re.MULTILINE)
    local = set(re.findall(r"^localrule (\w+):", output, re.MULTILINE))
    jobs = submissions(output)
    assert {rule: len(ids) for rule, ids in jobs.items()} == {rule: remote.count(rule) for rule in set(remote)}
    assert {"demo_tuned_model", "attribute_shard", "explain_attention_layer", "merge_attributions"} <= set(jobs)
    assert {"annotate_describe", "annotate_task", "annotate_level", "annotation_cost"} <= local
    assert not LOCAL_RULES & set(jobs)
    for rule, rule_jobs in jobs.items():
        for job_id, log in rule_jobs:
            assert slurm_job(job_id)["state"] == "COMPLETED", (rule, job_id)
            text = log.read_text()
            assert f"(Rule: {rule})" in text and "steps (100%) done" in text, log
    named = subprocess.run(["squeue", "--states=all", "-h", "--name", run_id, "-o", "%i"],
                           capture_output=True, text=True, timeout=60, check=False)
    if named.stdout.strip():  # finished jobs stay in squeue for MinJobAge (an hour on up.sh's cluster)
        assert {job_id for rule_jobs in jobs.values() for job_id, _ in rule_jobs} <= set(named.stdout.split())


@pytest.mark.cluster
def test_only_the_layer_jobs_get_a_gpu_allocation_and_see_it(slurm_demo):
    work, output = slurm_demo
    jobs = submissions(output)
    for rule, rule_jobs in jobs.items():
        for job_id, _ in rule_jobs:
            tres = slurm_job(job_id)["tres"]
            if rule in ("explain_attention_layer", "explain_ffn_layer"):
                assert "gres/gpu=1" in tres, (rule, job_id, tres)
            else:  # the demo's models ask for gpus: 0, and merges and tables for none
                assert "gres/gpu" not in tres, (rule, job_id, tres)
    ids = {job_id for rule_jobs in jobs.values() for job_id, _ in rule_jobs}
    logs = sorted((work / "logs/explain_attention_layer").rglob("*.log"))
    logs += sorted((work / "logs/explain_ffn_layer").rglob("*.log"))
    assert len(logs) == 16  # 2 models x 4 layers x 2 explainers
    for log in logs:
        seen = re.search(r"SLURM job (\d+): using its allocation, CUDA_VISIBLE_DEVICES=(\S+)", log.read_text())
        assert seen and seen.group(1) in ids and re.fullmatch(r"\d+", seen.group(2)), log


@pytest.mark.cluster
def test_a_rules_threads_reach_its_slurm_allocation(slurm_demo):
    _, output = slurm_demo
    (job_id, _), = submissions(output)["demo_tuned_model"]  # threads: 2
    assert "cpu=2" in slurm_job(job_id)["tres"].split(",")


@pytest.mark.cluster
def test_a_failed_job_is_retried_with_the_profiles_larger_memory_and_time(slurm, tmp_path):
    shutil.copytree(REPO / "profiles/slurm", tmp_path / "profiles/slurm")
    (tmp_path / "Snakefile").write_text(
        'rule flaky:\n'
        '    output: "done.txt"\n'
        '    shell: "test -e tried || {{ touch tried; exit 1; }}; echo $SLURM_JOB_ID > {output}"\n'
    )
    returncode, output = run_snakemake(tmp_path, *PROFILE, *QUICK, "--slurm-keep-successful-logs")
    assert returncode == 0, output[-6000:]
    first, second = (slurm_job(job_id) for job_id, _ in submissions(output)["flaky"])
    assert first["state"] == "FAILED" and second["state"] == "COMPLETED"
    # the profile's default-resources: mem_mb "2000 * attempt", runtime "30 * attempt" (minutes)
    assert (first["memory"], first["time"]) == ("2000M", "00:30:00")
    assert (second["memory"], second["time"]) == ("4000M", "01:00:00")


def test_the_profiles_status_checks_never_wait_for_a_job_squeue_has_forgotten():
    """The plugin polls up to every max_sleep_time s and reads sacct instead of squeue only when MinJobAge is
    under 3 x the first interval: at 10 s, a job finishing on a cluster whose MinJobAge is 30-180 s could
    leave squeue between two polls, and the run waited for it for ever."""
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm")
    longest_poll = int(re.search(r"max_sleep_time = (\d+)", Path(plugin.__file__).read_text()).group(1))
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["slurm-status-command"] == "squeue"
    assert 3 * profile["slurm-init-seconds-before-status-checks"] >= longest_poll


@pytest.mark.workflow
def test_paper_dry_run_asks_gpus_only_for_the_explanation_jobs(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm is not installed")
    paper = REPO.parent / "shared" / "paper"
    if not paper.is_dir():
        pytest.skip("the paper data (../shared/paper) is not beside the repository")
    work = copy_workflow(tmp_path)
    returncode, output = run_snakemake(work, "all", "--dry-run", *PROFILE, "--configfile", "config/paper.yaml",
                                       "--config", f"paper_data={paper}", timeout=600)
    assert returncode == 0, output[-6000:]
    # a dry run shows each job's resources (not the sbatch call, and every job as `rule`, local or not)
    resources = {}  # rule -> every job's resources
    for rule, block in re.findall(r"^(?:rule|localrule) (\w+):\n(.*?)(?=\n\n|\Z)", output, re.MULTILINE | re.DOTALL):
        found = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        resources.setdefault(rule, []).append(dict(item.split("=", 1) for item in found.group(1).split(", ")))
    gpus = {rule for rule, jobs in resources.items() for job in jobs if int(job.get("gpu", 0)) > 0}
    assert gpus == GPU_RULES
    assert [job["gpu"] for job in resources["attribute_shard"]] == ["1"] * 80  # models.*.gpus
    # a job's GPUs on one node (the plugin's --nodes=1): SLURM may spread a --gpus=N request over nodes
    assert {job.get("nodes") for rule in GPU_RULES for job in resources[rule]} == {"1"}
    assert not {job.get("nodes") for rule, jobs in resources.items() if rule not in GPU_RULES for job in jobs} - {None}
    assert [job["gpu"] for job in resources["explain_attention_layer"]] == ["1"] * 64  # attention.gpus
    assert [job["gpu"] for job in resources["explain_ffn_layer"]] == ["1"] * 64  # ffn.gpus
    # the profile's set-resources and default-resources reached the jobs
    assert {(job["mem_mb"], job["runtime"]) for job in resources["attribute_shard"]} == {("32000", "180")}
    assert {(job["mem_mb"], job["runtime"]) for job in resources["explain_ffn_layer"]} == {("8000", "30")}
    assert {(job["mem_mb"], job["runtime"]) for job in resources["merge_attributions"]} == {("2000", "30")}
