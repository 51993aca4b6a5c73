"""Outputs that appear whole or not at all: written beside their name, then renamed.

A job killed mid-write (a crash, a SLURM time limit) must never leave a truncated file that
Snakemake or the next job would take as finished.
"""
from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_sibling(output: str | Path) -> Path:
    """A hidden sibling of `output`, unique to this process; its folder is created, and the siblings
    that killed writers of `output` left behind (no rule owns them) are removed."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{output.name}.tmp-"
    for leftover in output.parent.glob(f"{glob.escape(prefix)}*"):
        pid = leftover.name.removeprefix(prefix)
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    return output.with_name(f"{prefix}{os.getpid()}")


def _alive(pid: int) -> bool:
    """Whether a process of this id runs on this host (a writer of the same output on another host
    cannot be: Snakemake locks the working directory)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


@contextmanager
def atomic_file(output: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes `output` only if the block succeeds."""
    tmp = temp_sibling(output)
    try:
        yield tmp
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(output: str | Path) -> Iterator[Path]:
    """The same for a directory: a crash leaves only a dot-prefixed leftover, never `output`."""
    output = Path(output)
    tmp = temp_sibling(output)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if output.exists():
            shutil.rmtree(output)
        os.rename(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf8")
