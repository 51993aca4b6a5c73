"""The statistics under the tables: the mean and population std of a group that may be empty, and
t-tests that give NaN, not a warning, where a side has fewer than two values."""
from __future__ import annotations

import warnings

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

    with warnings.catch_warnings():
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            # scipy's "Precision loss ... Results may be unreliable" on a side of equal values (a share of 1.0
            # in every seed): its variance is 0 all the same and t exact, so the warning would only alarm the log
            warnings.filterwarnings("ignore", "Precision loss occurred in moment calculation", RuntimeWarning)
        result = stats.ttest_ind(x, y, equal_var=equal_var, alternative=alternative)
    return float(result.statistic), float(result.pvalue)
