"""What the explanation browser shows, read from the workflow's outputs (docs/design.md#explanation-browsers).

Per model of a pair: its head dimension rows (layer, head, dimension, rank, score, word pairs) from
the lossless attention shards or a paper-layout `bilinear_words.tsv` (read by table3's reader, so
both layouts and its checks apply), and its FFN components (layer, rank, score, words) from the
lossless FFN shards, each with what every annotation seed said of it: the describe step's summary
and whether it counts as described, the task and the level labels (absent where a seed did not
annotate the component: `annotation.max_rank`, or not described).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .annotation_files import LABEL_COLUMN, step_columns
from .table3 import read_bilinear_words
from .tsv import WORDS_COLUMNS, decode_words, read_tsv


@dataclass
class HeadRow:
    layer: int
    head: int
    dim: int
    rank: int
    score: float
    pairs: list[list[str]]  # [key, query]; a paper-layout piece without `=` is one word


@dataclass
class SeedNote:
    """One seed's annotation of a component."""

    described: bool
    summary: str
    task: str = ""
    level: str = ""


@dataclass
class Component:
    layer: int
    rank: int
    score: float
    words: list[str]
    seeds: dict[int, SeedNote] = field(default_factory=dict)


def head_rows(paths: list[str | Path], models: list[str]) -> list[list[HeadRow]]:
    """Per model (its `Model` value in the files), its rows of every file by layer, head and rank; each file
    is read once."""
    rows: dict[str, list[HeadRow]] = {model: [] for model in models}
    for path in paths:
        frame = read_bilinear_words(path)
        for row in frame[frame["Model"].isin(models)].itertuples(index=False):
            rows[row.Model].append(HeadRow(row.Layer, row.Head, row.Dim, row.Rank, row.Score,
                                           [list(p) for p in row.pairs]))
    for model, found in rows.items():
        if not found:
            raise ValueError(f"no head word pairs of the model {model!r} in {', '.join(map(str, paths))}")
    return [sorted(rows[model], key=lambda r: (r.layer, r.head, r.rank)) for model in models]


def components(paths: list[str | Path], models: list[str]) -> list[list[Component]]:
    """Per model, its FFN components of the lossless FFN files by layer and rank; each file is read once."""
    rows: dict[str, list[Component]] = {model: [] for model in models}
    for path in paths:
        for number, fields in read_tsv(path, WORDS_COLUMNS):
            record = dict(zip(WORDS_COLUMNS, fields))
            if record["Model"] not in rows:
                continue
            where = f"{path}: line {number}"
            try:
                layer, rank, score = int(record["Layer"]), int(record["Rank"]), float(record["Score"])
            except ValueError:
                raise ValueError(f"{where}: Layer, Rank and Score must be numbers, found "
                                 f"{record['Layer']!r} {record['Rank']!r} {record['Score']!r}") from None
            rows[record["Model"]].append(Component(layer, rank, score, decode_words(record["Words"], where)))
    for model, found in rows.items():
        if not found:
            raise ValueError(f"no FFN components of the model {model!r} in {', '.join(map(str, paths))}")
    return [sorted(rows[model], key=lambda c: (c.layer, c.rank)) for model in models]


def attach_annotations(items: dict[str, list[Component]], describe: dict[int, str | Path],
                       task: dict[int, str | Path], level: dict[int, str | Path]) -> None:
    """Every seed's notes onto the components of `items` (model -> components), matched by model,
    layer and rank. An annotated row whose component is not in `items` is an error naming its line:
    the annotations would belong to other explanations."""
    index = {(model, c.layer, c.rank): c for model, rows in items.items() for c in rows}

    def component_of(path, line, row):
        try:
            key = (row["Model"], int(row["Layer"]), int(row["Rank"]))
        except ValueError:
            raise ValueError(f"{path}: line {line}: Layer and Rank must be integers, found {row['Layer']!r} "
                             f"{row['Rank']!r}") from None
        if key not in index:
            raise ValueError(f"{path}: line {line}: model {key[0]} layer {key[1]} rank {key[2]} is not an FFN "
                             "component of the browsed models (annotations of other explanations?)")
        return index[key]

    def records(path, step):
        columns = step_columns(step)
        return ((line, dict(zip(columns, fields))) for line, fields in read_tsv(path, columns))

    for seed, path in describe.items():
        for line, row in records(path, "describe"):
            component_of(path, line, row).seeds[seed] = SeedNote(row["Explainable"] == "1", row["Summary"])
    for step, files in (("task", task), ("level", level)):
        for seed, path in files.items():
            for line, row in records(path, step):
                note = component_of(path, line, row).seeds.get(seed)
                if note is None:
                    raise ValueError(f"{path}: line {line}: seed {seed} labels a component its describe file "
                                     "does not hold")
                setattr(note, step, row[LABEL_COLUMN[step]])
