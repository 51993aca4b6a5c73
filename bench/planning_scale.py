"""How long `snakemake -n all` takes to plan the paper config as the sample count and the number of
shards grow (issue 14): the paper's 632 samples, 10x the samples, shard size 1, and both.

Prints jobs, CPU and wall seconds and CPU microseconds per job for each case, and the ratio of the largest case's
cost per job to the paper's: near 1 when planning grows linearly with the job count. With --quiet,
also the seconds of `snakemake -n --quiet all` (the job table only: Snakemake then skips printing
each job, which costs it about half of a large dry run). --repeat N: each case N times (min-max).
Each case is also planned as a bare one-rule Snakefile with the same job count (one `echo` rule and
`all`: no params, log, resources or input functions), Snakemake's own cost for that many jobs on
this machine: the floor under which no workflow of that size plans.
Run: python bench/planning_scale.py [--paper-data ../shared/paper] [--quiet] [--repeat 2]
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "rules", "schemas", "config.yaml", "config", "datasets", "profiles", "envs"]


def workdir(root: Path, paper_data: Path, copies: int, shard_size: int | None) -> Path:
    work = root / f"x{copies}-shard{shard_size or 'paper'}"
    work.mkdir()
    for name in WORKFLOW_FILES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, work / name)
    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    config["paper_data"] = str(paper_data)
    config["attribution"]["shard_size"] = shard_size or config["attribution"]["shard_size"]
    if copies > 1:  # the paper's samples repeated under new ids (same groups by prefix)
        lines = (paper_data / "datasets/FinalDataset.tsv").read_text(encoding="utf8").splitlines()
        rows = [line for line in lines[1:] if line.strip()]
        big = [lines[0]] + [f"{row.split(chr(9), 1)[0]}_c{c}\t{row.split(chr(9), 1)[1]}" for c in range(copies)
                            for row in rows]
        (work / "big.tsv").write_text("\n".join(big) + "\n", encoding="utf8")
        config["dataset"]["samples"] = "big.tsv"
    (work / "bench.yaml").write_text(yaml.safe_dump(config))
    return work


def bare_workdir(root: Path, jobs: int) -> Path:
    """A Snakefile of `jobs` jobs that declare nothing but an output and a shell line."""
    work = root / f"bare{jobs}"
    work.mkdir()
    (work / "Snakefile").write_text(
        f'rule all:\n    input: expand("x/{{i}}.txt", i=range({jobs - 1}))\n\n'
        'rule echo:\n    output: "x/{i}.txt"\n    shell: "echo {output:q}"\n')
    return work


def plan(work: Path, *extra: str) -> tuple[int | None, float, float]:
    """(jobs, wall seconds, CPU seconds) of one dry run; jobs is None under --quiet (no job table).

    The CPU seconds (user + system of the snakemake process) are what the wall time is on an idle
    machine: on a shared one they stay comparable while the wall time includes waiting for a core.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO))  # this checkout's workflow_scripts, not an installed copy
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    config = ["--configfile", "bench.yaml"] if (work / "bench.yaml").exists() else []
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "all", "--cores", "2", *config, *extra],
                         cwd=work, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    if out.returncode != 0:
        raise SystemExit(f"{work.name}: snakemake failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    total = re.search(r"^total\s+(\d+)$", out.stdout + out.stderr, re.M)
    shutil.rmtree(work / ".snakemake", ignore_errors=True)  # the next run starts as this one did
    return (int(total.group(1)) if total else None), seconds, cpu_seconds


def spread(values: list[float]) -> str:
    return f"{min(values):6.2f}" if len(values) == 1 else f"{min(values):6.2f}-{max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper-data", type=Path, default=REPO.parent / "shared" / "paper")
    parser.add_argument("--quiet", action="store_true", help="also time `snakemake -n --quiet all`")
    parser.add_argument("--no-bare", dest="bare", action="store_false",
                        help="skip planning the bare one-rule Snakefile of the same job count")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (the machine may be shared)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for copies, shard_size in ((1, None), (10, None), (1, 1), (10, 1)):
            work = workdir(Path(tmp), args.paper_data.resolve(), copies, shard_size)
            runs = [plan(work) for _ in range(args.repeat)]
            jobs, seconds = runs[0][0], min(cpu for _, _, cpu in runs)
            rows.append((copies, shard_size, jobs, seconds))
            line = (f"samples x{copies:<3} shard size {shard_size or 'paper':>5}: {jobs:6d} jobs, "
                    f"CPU {spread([cpu for _, _, cpu in runs])} s ({seconds / jobs * 1e6:5.0f} us/job), "
                    f"wall {spread([wall for _, wall, _ in runs])} s")
            if args.bare:
                bare = bare_workdir(Path(tmp), jobs)
                floor = [plan(bare)[2] for _ in range(args.repeat)]
                line += f"; bare Snakefile, same jobs: CPU {spread(floor)} s (ours / bare {seconds / min(floor):.2f})"
            if args.quiet:
                quiet = [plan(work, "--quiet") for _ in range(args.repeat)]
                line += f"; -n --quiet: CPU {spread([c for *_, c in quiet])} s, wall {spread([q[1] for q in quiet])} s"
            print(line, flush=True)
    per_job = [seconds / jobs for _, _, jobs, seconds in rows]
    print(f"CPU cost per job, largest case / paper case: {per_job[-1] / per_job[0]:.2f}")


if __name__ == "__main__":
    main()
