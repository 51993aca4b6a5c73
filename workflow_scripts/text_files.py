"""Reading the text files users give (datasets, vocabularies, word vectors) line by line, so that a bad
byte or a broken archive is an error naming the file and the line, never a bare decoder traceback."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path


def utf8_lines(path: str | Path, error: type[Exception] = ValueError):
    """(line number, text with its line ending) of a UTF-8 file, gzipped when its name ends in `.gz`.

    Each line is decoded on its own (a text stream decodes blocks ahead, and would blame the wrong
    line); a byte-order mark at the start is dropped (spreadsheet exports write one)."""
    path = Path(path)
    number = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as bad:
                    raise error(f"{path}:{number}: not UTF-8 (byte 0x{raw[bad.start]:02x} at byte {bad.start + 1} "
                                "of the line)") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as broken:
        raise error(f"{path}: not a readable gzip file after line {number} ({type(broken).__name__}: {broken})"
                    ) from None
