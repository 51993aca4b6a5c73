"""One model's attribution file joined to the dataset's samples, with the checks every reader needs.

Tables 1 and 2 (`table1_2`) and the report's pictures (`attribution_views`) read attributions only
through `joined_samples`, so a picture is never drawn from a file the tables refuse (a stale or
foreign file, another prompt, bins of another L).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import Sample, read_dataset
from .importance import check_binned
from .instructions import instruction_mask, instruction_spans
from .shards import SampleAttribution, load_shard


@dataclass
class JoinedSample:
    attribution: SampleAttribution
    sample: Sample
    mask: np.ndarray  # (prompt,) bool: the attribution's prompt tokens that are instruction tokens


@dataclass
class JoinedAttributions:
    meta: dict  # the file's header: how the attributions were made
    binned: bool  # the matrices hold stored bins (used as stored: docs/design.md#fidelity)
    samples: list[JoinedSample]


def joined_samples(attributions: str | Path, dataset: str | Path, levels: int,
                   ids: list[str] | None = None) -> JoinedAttributions:
    """The samples `ids` (None: every sample, in file order) of an attribution file with their dataset rows.

    With `ids` None, the file and the dataset must hold the same samples: a mismatch means a stale or
    foreign attribution file, and is an error rather than a table over fewer samples. A file that
    cannot be read is deleted (`load_shard`'s discard_corrupt), and the error says how to recompute it.
    """
    shard = load_shard(attributions, discard_corrupt=True)
    samples = {s.id: s for s in read_dataset(dataset)}
    by_id = {a.id: a for a in shard.samples}
    if ids is None:
        if set(by_id) != set(samples):
            missing, extra = sorted(set(samples) - set(by_id)), sorted(set(by_id) - set(samples))
            raise ValueError(
                f"{attributions}: attributions do not match {dataset}: "
                f"{len(missing)} samples without attribution {missing[:3]}, {len(extra)} unknown {extra[:3]}"
            )
        ids = list(by_id)
    missing = [i for i in ids if i not in by_id or i not in samples]
    if missing:
        raise ValueError(f"{attributions}: no attribution (or no {dataset} sample) for {', '.join(missing[:5])}")
    binned_levels = int(shard.meta.get("binned_levels", 0))
    if binned_levels and binned_levels != levels:
        raise ValueError(f"{attributions}: attributions are binned to L={binned_levels}, analysis.levels is {levels}")
    joined = []
    for sample_id in ids:
        a, sample = by_id[sample_id], samples[sample_id]
        if a.prompt != sample.prompt:
            raise ValueError(f"{attributions}: sample {a.id} was attributed on a different prompt than {dataset}'s")
        if binned_levels:
            check_binned(a.matrix, binned_levels, f"{attributions}: sample {a.id}")
        spans = instruction_spans(sample.prompt, sample.annotation, a.id)
        joined.append(JoinedSample(a, sample, instruction_mask(a.prompt, a.prompt_tokens, a.prompt_offsets, spans)))
    return JoinedAttributions(dict(shard.meta), bool(binned_levels), joined)
