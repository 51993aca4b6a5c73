"""Which device a job computes on; the log says which GPUs it uses, or that it runs on the CPU.

The GPUs themselves are chosen before the job starts, by the lease launcher
(`workflow_scripts.leases`), through CUDA_VISIBLE_DEVICES.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: pick_device imports torch, so that a module importing
    import torch  # this one starts without it (~2 s a process)

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        log.info("running on %d GPU(s): CUDA_VISIBLE_DEVICES=%s", torch.cuda.device_count(),
                 "(unset: every GPU of the machine)" if visible is None else visible)
        return torch.device("cuda")
    log.info("no GPU visible: running on the CPU")
    return torch.device("cpu")


def set_matmul_precision(precision: str) -> None:
    """TF32 float32 matrix products on CUDA for `tf32` only; every other mode, and every job that names none,
    runs them in IEEE float32 whatever torch started with: NVIDIA's PyTorch containers set
    TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1, which would silently round the layer jobs' covariances, projections
    and cosines to 10-bit mantissas. (A process-wide switch: a job computes in one mode.)"""
    import torch

    matmul = torch.backends.cuda.matmul
    matmul.allow_tf32 = precision == "tf32"
    # half-precision products reduce in float32 in every mode (cuBLAS's default lets split-K partial
    # sums round to float16/bfloat16, and overflow float16's 65504 on an 11008-long down projection)
    matmul.allow_fp16_reduced_precision_reduction = False
    matmul.allow_bf16_reduced_precision_reduction = False
    # SDPA's math kernel (forward mode's attention) computes half inputs in float32, torch's default since 2.5,
    # unless something in the process allowed otherwise (a process-wide flag, on the CPU too)
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(False)


@contextmanager
def ieee_float32():
    """Float32 products in IEEE float32 within, whatever the job's mode: the attribution's output head,
    softmax and sums are float32 in every mode, tf32 included (its switch is process-wide)."""
    import torch

    matmul = torch.backends.cuda.matmul
    tf32, matmul.allow_tf32 = matmul.allow_tf32, False
    try:
        yield
    finally:
        matmul.allow_tf32 = tf32


def input_device(model) -> torch.device:
    """Where the model embeds its token ids: `model.device` is its first weight's device, the meta
    device when `device_map` offloaded the input embeddings to host memory or disk; accelerate's
    hook then computes them on its execution device (a GPU's index, "cuda:0" or "cpu")."""
    import torch

    embeddings = model.get_input_embeddings()
    device = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    if device is None:
        device = embeddings.weight.device
    if isinstance(device, int):
        return torch.device("cuda", device)
    device = torch.device(device)
    if device.type == "meta":  # offloaded inside a larger module's hook: the map's first GPU runs it
        gpus = [d for d in getattr(model, "hf_device_map", {}).values() if isinstance(d, int)]
        return torch.device("cuda", min(gpus)) if gpus else torch.device("cpu")
    return device
