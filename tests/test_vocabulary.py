"""The vocabulary: the paper's file read with case variants merged, and the demo's own file."""
import gzip

import pytest
from conftest import PAPER_DIR

from workflow_scripts.vocabulary import build_vocabulary, main, read_vocabulary, read_vocabulary_frequencies

PAPER_VOCAB = PAPER_DIR / "datasets" / "SingleShareGPT_Vocab.tsv.gz"


def write(tmp_path, text, name="vocab.tsv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf8")
    return path


def test_case_variants_merge_into_the_first_seen_form_in_order_of_first_appearance(tmp_path):
    path = write(tmp_path, "the\t5\nThe\t3\nApple\t2\nTHE\t1\napple\t1\n")
    assert read_vocabulary(path) == ["the", "Apple"]
    assert read_vocabulary_frequencies(path) == {"the": 9.0, "Apple": 3.0}


def test_only_lower_upper_and_capitalized_forms_are_variants(tmp_path):
    # `MCDONALD` is none of lower/upper/capitalize of `McDonald`: kept apart, as in the paper;
    # `mcdonald` then joins the first form it finds, `MCDONALD` (its upper case)
    path = write(tmp_path, "McDonald 4\nUS 3\nMCDONALD 2\nmcdonald 1\nus 1\nUs 1\n")
    assert read_vocabulary_frequencies(path) == {"McDonald": 4.0, "MCDONALD": 3.0, "US": 5.0}


def test_whitespace_separated_gzip_and_blank_lines_are_read(tmp_path):
    path = tmp_path / "vocab.tsv.gz"
    with gzip.open(path, "wt", encoding="utf8") as f:
        f.write(",\t0.5\n  the 0.25\n\n.\t1e-3\n\n")
    assert read_vocabulary(path) == [",", "the", "."]


@pytest.mark.parametrize(
    "line, problem",
    [
        ("the\t5\textra", "3 fields"),
        ("lonely", "1 fields"),
        ("the\tmany", "'many'"),
        ("the\tnan", "'nan'"),
        ("a\t-1", "'-1'"),
    ],
)
def test_a_malformed_line_raises_naming_file_and_line(tmp_path, line, problem):
    path = write(tmp_path, f"ok\t1\n\n{line}\n")
    with pytest.raises(ValueError, match=rf"vocab\.tsv:3: .*{problem}"):
        read_vocabulary(path)


@pytest.mark.paper
def test_the_papers_vocabulary_merges_its_case_variants():
    if not PAPER_VOCAB.is_file():
        pytest.skip(f"{PAPER_VOCAB} is not there (shared/ is checked out next to the repo)")
    words = read_vocabulary(PAPER_VOCAB)
    assert len(words) < 26_498  # the file's lines
    assert len(words) == 26_473  # what the paper's own reader (utils.load_wiki_words) gives
    assert words[:3] == [",", "the", "."]
    assert len(set(words)) == len(words)


CORPUS = """The cat sat on the mat. The cat's hat -- the dog's bone!
Don't stop: the dog ran, the cat ran. A mat; a hat. Dog dog DOG 42 x
"""
# 28 word occurrences, case kept: the 4; The, cat, dog, hat, mat, ran 2; 12 words once
# (`42` is no word; `cat's`, `dog's` and `Don't` are one word each)


def test_build_vocabulary_writes_relative_frequencies_by_count_then_word(tmp_path):
    corpus = write(tmp_path, CORPUS, "corpus.txt")
    output = tmp_path / "out" / "vocab.tsv"
    assert build_vocabulary(corpus, output, max_words=4, min_count=2) == 4
    rows = [line.split("\t") for line in output.read_text().splitlines()]
    assert [w for w, _ in rows] == ["the", "The", "cat", "dog"]  # 4, 2, 2, 2: ties by word
    assert [float(f) for _, f in rows] == [4 / 28, 2 / 28, 2 / 28, 2 / 28]
    assert read_vocabulary(output) == ["the", "cat", "dog"]  # `The` merges into `the`
    assert [p.name for p in output.parent.iterdir()] == ["vocab.tsv"]  # no temp file left


def test_build_vocabulary_keeps_words_seen_at_least_min_count_times(tmp_path):
    corpus = write(tmp_path, CORPUS, "corpus.txt")
    output = tmp_path / "vocab.tsv"
    n = build_vocabulary(corpus, output, max_words=100, min_count=2)
    words = [line.split("\t")[0] for line in output.read_text().splitlines()]
    assert n == len(words) == 7
    assert words == ["the", "The", "cat", "dog", "hat", "mat", "ran"]
    assert build_vocabulary(corpus, output, max_words=100, min_count=1) == 19  # replaces the file
    assert "cat's" in output.read_text().split() and "Don't" in output.read_text().split()


def test_build_vocabulary_refuses_to_write_an_empty_vocabulary(tmp_path):
    corpus = write(tmp_path, "one two three 4 5", "corpus.txt")
    with pytest.raises(ValueError, match="no word occurs at least 2 times"):
        build_vocabulary(corpus, tmp_path / "vocab.tsv")
    assert not (tmp_path / "vocab.tsv").exists()


def test_cli_builds_a_vocabulary(tmp_path):
    corpus = write(tmp_path, CORPUS, "corpus.txt")
    output = tmp_path / "vocab.tsv"
    main(["build", str(corpus), str(output), "--max-words", "2"])
    assert output.read_text().splitlines()[0].startswith("the\t")
    assert len(output.read_text().splitlines()) == 2


# --- bad bytes, byte-order marks, control characters, empty files (issue 10) ---------------------


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_byte_that_is_not_utf8_names_the_file_and_line(tmp_path, gzipped):
    data = b"the\t5\nca\xe9\t2\n"
    path = tmp_path / ("vocab.tsv.gz" if gzipped else "vocab.tsv")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    with pytest.raises(ValueError, match=rf"{path.name}:2: not UTF-8 \(byte 0xe9 at byte 3 of the line\)"):
        read_vocabulary(path)


def test_a_byte_order_mark_does_not_become_part_of_the_first_word(tmp_path):
    path = tmp_path / "vocab.tsv"
    path.write_bytes(b"\xef\xbb\xbfthe\t5\nof\t3\n")
    assert read_vocabulary(path) == ["the", "of"]


def test_words_with_control_characters_are_kept_as_the_paper_keeps_them_and_named(tmp_path, caplog):
    path = tmp_path / "vocab.tsv"
    path.write_text("the\t5\n\x0f\t3\nhigh\x02risk\t1\n", encoding="utf8")
    assert read_vocabulary(path) == ["the", "\x0f", "high\x02risk"]
    assert "2 words hold control characters" in caplog.text and "line 3 'high\\x02risk'" in caplog.text


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_vocabulary_is_an_error(tmp_path, content):
    path = tmp_path / "vocab.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match="vocab.tsv: the vocabulary has no words"):
        read_vocabulary(path)


def test_build_vocabulary_adds_the_words_it_must_hold_after_the_corpus_words(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat the end\nWrite it down\n")
    out = tmp_path / "vocab.tsv"
    # top 2 by count then word: "the" (3), "Write" (sorts before the other single words)
    assert build_vocabulary(corpus, out, max_words=2, min_count=1, include=["write", "explain", "the"]) == 3
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    assert [word for word, _ in lines] == ["the", "Write", "explain"]  # "write" and "the" are there already
    assert float(lines[2][1]) == 0.0  # not in the corpus: frequency 0


def test_a_word_more_frequent_than_the_one_before_names_the_line(tmp_path):
    """The heads' baseline is the file's first words: an unsorted file once moved every threshold quietly."""
    path = tmp_path / "vocab.tsv"
    path.write_text("the\t100\nrare\t1\ncommon\t50\n")
    with pytest.raises(ValueError, match=r"vocab.tsv:3: 'common' \(50\) is more frequent than 'rare' on the line"):
        read_vocabulary(path)


def test_build_vocabulary_writes_the_added_words_most_frequent_first(tmp_path):
    """The demo's instruction verbs that missed the top words once followed in the include list's order,
    which the vocabulary's own order check refuses."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the the the cat cat explain write write\n")
    out = tmp_path / "vocab.tsv"
    build_vocabulary(corpus, out, max_words=1, min_count=1, include=["summarize", "explain", "write"])
    assert [line.split("\t")[0] for line in out.read_text().splitlines()] == ["the", "write", "explain", "summarize"]
    assert read_vocabulary(out) == ["the", "write", "explain", "summarize"]


def test_a_gz_vocabulary_that_is_not_gzip_or_is_cut_names_the_file(tmp_path):
    path = tmp_path / "vocab.tsv.gz"
    path.write_bytes(b"the\t1\n")
    with pytest.raises(ValueError, match=r"vocab.tsv.gz: not a readable gzip file after line 0 \(BadGzipFile"):
        read_vocabulary(path)
    path.write_bytes(gzip.compress(b"".join(b"w%d\t%d\n" % (i, 5000 - i) for i in range(5000)))[:-20])
    with pytest.raises(ValueError, match=r"vocab.tsv.gz: not a readable gzip file after line \d+ \(EOFError"):
        read_vocabulary(path)


def test_a_gz_vocabulary_with_damaged_compressed_data_names_the_file_instead_of_a_zlib_traceback(tmp_path):
    """A flipped byte inside the deflate stream (a bad copy, a disk error) is zlib's own error, not
    BadGzipFile or EOFError: it names the file like a cut or non-gzip file does."""
    data = bytearray(gzip.compress(b"".join(b"w%d\t%d\n" % (i, 5000 - i) for i in range(5000))))
    data[11] ^= 0xFF  # the first bytes of the deflate stream, after the 10-byte gzip header
    path = tmp_path / "vocab.tsv.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"vocab.tsv.gz: not a readable gzip file after line 0 \(error: Error -3"):
        read_vocabulary(path)
