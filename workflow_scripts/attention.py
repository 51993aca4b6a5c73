"""Self-attention pattern explanation: word-word pairs of every head dimension (docs/design.md#head-word-pairs).

For layer l and head h, Hq = E Wq_h and Hk = E Wk_h project the model-space word vectors E of a
vocabulary onto the head's query and key dimensions (the layer's input RMSNorm folded into W).
Each dimension is described by pairs (key word, query word) of its top-K words by |Hq| and |Hk|
that are related by static word vectors (cosine above both words' thresholds) and activate the
dimension with the same sign. Everything a dimension needs is computed for all dimensions of a
head at once; the vocabulary's word vectors and thresholds once per job.

Thresholds (config `fidelity`, passed as --thresholds): `paper` counts each baseline word without
a static vector as a cosine of 0 (the paper's `att_explain` encodes such a word as a zero vector,
which normalises to zero), `canonical` leaves those words out of the mean and std (a correction:
a missing vector says nothing about relatedness). Shards are lossless (tsv.PAIRS_COLUMNS).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .cli import layer_job_parser, positive_int, setup_logging
from .devices import pick_device, set_matmul_precision
from .progress import progress
from .tsv import PAIRS_COLUMNS, encode_pairs, merge_and_export, write_tsv
from .word_embeddings import mean_embeddings

if TYPE_CHECKING:  # annotations only: the functions that compute import torch, so that
    import torch  # `attention merge` and `--help` start without it (~2 s a process)

log = logging.getLogger(__name__)

THRESHOLD_RULES = ("paper", "canonical")


@dataclass
class Vocabulary:
    """The words, their model-space vectors, and what static word vectors say about them."""

    words: np.ndarray  # (V,) str
    embeddings: torch.Tensor  # (V, hidden): mean input embedding of each word's sub-tokens
    static: torch.Tensor  # (V, d) L2-normalised static word vectors (zero rows where missing)
    thresholds: torch.Tensor  # (V,) cosine a partner must exceed; +inf for words without a vector


def explain_head(vocab: Vocabulary, wq: torch.Tensor, wk: torch.Tensor, top_k: int = 100):
    """Pairs of every dimension of one head, dimensions in decreasing order of activation.

    Args:
        vocab: V words with their (V, hidden) model-space vectors, static vectors and thresholds
        wq: (hidden, head_dim) the head's query projection, the layer's input RMSNorm folded in
        wk: (hidden, head_dim) the key projection of the KV head it attends with, likewise
        top_k: words per dimension by |Hq| and by |Hk| (at most V)

    Returns a list of (dimension index, activation score, [(key word, query word) pairs by
    decreasing cosine]), head_dim long.
    """
    import torch
    hq, hk = vocab.embeddings @ wq, vocab.embeddings @ wk  # (V, hd)
    activation = (hq**2).sum(0) + (hk**2).sum(0)
    order = torch.argsort(activation, descending=True, stable=True)
    k = min(top_k, hq.shape[0])
    iq = torch.topk(hq[:, order].abs(), k, dim=0).indices.T  # (hd, K) word indices per dimension
    ik = torch.topk(hk[:, order].abs(), k, dim=0).indices.T
    vq = torch.gather(hq[:, order].T, 1, iq)  # (hd, K) activations of those words
    vk = torch.gather(hk[:, order].T, 1, ik)
    cosine = torch.bmm(vocab.static[iq], vocab.static[ik].transpose(1, 2))  # (hd, Kq, Kk)
    keep = (
        (cosine > vocab.thresholds[iq][:, :, None])
        & (cosine > vocab.thresholds[ik][:, None, :])
        & (vq[:, :, None] * vk[:, None, :] > 0)  # the pair activates the dimension with one sign
        & (iq[:, :, None] != ik[:, None, :])
        & (cosine > 0)
    )
    ranked = torch.where(keep, cosine, torch.full_like(cosine, -torch.inf)).flatten(1)
    counts = keep.flatten(1).sum(1).tolist()
    ranking = torch.argsort(ranked, dim=1, descending=True, stable=True)
    iq, ik, ranking = iq.cpu().numpy(), ik.cpu().numpy(), ranking.cpu().numpy()
    scores = activation[order].tolist()
    out = []
    for r, dim in enumerate(order.tolist()):
        best = ranking[r, : counts[r]]
        queries, keys = vocab.words[iq[r, best // k]], vocab.words[ik[r, best % k]]
        out.append((dim, scores[r], list(zip(keys.tolist(), queries.tolist()))))
    return out


def vocabulary_thresholds(static: np.ndarray, has_vector: np.ndarray, baseline_words: int, rule: str) -> np.ndarray:
    """Each word's threshold against the first `baseline_words` words, under the threshold rule.

    Args:
        static: (V, d) float32 L2-normalised static word vectors, zero rows where missing
        has_vector: (V,) bool, which words have a static vector
        baseline_words: how many of the first (most frequent) words form the baseline

    Returns (V,) float cosine thresholds, +inf for words without a vector.
    """
    from .word_vectors import word_thresholds

    if rule not in THRESHOLD_RULES:
        raise ValueError(f"fidelity: unknown threshold rule {rule!r}; expected one of {', '.join(THRESHOLD_RULES)}")
    baseline = static[:baseline_words][has_vector[:baseline_words]]
    absent = int((~has_vector[:baseline_words]).sum())
    log.info("thresholds (%s): %d baseline words with a vector, %d without %s", rule, len(baseline), absent,
             "(counted as cosine 0)" if rule == "paper" else "(left out)")
    return word_thresholds(static, has_vector, baseline, baseline_missing=absent if rule == "paper" else 0)


def explanation_vocabulary(weights, words: list[str], pieces: list[list[int]], word_vectors, baseline_words: int,
                           device, threshold_rule: str = "paper") -> Vocabulary:
    """`pieces`: each word's sub-token ids in this model (word_pieces.read_word_pieces)."""
    import torch
    started = time.perf_counter()
    embeddings = mean_embeddings(weights.input_embeddings().to(device), pieces)
    static, has_vector = word_vectors.lookup(words)
    thresholds = vocabulary_thresholds(static, has_vector, baseline_words, threshold_rule)
    seconds = time.perf_counter() - started
    log.info("%d words (%d with a static vector) in %.1f s", len(words), has_vector.sum(), seconds)
    return Vocabulary(
        np.asarray(words, dtype=object),
        embeddings,
        torch.as_tensor(static, device=device),
        torch.as_tensor(thresholds, dtype=torch.float32, device=device),
    )


def explain_layer(
    model_dir: str, model_id: str, layer: int, word_pieces: str, word_vectors: dict, output: str,
    top_k: int = 100, baseline_words: int = 3000, size: str = "NA", threshold_rule: str = "paper",
) -> None:
    """`word_pieces`: the vocabulary cut into this model's sub-tokens (word_pieces.py)."""
    from .weights import ModelWeights
    from .word_pieces import read_word_pieces
    from .word_vectors import load_word_vectors

    device = pick_device()
    set_matmul_precision("float32")
    started = time.perf_counter()
    weights = ModelWeights(model_dir)
    wq, wk = (w.to(device) for w in weights.attention_qk(layer))  # first: a bad layer fails at once
    words, pieces = read_word_pieces(word_pieces)
    vectors = load_word_vectors(word_vectors, vocabulary=words)  # a large GloVe file keeps only these rows
    vocab = explanation_vocabulary(weights, words, pieces, vectors, baseline_words, device, threshold_rule)
    log.info("read %s", ", ".join(weights.read))
    rows = []
    for head in progress(range(weights.heads), f"explain {model_id} layer {layer}", "head"):
        for rank, (dim, score, pairs) in enumerate(explain_head(vocab, wq[head], wk[head], top_k), start=1):
            rows.append((model_id, size, layer, "QK", head, dim, rank, f"{score:.4f}", encode_pairs(pairs)))
    write_tsv(rows, PAIRS_COLUMNS, output)
    seconds = time.perf_counter() - started
    log.info("layer %d of %s: %d heads in %.1f s -> %s", layer, model_id, weights.heads, seconds, output)


def main(argv=None):
    parser, layer = layer_job_parser(
        __doc__.splitlines()[0], "explain every head of one layer",
        "concatenate shards into the lossless file and export bilinear_words.tsv"
    )
    layer.add_argument("--word-vectors-kind", required=True)
    layer.add_argument("--word-vectors-path", default="")
    layer.add_argument("--top-k", type=positive_int, default=100)
    layer.add_argument("--baseline-words", type=positive_int, default=3000)
    layer.add_argument("--thresholds", choices=THRESHOLD_RULES, default="paper",
                       help="baseline words without a vector: cosine 0 (paper) or left out (canonical)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "merge":
        merge_and_export(args.inputs, args.output, args.export, "pairs")
        return
    vectors = {"kind": args.word_vectors_kind, "path": args.word_vectors_path or None}
    explain_layer(args.model_dir, args.model_id, args.layer, args.word_pieces, vectors, args.output,
                  args.top_k, args.baseline_words, args.size, args.thresholds)


if __name__ == "__main__":
    main()
