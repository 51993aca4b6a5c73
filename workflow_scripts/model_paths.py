"""Where a model lives and what shape it has, known before any job runs and without the network.

Per-layer jobs need the layer and head counts when the DAG is built: they come from the model's
`config.json` (a local directory, or the Hugging Face cache), else from the config's `layers`,
`heads` and `kv_heads` (so a paper config dry-runs on a machine without the weights). A local
model's fingerprint tells which weights a directory holds (the annotation cache keys on it).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # huggingface_hub reads either


def hub_offline() -> str:
    """The variable that sets the Hugging Face hub offline ("" when none does): the planner and the jobs
    read it alike, so a model the plan let through is never refused by its job, or the reverse."""
    return next((v for v in OFFLINE_VARIABLES if os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}),
                "")


def looks_local(path: str) -> bool:
    """A hub id is exactly `owner/name`; anything else (absolute, ./, ~, deeper) is a directory."""
    return path.startswith(("/", ".", "~")) or path.count("/") != 1 or Path(path).expanduser().exists()


def check_model_path(path: str) -> None:
    if looks_local(path) and not (Path(path).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"model directory not found (no config.json): {path}")


@dataclass(frozen=True)
class ModelShape:
    layers: int
    heads: int
    kv_heads: int


def cached_config(path: str) -> Path | None:
    """The model's config.json: in its local directory, or in the Hugging Face cache (no network)."""
    local = Path(path).expanduser() / "config.json"
    if local.is_file():
        return local
    if looks_local(path):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(path, "config.json")
    return Path(cached) if isinstance(cached, str) else None


def shape_in(config_json: Path, key: str) -> ModelShape:
    """The counts of a config.json, each a positive integer: a KeyError or a JSON error said neither file nor
    model, and 0 layers planned no layer job (Tables 3 and 5 from no head and no component)."""
    where = f"{key}: {config_json}"
    try:
        hf = json.loads(config_json.read_text(encoding="utf8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where}: not JSON ({error})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: not a JSON object")
    missing = next((name for name in ("num_hidden_layers", "num_attention_heads") if name not in hf), None)
    if missing:
        nested = " (a multimodal model's text_config? shiftlens reads causal LMs)" if "text_config" in hf else ""
        raise ValueError(f"{where}: has no {missing}{nested}")
    kv_heads = hf.get("num_key_value_heads")  # absent or null: one per head
    counts = (hf["num_hidden_layers"], hf["num_attention_heads"], hf["num_attention_heads"] if kv_heads is None
              else kv_heads)
    for name, value in zip(("num_hidden_layers", "num_attention_heads", "num_key_value_heads"), counts):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {name} is {value!r}, not a positive integer")
    return ModelShape(*counts)


def model_shape(model_id: str, settings: dict) -> ModelShape:
    """Layer, head and KV-head counts from config.json, else from the model's config entry."""
    config_json = cached_config(settings["path"])
    if config_json is not None:
        shape = shape_in(config_json, f"models.{model_id}.path")
        for key, value in (("layers", shape.layers), ("heads", shape.heads), ("kv_heads", shape.kv_heads)):
            if key in settings and settings[key] != value:  # a plan made before the weights existed was wrong
                raise ValueError(f"models.{model_id}.{key}: {settings[key]} in the config, but {config_json} says "
                                 f"{value}; correct the config (it plans the layer jobs until config.json exists)")
        return shape
    missing = [key for key in ("layers", "heads") if key not in settings]
    if missing:
        raise ValueError(
            f"models.{model_id}: config.json of {settings['path']} cannot be read here; "
            f"give {' and '.join(f'models.{model_id}.{k}' for k in missing)} in the config"
        )
    return ModelShape(settings["layers"], settings["heads"], settings.get("kv_heads", settings["heads"]))


# The files of a model directory that make the model: config, weights, tokenizer, chat template. Each is an
# input of the jobs reading the model (plan_models.model_files), and the local annotator's answers are keyed
# by their content (model_fingerprint), so that nothing else of the folder (a README, training_args.bin)
# reruns a job and nothing of these is changed unseen.
SENTENCEPIECE_FILE = "tokenizer.model"  # a SentencePiece model: what slow LLaMA-family tokenizers read
MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "pytorch_model*.bin", "*.model", "merges.txt", "vocab.txt",
                       "*.jinja")


def model_file_paths(model_dir: str | Path) -> list[Path]:
    """The files of `model_dir` that make the model (MODEL_FILE_PATTERNS), sorted; not its subfolders."""
    root = Path(model_dir)
    return sorted({file for pattern in MODEL_FILE_PATTERNS for file in root.glob(pattern) if file.is_file()})


WHOLE_FILE_BYTES = 64 << 20  # files up to this size are hashed whole
SAMPLES, SAMPLE_BYTES = 256, 64 << 10  # larger ones: their safetensors header and 256 blocks spread over them


def model_fingerprint(model_dir: str | Path) -> str:
    """16 hex digits of the name, size and content of every file that makes the model (model_file_paths:
    config, weights, tokenizer, chat template, generation config), whole, or for a larger file its
    safetensors header and 16 MiB read at even steps through it: a retrained, converted or swapped model,
    or a new template, changes it, at the cost of milliseconds for a 7B model. An edit of a few bytes that
    falls between the sampled blocks of a large file goes unseen."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir / 'config.json'}: not a model folder")
    digest = hashlib.sha256()
    for path in model_file_paths(model_dir):
        size = path.stat().st_size
        digest.update(f"\0{path.name}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= WHOLE_FILE_BYTES:
                digest.update(handle.read())
                continue
            if path.suffix == ".safetensors":
                header = int.from_bytes(handle.read(8), "little")
                digest.update(handle.read(min(header, WHOLE_FILE_BYTES)))
            for block in range(SAMPLES):
                handle.seek(block * (size - SAMPLE_BYTES) // (SAMPLES - 1))
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]
