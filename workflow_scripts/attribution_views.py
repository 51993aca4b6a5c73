"""What the report shows of one model's attributions: per sample, the binned matrix, the importance
density and the instruction mask, computed by the same functions as Tables 1 and 2.

The heatmaps (`heatmaps.py`) and the position profile (`position.py`) read attributions only
through `load_views`, so a picture never disagrees with a table on what a token's density is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import dataset_group, read_dataset
from .importance import bin_attributions, check_binned, importance_density
from .instructions import instruction_mask, instruction_spans
from .shards import load_shard


@dataclass
class SampleView:
    id: str
    prompt_tokens: list[str]
    response_tokens: list[str]
    binned: np.ndarray  # (prompt, response) binned to `levels`, threshold 0 (the paper's pictures)
    density: np.ndarray  # (prompt,) importance density at the analysis threshold, max 1
    mask: np.ndarray  # (prompt,) bool: instruction tokens


def load_views(attributions: str | Path, dataset: str | Path, analysis: dict,
               ids: list[str] | None = None) -> dict[str, SampleView]:
    """Views of the samples `ids` (all when None) of one model's attribution file, by sample id.

    `analysis` holds levels, threshold and p (config key `analysis`). A requested id missing from
    the file is an error naming the file, never a silently shorter picture.
    """
    shard = load_shard(attributions)
    samples = {s.id: s for s in read_dataset(dataset)}
    binned_levels = int(shard.meta.get("binned_levels", 0))
    by_id = {a.id: a for a in shard.samples}
    wanted = list(by_id) if ids is None else list(ids)
    missing = [i for i in wanted if i not in by_id or i not in samples]
    if missing:
        raise ValueError(f"{attributions}: no attribution (or no {dataset} sample) for {', '.join(missing[:5])}")
    views = {}
    for sample_id in wanted:
        a, sample = by_id[sample_id], samples[sample_id]
        if binned_levels:
            check_binned(a.matrix, binned_levels, f"{attributions}: sample {sample_id}")
        levels, binned = analysis["levels"], bool(binned_levels)
        spans = instruction_spans(sample.prompt, sample.annotation, sample_id)
        scored = bin_attributions(a.matrix, levels, analysis["threshold"], binned)
        views[sample_id] = SampleView(
            id=sample_id,
            prompt_tokens=a.prompt_tokens,
            response_tokens=a.response_tokens,
            binned=bin_attributions(a.matrix, levels, 0, binned),
            density=importance_density(scored, analysis["p"]),
            mask=instruction_mask(a.prompt, a.prompt_tokens, a.prompt_offsets, spans),
        )
    return views


def chosen_samples(dataset: str | Path, groups: dict[str, str], per_group: int) -> list[str]:
    """The first `per_group` sample ids of each dataset group, in dataset order (config key
    `report.samples`): a stable choice that a new sample appended to the dataset does not change."""
    taken: dict[str, list[str]] = {}
    for sample in read_dataset(dataset):
        chosen = taken.setdefault(dataset_group(sample.id, groups), [])
        if len(chosen) < per_group:
            chosen.append(sample.id)
    return [sample_id for ids in taken.values() for sample_id in ids]
