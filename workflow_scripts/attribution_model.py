"""The model an attribution job runs, in its precision mode (docs/design.md#precision-modes).

float32 is the paper's (its loop runs `.float()`); tf32 keeps float32 weights and lets CUDA run float32
matmuls in TF32; bfloat16 and float16 run the weights and activations in that half dtype, while the
objectives (output head and softmax) and the gradient x input sums stay float32 (`attribution`). A shard
records the arithmetic it actually ran in (`precision_record`), read back from the model and torch.
"""
from __future__ import annotations

import logging

import torch

from .devices import input_device, pick_device, set_matmul_precision
from .model_paths import check_model_path

log = logging.getLogger(__name__)

PRECISIONS = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16,
              "float16": torch.float16}  # mode -> weights


def check_head_only_logits(model, path: str) -> None:
    """The objectives are the output head's softmax of the final hidden state (`_head_cotangents`): a model
    that reworks its logits after the head (Gemma-2's soft-capping, Cohere's logit scale) would be
    attributed for probabilities it never gives. One probe forward pass compares the two."""
    from accelerate.utils import align_module_device

    ids = (torch.arange(1, 9) % model.config.vocab_size).to(input_device(model))[None]
    head = model.get_output_embeddings()
    with torch.no_grad():
        own = model(input_ids=ids).logits[0].float()
        hidden = model.base_model(input_ids=ids).last_hidden_state[0]
        with align_module_device(head):
            ours = torch.nn.functional.linear(hidden.to(head.weight.device), head.weight, head.bias).float()
    largest = float((ours.to(own.device) - own).abs().max())
    if largest > 1e-3 * max(float(own.abs().max()), 1e-30):
        raise ValueError(f"{path}: its logits are not its output head's ({type(model).__name__} reworks them "
                         f"after the head, by up to {largest:.3g}), so attribution's objectives would not be its "
                         f"probabilities; architectures without such a step (LLaMA, Mistral, Qwen2) are supported")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")


def precision_record(model, precision: str) -> dict:
    """What a shard says about its arithmetic, read back from the model and torch rather than from
    the request, so that a mode that silently fell back to another is seen in the file."""
    weights = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    device = input_device(model)
    with torch.no_grad():
        probe = model.get_input_embeddings()(torch.arange(2, device=device)[None])  # offloaded or not
        activations = str(model.base_model(inputs_embeds=probe).last_hidden_state.dtype).removeprefix("torch.")
    if weights != ["float32"]:
        matmul = "/".join(weights)
        cuda = torch.backends.cuda.matmul
        if device.type == "cuda" and not (cuda.allow_fp16_reduced_precision_reduction
                                          or cuda.allow_bf16_reduced_precision_reduction):
            matmul += " (float32 reductions)"
    elif device.type == "cuda":
        matmul = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "float32"
    else:  # oneDNN's float32 matmuls stay IEEE unless torch.backends.mkldnn.matmul.fp32_precision says otherwise
        setting = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none")
        matmul = "float32 (CPU: TF32 is a CUDA mode; tf32 runs as float32)" if setting in ("none", "ieee") \
            else f"float32 as oneDNN {setting}"
    return {"precision": precision, "weights_dtype": "/".join(weights), "activations_dtype": activations,
            "matmul": matmul, "accumulation": "float32 (output head, softmax, gradient x input sums)"}


def load_kwargs(precision: str, device: torch.device, gpus: int) -> dict:
    """`from_pretrained` arguments: the mode's weight dtype; on GPUs a device map, so that each tensor
    is loaded straight onto its GPU (spread over the job's GPUs when it has several) rather than the
    whole model first built in host memory (27 GiB for a 7B model in float32) and then copied over."""
    kwargs = {"dtype": PRECISIONS[precision]}
    if device.type == "cuda":
        kwargs["device_map"] = "auto" if gpus > 1 else {"": 0}
    return kwargs


def load_model(path: str, precision: str = "float32"):
    """A frozen causal LM in the mode's weight dtype and its tokenizer, on the job's GPUs (those its
    lease made visible, or its SLURM allocation) or the CPU."""
    from transformers import AutoModelForCausalLM

    from .model_tokenizer import load_tokenizer

    check_precision(precision)
    check_model_path(path)
    tokenizer = load_tokenizer(path)  # first: a broken tokenizer fails before the weights load
    device = pick_device()
    if device.type == "cpu" and precision == "float16":  # docs/benchmarks.md, SmolLM2
        log.warning("float16 on a CPU: a GPU mode; CPUs without AVX512-FP16 emulate its matrix products (19x "
                    "float32's time on an AMD EPYC, about float32's on a Xeon with AVX512-FP16)")
    set_matmul_precision(precision)
    model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs(precision, device, torch.cuda.device_count()))
    model.eval().requires_grad_(False)
    check_head_only_logits(model, path)
    return model, tokenizer


def context_length(model) -> int | None:
    """The model's context window, from its config (None when the config does not say)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
