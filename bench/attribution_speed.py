"""Benchmark: batched attribution (reverse and forward mode) vs the per-token loop, same model and sample, one run.

    python bench/attribution_speed.py [--hidden 256 --layers 4 --prompt 120 --response 80]
    python bench/attribution_speed.py --prompt 31 --response 299   # the paper's median sample shape

Prints the times, the speed-ups and the max difference of the matrices. Not a test: the
ratio depends on the machine (the target on a 2-core CPU is >= 2.5x at equal results).
"""
import argparse
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workflow_scripts.attribution import attribute_ids, attribute_ids_forward, attribute_ids_reference, choose_autodiff


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--prompt", type=int, default=120)
    parser.add_argument("--response", type=int, default=80)
    parser.add_argument("--chunk-sizes", default="32", help="comma-separated; 0: all response tokens in one chunk")
    parser.add_argument("--forward-batch", type=int, default=0, help="tangents per forward-mode pass; 0: auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.prompt + args.response + 8,
    )
    model = LlamaForCausalLM(config).to(args.device).eval().requires_grad_(False)
    ids = torch.randint(3, args.vocab, (args.prompt + args.response,), device=args.device)
    attribute_ids(model, ids[: 16], 8)  # warm-up
    attribute_ids_forward(model, ids[: 16], 8)

    def timed(fn, *a):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(*a)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: LLaMA {params:.1f}M params, {args.layers} layers, {args.heads} heads / {args.kv_heads} KV heads, "
          f"{args.device}, torch threads {torch.get_num_threads()}")
    print(f"sample: {args.prompt} prompt x {args.response} response tokens")
    slow, t_slow = timed(attribute_ids_reference, model, ids, args.prompt)
    print(f"per-token loop (reference):      {t_slow:8.3f} s")
    for chunk_size in map(int, args.chunk_sizes.split(",")):
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        fast, t_fast = timed(attribute_ids, model, ids, args.prompt, chunk_size)
        peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if args.device.startswith("cuda") else ""
        print(f"this project, chunk size {chunk_size or 'all':>4}: {t_fast:8.3f} s  speed-up {t_slow / t_fast:5.2f}x  "
              f"max |difference| {np.abs(fast - slow).max():.3g} (max |value| {np.abs(slow).max():.3g}){peak}")
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    forward, t_forward = timed(attribute_ids_forward, model, ids, args.prompt, None, args.forward_batch)
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if args.device.startswith("cuda") else ""
    print(f"this project, forward mode:      {t_forward:8.3f} s  speed-up {t_slow / t_forward:5.2f}x  "
          f"max |difference| {np.abs(forward - slow).max():.3g}{peak}")
    print(f"auto would run: {choose_autodiff('auto', args.prompt, args.prompt, args.response)} mode")


if __name__ == "__main__":
    main()
