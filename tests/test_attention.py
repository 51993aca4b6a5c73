"""Head explanations equal a straightforward per-dimension reference (the paper's loop)."""
import numpy as np
import pytest
import torch

from workflow_scripts import word_pieces
from workflow_scripts.attention import Vocabulary, explain_head, vocabulary_thresholds
from workflow_scripts.tsv import PAIRS_COLUMNS, decode_pairs
from workflow_scripts.word_embeddings import mean_embeddings
from workflow_scripts.word_pieces import word_token_ids


def reference_explain_head(words, embeddings, static, thresholds, wq, wk, top_k):
    """One dimension at a time, written as the paper's definition reads (docs/design.md#head-word-pairs)."""
    hq, hk = embeddings @ wq, embeddings @ wk
    activation = (hq**2).sum(0) + (hk**2).sum(0)
    dims = sorted(range(hq.shape[1]), key=lambda d: -float(activation[d]))
    out = []
    for d in dims:
        tq = sorted(range(len(words)), key=lambda i: -abs(float(hq[i, d])))[:top_k]
        tk = sorted(range(len(words)), key=lambda i: -abs(float(hk[i, d])))[:top_k]
        pairs = []
        for a in tq:
            for b in tk:
                cos = float(static[a] @ static[b])
                if a == b or cos <= 0:
                    continue
                if cos > thresholds[a] and cos > thresholds[b] and float(hq[a, d]) * float(hk[b, d]) > 0:
                    pairs.append((cos, (words[b], words[a])))
        pairs.sort(key=lambda x: -x[0])
        out.append((d, float(activation[d]), [p for _, p in pairs]))
    return out


def random_vocabulary(n_words=60, hidden=16, static_dim=16, seed=0, missing=(3, 7)):
    g = torch.Generator().manual_seed(seed)
    words = np.array([f"w{i}" for i in range(n_words)], dtype=object)
    centres = torch.randn(15, static_dim, generator=g)  # 15 topics of 4 words: related words exist
    noisy = centres[torch.arange(n_words) % 15] + 0.3 * torch.randn(n_words, static_dim, generator=g)
    static = torch.nn.functional.normalize(noisy, dim=-1)
    static[list(missing)] = 0
    baseline = static[: n_words // 2]
    cos = static @ baseline.T
    thresholds = cos.mean(1) + 1.96 * cos.std(1, unbiased=False)
    thresholds[list(missing)] = torch.inf
    return Vocabulary(words, torch.randn(n_words, hidden, generator=g), static, thresholds)


@pytest.mark.parametrize("top_k", [10, 20, 60])
def test_vectorised_head_explanation_equals_the_per_dimension_reference(top_k):
    vocab = random_vocabulary()
    g = torch.Generator().manual_seed(1)
    wq, wk = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g)
    fast = explain_head(vocab, wq, wk, top_k)
    slow = reference_explain_head(vocab.words, vocab.embeddings, vocab.static, vocab.thresholds, wq, wk, top_k)
    assert [d for d, _, _ in fast] == [d for d, _, _ in slow]
    np.testing.assert_allclose([s for _, s, _ in fast], [s for _, s, _ in slow], rtol=1e-5)
    assert [p for _, _, p in fast] == [p for _, _, p in slow]
    assert sum(len(p) for _, _, p in fast) > 0  # the comparison is not vacuous


def test_words_without_a_static_vector_never_pair():
    vocab = random_vocabulary(missing=tuple(range(0, 60, 2)))
    pairs = [p for _, _, ps in explain_head(vocab, torch.randn(16, 4), torch.randn(16, 4), 30) for p in ps]
    assert pairs and all(int(w[1:]) % 2 == 1 for pair in pairs for w in pair)


def test_mean_embeddings_average_each_words_sub_tokens():
    table = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    out = mean_embeddings(table, [[1], [2, 4], [0, 1, 5]])
    expected = torch.tensor([[2.0, 3.0], [6.0, 7.0], [(0 + 2 + 10) / 3, (1 + 3 + 11) / 3]])
    torch.testing.assert_close(out, expected)


class PieceTokenizer:
    """A tokenizer stand-in with SentencePiece-style pieces, enough for word_token_ids."""

    def tokenize(self, text):
        return {" cats": ["\u2581cat", "s"], " dog": ["\u2581dog"], " 7": ["\u2581", "7"]}[text]

    def convert_tokens_to_ids(self, tokens):
        return [{"\u2581cat": 1, "s": 2, "\u2581dog": 3, "7": 4, "\u2581": 0}[t] for t in tokens]


def test_word_token_ids_drop_a_lone_leading_space_piece():
    assert word_token_ids(PieceTokenizer(), ["cats", "dog", "7"]) == [[1, 2], [3], [4]]


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_layer_job_equals_the_reference_on_the_full_models_weights(tmp_path, kind, tf32_at_start):
    """explain_layer (lazy weights, vocabulary, word vectors, GQA) against the reference fed with
    weights taken from the fully loaded model; its products in IEEE float32 on a GPU even where torch
    started with TF32 ones (NVIDIA's containers set TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from workflow_scripts.attention import explain_layer
    from workflow_scripts.demo_models import train_tokenizer
    from workflow_scripts.vocabulary import read_vocabulary
    from workflow_scripts.word_vectors import load_word_vectors, word_thresholds

    words = [f"{a}{b}" for a in ("cat", "dog", "sun", "sea", "tree") for b in ("", "s", "ty", "ly")]
    (tmp_path / "corpus.txt").write_text(" ".join(words * 30) + "\n")
    train_tokenizer(tmp_path / "corpus.txt", tmp_path / "model", vocab_size=300)
    g = torch.Generator().manual_seed(0)
    topics = torch.randn(5, 6, generator=g)
    with open(tmp_path / "glove.txt", "w") as handle:
        for i, word in enumerate(words):
            vector = topics[i // 4] + 0.3 * torch.randn(6, generator=g)
            handle.write(word + " " + " ".join(f"{v:.5f}" for v in vector.tolist()) + "\n")
    (tmp_path / "vocab.tsv").write_text("".join(f"{w}\t{100 - i}\n" for i, w in enumerate(words)))
    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}
    config_class, model_class = classes[kind]
    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    model = model_class(config_class(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2))
    for layer in model.model.layers:  # non-trivial norms, so that folding them in matters
        layer.input_layernorm.weight.data = torch.rand(32, generator=g) + 0.5
    model.save_pretrained(tmp_path / "model")

    word_pieces.main(["--model-dir", str(tmp_path / "model"), "--vocabulary", str(tmp_path / "vocab.tsv"),
                      "--output", str(tmp_path / "pieces.tsv")])
    explain_layer(str(tmp_path / "model"), "m", 1, str(tmp_path / "pieces.tsv"),
                  {"kind": "glove-text", "path": str(tmp_path / "glove.txt")}, str(tmp_path / "out.tsv"),
                  top_k=8, baseline_words=12, threshold_rule="canonical")
    assert torch.backends.cuda.matmul.allow_tf32 is False
    lines = [line.rstrip("\n").split("\t") for line in open(tmp_path / "out.tsv", encoding="utf8")]
    assert tuple(lines[0]) == PAIRS_COLUMNS
    rows = lines[1:]

    vocab_words = read_vocabulary(tmp_path / "vocab.tsv")
    static, has = load_word_vectors({"kind": "glove-text", "path": str(tmp_path / "glove.txt")}).lookup(vocab_words)
    thresholds = word_thresholds(static, has, static[:12][has[:12]])
    ids = [tokenizer.convert_tokens_to_ids([t for t in tokenizer.tokenize(" " + w) if t != "\u2581"] or ["\u2581"])
           for w in vocab_words]
    embeddings = torch.stack([model.model.embed_tokens.weight[i].mean(0) for i in ids]).detach()
    attention = model.model.layers[1].self_attn
    norm = model.model.layers[1].input_layernorm.weight.detach()
    wq = (attention.q_proj.weight.detach().T * norm[:, None]).reshape(32, 4, 8)
    wk = (attention.k_proj.weight.detach().T * norm[:, None]).reshape(32, 2, 8)
    assert len(rows) == 4 * 8  # one row per (head, dimension)
    for head in range(4):
        expected = reference_explain_head(np.array(vocab_words, dtype=object), embeddings, torch.as_tensor(static),
                                          torch.as_tensor(thresholds), wq[:, head], wk[:, head // 2], top_k=8)
        got = [r for r in rows if r[4] == str(head)]
        assert [int(r[5]) for r in got] == [d for d, _, _ in expected]
        # the dimension's activation, written with 4 decimals (the browser and the released layout show it)
        np.testing.assert_allclose([float(r[7]) for r in got], [s for _, s, _ in expected], rtol=1e-5, atol=5e-5)
        assert [decode_pairs(r[8]) for r in got] == [p for _, _, p in expected]
        assert [int(r[6]) for r in got] == list(range(1, 9))
    assert any(decode_pairs(r[8]) for r in rows)


def test_paper_thresholds_count_baseline_words_without_a_vector_as_cosine_zero():
    """att_explain encodes a word without a vector as a zero vector: its cosine to every word is 0,
    and it stays in the mean and std of the baseline; canonical leaves it out."""
    static = np.array([[1, 0], [0, 0], [0.6, 0.8], [0, 0], [0, 1]], dtype=np.float32)
    has = np.array([True, False, True, False, True])
    paper = vocabulary_thresholds(static, has, 4, "paper")
    canonical = vocabulary_thresholds(static, has, 4, "canonical")
    for word in (0, 2, 4):
        cosines = [float(static[word] @ static[b]) for b in range(4)]  # zero rows give 0
        kept = [c for b, c in enumerate(cosines) if has[b]]
        assert paper[word] == pytest.approx(np.mean(cosines) + 1.96 * np.std(cosines), abs=1e-6)
        assert canonical[word] == pytest.approx(np.mean(kept) + 1.96 * np.std(kept), abs=1e-6)
    assert np.isinf(paper[[1, 3]]).all() and np.isinf(canonical[[1, 3]]).all()
    assert abs(paper[0] - canonical[0]) > 0.03  # the rules differ
    with pytest.raises(ValueError, match="fidelity: unknown threshold rule 'exact'"):
        vocabulary_thresholds(static, has, 4, "exact")
