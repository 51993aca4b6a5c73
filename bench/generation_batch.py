"""Benchmark: greedy responses a shard's prompts at a time (`attribution.generate_batch`) against one at a time.

    PYTHONPATH=. python bench/generation_batch.py [--samples 48 --batch 16 --max-new-tokens 64] [--output x.json]

SmolLM2-135M-Instruct (converted once, as for bench/attribution_precision.py) answers prompts of the
paper's dataset (the same selection as that benchmark), raw, greedy, as the attribution job does under
`response: generate`. Per precision mode, on this machine in one run: seconds per response one prompt at a
time and `--batch` prompts per `generate` call (shortest first, padded on the left: `generate_responses`),
their ratio, how many batched responses are token for token the solo ones, with where the first
differing ones part, and how many solo and batched ones are the first mode's (float32's) solo ones.
Padding only reorders the arithmetic, so a difference is a near-tie flipped by rounding; which of the
two responses is "right" is a matter of that rounding too. Not a test: nothing is tuned to these
numbers. On a GPU the batch's gain is larger (bench/gpu_bench.py times it at 7B).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from attribution_precision import select  # noqa: E402

from workflow_scripts.attribution_model import load_model  # noqa: E402
from workflow_scripts.attribution_tokens import Tokenized, generate_responses  # noqa: E402
from workflow_scripts.dataset import read_dataset  # noqa: E402
from workflow_scripts.demo_annotator import DEFAULT_SMOLLM2_DIR, ensure_smollm2  # noqa: E402
from workflow_scripts.devices import set_matmul_precision  # noqa: E402


def parted_at(solo: Tokenized, batched: Tokenized) -> int | None:
    """The first response token at which the batched response leaves the solo one; None if they agree."""
    a, b = solo.input_ids[solo.n_prompt:].tolist(), batched.input_ids[batched.n_prompt:].tolist()
    if a == b:
        return None
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def timed_responses(model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int):
    start = time.perf_counter()
    responses = generate_responses(model, tokenizer, prompts, max_new_tokens, batch, f"batch {batch}")
    return responses, (time.perf_counter() - start) / len(prompts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=DEFAULT_SMOLLM2_DIR, help="converted here first when missing")
    parser.add_argument("--dataset", default=str(REPO.parent / "shared/paper/datasets/FinalDataset.tsv"))
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16, help="prompts per generate call (the workflow's default)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--modes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ensure_smollm2(args.model_dir)
    results = {"model": Path(args.model_dir).name, "samples": args.samples, "batch": args.batch,
               "max_new_tokens": args.max_new_tokens, "threads": args.threads, "torch": torch.__version__, "modes": {}}
    prompts = reference = None
    for mode in args.modes.split(","):
        set_matmul_precision(mode)
        model, tokenizer = load_model(args.model_dir, mode)
        if prompts is None:
            prompts = [s.prompt for s in select(read_dataset(args.dataset), tokenizer, args.max_prompt_tokens)]
            prompts = prompts[: args.samples]
        generate_responses(model, tokenizer, prompts[:2], 4, 2)  # warm-up
        solo, solo_seconds = timed_responses(model, tokenizer, prompts, args.max_new_tokens, 1)
        batched, batch_seconds = timed_responses(model, tokenizer, prompts, args.max_new_tokens, args.batch)
        parted = [parted_at(a, b) for a, b in zip(solo, batched)]
        reference = reference or solo  # the first mode's solo responses (float32: the paper's)
        results["modes"][mode] = {
            "solo_seconds_per_response": solo_seconds, "batched_seconds_per_response": batch_seconds,
            "speed_up": solo_seconds / batch_seconds, "identical": sum(p is None for p in parted),
            "parted_at": [p for p in parted if p is not None],
            "solo_equal_to_first_mode": sum(parted_at(a, b) is None for a, b in zip(reference, solo)),
            "batched_equal_to_first_mode": sum(parted_at(a, b) is None for a, b in zip(reference, batched)),
            "response_tokens": sum(t.input_ids.numel() - t.n_prompt for t in solo)}
        r = results["modes"][mode]
        print(f"{mode}: {solo_seconds:.2f} s a response alone, {batch_seconds:.2f} s in batches of {args.batch} "
              f"({r['speed_up']:.2f}x); {r['identical']}/{len(prompts)} identical", flush=True)
    print(f"\nSmolLM2-135M-Instruct, {len(prompts)} prompts of the paper's dataset, at most {args.max_new_tokens} new "
          f"tokens, {args.threads} thread(s), torch {torch.__version__}\n")
    first = next(iter(results["modes"]))
    print(f"| mode | s a response, alone | s a response, {args.batch} a call | speed-up | batched responses equal to "
          f"solo ones | where the others part (response token) | equal to {first}'s solo ones: solo / batched |\n"
          "|---|---|---|---|---|---|---|")
    for mode, r in results["modes"].items():
        print(f"| {mode} | {r['solo_seconds_per_response']:.2f} | {r['batched_seconds_per_response']:.2f} | "
              f"{r['speed_up']:.2f}x | {r['identical']} of {len(prompts)} | "
              f"{', '.join(map(str, sorted(r['parted_at']))) or '-'} | "
              f"{r['solo_equal_to_first_mode']} / {r['batched_equal_to_first_mode']} |")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
