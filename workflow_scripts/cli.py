"""Command-line pieces shared by the job scripts (each module keeps a thin `main`)."""
from __future__ import annotations

import argparse
import logging


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def layer_job_parser(description: str, layer_help: str, merge_help: str):
    """`layer` (one model layer -> one lossless TSV shard) and `merge` (shards -> one lossless TSV and
    its export in the paper's layout) subcommands,
    with the arguments every per-layer explainer takes; returns (parser, layer subparser)."""
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    layer = sub.add_parser("layer", help=layer_help)
    layer.add_argument("--model-dir", required=True)
    layer.add_argument("--model-id", required=True)
    layer.add_argument("--layer", type=int, required=True)
    layer.add_argument("--word-pieces", required=True,
                       help="the vocabulary cut into this model's sub-tokens (python -m workflow_scripts.word_pieces)")
    layer.add_argument("--size", default="NA")
    layer.add_argument("--output", required=True)
    merge = sub.add_parser("merge", help=merge_help)
    merge.add_argument("output", help="the lossless merged file")
    merge.add_argument("inputs", nargs="+", help="the lossless layer shards")
    merge.add_argument("--export", required=True, help="the same rows in the paper's layout (escaped words)")
    return parser, layer


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
