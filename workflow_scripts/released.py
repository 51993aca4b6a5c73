"""The paper's released attributions (one pickle per sample) as attribution shards.

The pickles are untrusted input: `safe_load_pickle` admits only plain containers, strings,
numbers and numeric NumPy arrays, and refuses anything else with an error naming the file.
They hold SentencePiece token strings without character offsets; `align_pieces` recovers the
offsets by walking the token strings along the prompt text.
"""
from __future__ import annotations

import argparse
import builtins
import codecs
import io
import logging
import math
import pickle
import threading
from pathlib import Path

import numpy as np

from .dataset import read_dataset

try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # NumPy 1
    from numpy.core.multiarray import scalar as _np_scalar
from .progress import progress
from .shards import SampleAttribution, Shard, save_shard

log = logging.getLogger(__name__)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that asks for something other than plain data."""


def _numeric_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError("refused an object-dtype array")
    _check_array_size((), dtype)
    return dtype


class _ArrayClass:
    """Stands for numpy.ndarray inside a pickle: usable only as `_reconstruct`'s class argument.

    Calling ndarray directly with an object dtype and a raw buffer forges object pointers (and
    crashes the interpreter as soon as they are read), so the constructor itself is never exposed.
    """

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError("refused a direct numpy.ndarray construction")


_ARRAY_CLASS = _ArrayClass()


# Limits checked before anything is allocated: an array's data travels inside the pickle, so genuine
# arrays and encoded strings never add up to more than the file (once for an array's allocation, once
# for the bytes that fill it); a few bytes asking for gigabytes, or naming one stored string again and
# again through the pickle's memo, are refused.
MAX_PICKLE_BYTES = 256 * 2**20
MAX_DEPTH = 64
_budget = threading.local()


def _charge(nbytes: int) -> None:
    """Count an allocation the pickle asks for against what its own size can carry."""
    _budget.left -= nbytes
    if _budget.left < 0:
        raise UnsafePickleError(f"refused more than {2 * _budget.size:,} bytes of arrays and encoded strings "
                                f"from a {_budget.size:,}-byte pickle")


def _reconstruct(cls, shape, dtype):
    if cls is not _ARRAY_CLASS:
        raise UnsafePickleError("refused to reconstruct something other than a plain ndarray")
    dtype = _numeric_dtype(dtype)
    _charge(_check_array_size(shape, dtype))
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _encode(text, encoding="utf-8", errors="strict"):
    """Protocol 2 writes bytes as `_codecs.encode(str, "latin1")`: one byte a character, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused _codecs.encode to {encoding!r} (protocol 2 bytes are latin1)")
    _charge(len(text))
    return codecs.encode(text, encoding, errors)


def _frombuffer(buffer, dtype, shape, order):
    return np.frombuffer(buffer, dtype=_numeric_dtype(dtype)).reshape(shape, order=order)


def _check_array_size(shape, dtype: np.dtype) -> int:
    """An array's size in bytes; a shape that is not one, or an array larger than the file, is refused."""
    try:
        dims = [int(n) for n in (shape if isinstance(shape, (tuple, list)) else (shape,))]
    except (TypeError, ValueError):
        raise UnsafePickleError(f"refused an array shape {shape!r}") from None
    if any(n < 0 for n in dims) or len(dims) > 32:
        raise UnsafePickleError(f"refused an array shape {tuple(dims)}")
    nbytes = dtype.itemsize * math.prod(dims)
    limit = getattr(_budget, "size", MAX_PICKLE_BYTES)
    if nbytes > limit:
        raise UnsafePickleError(f"refused an array of {nbytes:,} bytes from a {limit:,}-byte pickle")
    return nbytes


def _scalar(dtype, *args):
    return _np_scalar(_numeric_dtype(dtype), *args)


# What a pickle of dicts, lists, strings, numbers and numeric NumPy arrays needs (protocols 2-5,
# NumPy 1 and 2 module names), each mapped to a checked stand-in; nothing else is found.
_SAFE_GLOBALS = {
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): _ARRAY_CLASS,
    ("numpy", "dtype"): _numeric_dtype,
    ("_codecs", "encode"): _encode,
    **{(m, n): getattr(builtins, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset")},
}
_PLAIN = (dict, list, tuple, set, frozenset, str, bytes, int, float, bool, complex, type(None), np.generic)
RELEASED_KEYS = ("ID", "Input", "Output", "Explain")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        raise UnsafePickleError(f"{self.source}: refused to load {module}.{name} (only plain data is allowed)")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused a persistent reference")


def _check_plain(value, source: str) -> None:
    """Walk the loaded value without recursion, each container once (the memo lets containers share
    children: 61 lists can hold 2**60 paths); nesting deeper than MAX_DEPTH is refused."""
    stack, seen = [(value, 0)], set()
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UnsafePickleError(f"{source}: refused data nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, (dict, list, tuple, set, frozenset)):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise UnsafePickleError(f"{source}: refused an object-dtype array")
            continue
        if not isinstance(value, _PLAIN):
            raise UnsafePickleError(f"{source}: refused a {type(value).__name__} object")
        if isinstance(value, dict):
            stack.extend((x, depth + 1) for item in value.items() for x in item)
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((x, depth + 1) for x in value)


def safe_load_pickle(path: str | Path):
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise UnsafePickleError(f"{path}: refused a {size:,}-byte pickle (more than {MAX_PICKLE_BYTES:,})")
    data = path.read_bytes()
    _budget.size = len(data)
    _budget.left = 2 * len(data)
    try:
        value = _RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError as error:
        message = str(error)
        raise UnsafePickleError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, OverflowError) as error:
        raise UnsafePickleError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from None
    finally:
        del _budget.size, _budget.left
    _check_plain(value, str(path))
    return value


def _piece_text(piece: str) -> str | bytes:
    """A SentencePiece token as text, or as one raw byte for byte-fallback tokens like <0x0A>."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    if piece in ("<s>", "</s>", "<unk>", "<pad>"):
        return ""
    return piece.replace("\u2581", " ")


def _pieces_to_chars(pieces: list[str]) -> tuple[list[str], dict[int, int]]:
    """Each piece's characters, and which byte pieces belong to the multi-byte character of another.

    A character spelled by several byte-fallback pieces is given to the first of them; the map
    sends every later byte piece of it to that first piece. Bytes that spell no character (not
    UTF-8, or a character left unfinished by the next text piece) are dropped, as zero-width pieces.
    """
    out, pending, owners, partners = [], b"", [], {}
    for i, piece in enumerate(pieces):
        text = _piece_text(piece)
        out.append("")
        if not isinstance(text, bytes):
            out[i], pending, owners = text, b"", []
            continue
        pending += text
        owners.append(i)
        while pending:
            try:
                char, used = codecs.utf_8_decode(pending, "strict", False)
            except UnicodeDecodeError as error:  # these bytes start no character: the rest may
                pending, owners = pending[error.end :], owners[error.end :]
                continue
            if not used:
                break  # the character's later bytes are still to come
            out[owners[0]] = char
            partners.update((j, owners[0]) for j in owners[1:used])
            pending, owners = pending[used:], owners[used:]
    return out, partners


def detokenize(pieces: list[str]) -> str:
    text = "".join(_pieces_to_chars(pieces)[0])
    return text[1:] if text.startswith(" ") else text


def align_pieces(pieces: list[str], text: str, context: str = "?") -> np.ndarray:
    """Character [start, end) of each SentencePiece token in `text`.

    The word-boundary marker may stand for a space that `text` lacks (SentencePiece's dummy
    prefix, or a space after a newline), so spaces that do not match are skipped. All byte-fallback
    pieces of one character carry that character's span, as HF fast tokenizers report them.
    """
    chars, partners = _pieces_to_chars(pieces)
    offsets = np.zeros((len(pieces), 2), dtype=np.int64)
    pos = 0
    for i, piece_text in enumerate(chars):
        start = pos
        for ch in piece_text:
            if pos < len(text) and text[pos] == ch:
                pos += 1
            elif ch == " ":
                continue  # a marker space absent from the text
            elif pos < len(text) and text[pos].isspace():
                # white space the tokenizer normalised away (e.g. a tab or a double space)
                while pos < len(text) and text[pos].isspace() and text[pos] != ch:
                    pos += 1
                if pos < len(text) and text[pos] == ch:
                    pos += 1
                else:
                    raise ValueError(f"{context}: token {i} {pieces[i]!r} does not match the text at {pos}")
            else:
                raise ValueError(
                    f"{context}: token {i} {pieces[i]!r} does not match the text at character {pos} "
                    f"({text[pos:pos + 20]!r})"
                )
        offsets[i] = (start, pos)
    for piece, owner in partners.items():
        offsets[piece] = offsets[owner]
    return offsets


def released_sample(path: Path, prompt: str, sample_id: str) -> SampleAttribution:
    record = safe_load_pickle(path)
    if not isinstance(record, dict) or any(k not in record for k in RELEASED_KEYS):
        raise ValueError(f"{path}: expected a dict with the keys {', '.join(RELEASED_KEYS)}")
    if str(record["ID"]) != sample_id:
        raise ValueError(f"{path}: holds sample {record['ID']!r}, expected {sample_id!r}")
    for key in ("Input", "Output"):
        if not isinstance(record[key], (list, tuple)) or not all(isinstance(t, str) for t in record[key]):
            raise ValueError(f"{path}: {key} must be a list of token strings, not {type(record[key]).__name__}")
    inputs, outputs = list(record["Input"]), list(record["Output"])
    try:
        matrix = np.asarray(record["Explain"], dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: Explain is not a numeric matrix ({error})") from None
    empty = matrix.size == 0 == len(inputs) * len(outputs)  # no response token: stored as [] or (n, 0)
    if matrix.shape != (len(inputs), len(outputs)) and not empty:  # a transposed one would reshape, scrambled
        raise ValueError(f"{path}: Explain of shape {matrix.shape}, expected (Input, Output) = "
                         f"({len(inputs)}, {len(outputs)})")
    matrix = matrix.reshape(len(inputs), len(outputs))
    response = detokenize(outputs)
    return SampleAttribution(
        id=sample_id,
        prompt=prompt,
        response=response,
        prompt_tokens=inputs,
        prompt_offsets=align_pieces(inputs, prompt, f"{path} (Input)"),
        response_tokens=outputs,
        response_offsets=align_pieces(outputs, response, f"{path} (Output)"),
        matrix=matrix,
    )


def convert_released(dataset: str | Path, released_dir: str | Path, output: str | Path, model: str) -> Shard:
    """One attribution file for every dataset sample; a sample without its pickle is an error."""
    released_dir = Path(released_dir)
    samples = read_dataset(dataset)
    missing = [s.id for s in samples if not (released_dir / f"{s.id}.pkl").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{released_dir}: no released attribution for {len(missing)} dataset samples, e.g. {missing[:3]}"
        )
    converted = [
        released_sample(released_dir / f"{s.id}.pkl", s.prompt, s.id)
        for s in progress(samples, f"convert {model}", "sample")
    ]
    shard = Shard(converted, {"model": model, "source": "released", "binned_levels": 10})
    save_shard(shard, output)
    log.info("converted %d released attributions of %s to %s", len(converted), model, output)
    return shard


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--released-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    convert_released(args.dataset, args.released_dir, args.output, args.model)


if __name__ == "__main__":
    main()
