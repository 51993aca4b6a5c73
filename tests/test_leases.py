"""GPU leases between real processes (docs/design.md#gpus-and-slurm): concurrent jobs get their own devices, and a
lease lasts exactly as long as the job's process, however that ends.

The machine's GPUs are faked with SHIFTLENS_FAKE_GPUS; the locks are real flocks. Each job is a
Python process that writes the CUDA_VISIBLE_DEVICES it was given, then holds its lease until the
test drops its release marker.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

HOLD = """
import os, sys, time
from pathlib import Path
out, release = Path(sys.argv[1]), Path(sys.argv[2])
tmp = out.with_suffix(".tmp")
out.with_suffix(".order").write_text(os.environ.get("CUDA_DEVICE_ORDER", "(unset)"))
tmp.write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
tmp.rename(out)
while not release.exists():
    time.sleep(0.01)
"""


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def job_env(fake_gpus: int | None = 2, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SHIFTLENS_FAKE_GPUS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if fake_gpus is not None:
        env["SHIFTLENS_FAKE_GPUS"] = str(fake_gpus)
    return env | extra


class Job:
    """`python -m workflow_scripts.leases GPUS -- python -c HOLD` running in `work`."""

    def __init__(self, work: Path, name: str, gpus: int, env: dict[str, str]):
        self.name, self.log = name, work / f"{name}.log"
        self.out, self.marker = work / f"{name}.devices", work / f"{name}.release"
        command = [sys.executable, "-m", "workflow_scripts.leases", str(gpus), "--",
                   sys.executable, "-c", HOLD, str(self.out), str(self.marker)]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(command, cwd=work, env=env, stderr=log)

    def devices(self) -> str:
        """The CUDA_VISIBLE_DEVICES the job got, once it has started."""
        wait_until(lambda: self.out.exists() or self.proc.poll() is not None, f"job {self.name} to start")
        assert self.out.exists(), f"job {self.name} exited {self.proc.returncode}: {self.stderr()}"
        return self.out.read_text()

    def order(self) -> str:
        """The CUDA_DEVICE_ORDER the job got."""
        self.devices()
        return self.out.with_suffix(".order").read_text()

    def stderr(self) -> str:
        return self.log.read_text()

    def finish(self) -> int:
        self.marker.touch()
        return self.proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def isolated_lock_dir(tmp_path, monkeypatch):
    """Each test its own lock folder (the default is one per machine, shared by every workflow)."""
    monkeypatch.setenv("SHIFTLENS_GPU_LOCK_DIR", str(tmp_path / ".snakemake/gpu-leases"))


@pytest.fixture
def start(tmp_path):
    """Start a job in tmp_path; any still running at the end are killed."""
    jobs: list[Job] = []

    def start_job(name: str, gpus: int = 1, env: dict[str, str] | None = None) -> Job:
        jobs.append(Job(tmp_path, name, gpus, job_env() if env is None else env))
        return jobs[-1]

    yield start_job
    for job in jobs:
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.wait()


def run_now(start, name: str, gpus: int = 1, env: dict[str, str] | None = None) -> Job:
    """A job that releases its lease as soon as it has started, run to the end."""
    job = start(name, gpus, env)
    job.marker.touch()
    assert job.proc.wait(timeout=10) == 0, job.stderr()
    return job


def test_two_concurrent_one_gpu_jobs_get_different_devices(start):
    a = start("a")
    assert a.devices() == "0"
    b = start("b")
    assert b.devices() == "1"
    assert a.finish() == 0 and b.finish() == 0
    assert "leased GPU(s): CUDA_VISIBLE_DEVICES=" in a.stderr()


def test_a_third_job_waits_until_one_finishes_then_gets_the_freed_device(start):
    a, b = start("a"), start("b")
    a.devices(), b.devices()
    c = start("c")
    wait_until(lambda: "waiting for 1 free GPU(s)" in c.stderr(), "job c to wait")
    assert not c.out.exists()
    freed = b.devices()
    assert b.finish() == 0
    assert c.devices() == freed
    assert a.finish() == 0 and c.finish() == 0


def test_a_job_killed_with_sigkill_frees_its_device_at_once(start):
    env = job_env(fake_gpus=1)
    doomed = start("doomed", env=env)
    assert doomed.devices() == "0"
    os.kill(doomed.proc.pid, signal.SIGKILL)  # the launcher exec'd the job: same process
    assert doomed.proc.wait(timeout=10) == -signal.SIGKILL
    later = run_now(start, "later", env=env)
    assert later.devices() == "0" and "waiting" not in later.stderr()


def test_a_two_gpu_job_gets_two_distinct_free_devices(start):
    env = job_env(fake_gpus=3)
    one = start("one", env=env)
    assert one.devices() == "0"
    two = run_now(start, "two", gpus=2, env=env)
    assert two.devices() == "1,2"
    assert one.finish() == 0


def test_a_job_waiting_for_two_gpus_holds_none_so_a_one_gpu_job_takes_the_free_one(start):
    """All or nothing: a two-GPU job that locked the one free device while it waited for a second kept a
    one-GPU job waiting beside an idle GPU (and two such jobs would wait on each other for good)."""
    one = start("one")
    assert one.devices() == "0"
    two = start("two", gpus=2)
    wait_until(lambda: "waiting for 2 free GPU(s)" in two.stderr(), "job two to wait")
    other = start("other")
    assert other.devices() == "1"
    assert one.finish() == 0 and other.finish() == 0
    assert two.devices() == "0,1" and two.finish() == 0


def test_asking_for_more_gpus_than_the_pool_gets_the_whole_pool_with_a_warning(tmp_path):
    result = subprocess.run([sys.executable, "-m", "workflow_scripts.leases", "3", "--", sys.executable, "-c",
                             "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                            cwd=tmp_path, env=job_env(fake_gpus=2), capture_output=True, text=True, timeout=10,
                            check=False)
    assert result.returncode == 0 and result.stdout.strip() == "0,1"
    assert "asks for 3 GPUs but only 2 can be leased (0,1): it gets all of them" in result.stderr


@pytest.mark.parametrize("gpus, fake_gpus, reason", [
    (0, 2, "the job asks for 0 GPUs; 2 could be leased"),
    (1, 0, "there is no GPU to lease"),
], ids=["zero-gpus-asked", "no-gpu-on-the-machine"])
def test_no_gpu_runs_on_the_cpu_with_no_device_visible_and_says_why(start, gpus, fake_gpus, reason):
    job = run_now(start, "cpu", gpus=gpus, env=job_env(fake_gpus=fake_gpus))
    assert job.devices() == ""
    assert f"no GPU leased: running on the CPU ({reason}" in job.stderr()


def test_a_users_cuda_visible_devices_is_the_pool_under_the_users_ids(start, tmp_path):
    env = job_env(fake_gpus=None, CUDA_VISIBLE_DEVICES="3,5")
    a, b = start("a", env=env), start("b", env=env)
    assert {a.devices(), b.devices()} == {"3", "5"}
    assert sorted(p.name for p in (tmp_path / ".snakemake/gpu-leases").iterdir()) == ["gpu-3.lock", "gpu-5.lock"]
    assert a.finish() == 0 and b.finish() == 0


def fake_squeue(tmp_path: Path, env: dict[str, str], name: str, comment: str = "", job_id: str = "42",
                answer: str | None = None) -> dict[str, str]:
    """`env` with a squeue that knows one job, `job_id`, called `name`, with `comment`, when asked what the
    launcher asks (or whose answer is the shell line `answer`)."""
    bin_dir = tmp_path / "squeue-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    expected = f"--noheader --jobs={job_id} --format=%j|%k"
    answer = answer or f"printf '%s\\n' '{name}|{comment}'"
    (bin_dir / "squeue").write_text(
        f'#!/bin/sh\ntest "$*" = "{expected}" || {{ echo "squeue: unexpected $*" >&2; exit 1; }}\n{answer}\n')
    (bin_dir / "squeue").chmod(0o755)
    return env | {"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}


# what snakemake-executor-plugin-slurm 2.x gives each job it submits: `--job-name <run ID>` (a UUID, after
# `--slurm-jobname-prefix` if set) and `--comment rule_<rule>[_wildcards_<values>]`
RUN_ID = "0d6b2f1e-8c1a-4f7e-9b3a-5c2d1e0f9a84"


@pytest.mark.parametrize("name, comment", [
    (RUN_ID, "rule_explain_attention_layer_wildcards_base_3"),
    (f"shiftlens_{RUN_ID}", "rule_merge_bilinear_words"),
], ids=["run-id", "prefixed-run-id"])
def test_a_job_the_slurm_executor_submitted_keeps_its_allocation_and_locks_nothing(start, tmp_path, name, comment):
    env = fake_squeue(tmp_path, job_env(fake_gpus=None, SLURM_JOB_ID="42", CUDA_VISIBLE_DEVICES="7"), name, comment)
    job = run_now(start, "slurm", env=env)
    assert job.devices() == "7"
    assert "SLURM job 42: using its allocation, CUDA_VISIBLE_DEVICES=7" in job.stderr()
    assert not (tmp_path / ".snakemake").exists()


def executor_env(tmp_path, **extra: str) -> dict[str, str]:
    """A job's environment as snakemake-executor-plugin-slurm's job on a node with GPUs sees it."""
    env = job_env(fake_gpus=None, SLURM_JOB_ID="42", **extra)
    return fake_squeue(tmp_path, env, RUN_ID, "rule_attribute_shard_wildcards_base_0")


def test_a_cpu_job_the_slurm_executor_submitted_sees_none_of_the_nodes_gpus(start, tmp_path):
    """SLURM sets CUDA_VISIBLE_DEVICES only for a job given GPUs: a gpus: 0 job on a node that does not
    constrain devices would see them all, and compute on cuda:0, another job's GPU."""
    job = run_now(start, "cpu", gpus=0, env=executor_env(tmp_path))
    assert job.devices() == ""
    assert "no GPU leased: running on the CPU (the job asks for 0 GPUs; SLURM allocated it none)" in job.stderr()


def test_a_job_the_slurm_executor_gave_gpus_it_did_not_ask_for_keeps_them(start, tmp_path):
    """A site's own GRES request beside `gpu: 0` (set-resources): the allocation is the job's."""
    assert run_now(start, "gres", gpus=0, env=executor_env(tmp_path, CUDA_VISIBLE_DEVICES="3")).devices() == "3"


@pytest.mark.parametrize("visible", ["0", ""], ids=["one-of-two", "none"])
def test_a_job_the_slurm_executor_gave_fewer_gpus_than_it_asks_for_stops_naming_both(start, tmp_path, visible):
    """A two-GPU request SLURM spread over two nodes (no --nodes=1), or a GRES of another name: the job
    would load a 7B model onto fewer devices than planned, or onto the CPU, with only a line in its log."""
    job = start("short", gpus=2, env=executor_env(tmp_path, CUDA_VISIBLE_DEVICES=visible))
    assert job.proc.wait(timeout=10) == 2
    assert not job.out.exists()
    assert (f"SLURM job 42 asks for 2 GPUs but its allocation has {len(visible.split(',')) if visible else 0} "
            f"(CUDA_VISIBLE_DEVICES={visible!r})") in job.stderr()


@pytest.mark.parametrize("name, comment", [
    ("interactive", ""),  # salloc
    ("bash", ""),  # srun --pty bash
    ("run-demo.sh", "rule_all"),  # sbatch of a script running Snakemake, whatever its comment
    (RUN_ID, ""),  # a UUID name alone is not the executor's mark
], ids=["salloc", "srun-pty", "sbatch-script", "uuid-name-only"])
def test_a_local_run_inside_a_slurm_allocation_splits_its_devices_between_jobs(start, tmp_path, name, comment):
    """`snakemake --cores all --resources gpu=2` run inside salloc or an sbatch session: every job of the
    run sees SLURM_JOB_ID and the allocation's two GPUs, and must still get one of them to itself."""
    env = fake_squeue(tmp_path, job_env(fake_gpus=None, SLURM_JOB_ID="42", CUDA_VISIBLE_DEVICES="0,1"), name, comment)
    a, b = start("a", env=env), start("b", env=env)
    assert {a.devices(), b.devices()} == {"0", "1"}
    c = start("c", env=env)
    wait_until(lambda: "waiting for 1 free GPU(s)" in c.stderr(), "job c to wait")
    assert a.finish() == 0 and b.finish() == 0 and c.finish() == 0
    assert "SLURM job 42 was not submitted by Snakemake's SLURM executor" in a.stderr()
    # the leases are the allocation's own: its device ids are its own too (0 may be another job's GPU 5)
    locks = tmp_path / ".snakemake/gpu-leases/slurm-job-42"
    assert sorted(p.name for p in locks.iterdir()) == ["gpu-0.lock", "gpu-1.lock"]


def test_a_local_run_inside_an_allocation_whose_squeue_fails_still_splits_its_devices(start, tmp_path):
    unreachable = "echo 'squeue: error: Unable to contact slurm controller (connect failure)' >&2; exit 1"
    env = fake_squeue(tmp_path, job_env(fake_gpus=None, SLURM_JOB_ID="42", CUDA_VISIBLE_DEVICES="0,1"), "",
                      answer=unreachable)
    a, b = start("a", env=env), start("b", env=env)
    assert {a.devices(), b.devices()} == {"0", "1"}
    assert a.finish() == 0 and b.finish() == 0
    assert "cannot ask SLURM about job 42" in a.stderr() and "Unable to contact slurm controller" in a.stderr()


def test_two_allocations_on_one_node_lease_their_own_devices_apart(start, tmp_path):
    """Two allocations on one node with devices confined by cgroups both call their GPU 0: one must not
    wait for the other's (the locks of one allocation are its own)."""
    first = start("first", env=fake_squeue(tmp_path, job_env(fake_gpus=None, SLURM_JOB_ID="41",
                                                             CUDA_VISIBLE_DEVICES="0"), "interactive", job_id="41"))
    assert first.devices() == "0"
    second = start("second", env=fake_squeue(tmp_path / "other", job_env(fake_gpus=None, SLURM_JOB_ID="42",
                                                                        CUDA_VISIBLE_DEVICES="0"), "interactive"))
    assert second.devices() == "0" and "waiting" not in second.stderr()
    assert first.finish() == 0 and second.finish() == 0


def test_the_lock_file_names_the_holder_while_the_job_runs(start, tmp_path):
    job = start("held", env=job_env(fake_gpus=1))
    job.devices()
    note = (tmp_path / ".snakemake/gpu-leases/gpu-0.lock").read_text()
    assert f"pid {job.proc.pid}\n" in note and "command " in note and str(job.marker) in note
    assert job.finish() == 0


def test_the_launcher_exits_with_the_commands_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "workflow_scripts.leases", "1", "--",
                             sys.executable, "-c", "raise SystemExit(3)"],
                            cwd=tmp_path, env=job_env(), timeout=10, check=False)
    assert result.returncode == 3


def fake_nvidia_smi(tmp_path: Path, script: str) -> dict[str, str]:
    """An environment whose nvidia-smi is `script` (and no fake GPU count)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = job_env(fake_gpus=None)
    return env | {"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}


def test_without_cuda_visible_devices_the_pool_is_the_gpus_nvidia_smi_lists(start, tmp_path):
    env = fake_nvidia_smi(tmp_path, 'test "$*" = "--query-gpu=index --format=csv,noheader" && printf "0\\n1\\n"')
    assert run_now(start, "both", gpus=2, env=env).devices() == "0,1"


def test_gpus_leased_by_nvidia_smis_index_are_those_cuda_numbers_alike(start, tmp_path):
    """nvidia-smi numbers GPUs in PCI bus order, CUDA fastest first unless told otherwise: on a machine
    of mixed GPUs, the job leasing nvidia-smi's GPU 0 computed on another card than its lock named."""
    env = fake_nvidia_smi(tmp_path, 'printf "0\\n1\\n"')
    assert run_now(start, "pci", gpus=1, env=env).order() == "PCI_BUS_ID"
    assert run_now(start, "override", gpus=1, env=env | {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}).order() == "PCI_BUS_ID"
    # a pool of the user's own CUDA_VISIBLE_DEVICES is under the user's numbering: left as it is
    own = run_now(start, "own", gpus=1, env=job_env(fake_gpus=None, CUDA_VISIBLE_DEVICES="1"))
    assert (own.devices(), own.order()) == ("1", "(unset)")


def test_a_failing_nvidia_smi_means_the_cpu_not_a_crash(start, tmp_path):
    failure = 'echo "NVIDIA-SMI has failed because it could not communicate with the driver"; exit 9'
    env = fake_nvidia_smi(tmp_path, failure)
    job = run_now(start, "cpu", env=env)
    assert job.devices() == ""
    assert "could not communicate with the driver" in job.stderr() and "running on the CPU" in job.stderr()


def test_workflows_in_different_folders_share_the_machines_leases(tmp_path):
    # the lock folder is per machine (SHIFTLENS_GPU_LOCK_DIR here stands in for /tmp/shiftlens-gpu-leases):
    # two working directories must not both take GPU 0
    env = job_env(fake_gpus=2, SHIFTLENS_GPU_LOCK_DIR=str(tmp_path / "machine-locks"))
    jobs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        jobs.append(Job(tmp_path / name, name, 1, env))
    try:
        assert sorted(job.devices() for job in jobs) == ["0", "1"]
        assert not any((tmp_path / name / ".snakemake").exists() for name in ("first", "second"))
    finally:
        for job in jobs:
            job.marker.touch()
            job.proc.wait(timeout=10)


def test_the_default_lock_folder_is_one_per_machine_not_per_working_directory(monkeypatch):
    from workflow_scripts import leases

    monkeypatch.delenv("SHIFTLENS_GPU_LOCK_DIR")
    assert leases.default_lock_dir() == Path("/tmp/shiftlens-gpu-leases")


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_lock_file_that_links_to_another_file_is_refused_and_left_alone(tmp_path, link):
    """The lock folder is shared by every user of the machine: a `gpu-0.lock` planted there as a link
    to someone's file must never be made world-writable or overwritten with the holder's note."""
    locks, victim = tmp_path / "locks", tmp_path / "victim.txt"
    locks.mkdir()
    victim.write_text("precious\n")
    victim.chmod(0o600)
    (os.symlink if link == "symlink" else os.link)(victim, locks / "gpu-0.lock")
    result = subprocess.run([sys.executable, "-m", "workflow_scripts.leases", "1", "--", sys.executable, "-c", "0"],
                            cwd=tmp_path, env=job_env(fake_gpus=1, SHIFTLENS_GPU_LOCK_DIR=str(locks)),
                            capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode != 0
    assert f"{locks / 'gpu-0.lock'} is not a plain lock file" in result.stderr
    assert victim.read_text() == "precious\n" and (victim.stat().st_mode & 0o777) == 0o600
