"""How long `snakemake -n all` takes to plan the paper config as the sample count and the number of
shards grow (issue 14): the paper's 632 samples, 10x the samples, shard size 1, and both.

Prints jobs, seconds and microseconds per job for each case, and the ratio of the largest case's
cost per job to the paper's: near 1 when planning grows linearly with the job count.
Run: python bench/planning_scale.py [--paper-data ../shared/paper]
"""
from __future__ import annotations

import argparse
import re
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


def plan(work: Path) -> tuple[int, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "all", "--cores", "2", "--configfile", "bench.yaml"],
                         cwd=work, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{work.name}: snakemake failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    total = re.search(r"^total\s+(\d+)$", out.stdout + out.stderr, re.M)
    return int(total.group(1)), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper-data", type=Path, default=REPO.parent / "shared" / "paper")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for copies, shard_size in ((1, None), (10, None), (1, 1), (10, 1)):
            jobs, seconds = plan(workdir(Path(tmp), args.paper_data.resolve(), copies, shard_size))
            rows.append((copies, shard_size, jobs, seconds))
            print(f"samples x{copies:<3} shard size {shard_size or 'paper':>5}: {jobs:6d} jobs in {seconds:6.2f} s "
                  f"({seconds / jobs * 1e6:7.0f} us/job)", flush=True)
    per_job = [seconds / jobs for _, _, jobs, seconds in rows]
    print(f"cost per job, largest case / paper case: {per_job[-1] / per_job[0]:.2f}")


if __name__ == "__main__":
    main()
