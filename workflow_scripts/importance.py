"""Analysis-time binning of attribution matrices, importance density and instruction score.

DESIGN.md 3.1, following the paper's `compute_density`: the small epsilons (1e-9) are the
paper's, kept so that the released attributions reproduce its tables to four decimals.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-9


def bin_attributions(matrix: np.ndarray, levels: int = 10, threshold: int = 7) -> np.ndarray:
    """Clip negatives, scale each response token's column to its max, ceil(x * L), zero x <= b.

    `matrix` is prompt tokens x response tokens. Released attributions are stored already binned
    (integers 0..L); binning those again leaves them unchanged, so both kinds go through here.
    """
    x = np.maximum(np.asarray(matrix, dtype=np.float64), 0.0)
    if x.size:
        x = np.ceil(x / (x.max(axis=0, keepdims=True) + EPS) * levels)
    return np.where(x <= threshold, 0.0, x)


def importance_density(binned: np.ndarray, p: float = 4.0) -> np.ndarray:
    """||S_i||_1 / ||S_i||_p over response tokens, per prompt token, scaled to max 1."""
    binned = np.asarray(binned, dtype=np.float64)
    l1 = binned.sum(axis=1)
    lp = (binned**p).sum(axis=1) ** (1.0 / p) + EPS
    density = l1 / lp
    if density.size == 0:
        return density
    return density / (density.max() + EPS)


def instruction_score(density: np.ndarray, mask: np.ndarray) -> float:
    """Sum of the instruction tokens' densities / log2(2 + number of instruction tokens)."""
    mask = np.asarray(mask, dtype=bool)
    return float(density[mask].sum() / np.log2(2 + mask.sum()))


def sample_score(matrix: np.ndarray, mask: np.ndarray, levels: int, threshold: int, p: float) -> float:
    if matrix.shape[0] != len(mask):
        raise ValueError(f"attribution has {matrix.shape[0]} prompt tokens but the mask has {len(mask)}")
    return instruction_score(importance_density(bin_attributions(matrix, levels, threshold), p), mask)
