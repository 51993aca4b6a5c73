"""Benchmark: one head explained by the vectorised code vs the per-dimension reference.

    python bench/attention_speed.py                     # the demo model's shape, then LLaMA-7B width
    python bench/attention_speed.py --words 5000 --hidden 512 --head-dim 128

Same random vocabulary (model-space vectors, clustered static word vectors, thresholds) and the
same random head for both, in one run; prints the time per head of each, the ratio, and whether
both give the same pairs. The reference is the test suite's (tests/test_attention.py). Not a
test: the ratio depends on the machine (target on a 2-core CPU: >= 100x).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_attention import reference_explain_head  # noqa: E402

from workflow_scripts.attention import Vocabulary, explain_head  # noqa: E402


def paper_style_head(vocab, wq, wk, top_k):
    """The paper's loop shape: tensor ops within a dimension, a Python loop over dimensions."""
    hq, hk = vocab.embeddings @ wq, vocab.embeddings @ wk
    activation = (hq**2).sum(0) + (hk**2).sum(0)
    out = []
    for d in torch.argsort(activation, descending=True).tolist():
        tq = torch.argsort(hq[:, d].abs(), descending=True)[:top_k]
        tk = torch.argsort(hk[:, d].abs(), descending=True)[:top_k]
        s = vocab.static[tq] @ vocab.static[tk].T
        s = torch.where((s > vocab.thresholds[tq, None]) & (s > vocab.thresholds[None, tk]), s, -100.0)
        s = torch.where(hq[tq, d, None] * hk[None, tk, d] > 0, s, -100.0)
        ranks = s.flatten().argsort(descending=True)
        pairs = [(vocab.words[tk[r % top_k]], vocab.words[tq[r // top_k]]) for r in ranks.tolist()
                 if s.flatten()[r] > 0 and tq[r // top_k] != tk[r % top_k]]
        out.append((d, float(activation[d]), pairs))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, help="default: both presets below")
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--head-dim", type=int)
    parser.add_argument("--static-dim", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--reference-dims", type=int, default=16, help="time the reference on this many dims, scale up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.words and args.hidden and args.head_dim:
        shapes = [(args.words, args.hidden, args.head_dim)]
    else:  # the demo model with its vocabulary; LLaMA-7B with the paper's vocabulary size
        shapes = [(2527, 64, 16), (26000, 4096, 128)]
    for args.words, args.hidden, args.head_dim in shapes:
        run(args)


def run(args):
    g = torch.Generator().manual_seed(0)
    topics = torch.randn(args.words // 20, args.static_dim, generator=g)
    noisy = topics[torch.arange(args.words) % len(topics)] + 0.3 * torch.randn(args.words, args.static_dim, generator=g)
    static = torch.nn.functional.normalize(noisy, dim=-1)
    cos = static @ static[:3000].T
    device = torch.device(args.device)
    vocab = Vocabulary(
        torch.arange(args.words).numpy().astype(str).astype(object),
        (torch.randn(args.words, args.hidden, generator=g) / args.hidden**0.5).to(device),
        static.to(device), (cos.mean(1) + 1.96 * cos.std(1, unbiased=False)).to(device),
    )
    wq = torch.randn(args.hidden, args.head_dim, generator=g).to(device)
    wk = torch.randn(args.hidden, args.head_dim, generator=g).to(device)
    explain_head(vocab, wq, wk, args.top_k)  # warm-up (kernels, allocator)
    start = time.perf_counter()
    fast = explain_head(vocab, wq, wk, args.top_k)
    t_fast = time.perf_counter() - start
    # the reference on the first few dimensions of the same head (it is slow), scaled to the head
    order = [d for d, _, _ in fast]
    keep = order[: args.reference_dims]
    start = time.perf_counter()
    slow = reference_explain_head(vocab.words, vocab.embeddings, vocab.static, vocab.thresholds,
                                  wq[:, keep], wk[:, keep], args.top_k)
    t_slow = (time.perf_counter() - start) * args.head_dim / len(keep)
    same = all(a[2] == b[2] for a, b in zip(sorted(fast[: len(keep)], key=lambda x: x[0]),
                                             sorted([(keep[d], s, p) for d, s, p in slow], key=lambda x: x[0])))
    pairs = sum(len(p) for _, _, p in fast)
    print(f"head: {args.words} words, hidden {args.hidden}, head_dim {args.head_dim}, top-{args.top_k}, "
          f"{args.device}, torch threads {torch.get_num_threads()}; {pairs} pairs")
    print(f"vectorised (this project): {t_fast:8.3f} s per head")
    print(f"per-dimension reference:   {t_slow:8.3f} s per head (timed on {len(keep)} dims, scaled)")
    start = time.perf_counter()
    paper = paper_style_head(vocab, wq, wk, args.top_k)
    t_paper = time.perf_counter() - start
    print(f"speed-up: {t_slow / t_fast:.0f}x   same pairs on the timed dims: {same}")
    print(f"paper-style loop (tensor ops per dimension): {t_paper:.3f} s per head, {t_paper / t_fast:.1f}x slower; "
          f"same pairs: {[p for _, _, p in paper] == [p for _, _, p in fast]}")


if __name__ == "__main__":
    main()
