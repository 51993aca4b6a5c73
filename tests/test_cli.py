"""The command-line pieces the job scripts share: integer checks, the per-layer parser, logging."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_scripts.cli import layer_job_parser, non_negative_int, positive_int

REPO = Path(__file__).resolve().parents[1]


def parser():
    return layer_job_parser("explain", "one layer", "merge shards")[0]


def test_positive_int_refuses_zero_and_negative_numbers():
    assert positive_int("1") == 1
    for text in ("0", "-3"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"{text}: must be a positive integer"):
            positive_int(text)


def test_non_negative_int_takes_zero_and_refuses_negative_numbers():
    assert non_negative_int("0") == 0 and non_negative_int("7") == 7
    with pytest.raises(argparse.ArgumentTypeError, match="-1: must be 0 or more"):
        non_negative_int("-1")


def test_a_layer_job_takes_an_integer_layer_and_its_models_word_pieces_and_defaults_to_no_size():
    args = parser().parse_args(["layer", "--model-dir", "m", "--model-id", "id", "--layer", "3", "--word-pieces", "w",
                                "--output", "o.tsv"])
    assert (args.command, args.layer, args.word_pieces, args.size) == ("layer", 3, "w", "NA")


@pytest.mark.parametrize("argv", [
    [],  # no subcommand
    ["merge", "out.tsv", "--export", "x.tsv"],  # no shard to merge
    ["merge", "out.tsv", "a.tsv"],  # no export
    ["layer", "--model-dir", "m", "--model-id", "id", "--layer", "x", "--word-pieces", "w", "--output", "o"],
    ["layer", "--model-dir", "m", "--model-id", "id", "--layer", "1", "--output", "o"],
], ids=["no-command", "no-shards", "no-export", "layer-not-a-number", "no-word-pieces"])
def test_an_incomplete_command_line_is_a_usage_error_with_exit_code_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(argv)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_a_jobs_info_lines_reach_its_log_with_time_and_level():
    script = ("import logging\nfrom workflow_scripts.cli import setup_logging\nsetup_logging()\n"
              "logging.getLogger('progress').info('layer 3: 0/8 heads')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.rstrip().endswith(" INFO layer 3: 0/8 heads"), result.stderr
