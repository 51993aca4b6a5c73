"""What a forward-mode position costs against a reverse-mode one, on a real checkpoint: the weight
`auto` gives forward mode's positions on a CPU (`attribution.FORWARD_POSITION_COST`).

    PYTHONPATH=. python bench/autodiff_weight.py [--model-dir DIR] [--shapes 25x32,60x64] [--threads 1]

Per prompt x response shape (random token ids): reverse mode (`attribute_ids`, chunks of --chunk-size,
one backward per token, as on a CPU) and forward mode (`attribute_ids_forward`, --forward-batch
tangents a pass), the faster of --repeat runs each; the ratio of their times, of their positions
(`reverse_positions`, `forward_positions`), the weight that makes the two agree, and the mode `auto`
picks. On a GPU `bench/gpu_bench.py` prints the same weight for the 7B shape.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_scripts.attribution import (  # noqa: E402
    FORWARD_POSITION_COST,
    attribute_ids,
    attribute_ids_forward,
    choose_autodiff,
    forward_position_cost,
    forward_positions,
    reverse_positions,
)
from workflow_scripts.attribution_model import load_model  # noqa: E402
from workflow_scripts.demo_annotator import DEFAULT_SMOLLM2_DIR, ensure_smollm2  # noqa: E402


def fastest(repeat: int, run, *args) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def shape(text: str) -> tuple[int, int]:
    prompt, _, response = text.partition("x")
    return int(prompt), int(response)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=DEFAULT_SMOLLM2_DIR, help="converted here first when missing")
    parser.add_argument("--shapes", default="15x9,25x32,40x64,60x64,23x80", help="prompt x response tokens")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--forward-batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ensure_smollm2(args.model_dir)
    model, _ = load_model(args.model_dir, "float32")
    vocab = model.config.vocab_size
    print(f"{args.model_dir}, float32, {args.threads} thread(s), torch {torch.__version__}, reverse in chunks of "
          f"{args.chunk_size} (one backward per token), forward {args.forward_batch} tangents a pass:\n")
    print("| prompt x response | reverse | forward | time, reverse / forward | positions, reverse / forward "
          "| a forward position, in reverse ones | `auto` picks |")
    print("|---|---|---|---|---|---|---|")
    for n, m in map(shape, args.shapes.split(",")):
        ids = torch.randint(100, vocab, (n + m,), generator=torch.Generator().manual_seed(0))
        reverse = fastest(args.repeat, attribute_ids, model, ids, n, args.chunk_size, 1)
        forward = fastest(args.repeat, attribute_ids_forward, model, ids, n, None, args.forward_batch)
        positions = reverse_positions(n, m, args.chunk_size) / forward_positions(n, n, m)
        weight = forward_position_cost(forward, reverse, n, n, m, args.chunk_size)
        print(f"| {n} x {m} | {reverse:.2f} s | {forward:.2f} s | {reverse / forward:.2f} | {positions:.2f} | "
              f"{weight:.2f} | {choose_autodiff('auto', n, n, m, args.chunk_size)} |",
              flush=True)
    print(f"\n`auto` weighs a forward-mode position as {FORWARD_POSITION_COST['cpu']} reverse-mode ones on a CPU.")


if __name__ == "__main__":
    main()
