"""How many items a batched attribution pass takes, and what an out-of-memory error changes.

Reverse mode stacks response tokens' cotangents, forward mode prompt tokens' tangents
(docs/design.md#attribution). On a GPU a batch is sized from the free memory (`auto_backward_batch`), on
a CPU it is fixed; an out-of-memory error halves the batch, down to one item at a time, and the share
of the free memory that the job's later batches are sized for (`MemoryShare`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .devices import input_device

log = logging.getLogger(__name__)

# Bytes a batched backward holds per cotangent, per position, per unit below (see `auto_backward_batch`):
# a layer's hidden-size and intermediate-size gradients and its attention weights' gradients, x 2 for slack.
_GRADIENT_COPIES = {"hidden": 6, "intermediate": 4, "attention": 2}


def auto_backward_batch(config, sequence: int, element_bytes: int, free_bytes: int, limit: int,
                        attention_bytes: int | None = None) -> int:
    """How many response tokens' body backward passes to run at once, from the free memory.

    A batched backward keeps one copy of every layer's activation gradients per cotangent. The
    estimate counts, per position, a few hidden-size and intermediate-size tensors and one row of
    attention weights per head (`attention_bytes` each, default the weights' `element_bytes`),
    doubled for slack, and uses half the free memory (an OOM still halves the batch, down to the
    per-token path)."""
    heads = getattr(config, "num_attention_heads", 1)
    per_position = ((_GRADIENT_COPIES["hidden"] * config.hidden_size
                     + _GRADIENT_COPIES["intermediate"] * getattr(config, "intermediate_size", 4 * config.hidden_size))
                    * element_bytes
                    + _GRADIENT_COPIES["attention"] * heads * sequence * (attention_bytes or element_bytes))
    per_cotangent = per_position * sequence * 2
    return max(1, min(limit, int(free_bytes * 0.5 // per_cotangent)))


@dataclass
class MemoryShare:
    """The share of the free GPU memory that automatic batches are sized for, halved by each out-of-memory
    error: where the estimate (`auto_backward_batch`) runs high on some GPU or model, the job pays for it
    with one failed pass, not with one per chunk and sample."""

    value: float = 1.0


def batch_size(model, sequence: int, count: int, forced: int, cpu: int, memory: MemoryShare,
               float32_attention: bool = False) -> int:
    """Items (response tokens' cotangents, prompt tokens' tangents) per batched pass: `forced` when
    set; else from the free memory on CUDA (the least free of the visible GPUs, `auto_backward_batch`:
    a tangent holds about what a cotangent holds), `memory`'s share of it; else `cpu`: on a CPU the
    free memory is not a budget this job owns (docs/benchmarks.md). `float32_attention`: forward mode's
    math attention kernel computes a half-precision model's attention scores in float32."""
    if forced:
        return min(forced, count)
    if input_device(model).type != "cuda":
        return min(cpu, count)
    free = int(min(cuda_free_bytes(i) for i in range(torch.cuda.device_count())) * memory.value)
    element = next(model.parameters()).element_size()
    attention = max(element, 4) if float32_attention else element
    return auto_backward_batch(model.config, sequence, element, free, count, attention_bytes=attention)


def cuda_free_bytes(device: int) -> int:
    """What this process can still allocate on a GPU: the driver's free memory plus what torch's caching
    allocator holds unused (the driver counts that as taken, so a job that freed a pass's tensors would
    otherwise size its next batches by what ran before)."""
    return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def is_out_of_memory(error: RuntimeError) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def in_batches(count: int, batch: int, run, what: str, memory: MemoryShare):
    """run(k, size) over consecutive slices of `count` items, `batch` at a time, each result yielded in
    order; an out-of-memory error halves the batch, down to one item at a time, and `memory`'s share
    for the batches sized after it (`what`: the pass, with {} for its size, for the warning)."""
    k = 0
    while k < count:
        size = min(batch, count - k)
        try:
            out = run(k, size)
        except RuntimeError as error:
            if size == 1 or not is_out_of_memory(error):
                raise
            batch = size // 2
            memory.value /= 2
            log.warning("out of memory in a %s: retrying %d at a time (later batches sized for %.3g of the free "
                        "memory)", what.format(size), batch, memory.value)
        else:
            yield out
            k += size
            continue
        # out of the except block: the error's traceback (and the failed pass's tensors) is gone
        torch.cuda.empty_cache()
