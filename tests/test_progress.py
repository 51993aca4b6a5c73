"""Progress lines: plain text with done/total, rate and ETA, to the log and to descriptor 3."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_scripts.progress import Progress, bars_collapsed, progress

REPO = Path(__file__).resolve().parents[1]


def test_lines_say_done_total_rate_and_eta_without_carriage_returns(caplog):
    caplog.set_level("INFO")
    assert list(progress(range(20), "demo shard 0", "sample", every=1e9)) == list(range(20))
    lines = [r.getMessage() for r in caplog.records if r.name == "progress"]
    assert lines[0] == "demo shard 0: 0/20 samples"
    assert lines[1].startswith("demo shard 0: 2/20 samples (10%), ") and ", ETA " in lines[1]
    assert len(lines) == 11 and lines[-1].startswith("demo shard 0: 20/20 samples done in 0:00:0")
    assert not any("\r" in line for line in lines)


def test_a_slow_rate_is_given_per_item():
    bar = Progress(10, "layer 3", "head")
    bar.started, bar.done = 0.0, 2
    assert bar.line(10.0) == "layer 3: 2/10 heads (20%), 5.0 s/head, ETA 0:00:40"


def test_lines_reach_descriptor_3_when_the_rule_opens_it(tmp_path):
    script = "from workflow_scripts.progress import progress\nfor _ in progress(range(3), 'job', 'step'): pass\n"
    log = tmp_path / "job.log"
    result = subprocess.run(
        ["bash", "-c", f'"$0" -c "$1" 3>&2 > {log} 2>&1', sys.executable, script],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0
    console = result.stderr.splitlines()
    assert console[0].endswith("job: 0/3 steps") and console[-1].split("] ", 1)[1].startswith("job: 3/3 steps done")
    assert log.read_text() == ""  # no logging handler configured in this script: the console only


def test_the_console_hears_the_start_the_end_and_a_line_every_so_often_not_every_tenth(tmp_path):
    script = ("import time\nfrom workflow_scripts.progress import progress\n"
              "for _ in progress(range(20), 'job', 'step', every=1.0): time.sleep(0.03)\n")
    result = subprocess.run(
        ["bash", "-c", f'"$0" -c "$1" 3>&2 > {tmp_path / "log"} 2>&1', sys.executable, script],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    console = [line.split("] ", 1)[1] for line in result.stderr.splitlines()]
    assert console[0] == "job: 0/20 steps" and console[-1].startswith("job: 20/20 steps done")
    # about 0.6 s of work and a line a second: not the ten 10% lines the log gets
    assert len(console) <= 5, console


def test_a_file_the_job_opens_as_descriptor_3_is_never_written(tmp_path):
    """Run by hand, without `3>&2`, a job's first file takes descriptor 3: the annotation cache's SQLite
    file got progress lines over its header ("file is not a database")."""
    data = tmp_path / "cache.sqlite"
    data.write_bytes(b"SQLite format 3\x00" + bytes(100))
    script = ("import os, sys\nfrom workflow_scripts.progress import progress\n"
              "fd = os.open(sys.argv[1], os.O_RDWR)\nassert fd == 3, fd\n"
              "for _ in progress(range(3), 'job', 'step'): pass\n")
    result = subprocess.run([sys.executable, "-c", script, str(data)], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert data.read_bytes() == b"SQLite format 3\x00" + bytes(100)


def test_a_librarys_redrawn_bar_reaches_the_log_as_its_last_state_and_nothing_else_is_lost(capsys):
    with bars_collapsed():
        print("\rconvert: 10%|#  |\rconvert: 100%|###|", file=sys.stderr)
        print("a warning", file=sys.stderr)
    assert capsys.readouterr().err == "convert: 100%|###|\na warning\n"
    with pytest.raises(ValueError), bars_collapsed():
        print("\rstep 1\rstep 2", file=sys.stderr)
        raise ValueError
    assert capsys.readouterr().err == "step 2\n"  # said on a failure too


def test_an_eta_of_more_than_an_hour_reads_hours_minutes_seconds():
    bar = Progress(2, "layer 3", "head")
    bar.started, bar.done = 0.0, 1
    assert bar.line(3725.0) == "layer 3: 1/2 heads (50%), 3725.0 s/head, ETA 1:02:05"


def test_a_loop_that_fails_is_never_said_to_be_done(caplog):
    caplog.set_level("INFO")
    with pytest.raises(ValueError), Progress(5, "job", "step", console=False) as bar:
        bar.update()
        raise ValueError("the job failed")
    lines = [r.getMessage() for r in caplog.records if r.name == "progress"]
    assert lines[0] == "job: 0/5 steps" and not any("done" in line for line in lines), lines


def test_a_generator_with_its_total_given_is_counted_against_that_total(caplog):
    caplog.set_level("INFO")
    assert list(progress((i for i in range(3)), "stream", "row", total=3, every=1e9)) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records if r.name == "progress"]
    assert lines[0] == "stream: 0/3 rows" and lines[-1].startswith("stream: 3/3 rows done in ")


def test_a_bar_made_without_the_console_stays_off_descriptor_3_even_when_it_is_open(tmp_path):
    """The local annotator's per-batch lines go to the job's log only (console=False), `3>&2` or not."""
    script = ("from workflow_scripts.progress import Progress\n"
              "with Progress(3, 'quiet', 'step', every=0.0, console=False) as bar:\n"
              "    for _ in range(3): bar.update()\n"
              "with Progress(1, 'loud', 'step') as bar: bar.update()\n")
    result = subprocess.run(
        ["bash", "-c", f'"$0" -c "$1" 3>&2 > {tmp_path / "log"} 2>&1', sys.executable, script],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    console = [line.split("] ", 1)[1] for line in result.stderr.splitlines()]
    assert console[0] == "loud: 0/1 steps" and "quiet" not in result.stderr, console
