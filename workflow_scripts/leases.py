"""Local GPU leases: each running job computes on its own devices.

Snakemake counts the `gpu` resource but never says which device a job gets, so concurrent GPU
jobs would all pile onto GPU 0. The rules therefore run their command as

    python -m workflow_scripts.leases GPUS -- COMMAND...

which locks GPUS free devices (one `flock`ed file per device in a folder shared by every
workflow on the machine: `/tmp/shiftlens-gpu-leases`, or SHIFTLENS_GPU_LOCK_DIR),
sets CUDA_VISIBLE_DEVICES to them and execs COMMAND with the lock descriptors inherited. A lease
thus lives exactly as long as the job's process (and any children it leaves running), and the
kernel frees it however the job ends, kill -9 included: there are no stale locks to clean up.
The lock file holds the last holder's pid and command, for humans; whether it is still held is
what `flock -n FILE true` answers.

The pool of devices is the user's CUDA_VISIBLE_DEVICES when set (leases go to its entries, under
the user's ids), else the machine's GPUs as nvidia-smi lists them (or the driver's
/proc/driver/nvidia/gpus where nvidia-smi is missing; none if neither answers), numbered as nvidia-smi
numbers them: the job gets CUDA_DEVICE_ORDER=PCI_BUS_ID, so that CUDA means the same cards. CUDA is never
initialised here, so the launcher costs no GPU memory and no seconds. SHIFTLENS_FAKE_GPUS=N pretends the
machine has GPUs 0..N-1 (tests, rehearsals on a CPU box).

Under SLURM (SLURM_JOB_ID set) a job that Snakemake's SLURM executor submitted has an allocation of its
own, which already chose its devices: nothing is locked (a job asking no GPU is hidden from the node's, one
given fewer than it asks stops). Any other process in an allocation (a local
`snakemake --resources gpu=N` run inside salloc, `srun --pty bash` or an sbatch script) shares it with
the run's other jobs, so it leases as above, from locks of that allocation only
(`LOCK_DIR/slurm-job-ID`): its device ids count from 0 again in another allocation on the same node.
The executor's jobs are told apart by what snakemake-executor-plugin-slurm gives each job it submits
(`executor_job`).
"""
from __future__ import annotations

import argparse
import fcntl
import logging
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from .cli import non_negative_int, setup_logging

log = logging.getLogger(__name__)

# One folder per machine, not per working directory: workflows run side by side from different
# folders must not all take GPU 0. Sticky and world-writable, like /tmp, for several users.
LOCK_DIR_VARIABLE = "SHIFTLENS_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("/tmp/shiftlens-gpu-leases")


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_VARIABLE) or DEFAULT_LOCK_DIR)
POLL_SECONDS = 0.5
CPU_LINE = "no GPU leased: running on the CPU"

# snakemake-executor-plugin-slurm 2.x submits each job as `sbatch --job-name <run ID> --comment
# rule_<rule>[_wildcards_<values>]`: the run ID is a uuid4, after `<slurm-jobname-prefix>_` if that is set
# (its status checks find its jobs by that name: `squeue --name <run ID>`). Neither reaches the job's
# environment (its jobstep runs the job in an `srun` step with the SLURM_* variables other than the job's
# id removed), so SLURM is asked. An allocation a person made is named after its command or script.
EXECUTOR_JOB_NAME = re.compile(r"(?:[A-Za-z0-9_-]{1,50}_)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
EXECUTOR_JOB_COMMENT = "rule_"


def executor_job(job_id: str) -> bool:
    """Whether SLURM job `job_id` is one that Snakemake's SLURM executor submitted (for this one job), by
    its name and comment; False, with a warning, when squeue cannot say (leasing inside the job's own
    allocation is harmless: it gets all of its devices at once)."""
    command = ["squeue", "--noheader", f"--jobs={job_id}", "--format=%j|%k"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("cannot ask SLURM about job %s (%s): leasing GPUs inside its allocation", job_id, err)
        return False
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        log.warning("cannot ask SLURM about job %s (%s: %s): leasing GPUs inside its allocation", job_id,
                    shlex.join(command), (out.stderr or out.stdout).strip() or f"exit status {out.returncode}")
        return False
    name, _, comment = lines[0].partition("|")
    if EXECUTOR_JOB_NAME.fullmatch(name.strip()) and comment.startswith(EXECUTOR_JOB_COMMENT):
        return True
    log.info("SLURM job %s was not submitted by Snakemake's SLURM executor (name %r, comment %r): its GPUs "
             "are shared by the jobs run inside it, leasing", job_id, name.strip(), comment.strip())
    return False


def machine_gpus() -> list[str]:
    """This machine's GPU indices, without initialising CUDA in this process (empty if none)."""
    fake = os.environ.get("SHIFTLENS_FAKE_GPUS")
    if fake is not None:
        if not fake.isdigit():
            raise ValueError(f"SHIFTLENS_FAKE_GPUS={fake!r}: must be a GPU count")
        return [str(index) for index in range(int(fake))]
    if shutil.which("nvidia-smi") is None:
        # a container may have the driver but not its tools: the driver still lists the GPUs
        try:
            return [str(index) for index in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
        except OSError:
            return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("nvidia-smi failed (%s): treating this machine as having no GPU", err)
        return []
    if out.returncode != 0:
        # nvidia-smi without a driver, or a driver without GPUs: the CPU still works
        log.warning("nvidia-smi failed (%s): treating this machine as having no GPU",
                    (out.stderr or out.stdout).strip() or f"exit status {out.returncode}")
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def device_pool() -> list[str]:
    """The device ids jobs may lease, as CUDA_VISIBLE_DEVICES entries of the launcher's caller."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [entry.strip() for entry in visible.split(",") if entry.strip()]
    return machine_gpus()


def lock_path(lock_dir: Path, device: str) -> Path:
    # ids may be UUIDs or MIG names: keep the file name tame but still one file per device
    return Path(lock_dir) / f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', device)}.lock"


def make_lock_dir(lock_dir: Path) -> None:
    if not lock_dir.is_dir():
        lock_dir.mkdir(parents=True, exist_ok=True)
        if lock_dir.stat().st_uid == os.getuid():
            lock_dir.chmod(0o1777)


def open_lock_file(path: Path) -> int:
    """The lock file's descriptor, refusing a link: the folder is shared by every user of the machine,
    so a `gpu-0.lock` planted as a link to someone's file must never be chmod-ed or overwritten."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        if path.is_symlink():
            raise ValueError(f"{path} is not a plain lock file (a symbolic link): remove it, or set "
                             f"{LOCK_DIR_VARIABLE} to a folder of your own") from None
        raise ValueError(f"{path}: cannot open the GPU lock file: {err}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise ValueError(f"{path} is not a plain lock file (a hard link or not a regular file): remove it, or "
                         f"set {LOCK_DIR_VARIABLE} to a folder of your own")
    return fd


def try_acquire(count: int, pool: list[str], lock_dir: Path) -> dict[str, int] | None:
    """`count` devices of `pool` locked now (device -> lock descriptor), or None, holding nothing.

    All or nothing: holding some devices while waiting for others could deadlock two
    multi-GPU jobs that each hold half of what the other needs.
    """
    make_lock_dir(Path(lock_dir))
    held: dict[str, int] = {}
    for device in pool:
        # no O_TRUNC: the holder's note is rewritten only once the lock is ours
        path = lock_path(lock_dir, device)
        fd = open_lock_file(path)
        if os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, 0o666)  # whatever the umask: another user's job must open it too
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held[device] = fd
        if len(held) == count:
            return held
    for fd in held.values():
        os.close(fd)
    return None


def acquire(count: int, pool: list[str], lock_dir: Path,
            poll_seconds: float = POLL_SECONDS) -> dict[str, int]:
    """`count` devices of `pool` (device -> lock descriptor), waiting while too few are free."""
    if count > len(pool):
        raise ValueError(f"the job asks for {count} GPUs but only {len(pool)} can be leased "
                         f"({', '.join(pool) or 'none'})")
    start = time.monotonic()
    waiting = False
    while (held := try_acquire(count, pool, lock_dir)) is None:
        if not waiting:
            log.info("waiting for %d free GPU(s): all of %s are leased (see %s)",
                     count, ",".join(pool), lock_dir)
            waiting = True
        time.sleep(poll_seconds)
    if waiting:
        log.info("waited %.1f s for a GPU lease", time.monotonic() - start)
    return held


def note_holder(held: dict[str, int], command: list[str]) -> None:
    """Write who holds each lease into its lock file (only ever while holding the lock)."""
    note = f"pid {os.getpid()}\nsince {time.strftime('%Y-%m-%d %H:%M:%S')}\ncommand {shlex.join(command)}\n"
    for fd in held.values():
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode("utf8"), 0)


def use_allocation(slurm_job: str, count: int) -> None:
    """A job Snakemake's SLURM executor submitted computes on its allocation's GPUs, as SLURM numbers them.
    SLURM sets CUDA_VISIBLE_DEVICES only for a job given GPUs: a job asking none is hidden from the node's
    (which a node that does not constrain devices would show it: another job's GPU as its cuda:0). A job
    given fewer than it asks (a request spread over nodes, a GRES of another name) stops: it would load its
    model onto fewer devices than planned, or onto the CPU, with only a line in its log."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if count == 0 and visible is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        log.info("%s (the job asks for 0 GPUs; SLURM allocated it none)", CPU_LINE)
        return
    if visible is not None:
        allocated = [d for d in visible.split(",") if d.strip()]
        if len(allocated) < count:
            raise ValueError(
                f"SLURM job {slurm_job} asks for {count} GPUs but its allocation has {len(allocated)} "
                f"(CUDA_VISIBLE_DEVICES={visible!r}): give its rule `nodes: 1` (and the GPU partition) under "
                "set-resources of the SLURM profile, or ask for fewer GPUs in the config")
    elif count > 0:
        log.warning("SLURM job %s asks for %d GPU(s) but SLURM set no CUDA_VISIBLE_DEVICES (a GRES without "
                    "device files?): it sees every GPU of its node", slurm_job, count)
    log.info("SLURM job %s: using its allocation, CUDA_VISIBLE_DEVICES=%s (submitted by Snakemake's "
             "SLURM executor)", slurm_job, "(unset)" if visible is None else visible)


def lease(count: int, command: list[str], lock_dir: Path | None = None) -> dict[str, int]:
    """Lease `count` GPUs for `command` and point CUDA_VISIBLE_DEVICES at them; returns the lock
    descriptors (device -> fd), which must stay open as long as the job runs. The job runs on the
    CPU (CUDA_VISIBLE_DEVICES="") when it asks for none or there are none; in a SLURM job that
    Snakemake's SLURM executor submitted the allocation's devices are kept (`use_allocation`); in any other SLURM
    allocation the devices are leased among the processes of that allocation.
    (A request larger than the pool gets the whole pool, with a warning: waiting could never end.)"""
    machine_lock_dir = lock_dir = Path(lock_dir or default_lock_dir())
    slurm_job = os.environ.get("SLURM_JOB_ID")
    if slurm_job:
        if executor_job(slurm_job):
            use_allocation(slurm_job, count)
            return {}
        lock_dir = machine_lock_dir / f"slurm-job-{re.sub(r'[^A-Za-z0-9._-]', '_', slurm_job)}"
    pool = device_pool()
    if "CUDA_VISIBLE_DEVICES" not in os.environ and pool:
        # the pool is nvidia-smi's numbering, PCI bus order; CUDA's default is fastest first, which on a
        # machine of mixed GPUs would put the job on another card than the one its lock names
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    if count == 0 or not pool:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if count > 0:
            reason = "there is no GPU to lease"
        elif pool:
            # the config's gpus: 0 (the demo), or a --resources gpu=0 that capped the request
            reason = f"the job asks for 0 GPUs; {len(pool)} could be leased"
        else:
            reason = "the job asks for 0 GPUs"
        log.info("%s (%s)", CPU_LINE, reason)
        return {}
    if count > len(pool):
        # e.g. paper.yaml's two-GPU attribution on a one-GPU box run without --resources gpu=1
        log.warning("the job asks for %d GPUs but only %d can be leased (%s): it gets all of them",
                    count, len(pool), ",".join(pool))
        count = len(pool)
    make_lock_dir(machine_lock_dir)  # sticky and open to every user, also above an allocation's own folder
    held = acquire(count, pool, lock_dir)
    note_holder(held, command)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(held)
    log.info("leased GPU(s): CUDA_VISIBLE_DEVICES=%s (locks in %s)", ",".join(held), lock_dir)
    return held


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m workflow_scripts.leases",
        usage="%(prog)s [--lock-dir DIR] GPUS -- COMMAND...",
        description="Lease GPUS free GPUs, set CUDA_VISIBLE_DEVICES and exec COMMAND holding them.",
        epilog="SHIFTLENS_FAKE_GPUS=N pretends the machine has N GPUs.",
    )
    parser.add_argument("--lock-dir", type=Path, default=None, metavar="DIR",
                        help=f"one lock file per device, shared by every workflow on the machine "
                             f"(default: ${LOCK_DIR_VARIABLE}, else {DEFAULT_LOCK_DIR})")
    parser.add_argument("gpus", type=non_negative_int, metavar="GPUS",
                        help="how many GPUs the command needs; 0 runs it on the CPU")
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]
    if not command:
        parser.error("give the command to run after `--`")
    setup_logging()

    try:
        held = lease(args.gpus, command, args.lock_dir)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    for fd in held.values():
        os.set_inheritable(fd, True)
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as err:
        parser.exit(127, f"error: cannot run {command[0]}: {err}\n")


if __name__ == "__main__":
    main()
