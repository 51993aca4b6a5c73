"""What the report shows of one model's attributions: per sample, the binned matrix, the importance
density and the instruction mask, read and checked by the same functions as Tables 1 and 2.

The heatmaps (`heatmaps.py`) and the position profile (`position.py`) read attributions only
through `load_views`, so a picture never disagrees with a table on what a token's density is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .attribution_samples import joined_samples
from .dataset import dataset_group, read_dataset
from .importance import bin_attributions, importance_density
from .instructions import BOUNDARY_MARKERS

_NEWLINES = ("<0x0A>", "\u010a")  # SentencePiece, byte-level `Ċ`


@dataclass
class SampleView:
    id: str
    prompt_texts: list[str]  # what each prompt token stands for, as text (token_texts)
    response_texts: list[str]
    binned: np.ndarray  # (prompt, response) binned to `levels`, threshold 0 (the paper's pictures)
    density: np.ndarray  # (prompt,) importance density at the analysis threshold, max 1
    mask: np.ndarray  # (prompt,) bool: instruction tokens


def load_views(attributions: str | Path, dataset: str | Path, analysis: dict,
               ids: list[str] | None = None) -> dict[str, SampleView]:
    """Views of the samples `ids` (None: every sample, and the file must hold the dataset's samples, as for
    the tables) of one model's attribution file, by sample id. `analysis` holds levels, threshold and p
    (config key `analysis`). The file is checked as the tables check it (`joined_samples`): a requested id
    missing from it is an error naming the file, never a silently shorter picture.
    """
    levels, threshold, p = analysis["levels"], analysis["threshold"], analysis["p"]
    joined = joined_samples(attributions, dataset, levels, ids)
    views = {}
    for j in joined.samples:
        a = j.attribution
        views[a.id] = SampleView(
            id=a.id,
            prompt_texts=token_texts(a.prompt_tokens, a.prompt, a.prompt_offsets),
            response_texts=token_texts(a.response_tokens, a.response, a.response_offsets),
            binned=bin_attributions(a.matrix, levels, 0, joined.binned),
            density=importance_density(bin_attributions(a.matrix, levels, threshold, joined.binned), p),
            mask=j.mask,
        )
    return views


def token_text(token: str) -> str:
    """A token's string as text: word-boundary markers become spaces, line-break pieces `\\n`."""
    for piece in _NEWLINES:
        token = token.replace(piece, "\n")
    for marker in BOUNDARY_MARKERS:
        token = token.replace(marker, " ")
    return token


def token_texts(tokens: list[str], text: str, offsets: np.ndarray) -> list[str]:
    """What each token stands for: its string (token_text) where that is its characters, else the
    characters of `text` it covers (byte pieces: SentencePiece's `<0xF0>`, byte-level BPE's `âĢĻ` for ’),
    with the word boundary its string marks; a further byte piece of the same character shows nothing.

    Args:
        offsets: (tokens, 2) character start and end of each token in `text`
    """
    shown, previous = [], None
    for token, (start, end) in zip(tokens, np.asarray(offsets).tolist()):
        string, own = token_text(token), text[start:end]
        if end > start and (start, end) == previous:
            shown.append("")
        elif not own or string.strip() == own.strip():
            shown.append(string)
        else:
            shown.append((" " if string.startswith(" ") and not own.startswith(" ") else "") + own)
        previous = (start, end)
    return shown


def chosen_samples(dataset: str | Path, groups: dict[str, str], per_group: int) -> list[str]:
    """The first `per_group` sample ids of each dataset group, in dataset order (config key
    `report.samples`): a stable choice that a new sample appended to the dataset does not change."""
    taken: dict[str, list[str]] = {}
    for sample in read_dataset(dataset):
        chosen = taken.setdefault(dataset_group(sample.id, groups), [])
        if len(chosen) < per_group:
            chosen.append(sample.id)
    return [sample_id for ids in taken.values() for sample_id in ids]
