"""Explanation shards in the paper's TSV layouts: written atomically, merged with one header."""
from __future__ import annotations

from pathlib import Path

from .atomic import atomic_file

# The paper's layouts (docs/design.md#paper-layout-tsvs), so its released files can stand in for computed ones.
BILINEAR_COLUMNS = ("Model", "Size", "Layer", "Type", "Head", "Dim", "Rank", "Score", "TopK")
LINEAR_COLUMNS = ("Model", "Size", "Layer", "Type", "Head", "Rank", "Score", "TopK")


def write_tsv(rows, columns: tuple[str, ...], output: str | Path) -> None:
    with atomic_file(output) as tmp, open(tmp, "w", encoding="utf8") as handle:
        handle.write("\t".join(columns) + "\n")
        for row in rows:
            handle.write("\t".join(map(str, row)) + "\n")


def concat_tsv(inputs: list[str], columns: tuple[str, ...], output: str | Path) -> None:
    """Concatenate shards that must all have exactly `columns` as their header."""
    rows = []
    for path in inputs:
        with open(path, encoding="utf8") as handle:
            header = handle.readline().rstrip("\n").split("\t")
            if tuple(header) != columns:
                raise ValueError(f"{path}: expected the header {' '.join(columns)!r}, found {' '.join(header)!r}")
            rows.extend(line.rstrip("\n").split("\t") for line in handle if line.strip())
    write_tsv(rows, columns, output)
