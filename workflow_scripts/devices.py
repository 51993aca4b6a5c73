"""Which device a job computes on; the log says so when it is the CPU."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    log.info("no GPU visible: running on the CPU")
    return torch.device("cpu")
