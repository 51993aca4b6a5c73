"""Tables 1 and 2 (docs/design.md#tables-1-and-2) against numbers computed by hand."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from welch import welch_t_df

from workflow_scripts.dataset import DatasetError
from workflow_scripts.released import convert_released
from workflow_scripts.shards import SampleAttribution, Shard, save_shard
from workflow_scripts.table1_2 import arithmetic_note, empty_response_note, instruction_scores, main, table1, table2
from workflow_scripts.table_files import cell_text, markdown_cells, write_table

GROUPS = {"user_oriented_task_": "self_instruct", "lima_author_": "lima", "mtbench_": "mtbench"}
ANALYSIS = {"levels": 10, "threshold": 7, "p": 4}
SCORE_COLUMNS = ["id", "group", "score", "response_tokens", "instruction_tokens"]


def welch_less(x, y):
    """The one-sided Welch test: t, Welch-Satterthwaite df, p = P(T <= t)."""
    t, df = welch_t_df(x, y)
    return t, df, stats.t.cdf(t, df)


# --- Table 1 -----------------------------------------------------------------------------------

SCORES = pd.DataFrame(
    [
        ("user_oriented_task_0", "self_instruct", 0.2, 10, 3),
        ("user_oriented_task_1", "self_instruct", 0.4, 10, 3),
        ("user_oriented_task_2", "self_instruct", 0.3, 5, 3),    # exactly min_response_tokens: kept
        ("user_oriented_task_3", "self_instruct", 0.9, 10, 3),
        ("user_oriented_task_4", "self_instruct", 0.5, 10, 3),
        ("user_oriented_task_5", "self_instruct", 1.3, 10, 3),
        ("user_oriented_task_6", "self_instruct", 1.1, 10, 3),
        ("user_oriented_task_7", "self_instruct", 5.0, 4, 3),    # too short: dropped
        ("user_oriented_task_8", "self_instruct", 9.0, 10, 3),   # rating 0: dropped
        ("user_oriented_task_9", "self_instruct", 9.0, 10, 3),   # rating -1: dropped
        ("user_oriented_task_10", "self_instruct", 9.0, 10, 3),  # not rated at all: dropped
        ("lima_author_0", "lima", 0.5, 20, 2),
        ("lima_author_1", "lima", 0.8, 20, 2),
        ("lima_author_2", "lima", 0.6, 20, 2),
        ("other_0", "other", 0.1, 20, 1),
        ("other_1", "other", 0.2, 20, 1),
    ],
    columns=SCORE_COLUMNS,
)
RATINGS = {
    "user_oriented_task_0": 1, "user_oriented_task_1": 1, "user_oriented_task_2": 1,
    "user_oriented_task_3": 2, "user_oriented_task_4": 3, "user_oriented_task_5": 4, "user_oriented_task_6": 4,
    "user_oriented_task_7": 4, "user_oriented_task_8": 0, "user_oriented_task_9": -1,
    "lima_author_0": 1, "lima_author_1": 2, "lima_author_2": 3,
    "other_0": 4, "other_1": 2,
    "mtbench_0": 3,  # a rating without a score is ignored
}


def test_table1_has_the_design_columns():
    table = table1(SCORES, RATINGS, min_response_tokens=5)
    assert list(table.columns) == ["dataset", "n_unfollowed", "n_followed", "mean_unfollowed",
                                   "std_unfollowed", "mean_followed", "std_followed", "t", "p_value"]


def test_table1_compares_unfollowed_with_pooled_followed_ratings_by_group():
    table = table1(SCORES, RATINGS, min_response_tokens=5).set_index("dataset")
    # groups in order of first appearance in the scores; mtbench has no rated scores and no row
    assert list(table.index) == ["self_instruct", "lima", "other"]

    si = table.loc["self_instruct"]
    # unfollowed (rating 1): 0.2 0.4 0.3 -> mean 0.3, population std sqrt((0.01 + 0.01 + 0) / 3)
    # followed (ratings 2, 3, 4, 4): 0.9 0.5 1.3 1.1 -> mean 0.95,
    #   population std sqrt((0.0025 + 0.2025 + 0.1225 + 0.0225) / 4) = sqrt(0.0875)
    assert (si.n_unfollowed, si.n_followed) == (3, 4)
    assert si.mean_unfollowed == pytest.approx(0.3)
    assert si.std_unfollowed == pytest.approx(0.0816497, abs=1e-7)
    assert si.mean_followed == pytest.approx(0.95)
    assert si.std_followed == pytest.approx(0.2958040, abs=1e-7)
    # sample variances 0.01 and 0.35 / 3: t = -0.65 / sqrt(0.01/3 + 0.35/12) = -3.605551,
    # df = 0.0325^2 / ((0.01/3)^2 / 2 + (0.35/12)^2 / 3) = 3.653323
    t, df, p = welch_less([0.2, 0.4, 0.3], [0.9, 0.5, 1.3, 1.1])
    assert t == pytest.approx(-3.605551, abs=1e-6)
    assert df == pytest.approx(3.653323, abs=1e-6)
    assert si.t == pytest.approx(t, rel=1e-9)
    assert si.p_value == pytest.approx(p, rel=1e-9)
    assert si.p_value == pytest.approx(0.0132002, abs=1e-7)


def test_table1_gives_nan_t_and_p_for_a_side_with_fewer_than_two_values():
    table = table1(SCORES, RATINGS, min_response_tokens=5).set_index("dataset")
    lima = table.loc["lima"]
    # one unfollowed (0.5), two followed (0.8, 0.6)
    assert (lima.n_unfollowed, lima.n_followed) == (1, 2)
    assert lima.mean_unfollowed == pytest.approx(0.5) and lima.std_unfollowed == 0.0
    assert lima.mean_followed == pytest.approx(0.7) and lima.std_followed == pytest.approx(0.1)
    assert math.isnan(lima.t) and math.isnan(lima.p_value)
    other = table.loc["other"]
    # nothing unfollowed: n 0, mean and std NaN
    assert (other.n_unfollowed, other.n_followed) == (0, 2)
    assert math.isnan(other.mean_unfollowed) and math.isnan(other.std_unfollowed)
    assert math.isnan(other.t) and math.isnan(other.p_value)


def test_table1_minimum_response_length_is_a_parameter():
    table = table1(SCORES, RATINGS, min_response_tokens=4).set_index("dataset")
    # user_oriented_task_7 (4 tokens, rating 4, score 5.0) now counts as followed
    assert table.loc["self_instruct", "n_followed"] == 5
    assert table.loc["self_instruct", "mean_followed"] == pytest.approx((0.9 + 0.5 + 1.3 + 1.1 + 5.0) / 5)


# --- Table 2 -------------------------------------------------------------------------------------


def scores_frame(rows):
    return pd.DataFrame([(i, g, s, 10, 2) for i, g, s in rows], columns=SCORE_COLUMNS)


PRETRAINED = scores_frame([
    ("user_oriented_task_0", "self_instruct", 0.2), ("user_oriented_task_1", "self_instruct", 0.4),
    ("user_oriented_task_2", "self_instruct", 0.3), ("user_oriented_task_3", "self_instruct", 0.5),
    ("lima_author_0", "lima", 0.7),
])
TUNED = scores_frame([
    ("lima_author_0", "lima", 0.9),
    ("user_oriented_task_3", "self_instruct", 1.1), ("user_oriented_task_2", "self_instruct", 1.3),
    ("user_oriented_task_1", "self_instruct", 0.5), ("user_oriented_task_0", "self_instruct", 0.9),
])


def test_table2_has_the_design_columns():
    assert list(table2(PRETRAINED, TUNED).columns) == [
        "dataset", "n", "mean_pretrained", "std_pretrained", "mean_tuned", "std_tuned", "t", "p_value",
    ]


def test_table2_compares_pretrained_with_tuned_scores_by_group():
    table = table2(PRETRAINED, TUNED).set_index("dataset")
    assert list(table.index) == ["self_instruct", "lima"]
    si = table.loc["self_instruct"]
    # pre-trained 0.2 0.4 0.3 0.5: mean 0.35, population std sqrt(0.05 / 4) = 0.111803
    # tuned 0.9 0.5 1.3 1.1: mean 0.95, population std sqrt(0.35 / 4) = 0.295804
    assert si.n == 4
    assert si.mean_pretrained == pytest.approx(0.35)
    assert si.std_pretrained == pytest.approx(0.1118034, abs=1e-7)
    assert si.mean_tuned == pytest.approx(0.95)
    assert si.std_tuned == pytest.approx(0.2958040, abs=1e-7)
    # sample variances 0.05/3 and 0.35/3: t = -0.6 / sqrt(0.4/12) = -3.286335; df = 3.84
    t, df, p = welch_less([0.2, 0.4, 0.3, 0.5], [0.9, 0.5, 1.3, 1.1])
    assert t == pytest.approx(-3.286335, abs=1e-6)
    assert df == pytest.approx(3.84, abs=1e-9)
    assert si.t == pytest.approx(t, rel=1e-9)
    assert si.p_value == pytest.approx(p, rel=1e-9)
    assert si.p_value == pytest.approx(0.0161016, abs=1e-7)


def test_table2_gives_nan_t_and_p_for_a_group_of_one_sample():
    lima = table2(PRETRAINED, TUNED).set_index("dataset").loc["lima"]
    assert lima.n == 1
    assert lima.mean_pretrained == pytest.approx(0.7) and lima.mean_tuned == pytest.approx(0.9)
    assert lima.std_pretrained == 0.0 and lima.std_tuned == 0.0
    assert math.isnan(lima.t) and math.isnan(lima.p_value)


# --- write_table ---------------------------------------------------------------------------------


def test_a_table_that_fails_while_being_written_leaves_no_file(tmp_path):
    """A job killed or failing mid-write must not leave a half table that looks finished."""
    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot print")

    rows = [("a", 1.0)] * 5000 + [("b", Unprintable())]
    tsv = tmp_path / "table1.tsv"
    with pytest.raises(RuntimeError, match="cannot print"):
        write_table(pd.DataFrame(rows, columns=["dataset", "mean"]), tsv, "Table 1")
    assert list(tmp_path.iterdir()) == []


def test_write_table_writes_the_tsv_and_a_markdown_twin(tmp_path):
    table = pd.DataFrame(
        [("self_instruct", 4, 0.35, 0.111803, 0.95, 0.295804, -3.286335, 0.0161016),
         ("lima", 1, 0.7, 0.0, 0.9, 0.0, float("nan"), 1.8e-5)],
        columns=["dataset", "n", "mean_pretrained", "std_pretrained", "mean_tuned", "std_tuned", "t", "p_value"],
    )
    tsv = tmp_path / "tables" / "pair" / "table2.tsv"
    write_table(table, tsv, "Table 2")

    # six significant digits, NaN as an empty cell
    assert tsv.read_text().splitlines() == [
        "dataset\tn\tmean_pretrained\tstd_pretrained\tmean_tuned\tstd_tuned\tt\tp_value",
        "self_instruct\t4\t0.35\t0.111803\t0.95\t0.295804\t-3.28633\t0.0161016",
        "lima\t1\t0.7\t0\t0.9\t0\t\t1.8e-05",
    ]
    back = pd.read_csv(tsv, sep="\t")
    assert list(back.columns) == list(table.columns)
    assert math.isnan(back["t"].iloc[1])

    lines = tsv.with_suffix(".md").read_text().splitlines()
    assert lines[0] == "# Table 2"
    assert lines[2] == "| dataset | n | mean_pretrained | std_pretrained | mean_tuned | std_tuned | t | p_value |"
    assert lines[3] == "|" + "---|" * 8
    assert lines[4] == "| self_instruct | 4 | 0.3500 | 0.1118 | 0.9500 | 0.2958 | -3.2863 | 0.0161 |"
    assert lines[5] == "| lima | 1 | 0.7000 | 0.0000 | 0.9000 | 0.0000 | n/a | 1.8e-05 |"


@pytest.mark.parametrize("text", ["C:\\tmp", "a\\|b", "ends in \\", "\\\\", "a|b", "x & <y>"])
def test_markdown_cells_read_back_any_text_with_backslashes_and_pipes_exactly(tmp_path, text):
    """The report page's cells come from the Markdown twin: a backslash must survive the round trip, also
    one before a `|` (escaped alone, `a\\|b` would read back as `a\\` and split the row)."""
    write_table(pd.DataFrame([(text, 1.0)], columns=["word", "score"]), tmp_path / "t.tsv", "T")
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert markdown_cells(lines[2]) == ["word", "score"]
    assert markdown_cells(lines[4]) == [text, "1.0000"]


def test_numpy_floats_are_printed_like_python_floats_and_nan_as_n_a():
    """An object column (a total row's "" beside numbers) keeps numpy scalars as they are: float32 ones too."""
    assert cell_text(np.float32(0.25)) == cell_text(0.25) == "0.2500"
    assert cell_text(np.float32("nan")) == "n/a"
    assert cell_text(np.float32(2e-5)) == "2e-05"


# --- instruction_scores ------------------------------------------------------------------------


def attribution(sample_id, prompt, tokens, offsets, matrix):
    matrix = np.asarray(matrix, dtype=np.float32).reshape(len(tokens), -1)
    m = matrix.shape[1]
    return SampleAttribution(sample_id, prompt, "r" * m, tokens, np.array(offsets).reshape(-1, 2),
                             ["▁r"] * m, np.array([[j, j + 1] for j in range(m)]).reshape(-1, 2), matrix)


def tiny_shard():
    return Shard([
        # <s> ▁Be ▁brief . ▁Say ▁hi . ; binned (L 10, b 7): Be [10, 0], brief [10, 10], "." [0, 10]
        # ("-0.5" clipped, 0.95 -> 10), Say [0, 10] (0.5 -> 5 -> 0)
        attribution("user_oriented_task_0", "Be brief. Say hi.",
                    ["<s>", "▁Be", "▁brief", ".", "▁Say", "▁hi", "."],
                    [[0, 0], [0, 2], [2, 8], [8, 9], [9, 13], [13, 16], [16, 17]],
                    [[0, 0], [1, 0], [1, 1], [-0.5, 0.95], [0.5, 1], [0, 0], [0, 0]]),
        attribution("lima_author_1", "Hi.", ["▁Hi", "."], [[0, 2], [2, 3]], [[1.0], [0.5]]),
        attribution("mtbench_1", "Go.", ["▁Go", "."], [[0, 2], [2, 3]], np.zeros((2, 0))),
        attribution("zzz_1", "Stop now!", ["▁Stop", "▁now", "!"], [[0, 4], [4, 8], [8, 9]], [[2.0], [1.0], [0.0]]),
    ], {"model": "demo", "binned_levels": 0})


DATASET_ROWS = [
    ("user_oriented_task_0", "Be brief. Say hi.", "ok", "Be brief.&&&Say hi."),
    ("lima_author_1", "Hi.", "ok", "Hi."),
    ("mtbench_1", "Go.", "ok", "Go."),
    ("zzz_1", "Stop now!", "ok", "Stop now!"),
]


def test_instruction_scores_of_a_tiny_shard_match_the_hand_computation(tmp_path, write_tsv):
    save_shard(tiny_shard(), tmp_path / "demo.npz")
    scores = instruction_scores(tmp_path / "demo.npz", write_tsv(DATASET_ROWS), GROUPS, ANALYSIS)
    assert list(scores.columns) == SCORE_COLUMNS
    assert scores["id"].tolist() == ["user_oriented_task_0", "lima_author_1", "mtbench_1", "zzz_1"]
    assert scores["group"].tolist() == ["self_instruct", "lima", "mtbench", "other"]
    assert scores["response_tokens"].tolist() == [2, 1, 0, 1]
    # instruction sentence "Be brief." (0, 9): ▁Be ▁brief . ; ▁Say starts at 9 and is not marked
    assert scores["instruction_tokens"].tolist() == [3, 2, 2, 3]
    expected = [
        # densities Be 1, brief 2^(3/4), "." 1, Say 1; / 2^(3/4) -> 2^(-3/4) = 0.594604 and 1;
        # (0.594604 + 1 + 0.594604) / log2(5) = 2.189207 / 2.321928
        0.9428402,
        # binned [10], [0] -> densities 1, 0: 1 / log2(4)
        0.5,
        # empty response: densities 0
        0.0,
        # binned [10], [0], [0]: 1 / log2(5)
        0.4306766,
    ]
    assert scores["score"].tolist() == pytest.approx(expected, abs=1e-7)


def test_instruction_scores_rejects_a_dataset_sample_without_attribution(tmp_path, write_tsv):
    save_shard(tiny_shard(), tmp_path / "demo.npz")
    dataset = write_tsv(DATASET_ROWS + [("lima_author_9", "Extra.", "ok", "Extra.")])
    with pytest.raises(ValueError, match=r"1 samples without attribution \['lima_author_9'\]"):
        instruction_scores(tmp_path / "demo.npz", dataset, GROUPS, ANALYSIS)


def test_instruction_scores_rejects_an_attribution_without_dataset_sample(tmp_path, write_tsv):
    save_shard(tiny_shard(), tmp_path / "demo.npz")
    with pytest.raises(ValueError, match=r"1 unknown \['zzz_1'\]"):
        instruction_scores(tmp_path / "demo.npz", write_tsv(DATASET_ROWS[:3]), GROUPS, ANALYSIS)


def test_instruction_scores_rejects_an_attribution_made_on_another_prompt(tmp_path, write_tsv):
    save_shard(tiny_shard(), tmp_path / "demo.npz")
    rows = list(DATASET_ROWS)
    rows[1] = ("lima_author_1", "Hi!", "ok", "Hi!")
    with pytest.raises(ValueError, match="sample lima_author_1 was attributed on a different prompt"):
        instruction_scores(tmp_path / "demo.npz", write_tsv(rows), GROUPS, ANALYSIS)


def test_instruction_scores_rejects_attributions_binned_to_other_levels(tmp_path, write_tsv):
    shard = tiny_shard()
    shard.meta["binned_levels"] = 10
    save_shard(shard, tmp_path / "demo.npz")
    with pytest.raises(ValueError, match="binned to L=10, analysis.levels is 5"):
        instruction_scores(tmp_path / "demo.npz", write_tsv(DATASET_ROWS), GROUPS, {**ANALYSIS, "levels": 5})


def test_instruction_scores_reject_attributions_binned_to_fewer_levels_than_the_analysis(tmp_path, write_tsv):
    """Bins of L=5 read as bins of L=10 would halve every density unseen: fewer levels are refused as more are."""
    shard = tiny_shard()
    shard.meta["binned_levels"] = 5
    for a in shard.samples:  # valid bins of L = 5
        a.matrix = np.clip(np.round(a.matrix * 5), 0, 5).astype(np.float32)
    save_shard(shard, tmp_path / "demo.npz")
    with pytest.raises(ValueError, match="binned to L=5, analysis.levels is 10"):
        instruction_scores(tmp_path / "demo.npz", write_tsv(DATASET_ROWS), GROUPS, ANALYSIS)


@pytest.mark.parametrize("bad_bin", [11.0, 0.5, -1.0])
def test_a_file_recorded_as_binned_whose_bins_are_not_0_to_l_is_refused_naming_the_sample(tmp_path, write_tsv,
                                                                                         bad_bin):
    """Scored as stored, a bin of 11 or 0.5 would move the score unseen (attribution_samples.joined_samples)."""
    shard = tiny_shard()
    for a in shard.samples:
        a.matrix[:] = np.clip(np.round(a.matrix * 10), 0, 10)  # valid bins of L = 10
    shard.samples[1].matrix[0, 0] = bad_bin
    shard.meta["binned_levels"] = 10
    save_shard(shard, tmp_path / "demo.npz")
    with pytest.raises(ValueError, match=r"demo\.npz: sample lima_author_1: recorded as binned to L=10 but holds"):
        instruction_scores(tmp_path / "demo.npz", write_tsv(DATASET_ROWS), GROUPS, ANALYSIS)
    shard.samples[1].matrix[0, 0] = 10.0  # the same file with valid bins is scored
    save_shard(shard, tmp_path / "demo.npz")
    assert len(instruction_scores(tmp_path / "demo.npz", write_tsv(DATASET_ROWS), GROUPS, ANALYSIS)) == 4


# --- the paper's released attributions ------------------------------------------------------


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Both models' released attributions converted once, and the dataset's samples by id."""
    from conftest import PAPER_DIR

    from workflow_scripts.dataset import read_dataset

    if not PAPER_DIR.is_dir():
        pytest.skip(f"the paper's released data is not at {PAPER_DIR}")
    root = tmp_path_factory.mktemp("released")
    dataset = PAPER_DIR / "datasets" / "FinalDataset.tsv"
    shards = {}
    for model in ("llama", "vicuna"):
        shards[model] = root / f"{model}.npz"
        released = PAPER_DIR / "results" / "attribution_interpret" / f"ifa_{model}_7b"
        convert_released(dataset, released, shards[model], model)
    return dataset, shards, {s.id: s for s in read_dataset(dataset)}


@pytest.mark.paper
def test_table2_of_the_released_attributions_is_the_printed_table(released):
    """The paper's printed Table 2, to its four decimals and the p-values' three digits."""
    from workflow_scripts.dag import RELEASED_LEVELS
    from workflow_scripts.shards import load_header

    dataset, shards, _ = released
    # the bins the conversion records are the ones the config check holds analysis.levels to
    assert {load_header(shards[model])["binned_levels"] for model in shards} == {RELEASED_LEVELS}
    scores = {model: instruction_scores(shards[model], dataset, GROUPS, ANALYSIS) for model in shards}
    table = table2(scores["llama"], scores["vicuna"]).set_index("dataset")
    printed = {  # dataset: (n, mean pre-trained, mean tuned, p-value)
        "self_instruct": (252, 0.9394, 1.1302, 1.92e-5),
        "lima": (300, 1.2683, 1.5579, 2.53e-14),
        "mtbench": (80, 1.1777, 1.3440, 0.0382),
    }
    assert list(table.index) == list(printed)
    for group, (n, mean_pre, mean_tuned, p) in printed.items():
        row = table.loc[group]
        assert row.n == n, group
        assert round(row.mean_pretrained, 4) == mean_pre, group
        assert round(row.mean_tuned, 4) == mean_tuned, group
        assert float(f"{row.p_value:.3g}") == p, group


def released_score(released, model, sample_id):
    from workflow_scripts.importance import sample_score
    from workflow_scripts.instructions import instruction_mask, instruction_spans
    from workflow_scripts.shards import load_shard

    _, shards, samples = released
    attribution = next(a for a in load_shard(shards[model]).samples if a.id == sample_id)
    sample = samples[sample_id]
    spans = instruction_spans(sample.prompt, sample.annotation, sample_id)
    mask = instruction_mask(sample.prompt, attribution.prompt_tokens, attribution.prompt_offsets, spans)
    return mask, sample_score(attribution.matrix, mask, 10, 7, 4.0, binned=True)


@pytest.mark.paper
@pytest.mark.parametrize("sample_id, score", [
    ("user_oriented_task_153", 0.5498),  # 52 response columns of max 1: binned again, they scored 3.2335
    ("user_oriented_task_185", 1.3934),  # all bytes of the emojis are instruction tokens (0.7387 without)
])
def test_released_scores_use_the_stored_bins_and_the_papers_tokens(released, sample_id, score):
    assert round(released_score(released, "vicuna", sample_id)[1], 4) == score


# Instruction tokens of the prompts where overlap alone and the paper's re-tokenizing matcher
# disagreed: a leading `▁"` piece, a white-space `▁` at a sentence edge, bytes of an emoji.
PAPER_MASKS = {
    "mtbench_roleplay_92": [(0, 36), (49, 57)],
    "mtbench_roleplay_94": [(0, 73), (88, 101)],
    "mtbench_roleplay_96": [(8, 34), (44, 61)],
    "user_oriented_task_141": [(0, 8), (14, 39)],
    "user_oriented_task_142": [(0, 13), (18, 20), (22, 41), (43, 55)],
    "user_oriented_task_143": [(0, 9), (15, 34)],
    "user_oriented_task_251": [(0, 28), (34, 40)],
    "user_oriented_task_40": [(0, 11), (16, 20), (22, 26), (28, 38), (41, 46), (48, 52)],
    "lima_author_32": [(0, 10), (13, 22), (24, 30)],
    "user_oriented_task_243": [(0, 11), (16, 25), (28, 38), (40, 40)],
    "user_oriented_task_185": [(0, 29), (35, 56)],
}


@pytest.mark.paper
@pytest.mark.parametrize("sample_id", PAPER_MASKS)
def test_instruction_tokens_of_released_prompts_are_the_papers(released, sample_id):
    mask = released_score(released, "llama", sample_id)[0]
    expected = np.zeros(len(mask), dtype=bool)
    for first, last in PAPER_MASKS[sample_id]:
        expected[first : last + 1] = True
    assert np.flatnonzero(mask).tolist() == np.flatnonzero(expected).tolist()


def test_an_empty_response_scores_zero_and_is_said_under_table2(tmp_path, caplog):
    scores = pd.DataFrame([("a_1", "g", 0.0, 0, 2), ("a_2", "g", 1.0, 4, 2)], columns=SCORE_COLUMNS)
    note = empty_response_note(scores, "llama-7b")
    assert note == "1 sample(s) of llama-7b have an empty response and score 0 (as in the paper): a_1"
    assert note in caplog.text
    write_table(table2(scores, scores), tmp_path / "table2.tsv", "T", [note, ""])
    assert (tmp_path / "table2.md").read_text().endswith(f"\n{note}.\n")
    assert empty_response_note(scores.iloc[1:], "llama-7b") == ""


@pytest.mark.paper
def test_the_released_llama_response_that_is_empty_is_named_under_table2(released, tmp_path):
    dataset, shards, _ = released
    scores = instruction_scores(shards["llama"], dataset, GROUPS, ANALYSIS)
    note = empty_response_note(scores, "llama-7b")
    assert note.startswith("1 sample(s) of llama-7b have an empty response")
    assert scores.loc[scores["response_tokens"] == 0, "score"].tolist() == [0.0]


def test_the_configs_notice_stands_under_every_tables_title(tmp_path):
    table = table2(pd.DataFrame([("a_1", "g", 1.0, 4, 2)], columns=SCORE_COLUMNS),
                   pd.DataFrame([("a_1", "g", 2.0, 4, 2)], columns=SCORE_COLUMNS))
    write_table(table, tmp_path / "t.tsv", "Table 2 (demo)", notice="Offline demo: a smoke test.")
    expected = "# Table 2 (demo)\n\n> Offline demo: a smoke test.\n\n| dataset |"
    assert (tmp_path / "t.md").read_text().startswith(expected)
    write_table(table, tmp_path / "u.tsv", "Table 2 (demo)")
    assert (tmp_path / "u.md").read_text().startswith("# Table 2 (demo)\n\n| dataset |")
    assert (tmp_path / "t.tsv").read_text() == (tmp_path / "u.tsv").read_text()  # the TSV stays plain data


def test_each_table_says_which_precision_made_its_attributions(tmp_path, write_tsv):
    """Issue 14: the shard header's arithmetic (what the job actually ran in) stands under the table."""
    dataset = write_tsv(DATASET_ROWS)
    shard = tiny_shard()
    shard.meta.update(source="computed:generate", precision="bfloat16", weights_dtype="bfloat16",
                      activations_dtype="bfloat16", matmul="bfloat16", accumulation="float32 (sums)")
    for model in ("base", "tuned"):
        (tmp_path / model).mkdir()
        save_shard(shard, tmp_path / model / "attributions.npz")
    main(["table2", "--dataset", str(dataset), "--attributions", str(tmp_path / "base/attributions.npz"),
          str(tmp_path / "tuned/attributions.npz"), "--groups", "", "--output", str(tmp_path / "t2.tsv")])
    text = (tmp_path / "t2.md").read_text()
    assert ("\nbase: attributions computed:generate, precision bfloat16 (weights bfloat16, activations bfloat16, "
            "matmuls bfloat16, float32 (sums)).\n") in text
    assert "\ntuned: attributions computed:generate, precision bfloat16" in text
    released = {"model": "x", "source": "released:ifa_llama_7b", "binned_levels": 10}  # the paper's own
    assert arithmetic_note(released, "llama-7b") == "llama-7b: attributions released:ifa_llama_7b"


# --- Table 1: the attributed responses are the texts that were rated ----------------------------

RATINGS_HEADER = "File\tModel\tPrompt\tReference\tInstruct\tResponse\tRating"


def rated_row(sample_id, response, rating):
    """A ratings-file line; `response` as the file writes it (tabs and newlines as /t and /n)."""
    return "\t".join((f"{sample_id}.pkl", "tuned_7B", "prompt", "reference", "instruct", response, str(rating)))


def table1_main(tmp_path, shard, dataset, ratings, *extra):
    (tmp_path / "tuned").mkdir(exist_ok=True)
    save_shard(shard, tmp_path / "tuned" / "attributions.npz")
    main(["table1", "--dataset", str(dataset), "--attributions", str(tmp_path / "tuned" / "attributions.npz"),
          "--ratings", str(ratings), "--rated-model", "tuned_7B", "--groups",
          ",".join(f"{prefix}={group}" for prefix, group in GROUPS.items()), *extra,
          "--output", str(tmp_path / "table1.tsv")])
    return pd.read_csv(tmp_path / "table1.tsv", sep="\t"), (tmp_path / "table1.md").read_text()


def test_table1_says_how_many_rated_responses_differ_from_the_attributed_ones(tmp_path, write_tsv, caplog):
    """A regenerated response that is not the rated text inherits a rating given to another text:
    Table 1 keeps it (as the paper's code does) but its note and the job's log count and name it."""
    shard = tiny_shard()
    responses = {
        "user_oriented_task_0": '"Hi, I\'m here ."',  # the rated text, as another decoder wrote it
        "lima_author_1": "See path/to/dir",           # the file writes "/t" for a tab: read back as "path<TAB>o"
        "mtbench_1": "",                              # empty: not in Table 1
        "zzz_1": "No.",                               # not the rated text
    }
    for sample in shard.samples:
        sample.response = responses[sample.id]
    ratings = write_tsv([
        rated_row("user_oriented_task_0", '"Hi, I\'m here."   ', 4),
        rated_row("lima_author_1", "See path/to/dir", 1),
        rated_row("mtbench_1", "Something.", 3),
        rated_row("zzz_1", "Yes.", 2),
    ], name="ratings.tsv", header=RATINGS_HEADER)
    table, markdown = table1_main(tmp_path, shard, write_tsv(DATASET_ROWS), ratings, "--min-response-tokens", "1")
    assert table["n_unfollowed"].sum() + table["n_followed"].sum() == 3  # the differing sample is kept
    note = ("1 of the 3 rated responses of tuned in Table 1 differ from the text that was rated "
            "(their ratings rate another text): zzz_1")
    assert f"\n{note}.\n" in markdown
    assert any(r.levelname == "WARNING" and note in r.getMessage() for r in caplog.records)


def test_table1_says_which_ratings_name_no_sample_of_the_dataset(tmp_path, write_tsv, caplog):
    """A rating whose File names no dataset sample (a typo, another dataset's sample) once left its
    sample unrated without a word: 64 of the paper's 616 counted samples could vanish with rc 0."""
    shard = tiny_shard()
    ratings = write_tsv([rated_row(sample.id, sample.response, 4) for sample in shard.samples]
                        + [rated_row("lima_autor_1", "A reply.", 1), rated_row("other_9", "A reply.", 2)],
                        name="ratings.tsv", header=RATINGS_HEADER)
    _, markdown = table1_main(tmp_path, shard, write_tsv(DATASET_ROWS), ratings, "--min-response-tokens", "1")
    note = (f"2 of the 6 ratings of tuned_7B in {ratings} name no sample of the dataset, and Table 1 leaves "
            "them out: 'lima_autor_1', 'other_9'")
    assert f"\n{note}.\n" in markdown
    assert any(r.levelname == "WARNING" and note in r.getMessage() for r in caplog.records)


def test_table1_refuses_ratings_of_which_none_names_a_sample_of_the_dataset(tmp_path, write_tsv):
    shard = tiny_shard()
    ratings = write_tsv([rated_row(f"{sample.id}x", sample.response, 4) for sample in shard.samples],
                        name="ratings.tsv", header=RATINGS_HEADER)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(ratings))}: none of the 4 ratings of tuned_7B "
                                           "names a sample of the dataset"):
        table1_main(tmp_path, shard, write_tsv(DATASET_ROWS), ratings)
    assert not (tmp_path / "table1.tsv").exists()


def test_rated_response_comparison_ignores_only_formatting():
    from workflow_scripts.table1_2 import same_rated_text

    assert same_rated_text('"A reply ."', ' A reply.  ')       # enclosing quotes, white space, " ." clean-up
    assert same_rated_text("x != y", "x!= y")                  # the tokenizer's clean-up of spaces
    assert same_rated_text("path/to", "path\to")               # the ratings file's "/t" read as a tab
    assert same_rated_text("🐾🐾\ufffd\ufffd", "🐾🐾  ")        # the bytes of a character cut off at the end
    assert not same_rated_text("Yes.", "No.")
    assert not same_rated_text("A reply.", "A reply. More.")
    assert not same_rated_text('"A" and', "A and")


@pytest.mark.paper
def test_the_released_vicuna_responses_are_the_rated_texts(released, tmp_path):
    """On the paper's data all 632 rated Vicuna texts are the released responses (up to formatting),
    Table 1's note says none differ, and its numbers are the README's (those of the paper's code)."""
    from conftest import PAPER_DIR

    from workflow_scripts.dataset import read_rated, read_ratings
    from workflow_scripts.shards import load_shard
    from workflow_scripts.table1_2 import same_rated_text

    dataset, shards, _ = released
    annotated = PAPER_DIR / "datasets" / "AnnotatedDataset.tsv"
    rated = read_rated(annotated, "vicuna_7B")[1]
    attributed = {a.id: a.response for a in load_shard(shards["vicuna"]).samples}
    assert len(rated) == 632
    assert [i for i, text in rated.items() if not same_rated_text(attributed[i], text)] == []
    (tmp_path / "vicuna-7b").mkdir()
    shard = tmp_path / "vicuna-7b" / "attributions.npz"
    shard.symlink_to(shards["vicuna"])
    main(["table1", "--dataset", str(dataset), "--attributions", str(shard), "--ratings", str(annotated),
          "--rated-model", "vicuna_7B", "--groups", ",".join(f"{p}={g}" for p, g in GROUPS.items()),
          "--output", str(tmp_path / "table1.tsv")])
    table = pd.read_csv(tmp_path / "table1.tsv", sep="\t")
    assert table["n_unfollowed"].tolist() == [44, 50, 19] and table["n_followed"].tolist() == [194, 249, 60]
    # held to fixed numbers, not to table1() again: the TSV's six significant digits (the paper's
    # analysis_following_hypothesis.py on the same data: 0.891736 and 1.22835, t -4.09729, for self_instruct)
    fixed = {
        "mean_unfollowed": [0.891736, 1.27986, 0.929002], "std_unfollowed": [0.478671, 0.441585, 0.534227],
        "mean_followed": [1.22835, 1.61726, 1.45837], "std_followed": [0.523684, 0.471467, 0.546832],
        "t": [-4.09729, -4.83193, -3.65961], "p_value": [5.68669e-05, 3.64363e-06, 0.000475337],
    }
    for column, values in fixed.items():
        assert table[column].tolist() == pytest.approx(values, rel=1e-6), column
    expected = table1(instruction_scores(shard, dataset, GROUPS, ANALYSIS), read_ratings(annotated, "vicuna_7B"), 5)
    pd.testing.assert_frame_equal(table, expected, rtol=1e-5)  # main() is table1() without the rated-text check
    markdown = (tmp_path / "table1.md").read_text()
    for row in ("| self_instruct | 44 | 194 | 0.8917 | 0.4787 | 1.2283 | 0.5237 | -4.0973 | 5.7e-05 |",  # the README's
                "| lima | 50 | 249 | 1.2799 | 0.4416 | 1.6173 | 0.4715 | -4.8319 | 3.6e-06 |",
                "| mtbench | 19 | 60 | 0.9290 | 0.5342 | 1.4584 | 0.5468 | -3.6596 | 0.00048 |"):
        assert f"\n{row}\n" in markdown
    assert "\n0 of the 616 rated responses of vicuna-7b in Table 1 differ from the text that was rated.\n" in markdown
    assert "name no sample of the dataset" not in markdown  # all 632 ratings name one
