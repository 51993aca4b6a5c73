"""Benchmark: one FFN layer's principal components, covariance eigendecomposition vs full SVD.

    python bench/ffn_speed.py [--rows 11008 --hidden 4096 --rank 300]

A LLaMA-7B-sized random down-projection (11008 x 4096), both methods in one run, on the same
device; prints both times, the ratio, and how well the two agree (ratios, |cosine| of the
components). Not a test: the target on a 2-core CPU is >= 3x.
"""
import argparse
import time

import torch

from workflow_scripts.ffn import principal_components


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=11008)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=300)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -2, args.hidden)  # a decaying spectrum, as trained weights have
    rows = (torch.randn(args.rows, args.hidden, generator=g) * scales * 0.02).to(args.device)

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    (components, ratios), t_ours = timed(lambda: principal_components(rows, args.rank))

    def full_svd():
        centred = rows.double() - rows.double().mean(0, keepdim=True)
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        variance = singular**2 / (rows.shape[0] - 1)
        return vh[: args.rank], variance[: args.rank] / variance.sum()

    (reference, reference_ratios), t_svd = timed(full_svd)
    cosine = (components.double() * reference).sum(1).abs()
    print(f"matrix {args.rows} x {args.hidden}, rank {args.rank}, {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"covariance + eigh (this project): {t_ours:8.2f} s")
    print(f"full SVD (reference):             {t_svd:8.2f} s")
    print(f"speed-up: {t_svd / t_ours:.1f}x   "
          f"max ratio difference {(ratios.double() - reference_ratios).abs().max():.2e}   "
          f"min |cosine| of components {cosine.min():.6f}")


if __name__ == "__main__":
    main()
