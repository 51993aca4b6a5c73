"""Analysis-time binning of attribution matrices, importance density and instruction score.

docs/design.md#instruction-score. Raw matrices are binned as the paper's attribution code binned them
(`Generator.input_explain`, eps 1e-7: the bins it released and printed its tables from); densities
follow its `compute_density` (eps 1e-9), so the released attributions reproduce its tables to four
decimals.
"""
from __future__ import annotations

import numpy as np

BIN_EPS = 1e-7  # input_explain's: a column whose largest attribution is below ~1e-6 tops out under L
EPS = 1e-9


def bin_attributions(matrix: np.ndarray, levels: int = 10, threshold: int = 7, binned: bool = False) -> np.ndarray:
    """Raw matrices: clip negatives, scale each response token's column to its max, ceil(x * L).
    Then, for raw and `binned` matrices alike, zero x <= b.

    Args:
        matrix: (P, R) float, prompt x response tokens: raw gradient x input, or bins 0..L if `binned`
        levels: L, the number of bins
        threshold: b, the bins kept are those above it

    Returns (P, R) float64 bins, 0 where x <= b. Matrices stored already binned (the paper's
    released attributions, integers 0..L) are used as stored: binning them again would lift every
    column whose maximum is below L (a column of 1s becomes a column of 10s), which the paper's
    `compute_density` never does to binned data. Whether a matrix is binned is recorded in its
    shard (`binned_levels`), never guessed from its values.
    """
    x = np.asarray(matrix, dtype=np.float64)
    if not binned:
        x = np.maximum(x, 0.0)
        if x.size:
            x = np.ceil(x / (x.max(axis=0, keepdims=True) + BIN_EPS) * levels)
    return np.where(x <= threshold, 0.0, x)


def check_binned(matrix: np.ndarray, levels: int, context: str) -> None:
    """A matrix said to be binned holds integers 0..L; anything else would be scored wrongly as stored.

    Args:
        matrix: (P, R) prompt x response tokens, said to be binned to `levels`
    """
    x = np.asarray(matrix)
    if x.size and (x.min() < 0 or x.max() > levels or not np.array_equal(x, np.round(x))):
        raise ValueError(
            f"{context}: recorded as binned to L={levels} but holds values outside the integers 0..{levels}"
        )


def importance_density(binned: np.ndarray, p: float = 4.0) -> np.ndarray:
    """||S_i||_1 / ||S_i||_p over response tokens, per prompt token, scaled to max 1.

    Args:
        binned: (P, R) bins of bin_attributions, prompt x response tokens

    Returns (P,) float64 densities in [0, 1].
    """
    binned = np.asarray(binned, dtype=np.float64)
    l1 = binned.sum(axis=1)
    # ||x||_p = max(x) ||x / max(x)||_p: no bin**p overflows (past p = 308 at L = 10), and p = inf is L-inf
    largest = binned.max(axis=1, initial=0.0)
    scaled = binned / np.where(largest > 0, largest, 1.0)[:, None]
    lp = largest * (scaled**p).sum(axis=1) ** (1.0 / p) + EPS
    density = l1 / lp
    if density.size == 0:
        return density
    return density / (density.max() + EPS)


def instruction_score(density: np.ndarray, mask: np.ndarray) -> float:
    """Sum of the instruction tokens' densities / log2(2 + number of instruction tokens).

    Args:
        density: (P,) importance_density of each prompt token
        mask: (P,) bool, the prompt's instruction tokens (instructions.instruction_mask)
    """
    mask = np.asarray(mask, dtype=bool)
    return float(density[mask].sum() / np.log2(2 + mask.sum()))


def sample_score(
    matrix: np.ndarray, mask: np.ndarray, levels: int, threshold: int, p: float, binned: bool = False
) -> float:
    """Instruction score of one sample.

    Args:
        matrix: (P, R) float attributions, prompt x response tokens (bins 0..L if `binned`)
        mask: (P,) bool, the prompt's instruction tokens
    """
    if matrix.shape[0] != len(mask):
        raise ValueError(f"attribution has {matrix.shape[0]} prompt tokens but the mask has {len(mask)}")
    return instruction_score(importance_density(bin_attributions(matrix, levels, threshold, binned), p), mask)
