"""Explanation files lose no word: lossless shards and merged files, and an escaped paper-layout export."""
import itertools

import pytest

from workflow_scripts.tsv import (
    BILINEAR_COLUMNS,
    LINEAR_COLUMNS,
    PAIRS_COLUMNS,
    WORDS_COLUMNS,
    encode_pairs,
    encode_words,
    join_pairs,
    join_words,
    merge_and_export,
    read_tsv,
    split_pairs,
    split_words,
    write_tsv,
)

# words that a separator, an escape or the TSV layout itself could swallow
AWKWARD = ["|", "||", "|||", "||||", "a|b", "|a", "a|", "=", "==", "a=b", "class=", "=x", "\\", "\\\\", "\\|",
           "\\n", "x\\", "tab\there", "\t", "new\nline", "\r", '"', "'", '"quoted"', "it's", '""', "\\=|", "plain"]


def test_an_escaped_word_list_reads_back_word_for_word():
    for word in AWKWARD:
        assert split_words(join_words([word])) == [word]
    for words in itertools.permutations(AWKWARD[:8], 4):
        assert split_words(join_words(words)) == list(words)
    assert split_words(join_words(AWKWARD)) == AWKWARD
    assert split_words("") == []


def test_escaped_pairs_read_back_even_with_separator_and_equals_words():
    pairs = [(a, b) for a in AWKWARD for b in ("|", "=", "b", "||", "\\")]
    assert split_pairs(join_pairs(pairs)) == pairs
    assert split_pairs("") == []


def test_plain_words_are_written_as_the_paper_wrote_them():
    assert join_words(["the", "of", "-", "C++", "class="]) == "the|||of|||-|||C++|||class="
    assert join_pairs([("write", "code"), ("a", "b")]) == "write=code|||a=b"
    assert join_words(["|", "||"]) == "\\||||\\|\\|"  # each | escaped, then the separator


def test_the_writer_refuses_an_empty_word_and_the_reader_an_unescaped_pipe():
    with pytest.raises(ValueError, match="empty word"):
        join_words(["a", ""])
    with pytest.raises(ValueError, match="unescaped '\\|'"):
        split_words("a||b")
    with pytest.raises(ValueError, match="one unescaped '='"):
        split_pairs("a=b=c")
    with pytest.raises(ValueError, match="lone backslash"):
        split_words("a\\")


def test_a_vocabulary_of_awkward_words_round_trips_through_shards_merge_and_export(tmp_path):
    """Lossless shards -> merged lossless file + paper-layout export: both give back every word."""
    vocabulary = AWKWARD
    pairs = [list(zip(vocabulary[i::3], vocabulary[i + 1::3])) for i in range(3)]
    shards = []
    for layer in range(2):
        bilinear = [("m", "NA", layer, "QK", 0, dim, dim + 1, "0.5", encode_pairs(p)) for dim, p in enumerate(pairs)]
        write_tsv(bilinear, PAIRS_COLUMNS, tmp_path / f"att-{layer}.tsv")
        linear = [("m", "NA", layer, "FFN", 0, 1, "0.5", encode_words(vocabulary))]
        write_tsv(linear, WORDS_COLUMNS, tmp_path / f"ffn-{layer}.tsv")
        shards.append(layer)
    merge_and_export([str(tmp_path / f"att-{layer}.tsv") for layer in shards], tmp_path / "pairs.tsv",
                     tmp_path / "bilinear_words.tsv", "pairs")
    merge_and_export([str(tmp_path / f"ffn-{layer}.tsv") for layer in shards], tmp_path / "words.tsv",
                     tmp_path / "linear_words.tsv", "words")

    from workflow_scripts.tsv import decode_pairs, decode_words

    lossless = read_tsv(tmp_path / "pairs.tsv", PAIRS_COLUMNS)
    exported = read_tsv(tmp_path / "bilinear_words.tsv", BILINEAR_COLUMNS)
    assert len(lossless) == len(exported) == 6
    for (_, kept), (_, paper), expected in zip(lossless, exported, pairs * 2):
        assert decode_pairs(kept[-1]) == expected == split_pairs(paper[-1])
        assert kept[:-1] == paper[:-1]
    (_, kept), (_, paper) = read_tsv(tmp_path / "words.tsv", WORDS_COLUMNS)[0], read_tsv(
        tmp_path / "linear_words.tsv", LINEAR_COLUMNS)[0]
    assert decode_words(kept[-1]) == vocabulary == split_words(paper[-1])
    # one line per row: no word's tab or newline reached the file raw
    assert len((tmp_path / "linear_words.tsv").read_text().splitlines()) == 3


def test_every_word_of_the_papers_vocabulary_round_trips(paper_dir):
    from workflow_scripts.vocabulary import read_vocabulary

    words = read_vocabulary(paper_dir / "datasets" / "SingleShareGPT_Vocab.tsv.gz")
    assert {"|", "||", "=", "\\"} <= set(words)
    assert split_words(join_words(words)) == words
    assert split_pairs(join_pairs(zip(words, reversed(words)))) == list(zip(words, reversed(words)))
