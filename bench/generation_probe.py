"""Why a greedy step in bfloat16 or float16 took 3.4x float32's on an H200 (docs/benchmarks.md, run 3).

    python3 bench/generation_probe.py [--output probe.json]   # on a GPU: the LLaMA-7B shape, random weights

For each dtype (bfloat16, float16, float32) and with cuBLAS's reduced-precision reductions off (what
`set_matmul_precision` sets in every mode) and on: one 1 x 4096 by 4096 x 11008 product (a greedy
step's kind), one forward pass over 51 tokens, and greedy steps of one prompt and of 16
(`greedy_continuation`), in milliseconds. If the half-precision steps are slow only with the reductions
off, the job could allow them while generating (a response is a near-tie's rounding apart either way) and
keep them off for the attribution. On a CPU it runs a tiny shape (a smoke test, `tests/test_bench.py`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from gpu_bench import LLAMA_7B, SMALL, Models  # noqa: E402

from workflow_scripts.attribution_tokens import greedy_continuation  # noqa: E402
from workflow_scripts.devices import set_matmul_precision  # noqa: E402

STEPS = 60  # greedy steps timed per call


def milliseconds(fn, repeats: int, synchronize) -> float:
    """Mean milliseconds of fn() after one warm-up call."""
    fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def timings(model, product, one, sixteen, synchronize) -> dict:
    """Milliseconds of the product, a forward pass over `one`, and a greedy step of `one` and of `sixteen`."""
    return {"product_ms": milliseconds(product, 200, synchronize),
            "forward_51_ms": milliseconds(lambda: model(one), 20, synchronize),
            "step_one_prompt_ms": milliseconds(
                lambda: greedy_continuation(model, one, STEPS, 0, STEPS), 1, synchronize) / STEPS,
            "step_16_prompts_ms": milliseconds(
                lambda: greedy_continuation(model, sixteen, STEPS, 0, STEPS), 1, synchronize) / STEPS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = LLAMA_7B if device.type == "cuda" else SMALL
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    models = Models(shape, device)
    one = torch.randint(3, shape.vocab, (1, 51), device=device)
    sixteen = torch.randint(3, shape.vocab, (16, 51), device=device)
    results = {"card": torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke test)",
               "torch": torch.__version__, "shape": shape.name, "rows": []}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        model, _ = models.get(dtype)
        weight = torch.randn(shape.intermediate, shape.hidden, device=device, dtype=dtype)
        row_vector = torch.randn(1, shape.hidden, device=device, dtype=dtype)
        for reduced in (False, True):
            set_matmul_precision("float32")
            matmul = torch.backends.cuda.matmul
            matmul.allow_bf16_reduced_precision_reduction = matmul.allow_fp16_reduced_precision_reduction = reduced
            row = {"dtype": str(dtype).removeprefix("torch."), "reduced_precision_reductions": reduced,
                   **timings(model, partial(torch.matmul, row_vector, weight.T), one, sixteen, synchronize)}
            results["rows"].append(row)
            print(f"{row['dtype']}, reduced-precision reductions {'on' if reduced else 'off'}: 1 x {shape.hidden} "
                  f"product {row['product_ms']:.3f} ms, forward over 51 tokens {row['forward_51_ms']:.1f} ms, greedy "
                  f"step {row['step_one_prompt_ms']:.1f} ms (one prompt) / {row['step_16_prompts_ms']:.1f} ms (16)",
                  flush=True)
            if args.output:
                Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    set_matmul_precision("float32")


if __name__ == "__main__":
    main()
