"""Replay existing annotation files (the paper's released ones, or an earlier run) as a provider.

The per-seed files hold, on every row, both what was asked and what was answered: the
`Words` column (headed `Tokens` in the paper's files) is the describe step's user message and
`Summary` its answer; the task and level steps asked "Concept: Words are <summary>" (lower-cased
for the task step, as the paper did) and answered in `Task` / `Concept`. So a request is answered
by looking its user message up in the seed's file. A message the files never asked is an error
naming the file: replay never invents an answer, and never silently drops a row.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from .annotation_files import FILES, LABEL_COLUMN, QUESTION_COLUMNS, question_field
from .annotation_prompts import concept_message
from .chat import ChatError, ChatRequest, ChatResponse


def answers(directory: str | Path, step: str, seed: int) -> dict[str, str]:
    """{question as the file holds it (annotation_files.question_field): answer} of one step and seed;
    the first row wins where one repeats. Our files and the paper's alike (its question column is
    headed `Tokens`)."""
    path = Path(directory) / FILES[step].format(seed=seed)
    if not path.is_file():
        raise ChatError(f"replay: {path} does not exist (annotation.provider.path holds no {step} file of seed {seed})")
    csv.field_size_limit(1 << 24)
    with open(path, encoding="utf8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = reader.fieldnames or []
        if step == "describe":
            asked = next((column for column in QUESTION_COLUMNS if column in header), " or ".join(QUESTION_COLUMNS))
        else:
            asked = "Summary"
        for column in (asked, LABEL_COLUMN[step]):
            if column not in header:
                raise ChatError(f"replay: {path} has no column {column!r}")
        table: dict[str, str] = {}
        for row in reader:
            question = row[asked] if step == "describe" else question_field(concept_message(row[asked], step))
            table.setdefault(question, row[LABEL_COLUMN[step]])
    return table


class Replay:
    provider = "replay"
    cacheable = False  # answers are already on disk; nothing to pay for twice

    def __init__(self, directory: str | Path, step: str, seed: int):
        self.model = f"replay:{directory}"
        self.fingerprint = ""
        self.directory, self.step, self.seed = Path(directory), step, seed
        self._answers = answers(directory, step, seed)

    def stream(self, requests: list[ChatRequest]) -> Iterator[tuple[int, ChatResponse]]:
        for index, request in enumerate(requests):
            message = request.messages[-1]["content"]
            question = question_field(message)
            if question not in self._answers:
                raise ChatError(f"replay: {self.directory / FILES[self.step].format(seed=self.seed)} "
                                f"never asked {message[:120]!r}")
            yield index, ChatResponse(self._answers[question], "stop", 0, 0, 0.0, "")
