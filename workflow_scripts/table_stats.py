"""The statistics under the tables: the mean and population std of a group that may be empty, and
t-tests that give NaN, not a warning, where a side has fewer than two values."""
from __future__ import annotations

import numpy as np

NAN = float("nan")


def mean_std(x) -> tuple[float, float]:
    """Mean and population std (ddof 0, numpy's default, as the paper's scripts); NaN for an empty group.

    Args:
        x: (n,) the group's values
    """
    x = np.asarray(x, dtype=np.float64)
    return (float(np.mean(x)), float(np.std(x))) if len(x) else (NAN, NAN)


def t_test(x, y, equal_var: bool, alternative: str = "two-sided") -> tuple[float, float]:
    """t and p of scipy's `ttest_ind` (Welch's when not `equal_var`); NaN when a side has fewer than 2 values.

    Args:
        x: (n,) one group's values
        y: (m,) the other's
    """
    if len(x) < 2 or len(y) < 2:
        return NAN, NAN
    from scipy import stats  # here: scipy costs ~0.7 s to import, and only the tests need it

    result = stats.ttest_ind(x, y, equal_var=equal_var, alternative=alternative)
    return float(result.statistic), float(result.pvalue)
