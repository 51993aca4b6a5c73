"""Every table's files: the TSV (6 significant digits, the data) and its Markdown twin (for reading)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_file, atomic_write_text


def write_table(table: pd.DataFrame, tsv: str | Path, title: str, notes: list[str] = (), notice: str = "") -> None:
    """The TSV (6 significant digits) and its Markdown twin (4 decimals) side by side; the
    config's `notice` goes under the title, `notes` under the table.

    Args:
        table: the rows and columns as written (floats to 6 significant digits in the TSV, NaN empty)
    """
    tsv = Path(tsv)
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(cell_text(v) for v in row) + " |\n" for row in table.itertuples(index=False))
    footer = "".join(f"\n{note}.\n" for note in notes if note)
    preface = f"> {notice}\n\n" if notice else ""
    with atomic_file(tsv) as tmp:  # whole or not at all, like every output
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    atomic_write_text(tsv.with_suffix(".md"), f"# {title}\n\n{preface}{header}{body}{footer}")


def cell_text(value) -> str:
    """A cell as the Markdown tables and report pages print it: 4 decimals, tiny p-values in 2 digits."""
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "n/a"
        return f"{value:.2g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)
