"""Shared fixtures: the paper's released data (when checked out next to the repo) and small TSVs."""
from __future__ import annotations

from pathlib import Path

import pytest

DATASET_HEADER = "ID\tPrompt\tResponse\tInstruct&Context"
PAPER_DIR = Path(__file__).resolve().parents[2] / "shared" / "paper"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "paper: uses the paper's released data under ../shared/paper (a few seconds)"
    )


@pytest.fixture
def paper_dir() -> Path:
    """The paper's released data, read-only, next to the repository checkout (skip if absent)."""
    if not PAPER_DIR.is_dir():
        pytest.skip(f"the paper's released data is not at {PAPER_DIR} (shared/ is checked out next to the repo)")
    return PAPER_DIR


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
