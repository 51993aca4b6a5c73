"""FFN concepts: PCA from the covariance equals the full SVD; words by |projection|."""
import json
import logging

import numpy as np
import pytest
import torch

from workflow_scripts.ffn import component_words, principal_components


def full_svd_reference(rows: torch.Tensor, rank: int):
    """The paper's computation: SVD of the centred rows, variance ratios from the singular values."""
    centred = rows.double() - rows.double().mean(0, keepdim=True)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    variance = singular**2 / (rows.shape[0] - 1)
    return vh[:rank], variance[:rank] / variance.sum()


@pytest.mark.parametrize("shape,rank", [((172, 64), 64), ((172, 64), 10), ((50, 80), 30)])
def test_components_equal_the_full_svd_up_to_sign(shape, rank):
    g = torch.Generator().manual_seed(0)
    scales = torch.linspace(3, 0.1, shape[1])  # distinct variances: the components are well defined
    rows = torch.randn(*shape, generator=g) * scales + 0.5
    components, ratios = principal_components(rows, rank)
    expected, expected_ratios = full_svd_reference(rows, rank)
    assert components.shape == (min(rank, shape[1]), shape[1])
    np.testing.assert_allclose(ratios.numpy(), expected_ratios.numpy(), rtol=1e-5, atol=1e-9)
    kept = min(rank, min(shape) - 1)  # beyond the matrix rank the directions are arbitrary
    alignment = (components[:kept].double() * expected[:kept]).sum(1).abs()
    np.testing.assert_allclose(alignment.numpy(), 1.0, atol=1e-5)


def test_ratios_are_shares_of_the_total_variance():
    rows = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [0.0, -0.5]])
    components, ratios = principal_components(rows, 2)
    # variances 2/3 and 0.5/3 along x and y: shares 0.8 and 0.2
    np.testing.assert_allclose(ratios.numpy(), [0.8, 0.2], rtol=1e-6)
    np.testing.assert_allclose(components.abs().numpy(), [[1, 0], [0, 1]], atol=1e-6)


def test_component_words_rank_by_absolute_projection_on_normalised_vectors():
    words = np.array(["north", "south", "east", "long"], dtype=object)
    vectors = torch.tensor([[2.0, 0.0], [-5.0, 0.1], [0.0, 1.0], [10.0, 10.0]])
    components = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # normalised: north (1,0), south (-0.99998, 0.02), east (0,1), long (0.707, 0.707)
    assert component_words(components, vectors, words, 3) == [["north", "south", "long"], ["east", "long", "south"]]


def test_layer_job_describes_each_component_with_its_words(tmp_path, caplog, tf32_at_start):
    """Also: its products in IEEE float32 on a GPU even where torch started with TF32 ones (NVIDIA's containers
    set TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workflow_scripts import word_pieces
    from workflow_scripts.demo_models import train_tokenizer
    from workflow_scripts.ffn import explain_layer
    from workflow_scripts.word_embeddings import mean_embeddings
    from workflow_scripts.word_pieces import word_token_ids

    words = [f"{a}{b}" for a in ("cat", "dog", "sun", "sea", "tree") for b in ("", "s", "ty", "ly")]
    (tmp_path / "corpus.txt").write_text(" ".join(words * 30) + "\n")
    train_tokenizer(tmp_path / "corpus.txt", tmp_path / "model", vocab_size=300)
    (tmp_path / "vocab.tsv").write_text("".join(f"{w}\t{100 - i}\n" for i, w in enumerate(words)))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    model.save_pretrained(tmp_path / "model")
    with caplog.at_level(logging.INFO, logger="progress"):
        word_pieces.main(["--model-dir", str(tmp_path / "model"), "--vocabulary", str(tmp_path / "vocab.tsv"),
                          "--output", str(tmp_path / "pieces.tsv")])
        explain_layer(str(tmp_path / "model"), "m", 1, str(tmp_path / "pieces.tsv"), str(tmp_path / "out.tsv"),
                      rank=5, top_k=4, size="tiny")
    assert torch.backends.cuda.matmul.allow_tf32 is False
    # the job's log says where it is (README, "Progress"): start, each stage, the end
    said = [r.getMessage() for r in caplog.records if r.name == "progress"]
    assert said[0] == "explain m FFN layer 1: 0/3 steps"
    assert said[-1].startswith("explain m FFN layer 1: 3/3 steps done in")
    rows = [line.rstrip("\n").split("\t") for line in open(tmp_path / "out.tsv", encoding="utf8")]
    assert rows[0] == ["Model", "Size", "Layer", "Type", "Head", "Rank", "Score", "Words"]
    assert [r[5] for r in rows[1:]] == ["1", "2", "3", "4", "5"] and {r[3] for r in rows[1:]} == {"FFN"}
    ratios = [float(r[6]) for r in rows[1:]]
    assert ratios == sorted(ratios, reverse=True) and 0 < sum(ratios) <= 1.0001
    # the same words from the fully loaded model's weights, through the reference SVD
    down = model.model.layers[1].mlp.down_proj.weight.detach().T  # (intermediate, hidden)
    expected_components, expected_ratios = full_svd_reference(down, 5)
    np.testing.assert_allclose(ratios, expected_ratios.numpy(), rtol=0, atol=5.1e-5)  # the file's 4 decimals
    vectors = mean_embeddings(model.lm_head.weight.detach(), word_token_ids(tokenizer, words))
    normalised = torch.nn.functional.normalize(vectors, dim=-1).double()
    for row, component in zip(rows[1:], expected_components):
        scores = (normalised @ component).abs()
        assert json.loads(row[7]) == [words[i] for i in torch.argsort(scores, descending=True)[:4].tolist()]
