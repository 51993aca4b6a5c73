"""The README's commands parse and plan (issue 15): every `snakemake` line of its code blocks is
dry-run as written (the paper data from ../shared/paper), and the word-order trap it warns about
fails as it says."""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import PAPER_DIR
from test_workflow import copy_workflow, snakemake

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """`snakemake ...` lines inside the README's fenced code blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("snakemake ")]


def test_the_readme_shows_its_main_commands():
    commands = readme_commands()
    assert len(commands) >= 4
    assert all(not re.match(r"snakemake .*--(resources|config|configfile) \S+ [a-z0-9_]+$", c) for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_dry_runs_as_written(tmp_path, command):
    if "--profile profiles/slurm" in command and shutil.which("sbatch") is None:
        pytest.skip("the SLURM profile needs sbatch on the PATH")
    if "--software-deployment-method conda" in command and not (shutil.which("conda") or shutil.which("mamba")):
        # the word order still parses: a Snakemake without conda says so, not "invalid choice"
        out = snakemake(copy_workflow(tmp_path), "--dry-run", *shlex.split(command)[1:], check=False)
        assert "conda info" in out.stdout + out.stderr and "invalid choice" not in out.stdout + out.stderr
        pytest.skip("the conda deployment needs conda or mamba on the PATH")
    if not PAPER_DIR.is_dir():
        pytest.skip(f"the paper's data is not at {PAPER_DIR}")
    work = copy_workflow(tmp_path)
    out = snakemake(work, "--dry-run", *shlex.split(command)[1:], "--config", f"paper_data={PAPER_DIR}")
    assert "Job stats:" in out.stdout + out.stderr


def test_resources_before_the_targets_fails_as_the_readme_says(tmp_path):
    work = copy_workflow(tmp_path)
    wrong = snakemake(work, "--dry-run", "--resources", "gpu=2", "table5", check=False)
    assert wrong.returncode != 0
    right = snakemake(work, "--dry-run", "table5", "--resources", "gpu=2")
    assert "Job stats:" in right.stdout + right.stderr
