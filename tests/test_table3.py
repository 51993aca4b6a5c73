"""Table 3 (docs/design.md#table-3) against numbers computed by hand, and the verb lists it reads."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats
from welch import welch_t_df

from workflow_scripts.table3 import (
    FRAME_COLUMNS,
    head_knowledge,
    layer_groups,
    main,
    pair_key,
    read_bilinear_words,
    read_word_list,
    row_pair_keys,
    table3,
)
from workflow_scripts.tsv import BILINEAR_COLUMNS, PAIRS_COLUMNS, encode_pairs

REPO = Path(__file__).resolve().parents[1]
HEADER = "\t".join(BILINEAR_COLUMNS)
INSTRUCT = ["write", "explain", "give"]
GENERAL = ["run", "eat", "see"]


def welch_two_sided(x, y):
    """The two-sided Welch t-test: t, Welch-Satterthwaite df, p = 2 P(T <= -|t|)."""
    t, df = welch_t_df(x, y)
    return t, df, 2 * stats.t.cdf(-abs(t), df)


def row(model, layer, head, dim, topk):
    return "\t".join([model, "7B", str(layer), "QK", str(head), str(dim), str(dim + 1), "0.5", topk])


# Two models, 4 layers (so each group of layers is one layer), 2 heads, 3 dimensions per head.
# Per head: the pairs in more than one dimension row (the head-level knowledge) and each list
# word's count in each model (tuned v, pre-trained l).
TOPK = {
    # layer 0, head 0. tuned knowledge: code=write, explain=idea, fast=run, eat=food, see=view
    #   (dim 1's "Write=Code" and "idea=explain" are the same pairs as dim 0's; write=poem is in one
    #   dim only); pre-trained knowledge: gift=give, see=view (run=fast once: not knowledge).
    #   write 1>0 win, explain 1>0 win, give 0<1 loss, run 1>0 win, eat 1>0 win, see 1=1 skipped.
    ("tuned", 0, 0): ["code=write|||explain=idea|||run=fast|||see=view",
                      "Write=Code|||idea=explain|||eat=food|||see=view",
                      "run=fast|||food=eat|||write=poem"],
    ("pre", 0, 0): ["give=gift|||see=view", "gift=give|||view=see|||run=fast", ""],
    # layer 0, head 1. tuned: story=write, bread=eat; pre-trained: explain=why, run=walk, bread=eat.
    #   write 1>0 win, explain 0<1 loss, give 0=0, run 0<1 loss, eat 1=1 skipped, see 0=0.
    ("tuned", 0, 1): ["write=story|||eat=bread", "write=story|||eat=bread|||explain=why", "write=letter"],
    ("pre", 0, 1): ["explain=why|||run=walk|||eat=bread", "explain=why|||run=walk", "bread=eat|||write=story"],
    # layer 1, head 0. tuned: code=write, fast=run; pre-trained: nothing. write win, run win.
    ("tuned", 1, 0): ["write=code|||run=fast", "write=code|||run=fast", ""],
    ("pre", 1, 0): ["", "", ""],
    # layer 1, head 1. tuned: moon=sun; pre-trained: see=view, moon=sun. see 0<1 loss.
    ("tuned", 1, 1): ["sun=moon", "sun=moon", ""],
    ("pre", 1, 1): ["see=view", "sun=moon", "view=see|||sun=moon"],
    # layer 2: both models know the same: every count equal, every head skipped.
    ("tuned", 2, 0): ["write=code", "write=code", "write=code"],
    ("pre", 2, 0): ["write=code", "code=write", "write=code"],
    ("tuned", 2, 1): ["", "", ""],
    ("pre", 2, 1): ["", "", ""],
    # layer 3, head 0. tuned: gift=give, eat=food; pre-trained: eat=food (give=gift once).
    #   give 1>0 win, eat 1=1 skipped.
    ("tuned", 3, 0): ["give=gift|||eat=food", "give=gift|||eat=food", "give=gift"],
    ("pre", 3, 0): ["give=gift|||eat=food", "eat=food", "eat=food"],
    # layer 3, head 1: both know fast=run as often: run is equal, skipped.
    ("tuned", 3, 1): ["run=fast", "run=fast", "run=fast"],
    ("pre", 3, 1): ["fast=run", "run=fast", "run=fast"],
}


@pytest.fixture
def bilinear_words(tmp_path) -> Path:
    lines = [HEADER] + [row(model, layer, head, dim, topk)
                        for (model, layer, head), dims in TOPK.items() for dim, topk in enumerate(dims)]
    path = tmp_path / "bilinear_words.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    return path


# --- pairs and head-level knowledge ----------------------------------------------------------------


def test_canonical_pairs_are_lower_cased_then_sorted_once_per_row():
    assert pair_key(("B", "a"), "canonical") == pair_key(("a", "b"), "canonical") == ("a", "b")
    assert pair_key(("Write", "Code"), "canonical") == ("code", "write")
    assert row_pair_keys([("B", "a"), ("x", "Y"), ("a", "b")], "canonical") == [("a", "b"), ("x", "y")]
    assert row_pair_keys([], "canonical") == []


def test_paper_pairs_are_sorted_then_lower_cased_and_repeats_kept():
    """As analysis_bilinear_interpret.py: "=".join(sorted(p.split("="))).lower(), no deduplication."""
    assert pair_key(("B", "a"), "paper") == ("b", "a")  # "B" sorts before "a": apart from a=b
    assert pair_key(("a", "b"), "paper") == pair_key(("b", "a"), "paper") == ("a", "b")
    assert pair_key(("Write", "code"), "paper") == ("write", "code")
    # the script split the joined string at every "=": a word holding "=" becomes pieces
    assert pair_key(("class=", "name"), "paper") == ("", "class", "name")
    assert row_pair_keys([("a", "b"), ("b", "a"), ("B", "a")], "paper") == [("a", "b"), ("a", "b"), ("b", "a")]


@pytest.mark.parametrize("counting,expected", [
    # canonical: a=b in 3 dims, c=d and g=h in 2; e=f twice but in one row only
    ("canonical", {(0, 0): [("a", "b"), ("c", "d"), ("g", "h")], (0, 1): []}),
    # paper: e=f twice in one row counts twice; "B=a" is b=a, apart from a=b (then in 2 dims only)
    ("paper", {(0, 0): [("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")], (0, 1): []}),
])
def test_head_knowledge_is_the_pairs_counted_more_than_once(counting, expected):
    frame = pd.DataFrame(
        [("m", 0, 0, 0, [("a", "b"), ("c", "d"), ("e", "f"), ("e", "f")]), ("m", 0, 0, 1, [("B", "a"), ("g", "h")]),
         ("m", 0, 0, 2, [("h", "g"), ("c", "d"), ("a", "b")]),
         ("m", 0, 1, 0, [("a", "b")]), ("m", 0, 1, 1, []),
         ("other", 0, 0, 0, [("x", "y")]), ("other", 0, 0, 1, [("x", "y")])],
        columns=["Model", "Layer", "Head", "Dim", "pairs"],
    )
    assert head_knowledge(frame, "m", counting) == expected
    assert head_knowledge(frame, "other", counting) == {(0, 0): [("x", "y")]}


def test_read_bilinear_words_parses_numbers_and_pairs(bilinear_words):
    frame = read_bilinear_words(bilinear_words)
    assert list(frame.columns) == FRAME_COLUMNS
    assert len(frame) == sum(len(dims) for dims in TOPK.values())
    first = frame.iloc[0]
    assert (first.Model, first.Layer, first.Head, first.Dim, first.Rank, first.Score) == ("tuned", 0, 0, 0, 1, 0.5)
    assert frame.iloc[1].pairs == [("Write", "Code"), ("idea", "explain"), ("eat", "food"), ("see", "view")]
    expected = [("code", "write"), ("eat", "food"), ("explain", "idea"), ("fast", "run"), ("see", "view")]
    assert head_knowledge(frame, "tuned", "canonical")[(0, 0)] == expected


def test_the_lossless_file_reads_to_the_same_frame_and_keeps_separator_words(tmp_path, bilinear_words):
    paper = read_bilinear_words(bilinear_words)
    lines = ["\t".join(PAIRS_COLUMNS)] + [
        "\t".join([r.Model, r.Size, str(r.Layer), r.Type, str(r.Head), str(r.Dim), str(r.Rank), "0.5",
                   encode_pairs(r.pairs)]) for r in paper.itertuples()]
    lines.append("\t".join(["x", "7B", "0", "QK", "0", "0", "1", "0.5", encode_pairs([("|", "||"), ("a=b", "\t")])]))
    (tmp_path / "lossless.tsv").write_text("\n".join(lines) + "\n", encoding="utf8")
    lossless = read_bilinear_words(tmp_path / "lossless.tsv")
    pd.testing.assert_frame_equal(lossless.iloc[:-1], paper)
    assert lossless.iloc[-1].pairs == [("|", "||"), ("a=b", "\t")]


def test_released_paper_layout_is_counted_as_the_papers_script(tmp_path):
    """A crafted released file with both orientations of a pair in one dimension and case variants;
    the expected counts are the script's rule worked by hand, and the canonical rule's for contrast."""
    rows = [HEADER]
    # tuned (vicuna), layer 0 head 0: dim 0 holds write=code and code=write; dims 1 and 2 hold
    # Write=text and text=write (case variants). Pre-trained (llama): explain=why in dims 0 and 1.
    for model, dims in (("vicuna", ["write=code|||code=write", "Write=text", "text=write"]),
                        ("llama", ["explain=why", "explain=why", ""])):
        rows += [row(model, 0, 0, dim, topk) for dim, topk in enumerate(dims)]
    path = tmp_path / "released.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf8")
    frame = read_bilinear_words(path)
    # paper: code=write counted twice (in one row); "Write=text" sorts to Write,text -> "write=text", apart
    # from "text=write": each once. Knowledge: code=write. canonical: code=write once, text=write twice.
    assert head_knowledge(frame, "vicuna", "paper") == {(0, 0): [("code", "write")]}
    assert head_knowledge(frame, "vicuna", "canonical") == {(0, 0): [("text", "write")]}
    assert head_knowledge(frame, "llama", "paper") == head_knowledge(frame, "llama", "canonical") == {
        (0, 0): [("explain", "why")]}
    # instruct: write 1 > 0 wins under both rules, explain 0 < 1 loses: mean 0.5 of 2.
    # general: code 1 > 0 wins under the paper's rule; under the canonical rule 0 = 0, no score.
    paper = table3(frame, "llama", "vicuna", 1, ["write", "explain"], ["code"], counting="paper").iloc[0]
    canonical = table3(frame, "llama", "vicuna", 1, ["write", "explain"], ["code"], counting="canonical").iloc[0]
    assert (paper.instruct_n, paper.instruct_mean, paper.general_n, paper.general_mean) == (2, 0.5, 1, 1.0)
    assert (canonical.instruct_n, canonical.instruct_mean, canonical.general_n) == (2, 0.5, 0)


def test_a_paper_layout_field_is_split_as_the_script_split_it(tmp_path):
    """No escapes in the paper's files: `|||` splits wherever it occurs, a pair is cut at its first `=`."""
    path = tmp_path / "released.tsv"
    path.write_text(HEADER + "\n" + row("m", 0, 0, 0, "a==b|||\\|=c|||x=y|z") + "\n", encoding="utf8")
    assert read_bilinear_words(path).iloc[0].pairs == [("a", "=b"), ("\\|", "c"), ("x", "y|z")]


# --- Table 3 -----------------------------------------------------------------------------------------


def test_layer_groups_are_four_equal_ranges():
    assert layer_groups(32) == [(0, 0, 7), (1, 8, 15), (2, 16, 23), (3, 24, 31)]
    assert layer_groups(30) == [(0, 0, 7), (1, 8, 14), (2, 15, 22), (3, 23, 29)]
    assert layer_groups(4) == [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3)]
    assert layer_groups(2) == [(0, 0, 0), (2, 1, 1)]


def test_table3_has_the_design_columns(bilinear_words):
    table = table3(read_bilinear_words(bilinear_words), "pre", "tuned", 4, INSTRUCT, GENERAL)
    assert list(table.columns) == ["layers", "instruct_mean", "instruct_std", "instruct_n",
                                   "general_mean", "general_std", "general_n", "t", "p_value"]
    assert list(table["layers"]) == ["0-0", "1-1", "2-2", "3-3"]


def test_table3_scores_words_by_the_share_of_heads_where_the_tuned_model_knows_more(bilinear_words):
    table = table3(read_bilinear_words(bilinear_words), "pre", "tuned", 4, INSTRUCT, GENERAL).set_index("layers")
    g = table.loc["0-0"]
    # instruction verbs: write wins in both heads -> 1; explain wins in head 0, loses in head 1 -> 0.5;
    # give loses in head 0 and is equal (0 = 0) in head 1 -> 0.
    # Scores 1, 0.5, 0: mean 0.5, population std sqrt((0.25 + 0 + 0.25) / 3) = sqrt(1/6)
    assert g.instruct_n == 3
    assert g.instruct_mean == pytest.approx(0.5, abs=1e-12)
    assert g.instruct_std == pytest.approx(math.sqrt(1 / 6), abs=1e-12)
    # general verbs: run wins in head 0, loses in head 1 -> 0.5; eat wins in head 0, head 1 skipped
    # (1 = 1) -> 1; see is equal in both heads (1 = 1, 0 = 0) -> no score, not counted.
    # Scores 0.5, 1: mean 0.75, population std 0.25
    assert g.general_n == 2
    assert g.general_mean == pytest.approx(0.75, abs=1e-12)
    assert g.general_std == pytest.approx(0.25, abs=1e-12)
    # sample variances 0.5 / 2 = 0.25 and 0.125 / 1; se^2 = 0.25/3 + 0.125/2 = 7/48;
    # t = -0.25 / sqrt(7/48) = -sqrt(3/7); df = (7/48)^2 / ((1/12)^2 / 2 + (1/16)^2 / 1) = 49/17
    t, df, p = welch_two_sided([1.0, 0.5, 0.0], [0.5, 1.0])
    assert t == pytest.approx(-math.sqrt(3 / 7), abs=1e-12)
    assert df == pytest.approx(49 / 17, abs=1e-12)
    assert g.t == pytest.approx(t, abs=1e-9)
    assert g.p_value == pytest.approx(p, abs=1e-9)
    assert g.p_value == pytest.approx(0.5611509, abs=1e-7)


def test_table3_gives_nan_t_and_p_when_a_list_has_fewer_than_two_scores(bilinear_words):
    table = table3(read_bilinear_words(bilinear_words), "pre", "tuned", 4, INSTRUCT, GENERAL).set_index("layers")
    g = table.loc["1-1"]
    # write wins (1); explain and give never differ. run wins (1), see loses (0), eat never differs.
    assert (g.instruct_n, g.instruct_mean, g.instruct_std) == (1, 1.0, 0.0)
    assert (g.general_n, g.general_mean, g.general_std) == (2, 0.5, 0.5)
    assert math.isnan(g.t) and math.isnan(g.p_value)


def test_table3_skips_heads_with_equal_counts_and_leaves_out_words_with_no_differing_head(bilinear_words):
    table = table3(read_bilinear_words(bilinear_words), "pre", "tuned", 4, INSTRUCT, GENERAL).set_index("layers")
    g = table.loc["2-2"]
    # both models know code=write in layer 2: every count equal, no word has a score
    assert (g.instruct_n, g.general_n) == (0, 0)
    stats_columns = ["instruct_mean", "instruct_std", "general_mean", "general_std", "t", "p_value"]
    assert all(math.isnan(g[c]) for c in stats_columns)


def test_table3_in_layer_3_counts_give_and_no_general_verb(bilinear_words):
    table = table3(read_bilinear_words(bilinear_words), "pre", "tuned", 4, INSTRUCT, GENERAL).set_index("layers")
    g = table.loc["3-3"]
    # give wins in head 0; eat is equal there, run equal in head 1
    assert (g.instruct_n, g.instruct_mean) == (1, 1.0)
    assert g.general_n == 0


@pytest.mark.parametrize("missing", [("pre", 3, 1, 2), ("tuned", 0, 1, 0), ("pre", 2, 0, 1)])
def test_a_head_dimension_missing_for_one_model_is_named_not_skipped(tmp_path, bilinear_words, missing):
    """The released file comes in 23 pieces to join: a piece left out removed rows, and Table 3 was
    computed on the heads and dimensions that were left, without a word (a mean moved by 0.19)."""
    model, layer, head, dim = missing
    lines = bilinear_words.read_text(encoding="utf8").splitlines()
    cut = tmp_path / "cut.tsv"
    gone = row(model, layer, head, dim, TOPK[model, layer, head][dim])
    cut.write_text("\n".join(line for line in lines if line != gone) + "\n", encoding="utf8")
    other = "tuned" if model == "pre" else "pre"
    with pytest.raises(ValueError, match=rf"^{cut}: model {model} has no row of layer {layer} head {head} dimension "
                                         rf"{dim}, which model {other} has \(the bilinear words of the two models must "
                                         "cover the same layers, heads and dimensions"):
        table3(read_bilinear_words(cut), "pre", "tuned", 4, INSTRUCT, GENERAL)


def test_a_layer_missing_from_both_models_is_named(tmp_path, bilinear_words):
    """A layer count above the file's once split the layers into the wrong four groups, silently."""
    with pytest.raises(ValueError, match=rf"^{bilinear_words}: no row of layer 4 \(expected layers 0\.\.5"):
        table3(read_bilinear_words(bilinear_words), "pre", "tuned", 6, INSTRUCT, GENERAL)


def test_table3_word_lists_are_case_insensitive_and_deduplicated(bilinear_words):
    frame = read_bilinear_words(bilinear_words)
    plain = table3(frame, "pre", "tuned", 4, INSTRUCT, GENERAL)
    noisy = table3(frame, "pre", "tuned", 4, ["Write", "explain", "give", "write"], ["RUN", "eat", "see", "eat"])
    pd.testing.assert_frame_equal(plain, noisy)


# --- errors --------------------------------------------------------------------------------------------


def test_a_malformed_row_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text(HEADER + "\n" + row("m", 0, 0, 0, "a=b") + "\n" + "m\t7B\t0\tQK\t0\t1\t2\t0.5\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 3: expected 9 tab-separated fields .* found 8"):
        read_bilinear_words(path)
    path.write_text(HEADER + "\n" + row("m", "zero", 0, 0, "a=b") + "\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 2: Layer must be a number, found 'zero'"):
        read_bilinear_words(path)
    # the message named the last integer column and its value for a bad Score ("Rank ... found 1")
    path.write_text(HEADER + "\n" + row("m", 0, 0, 0, "a=b").replace("0.5", "abc") + "\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 2: Score must be a number, found 'abc'"):
        read_bilinear_words(path)
    path.write_text(HEADER + "\n" + row("m", 0, 0, 0, "a=b") + "\n" + row("m", 0, 0, 0, "c=d") + "\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 3: model m layer 0 head 0 dimension 0 repeats line 2"):
        read_bilinear_words(path)


def test_a_wrong_header_names_the_file(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("Model\tLayer\tHead\tTopK\nm\t0\t0\ta=b\n")
    expected = r"bad\.tsv: line 1: expected the header 'Model Size Layer .* or .*Pairs' \(lossless\)"
    with pytest.raises(ValueError, match=expected):
        read_bilinear_words(path)


def test_a_repeated_header_line_is_skipped(tmp_path, bilinear_words):
    lines = bilinear_words.read_text().splitlines()
    joined = tmp_path / "joined.tsv"
    joined.write_text("\n".join(lines[:5] + [HEADER] + lines[5:]) + "\n")
    pd.testing.assert_frame_equal(read_bilinear_words(joined), read_bilinear_words(bilinear_words))


def test_a_missing_model_is_named_with_the_models_present(bilinear_words):
    frame = read_bilinear_words(bilinear_words)
    missing = r"model 'vicuna' is not in the bilinear words; models present: \['pre', 'tuned'\]"
    with pytest.raises(ValueError, match=missing):
        table3(frame, "pre", "vicuna", 4, INSTRUCT, GENERAL)
    with pytest.raises(ValueError, match="model 'llama'"):
        head_knowledge(frame, "llama")


def test_a_layer_beyond_the_layer_count_is_an_error(bilinear_words):
    with pytest.raises(ValueError, match=r"layer 2 .* outside 0\.\.1"):
        table3(read_bilinear_words(bilinear_words), "pre", "tuned", 2, INSTRUCT, GENERAL)


def test_a_verb_list_saved_with_a_byte_order_mark_and_crlf_reads_every_verb(tmp_path):
    """A spreadsheet's export: the mark was glued to the first verb, which then matched no pair."""
    path = tmp_path / "instruct.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(INSTRUCT).encode() + b"\r\n")
    assert read_word_list(path) == INSTRUCT
    path.write_bytes(b"write\nexpl\xe4in\n")
    with pytest.raises(ValueError, match=r"instruct\.txt:2: not UTF-8"):
        read_word_list(path)


# --- command line ----------------------------------------------------------------------------------------


def test_cli_writes_the_table_and_its_markdown_twin(tmp_path, bilinear_words):
    (tmp_path / "instruct.txt").write_text("\n".join(INSTRUCT) + "\n\n")
    (tmp_path / "general.txt").write_text("\n".join(GENERAL) + "\n")
    assert read_word_list(tmp_path / "instruct.txt") == INSTRUCT
    output = tmp_path / "tables" / "pair" / "table3.tsv"
    main(["--bilinear-words", str(bilinear_words), "--pretrained", "pre", "--tuned", "tuned",
          "--layers", "4", "--instruct", str(tmp_path / "instruct.txt"),
          "--general", str(tmp_path / "general.txt"), "--output", str(output)])
    back = pd.read_csv(output, sep="\t")
    assert list(back["layers"]) == ["0-0", "1-1", "2-2", "3-3"]
    assert back.loc[0, "instruct_mean"] == pytest.approx(0.5) and back.loc[0, "general_n"] == 2
    title = output.with_suffix(".md").read_text().splitlines()[0]
    assert title.startswith("# Table 3") and title.endswith("(fidelity: paper)")
    main(["--bilinear-words", str(bilinear_words), "--pretrained", "pre", "--tuned", "tuned", "--counting", "canonical",
          "--layers", "4", "--instruct", str(tmp_path / "instruct.txt"),
          "--general", str(tmp_path / "general.txt"), "--output", str(output)])
    title = output.with_suffix(".md").read_text().splitlines()[0]
    assert "once per dimension" in title and title.endswith("(fidelity: canonical)")


# --- the verb lists ----------------------------------------------------------------------------------------


def _verb_script():
    spec = importlib.util.spec_from_file_location("make_verb_lists", REPO / "scripts" / "make_verb_lists.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # needs neither nltk nor wordfreq at import
    return module


def test_the_verb_lists_are_the_papers():
    script = _verb_script()
    instruct = read_word_list(REPO / "datasets" / "verbs" / "instruction_verbs.txt")
    general = read_word_list(REPO / "datasets" / "verbs" / "general_verbs.txt")

    # the union of the paper's two lists (29 + 16 words, 7 in both), sorted
    assert instruct == sorted(set(script.INSTRUCT1) | set(script.INSTRUCT2))
    assert len(instruct) == 38 and "write" in instruct and "have" in instruct

    assert len(general) == 3000 == len(set(general))
    assert not set(general) & set(instruct)
    assert len(script.STOPWORDS_EN) == 179
    assert not set(general) & set(script.STOPWORDS_EN)
    assert "be" not in general and "do" not in general
    assert all(w == w.lower() and w.strip() == w and w for w in general)
    # most frequent first: common verbs lead the list
    assert {"get", "go"} <= set(general[:10])
    assert {"know", "see", "think", "take"} <= set(general[:20])


# --- the released recipe of config/paper-released.yaml, through Snakemake ----------------------------------


@pytest.mark.workflow
def test_the_released_table3_recipe_of_the_paper_config_runs_offline_as_its_comment_says(tmp_path):
    """Uncommenting the config's `attention.released` block (its path made ours) must plan and run
    Table 3 offline: it once stopped at planning, the models' layer count unknown without config.json."""
    from test_workflow import copy_workflow, snakemake

    work = copy_workflow(tmp_path)
    text = (work / "config/paper-released.yaml").read_text(encoding="utf8")
    block = text[text.index("\n# attention:\n") + 1:]
    released = tmp_path / "bilinear_words.tsv"
    text = text.replace(block, "".join(line.removeprefix("# ") + "\n" for line in block.splitlines())
                        .replace("/path/to/bilinear_words.tsv", str(released)))
    (work / "config/paper-released.yaml").write_text(text, encoding="utf8")
    # the released layout, 32 layers of one head of two dimensions; vicuna knows write=code in layers 0-7
    rows = [HEADER] + [row(model, layer, 0, dim, "write=code" if model == "vicuna" and layer < 8 else "")
                       for model in ("llama", "vicuna") for layer in range(32) for dim in range(2)]
    released.write_text("\n".join(rows) + "\n", encoding="utf8")
    snakemake(work, "table3", "--configfile", "config/paper-released.yaml")
    table = pd.read_csv(work / "results/tables/llama-vicuna/table3.tsv", sep="\t")
    assert table["layers"].tolist() == ["0-7", "8-15", "16-23", "24-31"]
    assert (table["instruct_n"].tolist(), table["instruct_mean"].iloc[0]) == ([1, 0, 0, 0], 1.0)
