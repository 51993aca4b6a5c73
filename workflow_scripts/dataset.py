"""Prompt datasets in the paper's TSV layout, and the human ratings of model responses.

The paper's files (`FinalDataset.tsv`, `AnnotatedDataset.tsv`) write tabs and newlines inside a
field as the two characters `/t` and `/n`, and sometimes wrap a field in double quotes with `""`
escapes; `decode_field` undoes both exactly as the paper's loader does.
"""
from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .instructions import InstructionError, instruction_fragments, instruction_spans
from .text_files import utf8_lines

DATASET_COLUMNS = ("ID", "Prompt", "Response", "Instruct&Context")
RATING_COLUMNS = ("File", "Model", "Prompt", "Reference", "Instruct", "Response", "Rating")


class DatasetError(ValueError):
    """A dataset or ratings file that cannot be read as it stands; the message names file and line."""


@dataclass(frozen=True)
class Sample:
    id: str
    prompt: str
    response: str
    annotation: str  # instruction fragments separated by `|||`, the context after `&&&`
    line: int  # 1-based line in the source file, for error messages

    def digest(self) -> str:
        """Content hash: a shard reruns when (and only when) one of its samples changes."""
        text = "\x1f".join((self.id, self.prompt, self.response, self.annotation))
        return hashlib.sha256(text.encode("utf8")).hexdigest()[:16]


def decode_field(text: str) -> str:
    text = text.replace("/t", "\t").replace("/n", "\n")
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    return text.replace('""', '"')


def encode_field(text: str) -> str:
    return text.replace("\t", "/t").replace("\n", "/n")


def _decoded_lines(path: Path):
    """(line number, text) of a UTF-8 file, line endings dropped (`utf8_lines`)."""
    for number, line in utf8_lines(path, DatasetError):
        yield number, line.rstrip("\r\n")


def _rows(path: Path, columns: tuple[str, ...]):
    """Yield (line number, fields) of a TSV file whose header must be `columns`."""
    lines = _decoded_lines(path)
    header = next(lines, (1, ""))[1].split("\t")
    if tuple(header) != columns:
        raise DatasetError(f"{path}:1: expected the columns {' '.join(columns)!r}, found {' '.join(header)!r}")
    for number, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise DatasetError(
                f"{path}:{number}: expected {len(columns)} tab-separated fields "
                f"({', '.join(columns)}), found {len(fields)}"
            )
        yield number, fields


MAX_ID_LENGTH = 200  # bytes: an id plus a heatmap file's suffix stays under the 255 a file name may hold


def _file_name_problem(sample_id: str) -> str:
    """Why an id cannot name a file on every filesystem ("" when it can)."""
    if sample_id in (".", "..") or any(c in sample_id for c in "/\\"):
        return "'/', '\\' or '..'"
    if any(unicodedata.category(c) == "Cc" for c in sample_id):
        return "a control character"
    if len(sample_id.encode("utf8")) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} bytes in UTF-8"
    return ""


def read_dataset(path: str | Path) -> list[Sample]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    samples, seen, same_file = [], {}, {}
    for number, (sample_id, prompt, response, annotation) in _rows(path, DATASET_COLUMNS):
        sample_id = sample_id.strip()
        if not sample_id:
            raise DatasetError(f"{path}:{number}: empty ID")
        problem = _file_name_problem(sample_id)
        if problem:
            raise DatasetError(f"{path}:{number}: ID {sample_id!r} is not a plain file name ({problem}: ids name "
                               "each sample's heatmap files and a released attribution's pickle)")
        if sample_id in seen:
            raise DatasetError(f"{path}:{number}: duplicate ID {sample_id!r} (first on line {seen[sample_id]})")
        file_name = unicodedata.normalize("NFC", sample_id).casefold()
        if file_name in same_file:
            other = same_file[file_name]
            raise DatasetError(f"{path}:{number}: ID {sample_id!r} names the same file as {other!r} (line "
                               f"{seen[other]}) on a filesystem that ignores case or Unicode form (macOS, Windows)")
        same_file[file_name] = sample_id
        prompt = decode_field(prompt)
        if not prompt.strip():
            raise DatasetError(f"{path}:{number}: empty Prompt for {sample_id!r}")
        annotation = decode_field(annotation)
        if not instruction_fragments(annotation):
            raise DatasetError(
                f"{path}:{number}: no instruction in Instruct&Context for {sample_id!r} (the part before `&&&` "
                "lists the instruction sentences; a sample without one would score 0 without saying so)"
            )
        try:
            spans = instruction_spans(prompt, annotation, sample_id)
        except InstructionError as error:
            raise DatasetError(f"{path}:{number}: {error}") from None
        if not spans:
            raise DatasetError(
                f"{path}:{number}: sample {sample_id!r}: its instruction {instruction_fragments(annotation)} marks no "
                "prompt text (a sentence's leading `Input:` is not instruction), so it would score 0 without saying so"
            )
        seen[sample_id] = number
        samples.append(Sample(sample_id, prompt, decode_field(response), annotation, number))
    if not samples:
        raise DatasetError(f"{path}: no samples")
    return samples


def read_ratings(path: str | Path, rated_model: str) -> dict[str, int]:
    """Human ratings (1-4; <= 0 means not rated) of `rated_model`'s responses, by sample id."""
    return read_rated(path, rated_model)[0]


def read_rated(path: str | Path, rated_model: str) -> tuple[dict[str, int], dict[str, str]]:
    """The ratings (read_ratings) and the response texts they rate (column Response, decoded as
    `decode_field` does), by sample id, from one reading of the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"ratings file not found: {path}")
    ratings: dict[str, int] = {}
    responses: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, fields in _rows(path, RATING_COLUMNS):
        if fields[1].strip() != rated_model:  # stripped as the ids are
            continue
        sample_id = fields[0].strip().removesuffix(".pkl")  # stripped as read_dataset strips its ids
        rating = _rating(fields[6], f"{path}:{number}")
        if sample_id in lines:
            raise DatasetError(
                f"{path}:{number}: a second rating of {sample_id} by {rated_model} (first on line {lines[sample_id]})"
            )
        lines[sample_id], ratings[sample_id], responses[sample_id] = number, rating, decode_field(fields[5])
    if not ratings:
        raise DatasetError(f"{path}: no ratings for the model {rated_model!r} (column Model)")
    return ratings, responses


RATING_SCALE = (-1, 0, 1, 2, 3, 4)  # <= 0: not rated; 1: not followed; 2-4: followed


def _rating(text: str, where: str) -> int:
    """A rating of the scale, written as an integer ("3", "3.0"). A fraction or another number is an
    error: truncated, 1.5 would count as unfollowed and 0.5 as unrated."""
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: Rating {text!r} is not a number") from None
    if value not in RATING_SCALE:
        if value != value or value in (float("inf"), float("-inf")):
            raise DatasetError(f"{where}: Rating {text!r} is not a number")
        scale = ", ".join(map(str, RATING_SCALE))
        raise DatasetError(f"{where}: Rating {text.strip()} is not one of {scale} (<= 0: not rated)")
    return int(value)


def dataset_group(sample_id: str, groups: dict[str, str]) -> str:
    """The dataset a sample comes from, by the longest matching id prefix (`other` if none)."""
    best = max((p for p in groups if sample_id.startswith(p)), key=len, default=None)
    return groups[best] if best is not None else "other"


def shard_samples(samples: list[Sample], shard_size: int) -> list[list[Sample]]:
    """Consecutive blocks in file order: appending samples touches only the last shard(s)."""
    return [samples[i : i + shard_size] for i in range(0, len(samples), shard_size)]
