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


def test_the_writer_refuses_a_field_holding_a_tab_a_line_break_or_a_carriage_return(tmp_path):
    """A layout character in a field shifts every later column or splits the row for other readers (pandas and
    the paper's scripts split at a carriage return; ours drops one that ends a line): no file is written."""
    out = tmp_path / "answers.tsv"
    for bad in ("a\tb", "a\nb", "a\rb", "answer\r"):
        with pytest.raises(ValueError, match=r"answers\.tsv: a row must be 2 fields without tabs or newlines"):
            write_tsv([["m", bad]], ("Model", "Summary"), out)
        assert not out.exists()
    write_tsv([["m", "a/rb"]], ("Model", "Summary"), out)
    assert out.read_text() == "Model\tSummary\nm\ta/rb\n"


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


# --- one reader: every TSV the workflow reads back goes through read_tsv ----------------------------


def _annotation_rows(path):
    from workflow_scripts.annotate import component_rows

    return component_rows(path)


def _bilinear_words(path):
    from workflow_scripts.table3 import read_bilinear_words

    return read_bilinear_words(path)


def _seed_file(path):
    from workflow_scripts.table5 import read_seed_file

    return read_seed_file(path, "Task")


def _columns_of(reader):
    from workflow_scripts.annotation_files import step_columns

    return {_annotation_rows: WORDS_COLUMNS, _bilinear_words: PAIRS_COLUMNS, _seed_file: step_columns("task")}[reader]


@pytest.mark.parametrize("reader", [_annotation_rows, _bilinear_words, _seed_file])
def test_every_reader_names_the_file_and_the_line_of_a_bad_row(tmp_path, reader):
    """The FFN shards (annotation), the bilinear words (Table 3) and the seed files (Table 5): one
    message, with the file and its line number counted past blank lines."""
    columns = _columns_of(reader)
    bad = tmp_path / "bad.tsv"
    bad.write_text("\t".join(columns) + "\n\n" + "\t".join(["1"] * (len(columns) - 1)) + "\n")
    with pytest.raises(ValueError, match=rf"bad\.tsv: line 3: expected {len(columns)} tab-separated fields "
                                         rf"\({' '.join(columns)}\), found {len(columns) - 1}: "):
        reader(bad)
    bad.write_text("\t".join(columns[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 1: expected the header '"):
        reader(bad)


def test_a_file_of_one_of_several_layouts_says_which_and_may_repeat_its_header(tmp_path):
    from workflow_scripts.tsv import read_tsv_layout

    path = tmp_path / "words.tsv"
    row = ["m", "NA", "0", "FFN", "0", "1", "0.5", '["a"]']
    path.write_text("\n".join(["\t".join(WORDS_COLUMNS), "\t".join(row), "\t".join(WORDS_COLUMNS), "\t".join(row)]))
    layouts = {"the paper's layout": LINEAR_COLUMNS, "lossless": WORDS_COLUMNS}
    assert read_tsv_layout(path, layouts, repeated_header=True) == (WORDS_COLUMNS, [(2, row), (4, row)])
    assert read_tsv_layout(path, layouts)[1][1] == (3, list(WORDS_COLUMNS))  # a row unless asked for
    path.write_text("")
    with pytest.raises(ValueError, match=r"line 1: expected the header '.*TopK' \(the paper's layout\) or "
                                         r"'.*Words' \(lossless\), tab-separated; found an empty file"):
        read_tsv_layout(path, layouts)


def test_lines_end_at_newlines_only_crlf_and_a_byte_order_mark_read_as_plain_and_bad_bytes_are_named(tmp_path):
    """A lone carriage return is no line end in a TSV (pandas and the paper's scripts split at \\n): the
    reader split there, so a field holding one became two lines, counted wrong in every later message."""
    from workflow_scripts.tsv import read_tsv_layout

    path = tmp_path / "words.tsv"
    row = ["m", "NA", "0", "FFN", "0", "1", "0.5", '["a\rb"]']
    path.write_bytes(b"\xef\xbb\xbf" + "\t".join(WORDS_COLUMNS).encode() + b"\r\n" + "\t".join(row).encode() + b"\r\n")
    assert read_tsv(path, WORDS_COLUMNS) == [(2, row)]
    path.write_bytes("\t".join(WORDS_COLUMNS).encode() + b"\n" + "\t".join(row).encode() + b"\nx\ry\n")
    with pytest.raises(ValueError, match=r"words\.tsv: line 3: expected 8 tab-separated fields .* found 1: 'x\\ry'"):
        read_tsv(path, WORDS_COLUMNS)
    path.write_bytes("\t".join(WORDS_COLUMNS).encode() + b"\n" + "\t".join(row).encode().replace(b"a", b"\xe9"))
    with pytest.raises(ValueError, match=r"words\.tsv:2: not UTF-8 \(byte 0xe9"):
        read_tsv_layout(path, {"lossless": WORDS_COLUMNS})


def test_a_line_of_tabs_is_a_row_not_a_blank_line(tmp_path):
    """Blank lines are skipped; a line of empty fields was skipped with them, silently losing a row."""
    path = tmp_path / "words.tsv"
    path.write_text("\t".join(WORDS_COLUMNS) + "\n \n" + "\t" * 7 + "\n")
    assert read_tsv(path, WORDS_COLUMNS) == [(3, [""] * 8)]


def test_a_file_of_any_header_names_each_column_once_and_every_row_fills_it(tmp_path):
    """Files of other tools (the paper's annotations, replayed): a short row read as a missing answer,
    a repeated column as its last copy."""
    from workflow_scripts.tsv import read_tsv_table

    path = tmp_path / "answers.tsv"
    path.write_text("Words\tSummary\tModel\nw\ts\tm\n\nv\tr\tn\n")
    assert read_tsv_table(path) == (("Words", "Summary", "Model"), [(2, ["w", "s", "m"]), (4, ["v", "r", "n"])])
    path.write_text("Words\tSummary\tModel\nw\ts\n")
    with pytest.raises(ValueError, match=r"answers\.tsv: line 2: expected 3 tab-separated fields \(Words Summary "
                                         r"Model\), found 2: 'w\\ts'"):
        read_tsv_table(path)
    path.write_text("Words\tSummary\tSummary\nw\ts\tt\n")
    with pytest.raises(ValueError, match=r"answers\.tsv: line 1: the column 'Summary' is named twice"):
        read_tsv_table(path)
    path.write_text("")
    with pytest.raises(ValueError, match=r"answers\.tsv: line 1: no header \(an empty file\)"):
        read_tsv_table(path)
