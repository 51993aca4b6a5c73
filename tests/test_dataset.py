"""Prompt datasets and ratings in the paper's TSV layout; dataset groups and shards of samples."""
from __future__ import annotations

import dataclasses
import re

import pytest

from workflow_scripts.dataset import (
    DatasetError,
    Sample,
    dataset_group,
    decode_field,
    encode_field,
    read_dataset,
    read_ratings,
    shard_samples,
)

RATINGS_HEADER = "File\tModel\tPrompt\tReference\tInstruct\tResponse\tRating"


# --- decode_field ------------------------------------------------------------------------------


def test_decode_field_turns_slash_n_and_slash_t_into_newline_and_tab():
    assert decode_field("Line one./nLine two:/tindented") == "Line one.\nLine two:\tindented"


def test_decode_field_strips_surrounding_quotes_and_unescapes_doubled_quotes():
    assert decode_field('"He said ""hi"" to me."') == 'He said "hi" to me.'
    assert decode_field('"a/nb"') == "a\nb"
    assert decode_field('""') == ""


def test_decode_field_leaves_unquoted_text_and_a_lone_quote_alone():
    assert decode_field("plain text") == "plain text"
    assert decode_field('"') == '"'
    assert decode_field('say "x"') == 'say "x"'


def test_encode_field_is_undone_by_decode_field():
    text = "Rewrite:\n\tkeep it short.\n"
    assert encode_field(text) == "Rewrite:/n/tkeep it short./n"
    assert decode_field(encode_field(text)) == text


# --- read_dataset ----------------------------------------------------------------------------


def test_read_dataset_decodes_fields_and_records_line_numbers(write_tsv):
    path = write_tsv([
        ("user_oriented_task_0", "Fix it./n/nInput: x", "Done.", "Fix it.|||Input: &&&x"),
        "",
        ("lima_author_1", '"Say ""hi""."', "hi", "Say"),
    ])
    samples = read_dataset(path)
    assert [s.id for s in samples] == ["user_oriented_task_0", "lima_author_1"]
    assert samples[0].prompt == "Fix it.\n\nInput: x"
    assert samples[0].annotation == "Fix it.|||Input: &&&x"
    assert samples[1].prompt == 'Say "hi".'
    # the blank line 3 is skipped, but still counted
    assert [s.line for s in samples] == [2, 4]


def test_read_dataset_rejects_a_wrong_header_naming_file_and_line(write_tsv):
    path = write_tsv([("a", "b", "c", "d")], header="ID\tPrompt\tResponse\tInstruct")
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:1: expected the columns"):
        read_dataset(path)


def test_read_dataset_rejects_a_row_with_three_fields_naming_file_and_line(write_tsv):
    path = write_tsv([("a", "Do it.", "ok", "Do it."), ("b", "Do it.", "ok")])
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:3: expected 4 tab-separated fields .* found 3$"):
        read_dataset(path)


@pytest.mark.parametrize("sample_id", ["task_../../../outside/x", "a/b", "..", "a\\b"])
def test_read_dataset_rejects_an_id_that_is_not_a_plain_file_name(write_tsv, sample_id):
    """An id names its sample's heatmap files: a `/` in it would write outside the results folder."""
    path = write_tsv([("ok", "Say hi.", "Hi.", "Say hi."), (sample_id, "Say hi.", "Hi.", "Say hi.")])
    with pytest.raises(DatasetError, match=re.escape(f"{path}:3: ID {sample_id!r} is not a plain file name")):
        read_dataset(path)


def test_read_dataset_rejects_a_duplicate_id_naming_both_lines(write_tsv):
    path = write_tsv([("a", "One.", "", "One."), ("b", "Two.", "", "Two."), ("a", "Three.", "", "Three.")])
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:4: duplicate ID 'a' \(first on line 2\)$"):
        read_dataset(path)


@pytest.mark.parametrize("prompt", ["", "   ", '""'])
def test_read_dataset_rejects_an_empty_prompt_naming_file_and_line(write_tsv, prompt):
    path = write_tsv([("a", "One.", "", "One."), ("b", prompt, "r", "x")])
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:3: empty Prompt for 'b'$"):
        read_dataset(path)


def test_read_dataset_rejects_a_missing_file_naming_it(tmp_path):
    path = tmp_path / "nowhere.tsv"
    with pytest.raises(DatasetError, match=f"not found: {re.escape(str(path))}"):
        read_dataset(path)


def test_read_dataset_rejects_a_file_without_samples(write_tsv):
    path = write_tsv(["", "  "])
    with pytest.raises(DatasetError, match="no samples"):
        read_dataset(path)


# --- read_ratings ------------------------------------------------------------------------------


def rating_row(file, model, rating):
    return "\t".join((file, model, "prompt", "reference", "instruct", "response", rating))


def test_read_ratings_keeps_the_rows_of_the_model_and_strips_pkl(write_tsv):
    path = write_tsv([
        rating_row("user_oriented_task_0.pkl", "vicuna_7B", "4"),
        rating_row("user_oriented_task_0.pkl", "llama_7B", "1"),
        rating_row("lima_author_3.pkl", "vicuna_7B", "1.0"),
        rating_row("mtbench_2", "vicuna_7B", "-1"),
    ], name="ratings.tsv", header=RATINGS_HEADER)
    assert read_ratings(path, "vicuna_7B") == {"user_oriented_task_0": 4, "lima_author_3": 1, "mtbench_2": -1}
    assert read_ratings(path, "llama_7B") == {"user_oriented_task_0": 1}


def test_read_ratings_rejects_a_non_numeric_rating_naming_file_and_line(write_tsv):
    path = write_tsv([
        rating_row("a.pkl", "vicuna_7B", "3"),
        rating_row("b.pkl", "vicuna_7B", "good"),
    ], name="ratings.tsv", header=RATINGS_HEADER)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:3: Rating 'good' is not a number$"):
        read_ratings(path, "vicuna_7B")


def test_read_ratings_rejects_a_rating_above_four(write_tsv):
    path = write_tsv([rating_row("a.pkl", "vicuna_7B", "5")], name="ratings.tsv", header=RATINGS_HEADER)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:2: Rating 5 is not one of -1, 0, 1, 2, 3, 4 "):
        read_ratings(path, "vicuna_7B")


@pytest.mark.parametrize("rating", ["1.5", "0.5", "2.9", "-7", "-2"])
def test_read_ratings_rejects_a_rating_that_is_not_one_of_the_scale_instead_of_truncating_it(write_tsv, rating):
    """int(float(x)) once made 1.5 unfollowed, 0.5 unrated and -7 a rating: each moved a sample
    between Table 1's groups without a word."""
    path = write_tsv([rating_row("a.pkl", "vicuna_7B", "3"), rating_row("b.pkl", "vicuna_7B", rating)],
                     name="ratings.tsv", header=RATINGS_HEADER)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:3: Rating {re.escape(rating)} is not one of "):
        read_ratings(path, "vicuna_7B")


def test_read_ratings_drops_white_space_around_a_file_name_as_the_dataset_does_around_an_id(write_tsv):
    """A stray space once made the rating name no sample: that sample counted as unrated, silently."""
    path = write_tsv([rating_row("a.pkl ", "vicuna_7B", "3"), rating_row(" b", "vicuna_7B", "2")],
                     name="ratings.tsv", header=RATINGS_HEADER)
    assert read_ratings(path, "vicuna_7B") == {"a": 3, "b": 2}


def test_read_ratings_drops_white_space_around_the_model_name_too(write_tsv):
    """`vicuna_7B ` once named no model: its unfollowed rating left Table 1 without a word."""
    path = write_tsv([rating_row("a", "vicuna_7B", "3"), rating_row("b", "vicuna_7B ", "1")],
                     name="ratings.tsv", header=RATINGS_HEADER)
    assert read_ratings(path, "vicuna_7B") == {"a": 3, "b": 1}


def test_read_ratings_rejects_an_infinite_rating_naming_file_and_line(write_tsv):
    path = write_tsv([rating_row("a.pkl", "vicuna_7B", "inf")], name="ratings.tsv", header=RATINGS_HEADER)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:2: Rating 'inf' is not a number$"):
        read_ratings(path, "vicuna_7B")


def test_read_ratings_rejects_a_file_without_the_model(write_tsv):
    path = write_tsv([rating_row("a.pkl", "llama_7B", "3")], name="ratings.tsv", header=RATINGS_HEADER)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: no ratings for the model 'vicuna_7B'"):
        read_ratings(path, "vicuna_7B")


def test_read_ratings_rejects_a_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="ratings file not found"):
        read_ratings(tmp_path / "ratings.tsv", "vicuna_7B")


# --- dataset_group -------------------------------------------------------------------------------

GROUPS = {"user_": "user", "user_oriented_task_": "self_instruct", "lima_author_": "lima"}


def test_dataset_group_takes_the_longest_matching_prefix():
    assert dataset_group("user_oriented_task_12", GROUPS) == "self_instruct"
    assert dataset_group("user_study_1", GROUPS) == "user"
    assert dataset_group("lima_author_3", GROUPS) == "lima"


def test_dataset_group_of_an_unknown_prefix_is_other():
    assert dataset_group("mtbench_1", GROUPS) == "other"
    assert dataset_group("mtbench_1", {}) == "other"


# --- shard_samples / Sample.digest ---------------------------------------------------------------


def make_samples(n):
    return [Sample(f"s{i}", f"Prompt {i}.", f"Response {i}.", f"Prompt {i}.", i + 2) for i in range(n)]


def ids(shards):
    return [[s.id for s in shard] for shard in shards]


def test_shard_samples_are_consecutive_blocks_in_file_order():
    assert ids(shard_samples(make_samples(5), 2)) == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    assert ids(shard_samples(make_samples(2), 5)) == [["s0", "s1"]]
    assert shard_samples([], 3) == []


def test_appending_a_sample_changes_only_the_last_shard():
    before, after = shard_samples(make_samples(5), 2), shard_samples(make_samples(6), 2)
    assert after[:-1] == before[:-1]
    assert ids(after) == [["s0", "s1"], ["s2", "s3"], ["s4", "s5"]]
    # when the last shard is full, appending adds a shard and changes none
    before, after = shard_samples(make_samples(4), 2), shard_samples(make_samples(5), 2)
    assert after[:2] == before and ids(after[2:]) == [["s4"]]


def test_sample_digest_changes_when_any_field_changes_but_not_with_the_line():
    sample = Sample("s1", "Do it.", "Done.", "Do it.", 2)
    digest = sample.digest()
    assert len(digest) == 16 and int(digest, 16) >= 0
    for change in ({"id": "s2"}, {"prompt": "Do it!"}, {"response": "Done!"}, {"annotation": "Do it.&&&"}):
        assert dataclasses.replace(sample, **change).digest() != digest, change
    assert dataclasses.replace(sample, line=99).digest() == digest


def test_sample_digest_tells_apart_text_moved_between_fields():
    assert Sample("s", "ab", "c", "", 2).digest() != Sample("s", "a", "bc", "", 2).digest()


# --- bad bytes and empty instructions (issue 10) ------------------------------------------------


def test_a_byte_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(
        "ID\tPrompt\tResponse\tInstruct&Context\n".encode()
        + b"a_1\tSay hi.\tHi.\tSay hi.\n"
        + b"a_2\tSay \xff ho.\tHo.\tSay\n"
    )
    with pytest.raises(DatasetError, match=r"bad.tsv:3: not UTF-8 \(byte 0xff at byte 9 of the line\)"):
        read_dataset(path)


def test_a_byte_order_mark_before_the_header_is_dropped(tmp_path):
    path = tmp_path / "bom.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + "ID\tPrompt\tResponse\tInstruct&Context\na_1\tSay hi.\tHi.\tSay hi.\n".encode())
    assert [s.id for s in read_dataset(path)] == ["a_1"]


@pytest.mark.parametrize("sample_id, reason", [
    ("a\r1", "a control character"),
    ("x" * 201, "longer than 200 bytes"),
])
def test_read_dataset_rejects_an_id_that_cannot_name_a_file_everywhere(write_tsv, sample_id, reason):
    """Ids name each sample's heatmap files: a carriage return or 300 characters failed only in the heatmap job."""
    path = write_tsv([("a_1", "Say hi.", "Hi.", "Say hi."), (sample_id, "Go.", "Ok.", "Go.")])
    with pytest.raises(DatasetError, match=rf"dataset.tsv:3: ID .* is not a plain file name \({reason}"):
        read_dataset(path)


def test_read_dataset_rejects_ids_that_differ_only_in_case_or_unicode_form(write_tsv):
    """`A1` and `a1` overwrite each other's heatmaps on a case-insensitive filesystem (macOS, Windows)."""
    path = write_tsv([("A1", "Say hi.", "Hi.", "Say hi."), ("a1", "Go.", "Ok.", "Go.")])
    with pytest.raises(DatasetError, match=r"dataset.tsv:3: ID 'a1' names the same file as 'A1' \(line 2\)"):
        read_dataset(path)
    path = write_tsv([("caf\u00e9", "Say hi.", "Hi.", "Say hi."), ("cafe\u0301", "Go.", "Ok.", "Go.")])
    with pytest.raises(DatasetError, match=r"dataset.tsv:3: ID .* names the same file as"):
        read_dataset(path)


@pytest.mark.parametrize("annotation", ["", "&&&Some context.", "|||&&&x", "   "])
def test_a_sample_without_an_instruction_is_refused_naming_it(write_tsv, annotation):
    path = write_tsv([("a_1", "Say hi.", "Hi.", "Say hi."), ("a_2", "Some context.", "Ok.", annotation)])
    with pytest.raises(DatasetError, match=r"dataset.tsv:3: no instruction in Instruct&Context for 'a_2'"):
        read_dataset(path)


def test_a_sample_whose_instruction_is_only_an_input_label_is_refused_naming_it(write_tsv):
    """The `Input:` opening a sentence is not instruction (the paper's `annotate` drops it): a sample whose
    fragments lie only in such a label marks no prompt token and would score 0 without saying so."""
    path = write_tsv([("a_1", "Say hi.", "Hi.", "Say hi."), ("a_2", "Translate./nInput: hello", "x", "Input:")])
    with pytest.raises(DatasetError, match=r"dataset.tsv:3: sample 'a_2': its instruction .* marks no prompt text"):
        read_dataset(path)
    # beside a real instruction the label is harmless, as in 161 of the paper's samples
    write_tsv([("a_2", "Translate./nInput: hello", "x", "Translate.|||Input:")])
    assert [s.id for s in read_dataset(path)] == ["a_2"]


def test_an_instruction_fragment_missing_from_its_prompt_names_the_file_and_line(write_tsv):
    path = write_tsv([("a_1", "Say hi.", "Hi.", "Say hi."), ("a_2", "Do it.", "Ok.", "Do something else.")])
    with pytest.raises(DatasetError, match=r"dataset.tsv:3: sample a_2: instruction fragment 'Do something else.'"):
        read_dataset(path)


# --- fields and limits the tests above left open -------------------------------------------------


def test_read_dataset_decodes_the_response_field_like_the_prompt(write_tsv):
    """The response is what a reference run attributes: `/n` and `""` must reach it decoded."""
    path = write_tsv([("a_1", "Say hi.", '"He said ""hi""./nBye."', "Say hi.")])
    assert read_dataset(path)[0].response == 'He said "hi".\nBye.'


def test_read_dataset_drops_white_space_around_an_id(write_tsv):
    """Ids name heatmap files and released pickles: `a_1 ` must be the sample `a_1`."""
    path = write_tsv([(" a_1 ", "Say hi.", "Hi.", "Say hi.")])
    assert [s.id for s in read_dataset(path)] == ["a_1"]


def test_read_dataset_accepts_an_id_of_exactly_200_bytes(write_tsv):
    """The limit is MAX_ID_LENGTH bytes inclusive (100 two-byte characters fit, one more byte does not)."""
    path = write_tsv([("x" * 200, "Say hi.", "Hi.", "Say hi."), ("é" * 100, "Go.", "Ok.", "Go.")])
    assert [len(s.id.encode()) for s in read_dataset(path)] == [200, 200]


def test_read_ratings_rejects_a_second_rating_of_one_sample_by_the_same_model(write_tsv):
    """Two ratings of one response would silently keep the last; the file and both lines are named."""
    path = write_tsv([rating_row("a.pkl", "vicuna_7B", "3"), rating_row("a", "llama_7B", "1"),
                      rating_row("a", "vicuna_7B", "1")], name="ratings.tsv", header=RATINGS_HEADER)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:4: a second rating of a by vicuna_7B "
                                           r"\(first on line 2\)$"):
        read_ratings(path, "vicuna_7B")


def test_read_rated_returns_the_rated_responses_decoded(write_tsv):
    from workflow_scripts.dataset import read_rated

    row = "\t".join(("a.pkl", "vicuna_7B", "prompt", "reference", "instruct", '"Line ""one""./nLine two."', "4"))
    path = write_tsv([row], name="ratings.tsv", header=RATINGS_HEADER)
    assert read_rated(path, "vicuna_7B") == ({"a": 4}, {"a": 'Line "one".\nLine two.'})
