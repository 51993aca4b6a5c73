"""Outputs written whole or not at all (workflow_scripts/atomic.py), and no leftovers of killed jobs."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from workflow_scripts.atomic import atomic_dir, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
WRITER = """
import sys, time
from workflow_scripts.atomic import atomic_dir, atomic_file
kind, output = sys.argv[1], sys.argv[2]
with (atomic_dir if kind == "dir" else atomic_file)(output) as tmp:
    (tmp / "weights.bin" if kind == "dir" else tmp).write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def killed_mid_write(kind: str, output: Path) -> Path:
    """Run a writer, SIGKILL it mid-write (as SLURM's time limit or the OOM killer does): its leftover."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(output)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    leftover = output.with_name(f".{output.name}.tmp-{writer.pid}")
    assert leftover.exists() and not output.exists()
    return leftover


def test_the_next_write_of_an_output_removes_what_a_killed_writer_left(tmp_path):
    """A killed job's hidden temporary (a model folder, ~200 MB of browser pages at the paper's size)
    sat beside its output for good: no rule owns it and the next job's pid differs."""
    folder, table = tmp_path / "model", tmp_path / "table.tsv"
    left = [killed_mid_write("dir", folder), killed_mid_write("file", table)]
    live = tmp_path / f".table.tsv.tmp-{os.getppid()}"  # a live process's: maybe still writing, kept
    live.write_text("partial")
    with atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text("{}")
    atomic_write_text(table, "a\tb\n")
    assert not any(path.exists() for path in left)
    assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "model", "table.tsv"]
    assert (folder / "config.json").read_text() == "{}" and table.read_text() == "a\tb\n"


def test_a_crash_inside_the_block_leaves_nothing(tmp_path):
    output = tmp_path / "model"
    try:
        with atomic_dir(output) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("crash")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_leaves_neither_the_output_nor_its_temporary(tmp_path):
    """A job that catches the failure (or a process writing many outputs) lived on with a hidden
    temporary beside the output: its own pid's, which no later write of this process removes."""
    from workflow_scripts.atomic import atomic_file

    output = tmp_path / "table.tsv"
    try:
        with atomic_file(output) as tmp:
            tmp.write_text("half a table")
            raise RuntimeError("crash")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_leftover_is_removed_even_when_the_name_holds_glob_characters(tmp_path):
    """Output names hold what the config names (a model id, a pair): `[`, `]`, `*` or `?` in one made the
    leftover pattern match nothing, so a killed writer's temporary stayed for good."""
    table = tmp_path / "pair[7b]*.tsv"
    left = killed_mid_write("file", table)
    atomic_write_text(table, "a\tb\n")
    assert not left.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pair[7b]*.tsv"]


def test_a_folder_written_again_replaces_the_old_one_whole(tmp_path):
    """A rerun of a rule whose output is a folder (a built model, the browser pages) replaces it: nothing of
    the old folder is left in the new one, and the rerun does not fail on the folder being there."""
    folder = tmp_path / "model"
    with atomic_dir(folder) as tmp:
        (tmp / "old.bin").write_text("old")
    with atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in folder.iterdir()] == ["config.json"] and list(tmp_path.iterdir()) == [folder]
