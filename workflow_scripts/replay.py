"""Replay existing annotation files (the paper's released ones, or an earlier run) as a provider.

The per-seed files hold, on every row, both what was asked and what was answered: the
`Words` column (headed `Tokens` in the paper's files) is the describe step's user message and
`Summary` its answer; the task and level steps asked "Concept: Words are <summary>" (lower-cased
for the task step, as the paper did) and answered in `Task` / `Concept`. So a request is answered
by looking its user message up in the seed's file. The paper asked every row on its own (the describe
step at temperature 1), so two components with the same words, one of each model, can hold different
answers: such a question is answered by the row of the request's own component (model, layer, rank).
A message the files never asked, or asked on several rows with different answers of which none is
the request's component, is an error naming the file: replay never invents or guesses an answer,
and never silently drops a row.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .annotation_files import FILES, LABEL_COLUMN, ORIGIN_COLUMNS, QUESTION_COLUMNS, one_line, question_field
from .annotation_prompts import concept_message
from .chat import ChatError, ChatRequest, ChatResponse
from .tsv import read_tsv_table


def answers(directory: str | Path, step: str, seed: int) -> dict[str, list[tuple[tuple[str, str, str], str]]]:
    """{question as the file holds it (annotation_files.question_field): [((model, layer, rank), answer)
    of each row asking it]} of one step and seed. Our files and the paper's alike (its question column
    is headed `Tokens`)."""
    path = Path(directory) / FILES[step].format(seed=seed)
    if not path.is_file():
        raise ChatError(f"replay: {path} does not exist (annotation.provider.path holds no {step} file of seed {seed})")
    header, lines = read_tsv_table(path)
    if step == "describe":
        asked = next((column for column in QUESTION_COLUMNS if column in header), " or ".join(QUESTION_COLUMNS))
    else:
        asked = "Summary"
    for column in (asked, LABEL_COLUMN[step], *ORIGIN_COLUMNS):
        if column not in header:
            raise ChatError(f"replay: {path} has no column {column!r}")
    table: dict[str, list[tuple[tuple[str, str, str], str]]] = {}
    for _, fields in lines:
        row = dict(zip(header, fields))
        # describe wrote the summary as one line (one_line), and task and level asked with that
        question = row[asked] if step == "describe" else question_field(concept_message(one_line(row[asked]), step))
        origin = tuple(row[column] for column in ORIGIN_COLUMNS)
        table.setdefault(question, []).append((origin, row[LABEL_COLUMN[step]]))
    return table


def answer_for(rows: list[tuple[tuple[str, str, str], str]], origin: tuple, where: str, question: str) -> str:
    """The answer to a question from the rows asking it: the one answer they agree on, else the row of
    the request's own component."""
    given = {answer for _, answer in rows}
    if len(given) > 1:
        given = {answer for row, answer in rows if row == tuple(origin)}
    if len(given) == 1:
        return given.pop()
    model, layer, rank = tuple(origin) or ("?", "?", "?")
    models = ", ".join(sorted({row[0] for row, _ in rows}))
    raise ChatError(
        f"replay: {where} answers {question[:120]!r} differently on {len(rows)} rows, and no one row is this "
        f"request's component (model {model}, layer {layer}, rank {rank}); the file names its models {models}: "
        "give the config's models those ids")


class Replay:
    provider = "replay"
    cacheable = False  # answers are already on disk; nothing to pay for twice

    def __init__(self, directory: str | Path, step: str, seed: int):
        self.model = f"replay:{directory}"
        self.fingerprint = ""
        self.file = Path(directory) / FILES[step].format(seed=seed)
        self._answers = answers(directory, step, seed)
        self._asked: set[str] = set()

    def not_asked(self) -> str | None:
        """A line for the log when rows of the file were not asked (beyond max_rank, another pair's
        models, a larger run's file): legitimate, but a table from fewer rows than the file should say so."""
        left = [question for question in self._answers if question not in self._asked]
        if not left:
            return None
        rows = sum(len(self._answers[question]) for question in left)
        total = sum(len(found) for found in self._answers.values())
        return (f"replay: {rows} of {total} rows of {self.file} were not asked by this run "
                f"(the first: {left[0][:120]!r})")

    def stream(self, requests: list[ChatRequest]) -> Iterator[tuple[int, ChatResponse]]:
        for index, request in enumerate(requests):
            message = request.messages[-1]["content"]
            question = question_field(message)
            if question not in self._answers:
                raise ChatError(f"replay: {self.file} never asked {message[:120]!r}")
            self._asked.add(question)
            answer = answer_for(self._answers[question], request.origin, str(self.file), question)
            yield index, ChatResponse(answer, "stop", 0, 0, 0.0, "")
