"""Binning, importance density and instruction score (docs/design.md#instruction-score), against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest

from workflow_scripts.importance import (
    bin_attributions,
    check_binned,
    importance_density,
    instruction_score,
    sample_score,
)

# prompt tokens x response tokens, with negatives
RAW = np.array([
    [1.0, -2.0],
    [0.5, 4.0],
    [-1.0, 3.0],
])
# Clip negatives: [[1, 0], [0.5, 4], [0, 3]]; column maxima 1 and 4.
# Column 0: 1/1*10 = 10, 0.5/1*10 = 5, 0 -> 0.   Column 1: 0, 4/4*10 = 10, 3/4*10 = 7.5 -> ceil 8.
BINNED_B0 = [[10, 0], [5, 10], [0, 8]]
# b = 7 zeroes the entries <= 7 (the 5); b = 8 also zeroes the 8.
BINNED_B7 = [[10, 0], [0, 10], [0, 8]]
BINNED_B8 = [[10, 0], [0, 10], [0, 0]]


def test_binning_clips_negatives_scales_columns_to_their_max_and_rounds_up():
    assert bin_attributions(RAW, levels=10, threshold=0).tolist() == BINNED_B0


def test_binning_zeroes_entries_at_or_below_the_threshold():
    assert bin_attributions(RAW, levels=10, threshold=7).tolist() == BINNED_B7
    assert bin_attributions(RAW, levels=10, threshold=8).tolist() == BINNED_B8


def test_binning_uses_the_number_of_levels():
    # L = 4: column 0 -> 4, 2, 0; column 1 -> 0, 4, 3
    assert bin_attributions(RAW, levels=4, threshold=0).tolist() == [[4, 0], [2, 4], [0, 3]]


def test_binning_does_not_depend_on_the_scale_of_the_attributions():
    assert bin_attributions(RAW * 1e-3, 10, 0).tolist() == BINNED_B0
    assert bin_attributions(RAW * 1e4, 10, 0).tolist() == BINNED_B0


def test_a_column_of_tiny_attributions_bins_below_the_top_as_in_the_papers_attribution_code():
    """The paper binned raw matrices in `Generator.input_explain` with eps = 1e-7 (the bins behind its
    printed tables): a response token whose largest attribution is 5e-7 tops out at bin 9, not 10."""
    raw = np.array([[5e-7], [2.5e-7]])
    # 5e-7 / (5e-7 + 1e-7) * 10 = 8.33 -> 9; 2.5e-7 / 6e-7 * 10 = 4.17 -> 5
    assert bin_attributions(raw, 10, 0).tolist() == [[9], [5]]
    assert bin_attributions(raw, 10, 7).tolist() == [[9], [0]]


def test_binning_leaves_an_all_negative_or_zero_column_at_zero():
    raw = np.array([[-1.0, 2.0], [-3.0, 1.0]])
    # column 1: 2/2*10 = 10, 1/2*10 = 5
    assert bin_attributions(raw, 10, 0).tolist() == [[0, 10], [0, 5]]


def test_binned_matrices_are_used_as_stored_and_only_thresholded():
    # the released attributions are stored binned (integers 0..10), and a column's maximum may be
    # below 10: binning again would lift a column of 1s to 10s, over the threshold
    released = np.array([
        [10, 0, 3, 1, 0],
        [1, 10, 10, 1, 0],
        [7, 8, 0, 1, 0],
    ], dtype=np.float32)
    assert bin_attributions(released, 10, 0, binned=True).tolist() == released.tolist()
    assert bin_attributions(released, 10, 7, binned=True).tolist() == np.where(released <= 7, 0, released).tolist()
    # the same values read as raw attributions are binned per column: the column of 1s becomes 10s
    assert bin_attributions(released, 10, 7)[:, 3].tolist() == [10, 10, 10]


def test_a_matrix_recorded_as_binned_must_hold_integers_up_to_the_levels():
    check_binned(np.array([[0, 10], [3, 1]]), 10, "x")
    for bad in ([[0, 11]], [[-1, 2]], [[0.5, 2]]):
        with pytest.raises(ValueError, match="x: recorded as binned to L=10"):
            check_binned(np.array(bad), 10, "x")


def test_binning_an_empty_response_gives_an_empty_matrix():
    assert bin_attributions(np.zeros((3, 0)), 10, 7).shape == (3, 0)


# Importance density, p = 4 (over response tokens):
#   [10, 0, 0, 0]:   L1 = 10, L4 = 10                              -> 1
#   [10,10,10,10]:   L1 = 40, L4 = (4 * 10^4)^(1/4) = 10 * sqrt(2) -> 2 sqrt(2) = 2.828427
#   [ 8, 8, 0, 0]:   L1 = 16, L4 = 8 * 2^(1/4)                     -> 2^(3/4)   = 1.681793
#   [ 0, 0, 0, 0]:   0 / (0 + eps)                                 -> 0
# normalised by the maximum 2 sqrt(2): 0.353553, 1, 0.594604, 0
BINNED = np.array([[10, 0, 0, 0], [10, 10, 10, 10], [8, 8, 0, 0], [0, 0, 0, 0]], dtype=float)


def test_importance_density_is_the_l1_over_l4_norm_scaled_to_max_one():
    density = importance_density(BINNED, p=4)
    assert density == pytest.approx([0.35355339, 1.0, 0.59460356, 0.0], abs=1e-8)


def test_importance_density_uses_the_given_p():
    # p = 2: 10/10 = 1, 40/20 = 2, 16/(8 sqrt 2) = sqrt 2, 0 -> / 2
    density = importance_density(BINNED, p=2)
    assert density == pytest.approx([0.5, 1.0, math.sqrt(2) / 2, 0.0], abs=1e-8)


@pytest.mark.parametrize("p", [400, 1000, math.inf])
def test_importance_density_of_a_large_p_is_l1_over_the_largest_bin_not_an_overflow(p):
    """10**p overflows float64 past p = 308: every density (and so every score) became 0, with only a
    numpy warning. L1/Lp tends to L1/Linf, the row's sum over its largest bin."""
    density = importance_density(np.array([[8.0, 9.0, 10.0], [10.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), p)
    assert density == pytest.approx([1.0, 10 / 27, 0.0], rel=1e-6)


def test_importance_density_of_all_zero_rows_is_zero():
    assert importance_density(np.zeros((3, 4)), p=4).tolist() == [0.0, 0.0, 0.0]


def test_importance_density_of_an_empty_response_is_zero_for_every_prompt_token():
    density = importance_density(np.zeros((3, 0)), p=4)
    assert density.tolist() == [0.0, 0.0, 0.0]


def test_instruction_score_is_the_masked_density_sum_over_log2_of_two_plus_count():
    density = np.array([1.0, 0.5, 0.25, 0.0])
    mask = np.array([True, False, True, True])
    # (1 + 0.25 + 0) / log2(2 + 3) = 1.25 / 2.321928 = 0.538346
    assert instruction_score(density, mask) == pytest.approx(0.5383457, abs=1e-7)


def test_instruction_score_without_instruction_tokens_is_zero():
    assert instruction_score(np.array([1.0, 0.5]), np.array([False, False])) == 0.0


def test_sample_score_bins_computes_density_and_scores_the_masked_tokens():
    # RAW binned with b = 7 is [[10, 0], [0, 10], [0, 8]]: every row has one nonzero entry, so
    # every density is 1; two instruction tokens: (1 + 1) / log2(4) = 1.
    assert sample_score(RAW, np.array([True, False, True]), 10, 7, 4) == pytest.approx(1.0, abs=1e-8)
    # one instruction token: 1 / log2(3) = 0.630930
    assert sample_score(RAW, np.array([False, True, False]), 10, 7, 4) == pytest.approx(0.6309298, abs=1e-7)


def test_sample_score_rejects_a_mask_of_the_wrong_length():
    with pytest.raises(ValueError, match="3 prompt tokens but the mask has 2"):
        sample_score(RAW, np.array([True, False]), 10, 7, 4)
