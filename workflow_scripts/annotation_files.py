"""The files of the three annotation steps (docs/design.md#annotation-files), named once.

One step has three names, all kept: the step (`describe`, `task`, `level`: the rules, prompts, logs
and stats files say it), the paper's file (`linear_seed`, `linear_task_seed`, `linear_concept_seed`)
and the column its answer goes in (`Summary`, `Task`, `Concept`). The paper's file and column names
stay so that its released files and ours stand in for each other; this module is the one place that
maps the step to them (the rules' outputs, the replay provider, Table 5 and Figure 3 read it here).
"""
from __future__ import annotations

from .tsv import LINEAR_COLUMNS

FILES = {  # step -> file, in the order the steps run (task and level read describe's file)
    "describe": "linear_seed{seed}.tsv",
    "task": "linear_task_seed{seed}.tsv",
    "level": "linear_concept_seed{seed}.tsv",  # "concept" is the paper's word for the linguistic level
}
LABEL_COLUMN = {"describe": "Summary", "task": "Task", "level": "Concept"}
# describe's file: every component, `Explainable` 1/0, `Words` the question asked, `Summary` the answer,
# then the component's linear_words.tsv columns; task and level put their label column in front.
DESCRIBED_COLUMNS = ("Explainable", "Words", "Summary", *LINEAR_COLUMNS)
# A row's component (model, layer, rank), in every step's file: what a request is about.
ORIGIN_COLUMNS = ("Model", "Layer", "Rank")
# how a refusal is written in a label column: it names no category, whatever its text says
REFUSED = "Refused: "
# The paper's own files head the question column `Tokens` (its analysis script calls it `Words`).
QUESTION_COLUMNS = ("Words", "Tokens")
_LAYOUT_ESCAPES = str.maketrans({"\n": "/n", "\t": "/t", "\r": "/r"})


def question_field(message: str) -> str:
    """The describe question as its file holds it: one line, newlines and tabs written `/n` and `/t`
    as the paper's script wrote them (a word may hold either; the lossless layer files keep it)."""
    return message.translate(_LAYOUT_ESCAPES)


def one_line(text: str) -> str:
    """An answer as its file holds it: one TSV cell, its white space (tabs and line breaks too) folded."""
    return " ".join(text.replace("\t", " ").split())


def step_columns(step: str) -> tuple[str, ...]:
    """The header of a step's file."""
    return DESCRIBED_COLUMNS if step == "describe" else (LABEL_COLUMN[step], *DESCRIBED_COLUMNS)
