"""Every job a `snakemake -n` plans, one sorted JSON line each: to show that a change to the rules
leaves the plan unchanged (compare the files of two checkouts byte for byte).

A line holds what decides a job and what it runs: rule, wildcards, input, output, log, benchmark,
params, resources, conda env and the shell command. Run in the working directory of the plan:
    python /path/to/bench/plan_dump.py OUT.jsonl -- all --configfile config/paper.yaml
"""
from __future__ import annotations

import json
import sys


def job_record(job) -> dict:
    return {
        "rule": job.rule.name,
        "wildcards": dict(job.wildcards_dict),
        "input": list(map(str, job.input)),
        "output": list(map(str, job.output)),
        "log": list(map(str, job.log)),
        "benchmark": str(job.benchmark) if job.benchmark else None,
        "params": {name: repr(value) for name, value in job.params.items()},
        "resources": {name: repr(value) for name, value in job.resources.items()},
        "conda": str(getattr(job.conda_env_spec, "file", job.conda_env_spec)),
        "shell": job.shellcmd,
    }


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        raise SystemExit(__doc__)
    from snakemake import cli, jobs  # imported here: the usage message needs no Snakemake

    records = []
    log_info = jobs.Job.log_info

    def recording_log_info(job, *args, **kwargs):
        records.append(json.dumps(job_record(job), sort_keys=True))
        return log_info(job, *args, **kwargs)

    jobs.Job.log_info = recording_log_info
    try:
        cli.main([*sys.argv[3:], "-n", "--quiet", "progress"])
    except SystemExit as done:
        if done.code:
            raise
    finally:
        with open(sys.argv[1], "w", encoding="utf8") as out:
            out.write("".join(line + "\n" for line in sorted(records)))
    print(f"{len(records)} jobs -> {sys.argv[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
