"""Lazy access to the few weight tensors a global explainer needs (docs/design.md#models-and-weights).

A per-layer job needs one layer's `q_proj`, `k_proj`, `input_layernorm` or `down_proj` and the
embeddings: a few hundred MB of a 7B model, not its 28 GB. `ModelWeights` reads each tensor on
request with `safetensors.safe_open` from the one shard file that holds it (the shard index says
which), and records what it read in `read` so tests can hold it to that. An architecture adapter
maps the tensor names; the head layout (grouped-query attention included) is shared by the
supported architectures. Checkpoints saved only as `pytorch_model*.bin` cannot be read lazily:
they are loaded whole, once, with transformers, and a warning says so.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import safetensors
import torch

from .model_paths import SENTENCEPIECE_FILE, ModelShape, hub_offline, looks_local

log = logging.getLogger(__name__)

# Tensor names per architecture. Qwen2's q_proj/k_proj also have biases; they are ignored: the
# explainers describe the word-pair (bilinear) part x_q W_q W_k^T x_k^T of the attention score,
# and the biases only add terms that depend on one word of the pair (or on none).
_LLAMA_NAMES = {
    "input_embeddings": "model.embed_tokens.weight",
    "output_embeddings": "lm_head.weight",
    "q_proj": "model.layers.{layer}.self_attn.q_proj.weight",
    "k_proj": "model.layers.{layer}.self_attn.k_proj.weight",
    "input_layernorm": "model.layers.{layer}.input_layernorm.weight",
    "down_proj": "model.layers.{layer}.mlp.down_proj.weight",
}
ARCHITECTURES = {
    "LlamaForCausalLM": _LLAMA_NAMES,
    "MistralForCausalLM": _LLAMA_NAMES,
    "Qwen2ForCausalLM": _LLAMA_NAMES,
}

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


class UnsupportedArchitecture(ValueError):
    """The checkpoint's architecture has no tensor-name adapter here."""


def resolve_model_dir(path: str) -> Path:
    """A local model directory as given, or a hub id's snapshot (offline: from the cache only).

    Only `*.json`, `model*.safetensors` and a SentencePiece `tokenizer.model` are fetched: the weights a lazy
    reader can use, without the duplicate `consolidated.safetensors` some repositories carry or the `.bin`
    copies, and the file the paper's slow tokenizer read (word_pieces.paper_sentencepiece).
    """
    if looks_local(path):
        directory = Path(path).expanduser()
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"model directory not found (no config.json): {path}")
        return directory
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    offline = hub_offline()
    try:
        snapshot = snapshot_download(
            path, allow_patterns=["*.json", "model*.safetensors", SENTENCEPIECE_FILE], local_files_only=offline
        )
    except (LocalEntryNotFoundError, RepositoryNotFoundError) as error:
        where = f"in the Hugging Face cache ({offline} is set)" if offline else "on the Hugging Face hub"
        raise FileNotFoundError(f"model {path} not found {where}: {error}") from error
    directory = Path(snapshot)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"model {path}: no config.json in its snapshot {directory}")
    return directory


class ModelWeights:
    """One model's configuration and lazily read weight tensors, all float32 on the CPU."""

    def __init__(self, path: str):
        self.path = path
        self.directory = resolve_model_dir(path)
        config = json.loads((self.directory / "config.json").read_text())
        self.architecture = (config.get("architectures") or ["(none given)"])[0]
        if self.architecture not in ARCHITECTURES:
            raise UnsupportedArchitecture(
                f"architecture {self.architecture} of {path} is not supported: no tensor-name adapter "
                f"for it (q_proj, k_proj, input_layernorm, down_proj, embeddings); supported: "
                f"{', '.join(ARCHITECTURES)}"
            )
        self.names = ARCHITECTURES[self.architecture]
        self.layers = config["num_hidden_layers"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.hidden = config["hidden_size"]
        self.head_dim = config.get("head_dim") or self.hidden // self.heads
        self.tie_word_embeddings = bool(config.get("tie_word_embeddings", False))
        if self.heads % self.kv_heads:
            raise UnsupportedArchitecture(
                f"{path}: {self.heads} query heads cannot share {self.kv_heads} KV heads evenly"
            )
        self.read: list[str] = []
        self._single_keys: set[str] | None = None  # keys of a one-file checkpoint, once opened
        self._state_dict: dict[str, torch.Tensor] | None = None  # only without safetensors
        index = self.directory / SAFETENSORS_INDEX
        self._shard_of = json.loads(index.read_text())["weight_map"] if index.is_file() else None
        self.lazy = self._shard_of is not None or (self.directory / SAFETENSORS_SINGLE).is_file()

    @property
    def source(self) -> str:
        """What `from_pretrained` loads from: the local directory, or the hub id, which fetches the files
        beyond this snapshot's json and safetensors (a SentencePiece tokenizer.model, `.bin` weights)."""
        return str(self.directory) if looks_local(self.path) else self.path

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.layers, self.heads, self.kv_heads)

    def has(self, name: str) -> bool:
        """Whether the checkpoint holds the tensor (a one-file checkpoint's header is read once)."""
        if not self.lazy:
            return name in self._full_state_dict()
        if self._shard_of is not None:
            return name in self._shard_of
        if self._single_keys is None:
            with safetensors.safe_open(str(self.directory / SAFETENSORS_SINGLE), framework="pt") as f:
                self._single_keys = set(f.keys())
        return name in self._single_keys

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor as float32, read from the shard file that holds it and nothing else."""
        if not self.has(name):
            raise KeyError(f"tensor {name} is not in the checkpoint at {self.directory}")
        if self.lazy:
            file = self.directory / (SAFETENSORS_SINGLE if self._shard_of is None else self._shard_of[name])
            with safetensors.safe_open(str(file), framework="pt", device="cpu") as f:
                value = f.get_tensor(name)
        else:
            value = self._full_state_dict()[name]
        self.read.append(name)
        return value.to(torch.float32)

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """No safetensors: the whole model, loaded once, is the only way to its tensors."""
        if self._state_dict is None:
            from transformers import AutoModelForCausalLM

            log.warning("no safetensors in %s: loading the whole model", self.directory)
            model = AutoModelForCausalLM.from_pretrained(self.source, dtype=torch.float32)
            self._state_dict = {name: value.detach() for name, value in model.state_dict().items()}
        return self._state_dict

    def _layer_tensor(self, key: str, layer: int) -> torch.Tensor:
        if not 0 <= layer < self.layers:
            raise IndexError(f"layer {layer} out of range: {self.path} has {self.layers} layers")
        return self.tensor(self.names[key].format(layer=layer))

    def input_embeddings(self) -> torch.Tensor:
        """(vocab, hidden)."""
        return self.tensor(self.names["input_embeddings"])

    def output_embeddings(self) -> torch.Tensor:
        """(vocab, hidden): the unembedding, which is the input embedding when the two are tied."""
        name = self.names["output_embeddings"]
        if self.tie_word_embeddings or not self.has(name):
            return self.input_embeddings()
        return self.tensor(name)

    def attention_qk(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Wq, Wk, each (heads, hidden, head_dim), with the layer's input RMSNorm folded in.

        The norm's weight scales the normalised input before the projection, so
        norm(x) @ W.T == (x / rms(x)) @ (weight[:, None] * W.T): folding it in makes E @ Wq[h] the
        head's queries of the word vectors E (up to each word's rms). Key head h is the KV head
        query head h attends with (h // (heads // kv_heads)), so both tensors index the same heads.
        """
        q = self._layer_tensor("q_proj", layer)  # (heads * head_dim, hidden)
        k = self._layer_tensor("k_proj", layer)  # (kv_heads * head_dim, hidden)
        norm = self._layer_tensor("input_layernorm", layer)  # (hidden,)
        wq = self._heads(q, norm, self.heads)
        wk = self._heads(k, norm, self.kv_heads).repeat_interleave(self.heads // self.kv_heads, dim=0)
        return wq, wk

    def _heads(self, weight: torch.Tensor, norm: torch.Tensor, count: int) -> torch.Tensor:
        expected = (count * self.head_dim, self.hidden)
        if tuple(weight.shape) != expected:
            raise ValueError(f"{self.path}: projection of shape {tuple(weight.shape)}, expected {expected}")
        folded = weight.T * norm[:, None]  # (hidden, count * head_dim)
        return folded.reshape(self.hidden, count, self.head_dim).permute(1, 0, 2).contiguous()

    def down_projection(self, layer: int) -> torch.Tensor:
        """(intermediate, hidden): one row per feed-forward neuron, its write into the residual."""
        return self._layer_tensor("down_proj", layer).T.contiguous()
