"""Every table's files: the TSV (6 significant digits, the data) and its Markdown twin (for reading, and
the cells of the table's report page: numbers are rounded once, from the full-precision values)."""
from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_file, atomic_write_text


def layer_range(first: int, last: int) -> str:
    """A group of layers as Table 3 and Figure 3 label it, numbered from 0: `0-7`, and `3-3` for one layer (the
    column stays text for pandas whatever the model's depth)."""
    return f"{first}-{last}"


def write_table(table: pd.DataFrame, tsv: str | Path, title: str, notes: list[str] = (), notice: str = "") -> None:
    """The TSV (6 significant digits) and its Markdown twin (4 decimals) side by side; the
    config's `notice` goes under the title, `notes` under the table.

    Args:
        table: the rows and columns as written (floats to 6 significant digits in the TSV, NaN empty)
    """
    tsv = Path(tsv)
    columns = " | ".join(markdown_text(str(c)) for c in table.columns)
    header = f"| {columns} |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join(
        "| " + " | ".join(markdown_text(cell_text(v)) for v in row) + " |\n" for row in table.itertuples(index=False)
    )
    footer = "".join(f"\n{markdown_text(note)}.\n" for note in notes if note)
    preface = f"> {markdown_text(notice)}\n\n" if notice else ""
    with atomic_file(tsv) as tmp:  # whole or not at all, like every output
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    atomic_write_text(tsv.with_suffix(".md"), f"# {markdown_text(title)}\n\n{preface}{header}{body}{footer}")


def cell_text(value) -> str:
    """A cell as the Markdown tables and report pages print it: 4 decimals, tiny p-values in 2 digits."""
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "n/a"
        return f"{value:.2g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def markdown_text(text: str) -> str:
    """Text shown as it is in Markdown: no raw HTML (`&`, `<` as entities), and no `|` or `\\` that
    would split a table row (escaped with a backslash). `markdown_unescape` reverses it."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("&", "&amp;").replace("<", "&lt;")


def markdown_unescape(text: str) -> str:
    return html.unescape(re.sub(r"\\([\\|])", r"\1", text))


_CELL = re.compile(r"((?:\\.|[^\\|])*)\|")


def markdown_cells(line: str) -> list[str]:
    """`| a | b\\|c |` -> ["a", "b|c"]: a row of a table `write_table` wrote, unescaped."""
    return [markdown_unescape(cell.strip()) for cell in _CELL.findall(line.strip()[1:])]
