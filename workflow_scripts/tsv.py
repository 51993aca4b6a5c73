"""Explanation files: lossless shards and merged files, and the paper's TSV layouts as an export.

Lossless files (the layer shards, `bilinear_words.lossless.tsv` and `linear_words.lossless.tsv`) hold a row's
words as a JSON list in their last column (`Pairs`: `[["key", "query"], ...]`, `Words`:
`["w1", ...]`): JSON escapes tabs and newlines and no word needs a separator, so every word reads
back as it was written. Everything in the workflow reads these, through `read_tsv` (the one
TSV reader: header and field count checked, errors naming the file and line).

The paper's layouts (`bilinear_words.tsv`, `linear_words.tsv`: `TopK` = `k1=q1|||k2=q2...` or
`w1|||w2...`) are an export, so that a computed file can stand where the paper's released one
does. Its writer ESCAPES, never refuses: in a word, `\\` becomes `\\\\`, `|` `\\|`, a tab `\\t`, a
newline `\\n`, a carriage return `\\r`, and in a pair's words `=` becomes `\\=`. A word without
those characters is written as it is, so the file is the paper's byte for byte wherever the paper's
could be read at all; `split_words`/`split_pairs` undo the escapes (every word round-trips).
The paper's own released files are not escaped: read them as its script did (`paper_pairs`).
"""
from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_file
from .text_files import utf8_lines

# The paper's layouts (docs/design.md#paper-layout-tsvs), so its released files can stand in for computed ones.
BILINEAR_COLUMNS = ("Model", "Size", "Layer", "Type", "Head", "Dim", "Rank", "Score", "TopK")
LINEAR_COLUMNS = ("Model", "Size", "Layer", "Type", "Head", "Rank", "Score", "TopK")
# The lossless files: the same columns, the words as a JSON list instead of TopK.
PAIRS_COLUMNS = (*BILINEAR_COLUMNS[:-1], "Pairs")
WORDS_COLUMNS = (*LINEAR_COLUMNS[:-1], "Words")

SEPARATOR = "|||"
_ESCAPES = {"\\": "\\\\", "|": "\\|", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_PAIR_ESCAPES = {**_ESCAPES, "=": "\\="}
_UNESCAPES = {"t": "\t", "n": "\n", "r": "\r"}


# --- lossless: JSON lists in a TSV cell ----------------------------------------------------------


def encode_words(words) -> str:
    return json.dumps([str(w) for w in words], ensure_ascii=False, separators=(",", ":"))


def encode_pairs(pairs) -> str:
    return json.dumps([[str(k), str(q)] for k, q in pairs], ensure_ascii=False, separators=(",", ":"))


def decode_words(text: str, where: str = "") -> list[str]:
    words = _json_list(text, where)
    if not all(isinstance(w, str) for w in words):
        raise ValueError(f"{where}: expected a JSON list of words, found {text[:80]!r}")
    return words


def decode_pairs(text: str, where: str = "") -> list[tuple[str, str]]:
    pairs = _json_list(text, where)
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(w, str) for w in p) for p in pairs):
        raise ValueError(f"{where}: expected a JSON list of [key, query] word pairs, found {text[:80]!r}")
    return [(k, q) for k, q in pairs]


def _json_list(text: str, where: str) -> list:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not a JSON list ({error.msg}): {text[:80]!r}") from None
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a JSON list, found {text[:80]!r}")
    return value


# --- the paper's layout: an escaped export -------------------------------------------------------


def escape_word(word: str, in_pair: bool = False) -> str:
    if not word:
        raise ValueError("an empty word cannot be written in the paper's layout (it would read as no word)")
    table = _PAIR_ESCAPES if in_pair else _ESCAPES
    return "".join(table.get(c, c) for c in word)


def join_words(words) -> str:
    """`w1|||w2...` with each word escaped."""
    return SEPARATOR.join(escape_word(w) for w in words)


def join_pairs(pairs) -> str:
    """`k1=q1|||k2=q2...` with each word escaped (`=` included)."""
    return SEPARATOR.join(f"{escape_word(k, True)}={escape_word(q, True)}" for k, q in pairs)


def _split(field: str, in_pair: bool) -> list[list[str]]:
    """Items of an escaped field, each the list of its `=`-separated parts (one part unless in_pair)."""
    items: list[list[str]] = []
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(field):
        c = field[i]
        if c == "\\":
            if i + 1 == len(field):
                raise ValueError(f"a lone backslash ends the field {field[-40:]!r}")
            current.append(_UNESCAPES.get(field[i + 1], field[i + 1]))
            i += 2
        elif c == "|":
            if field[i:i + 3] != SEPARATOR:
                raise ValueError(f"an unescaped '|' that is not the separator {SEPARATOR!r} at {field[i:i + 20]!r}")
            items.append(parts + ["".join(current)])
            parts, current = [], []
            i += 3
        elif c == "=" and in_pair:
            parts.append("".join(current))
            current = []
            i += 1
        else:
            current.append(c)
            i += 1
    if field:
        items.append(parts + ["".join(current)])
    return items


def split_words(field: str) -> list[str]:
    """The words of an exported linear `TopK` field (inverse of join_words)."""
    items = _split(field, in_pair=False)
    if any(item == [""] for item in items):
        raise ValueError(f"an empty word in {field[:80]!r}")
    return [item[0] for item in items]


def split_pairs(field: str) -> list[tuple[str, str]]:
    """The (key, query) pairs of an exported bilinear `TopK` field (inverse of join_pairs)."""
    pairs = []
    for item in _split(field, in_pair=True):
        if len(item) != 2 or not all(item):
            raise ValueError(f"a pair must be two non-empty words joined by one unescaped '=': {item} "
                             f"in {field[:80]!r}")
        pairs.append((item[0], item[1]))
    return pairs


def paper_pairs(field: str) -> list[str]:
    """The pair strings of a `TopK` field of the paper's own (unescaped) files, split as its
    analysis script split them (`field.split("|||")`); an empty field holds none here (the script
    made one empty "pair" of it, which names no verb)."""
    return field.split(SEPARATOR) if field else []


# --- files ---------------------------------------------------------------------------------------


def write_tsv(rows, columns: tuple[str, ...], output: str | Path) -> None:
    with atomic_file(output) as tmp, open(tmp, "w", encoding="utf8") as handle:
        handle.write("\t".join(columns) + "\n")
        for row in rows:
            fields = list(map(str, row))
            if len(fields) != len(columns) or any(("\t" in f or "\n" in f or "\r" in f) for f in fields):
                raise ValueError(f"{output}: a row must be {len(columns)} fields without tabs or newlines: {fields}")
            handle.write("\t".join(fields) + "\n")


def read_tsv(path: str | Path, columns: tuple[str, ...], repeated_header: bool = False) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line after the header, which must be `columns`.

    The one TSV reader of the workflow's own files: a wrong header or a line with another number of
    fields raises a ValueError naming the file and the line. `repeated_header`: a line equal to the
    header is skipped (concatenated shards read as one file, as the paper's reader allowed)."""
    return read_tsv_layout(path, {"": columns}, repeated_header)[1]


def read_tsv_layout(path: str | Path, layouts: dict[str, tuple[str, ...]],
                    repeated_header: bool = False) -> tuple[tuple[str, ...], list[tuple[int, list[str]]]]:
    """read_tsv for a file that may come in one of several layouts ({description: columns}, e.g.
    lossless or the paper's): (the columns of the header found, the rows)."""
    return _read_rows(path, layouts, repeated_header)


def read_tsv_table(path: str | Path) -> tuple[tuple[str, ...], list[tuple[int, list[str]]]]:
    """read_tsv for files of other tools, whose columns the reader picks (the paper's annotation files,
    replayed): (the header, which names each column once, the rows)."""
    return _read_rows(path, None, False)


def _read_rows(path, layouts, repeated_header):
    lines = _tsv_lines(path)
    _, first = next(lines, (1, None))
    header = tuple(first.split("\t")) if first is not None else ()
    if layouts is None:
        if first is None:
            raise ValueError(f"{path}: line 1: no header (an empty file)")
        repeated = next((column for column in header if header.count(column) > 1), None)
        if repeated is not None:
            raise ValueError(f"{path}: line 1: the column {repeated!r} is named twice")
    elif header not in layouts.values():
        expected = " or ".join(f"{' '.join(columns)!r}" + (f" ({name})" if name else "")
                               for name, columns in layouts.items())
        found = repr(" ".join(header)) if first is not None else "an empty file"
        raise ValueError(f"{path}: line 1: expected the header {expected}, tab-separated; found {found}")
    rows = []
    for number, line in lines:
        # a blank line is no row; a line of tabs is one, of empty fields (the field count decides)
        if (not line.strip() and "\t" not in line) or (repeated_header and line == first):
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(f"{path}: line {number}: expected {len(header)} tab-separated fields "
                             f"({' '.join(header)}), found {len(fields)}: {line[:80]!r}")
        rows.append((number, fields))
    return header, rows


def _tsv_lines(path):
    """(line number, line without its ending): lines end at \\n only, so a lone \\r in a file from elsewhere
    stays in its field (a row cut there lost the rest of its answer, and every later line number was
    off); a CRLF ending reads as \\n, a byte-order mark is dropped, a byte that is not UTF-8 is an error
    naming the line."""
    for number, text in utf8_lines(path):
        yield number, text.removesuffix("\n").removesuffix("\r")


def merge_and_export(inputs: list[str], output: str | Path, export: str | Path, kind: str) -> None:
    """Lossless shards -> one lossless file and its export in the paper's layout.

    kind: `pairs` (bilinear: Pairs -> TopK by join_pairs) or `words` (linear: Words -> TopK)."""
    columns, paper_columns, decode, join = {
        "pairs": (PAIRS_COLUMNS, BILINEAR_COLUMNS, decode_pairs, join_pairs),
        "words": (WORDS_COLUMNS, LINEAR_COLUMNS, decode_words, join_words),
    }[kind]
    rows, exported = [], []
    for path in inputs:
        for number, fields in read_tsv(path, columns):
            rows.append(fields)
            exported.append([*fields[:-1], join(decode(fields[-1], f"{path}: line {number}"))])
    write_tsv(rows, columns, output)
    write_tsv(exported, paper_columns, export)
