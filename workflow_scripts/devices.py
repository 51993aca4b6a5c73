"""Which device a job computes on; the log says which GPUs it uses, or that it runs on the CPU.

The GPUs themselves are chosen before the job starts, by the lease launcher
(`workflow_scripts.leases`), through CUDA_VISIBLE_DEVICES.
"""
from __future__ import annotations

import logging
import os
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
