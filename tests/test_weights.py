"""Lazy weight access: the explainers' tensors equal the model's own, and only they are read.

Tiny LLaMA, Mistral and Qwen2 models (hidden 32, 2 layers, 4 heads sharing 2 KV heads) are built
with transformers and saved; what `ModelWeights` reads from the files is compared with the loaded
model's parameters and modules.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import safetensors
import torch

from workflow_scripts.model_paths import ModelShape
from workflow_scripts.weights import ModelWeights, UnsupportedArchitecture

transformers = pytest.importorskip("transformers")

SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=48, vocab_size=100)
CONFIGS = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config"}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
HEADS, KV_HEADS, HEAD_DIM, HIDDEN = 4, 2, 8, 32


def tiny_model(kind: str = "llama", seed: int = 0, **overrides):
    config = getattr(transformers, CONFIGS[kind])(**{"tie_word_embeddings": False, **SHAPE, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # RMSNorm weights start at 1, which would hide a missing fold
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 2.0)
    return model


def save(model, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, **kwargs)
    return directory


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> (model, directory of its one-file safetensors checkpoint), built once."""
    root = tmp_path_factory.mktemp("models")
    return {kind: (model, save(model, root / kind)) for kind in CONFIGS for model in [tiny_model(kind)]}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    model = tiny_model("llama", seed=1)
    directory = save(model, tmp_path_factory.mktemp("sharded"), max_shard_size="20KB")
    assert (directory / "model.safetensors.index.json").is_file()
    assert len(list(directory.glob("model-*-of-*.safetensors"))) > 2
    return model, directory


class Observed:
    """What went through safetensors.safe_open: file names, and tensor names fetched from them."""

    def __init__(self):
        self.files: list[str] = []
        self.tensors: list[str] = []


@pytest.fixture
def opened(monkeypatch):
    """An observation of safetensors.safe_open (the real function still does the reading)."""
    seen = Observed()
    real = safetensors.safe_open

    class Handle:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def get_tensor(self, name):
            seen.tensors.append(name)
            return self.handle.get_tensor(name)

        def __getattr__(self, attribute):
            return getattr(self.handle, attribute)

    def recording(filename, *args, **kwargs):
        seen.files.append(Path(filename).name)
        return Handle(real(filename, *args, **kwargs))

    monkeypatch.setattr(safetensors, "safe_open", recording)
    return seen


def expected_heads(weight: torch.Tensor, norm: torch.Tensor, count: int, head_dim: int = HEAD_DIM
                   ) -> list[torch.Tensor]:
    """Head h of a projection, by hand: its rows h*hd:(h+1)*hd, transposed, norm weight folded in."""
    return [weight[h * head_dim:(h + 1) * head_dim].T * norm[:, None] for h in range(count)]


@pytest.mark.parametrize("kind", CONFIGS)
def test_configuration_comes_from_config_json(saved, kind):
    weights = ModelWeights(str(saved[kind][1]))
    assert weights.architecture == ARCHITECTURES[kind]
    assert (weights.layers, weights.heads, weights.kv_heads, weights.head_dim, weights.hidden) == (2, 4, 2, 8, 32)
    assert weights.shape == ModelShape(2, 4, 2)
    assert weights.read == []


@pytest.mark.parametrize("kind", CONFIGS)
def test_attention_and_down_projection_equal_the_loaded_models_parameters(saved, kind):
    model, directory = saved[kind]
    weights = ModelWeights(str(directory))
    for index, layer in enumerate(model.model.layers):
        norm = layer.input_layernorm.weight.detach()
        q, k = layer.self_attn.q_proj.weight.detach(), layer.self_attn.k_proj.weight.detach()
        wq, wk = weights.attention_qk(index)
        assert wq.shape == wk.shape == (HEADS, HIDDEN, HEAD_DIM) and wq.dtype == torch.float32
        kv = expected_heads(k, norm, KV_HEADS)
        for h, expected in enumerate(expected_heads(q, norm, HEADS)):
            torch.testing.assert_close(wq[h], expected, rtol=0, atol=0)
            # grouped-query attention: query heads 0, 1 use KV head 0; heads 2, 3 use KV head 1
            torch.testing.assert_close(wk[h], kv[h // 2], rtol=0, atol=0)
        assert torch.equal(wk[0], wk[1]) and torch.equal(wk[2], wk[3]) and not torch.equal(wk[1], wk[2])
        down = weights.down_projection(index)
        assert down.shape == (48, HIDDEN)
        torch.testing.assert_close(down, layer.mlp.down_proj.weight.detach().T, rtol=0, atol=0)
    torch.testing.assert_close(weights.input_embeddings(), model.model.embed_tokens.weight.detach())
    torch.testing.assert_close(weights.output_embeddings(), model.lm_head.weight.detach())
    assert not torch.equal(weights.output_embeddings(), weights.input_embeddings())


@pytest.mark.parametrize("kind", CONFIGS)
def test_folded_norm_gives_the_layers_own_queries_and_keys(saved, kind):
    """(x / rms(x)) @ Wq[h] is head h of q_proj(input_layernorm(x)), computed by the model's modules."""
    model, directory = saved[kind]
    wq, wk = ModelWeights(str(directory)).attention_qk(1)
    layer = model.model.layers[1]
    x = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(3)) * 3
    rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps)
    attention = layer.self_attn
    with torch.no_grad():
        normed = layer.input_layernorm(x)
        queries, keys = attention.q_proj(normed), attention.k_proj(normed)
    if kind == "qwen2":  # the biases are not part of the bilinear form (see weights.py)
        queries, keys = queries - attention.q_proj.bias, keys - attention.k_proj.bias
    for h in range(HEADS):
        torch.testing.assert_close((x / rms) @ wq[h], queries[:, h * HEAD_DIM:(h + 1) * HEAD_DIM])
        kv = h // (HEADS // KV_HEADS)
        torch.testing.assert_close((x / rms) @ wk[h], keys[:, kv * HEAD_DIM:(kv + 1) * HEAD_DIM])


LAYER1 = ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
          "model.layers.1.input_layernorm.weight"]


def test_only_the_named_tensors_are_read(saved, opened):
    weights = ModelWeights(str(saved["llama"][1]))
    assert opened.files == []  # constructing reads no weights
    weights.attention_qk(1)
    assert weights.read == opened.tensors == LAYER1
    assert set(opened.files) == {"model.safetensors"}
    weights.down_projection(0)
    assert weights.read == opened.tensors == LAYER1 + ["model.layers.0.mlp.down_proj.weight"]


def test_only_the_shards_holding_the_named_tensors_are_opened(sharded, opened):
    model, directory = sharded
    shard_of = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    weights = ModelWeights(str(directory))
    wq, _ = weights.attention_qk(1)
    assert weights.read == opened.tensors == LAYER1
    holding = {shard_of[name] for name in LAYER1}
    assert set(opened.files) == holding and holding < set(shard_of.values())
    layer = model.model.layers[1]
    expected = expected_heads(layer.self_attn.q_proj.weight.detach(), layer.input_layernorm.weight.detach(), HEADS)
    torch.testing.assert_close(wq[3], expected[3], rtol=0, atol=0)

    opened.files.clear()
    down = weights.down_projection(0)
    assert weights.read[-1] == opened.tensors[-1] == "model.layers.0.mlp.down_proj.weight"
    assert opened.files == [shard_of["model.layers.0.mlp.down_proj.weight"]]
    torch.testing.assert_close(down, model.model.layers[0].mlp.down_proj.weight.detach().T, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_a_head_size_the_config_sets_apart_from_hidden_over_heads_cuts_the_heads(kind, tmp_path):
    """Mistral-style configs may set `head_dim` (Mistral NeMo: 128 with hidden 5120 and 32 heads): the
    projections then have heads x head_dim rows, not hidden."""
    model = tiny_model(kind, head_dim=16)
    weights = ModelWeights(str(save(model, tmp_path)))
    assert weights.head_dim == 16 and HIDDEN // HEADS != 16
    layer = model.model.layers[1]
    norm = layer.input_layernorm.weight.detach()
    wq, wk = weights.attention_qk(1)
    assert wq.shape == wk.shape == (HEADS, HIDDEN, 16)
    kv = expected_heads(layer.self_attn.k_proj.weight.detach(), norm, KV_HEADS, 16)
    for h, expected in enumerate(expected_heads(layer.self_attn.q_proj.weight.detach(), norm, HEADS, 16)):
        torch.testing.assert_close(wq[h], expected, rtol=0, atol=0)
        torch.testing.assert_close(wk[h], kv[h // 2], rtol=0, atol=0)


def test_tied_output_embeddings_are_the_input_embeddings(tmp_path):
    model = tiny_model("qwen2", tie_word_embeddings=True)
    weights = ModelWeights(str(save(model, tmp_path)))
    assert not weights.has("lm_head.weight")  # transformers does not save the tied copy
    output = weights.output_embeddings()
    assert weights.read == ["model.embed_tokens.weight"]
    torch.testing.assert_close(output, model.model.embed_tokens.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(output, model.lm_head.weight.detach(), rtol=0, atol=0)


def test_low_precision_checkpoints_are_read_as_float32(tmp_path):
    model = tiny_model("mistral").to(torch.bfloat16)
    weights = ModelWeights(str(save(model, tmp_path)))
    down = weights.down_projection(1)
    assert down.dtype == torch.float32
    torch.testing.assert_close(down, model.model.layers[1].mlp.down_proj.weight.detach().float().T, rtol=0, atol=0)


def test_a_checkpoint_without_safetensors_is_loaded_whole_with_a_warning(saved, tmp_path, caplog, opened):
    """transformers 5 ignores safe_serialization=False, so the .bin is written with torch.save."""
    model, directory = saved["llama"]
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    weights = ModelWeights(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="workflow_scripts.weights"):
        wq, wk = weights.attention_qk(1)
        down = weights.down_projection(0)
    assert f"no safetensors in {tmp_path}: loading the whole model" in caplog.text
    assert caplog.text.count("loading the whole model") == 1  # once, not per tensor
    assert weights.read == LAYER1 + ["model.layers.0.mlp.down_proj.weight"]
    assert opened.files == []
    lazy = ModelWeights(str(directory))
    lazy_q, lazy_k = lazy.attention_qk(1)
    torch.testing.assert_close(wq, lazy_q, rtol=0, atol=0)
    torch.testing.assert_close(wk, lazy_k, rtol=0, atol=0)
    torch.testing.assert_close(down, lazy.down_projection(0), rtol=0, atol=0)
    torch.testing.assert_close(weights.output_embeddings(), model.lm_head.weight.detach(), rtol=0, atol=0)


def test_an_unsupported_architecture_is_named(saved, tmp_path):
    config = json.loads((saved["llama"][1] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedArchitecture, match="GPT2LMHeadModel") as error:
        ModelWeights(str(tmp_path))
    assert "LlamaForCausalLM" in str(error.value) and "Qwen2ForCausalLM" in str(error.value)
    assert isinstance(error.value, ValueError)


def test_a_missing_tensor_or_layer_is_named(saved):
    directory = saved["llama"][1]
    weights = ModelWeights(str(directory))
    with pytest.raises(KeyError, match=rf"model.layers.9.mlp.down_proj.weight.*{directory}"):
        weights.tensor("model.layers.9.mlp.down_proj.weight")
    with pytest.raises(IndexError, match="2 layers"):
        weights.attention_qk(2)


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        ModelWeights(str(tmp_path / "no-such-model"))


def test_an_uncached_hub_id_offline_is_named(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nobody/not-a-model"):
        ModelWeights("nobody/not-a-model")


def test_a_cached_hub_id_resolves_to_its_snapshot_offline(saved, monkeypatch, tmp_path):
    """The layout of the Hugging Face cache: refs/main names the snapshot folder."""
    import huggingface_hub.constants

    repo = tmp_path / "models--tiny--llama"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in saved["llama"][1].iterdir():
        (snapshot / file.name).symlink_to(file)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    weights = ModelWeights("tiny/llama")
    assert weights.directory == snapshot
    torch.testing.assert_close(weights.down_projection(1), ModelWeights(str(saved["llama"][1])).down_projection(1))
