"""What a job costs before its first useful line (issue 14, item 6): per job kind, the seconds of
`python -m workflow_scripts.<module> [command] --help` (Python, the module and what it imports at
the top) and of a process that also imports what the job's own work then imports (torch and
transformers for the model jobs, scipy for the tables' tests), and which heavy libraries that is.

Wall and CPU seconds, each the fastest of --runs runs (the machine may be shared: the minimum is
the cost, the rest is waiting; CPU seconds are the wall time of an idle machine).
Run: python bench/job_startup.py [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "tokenizers", "safetensors", "scipy", "pandas", "matplotlib")

# job (rule) -> (module and command as the rule runs it, the imports its work makes after parsing)
JOBS = {
    "attribute_shard": ("attribution", "from transformers import AutoModelForCausalLM, AutoTokenizer"),
    "word_pieces": ("word_pieces", "from transformers import AutoTokenizer; import sentencepiece"),
    "explain_attention_layer": ("attention layer", "import torch, safetensors"),  # no tokenizer: word_pieces cut
    "explain_ffn_layer": ("ffn layer", "import torch, scipy.linalg, safetensors"),
    "merge_attributions": ("shards merge", ""),
    "merge_bilinear_words": ("attention merge", ""),
    "merge_linear_words": ("ffn merge", ""),
    "table1_pair, table2_pair": ("tables table1", "from scipy import stats"),
    "table3_pair": ("table3", "from scipy import stats"),
    "annotate_* (replay, local)": ("annotate", ""),
    "annotation_cost": ("annotation_cost", ""),
    "table5_pair": ("table5 tables", "from scipy import stats"),
    "figure3_pair": ("table5 figure", "import matplotlib.pyplot"),
    "lease launcher (GPU jobs)": ("leases", ""),
}


def fastest(command: list[str], runs: int) -> tuple[float, float, str]:
    """Wall and CPU (user + system) seconds of the fastest run, and its stdout."""
    env = dict(os.environ, PYTHONPATH=str(REPO))  # this checkout's workflow_scripts
    wall, cpu, out = float("inf"), float("inf"), ""
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
        wall = min(wall, time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu, out = min(cpu, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime), result.stdout
    return wall, cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'job':28s} {'--help wall/CPU':>16s} {'start-up wall/CPU':>18s}  heavy libraries loaded by the start-up")
    for job, (command, work_imports) in JOBS.items():
        module, *sub = command.split()
        help_command = [sys.executable, "-m", f"workflow_scripts.{module}", *sub, "--help"]
        help_wall, help_cpu, _ = fastest(help_command, args.runs)
        code = (f"import sys, workflow_scripts.{module}\n{work_imports}\n"
                f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
        start_wall, start_cpu, loaded = fastest([sys.executable, "-c", code], args.runs)
        print(f"{job:28s} {help_wall:7.2f}/{help_cpu:.2f} s {start_wall:9.2f}/{start_cpu:.2f} s  "
              f"{loaded.strip() or '-'}", flush=True)


if __name__ == "__main__":
    main()
