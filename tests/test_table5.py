"""Table 5 statistics on hand-made seed files, against values computed by hand; Figure 3 files."""
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from workflow_scripts.table5 import (
    LEVELS,
    figure3,
    figure3_groups,
    figure3_series,
    layer_group_labels,
    level_shares_by_group,
    read_seed_file,
    refusals_note,
    shared_words_note,
    table5,
)

HEADER = "{label}\tExplainable\tWords\tSummary\tModel\tSize\tLayer\tType\tHead\tRank\tScore\tTopK\n"


def seed_file(path, label, rows):
    """rows: (label value, explainable, model, layer)."""
    lines = [HEADER.format(label=label)]
    for r, (value, explainable, model, layer) in enumerate(rows, start=1):
        lines.append(f"{value}\t{explainable}\ta, b\tWords are x.\t{model}\t7B\t{layer}\tFFN\t0\t{r}\t0.1\ta|||b\n")
    path.write_text("".join(lines))
    return path


@pytest.fixture
def task_seeds(tmp_path):
    # per seed: pre-trained (llama) 4 described concepts + 1 "Cannot Tell"; tuned (vicuna) 4 described
    seeds = [
        [("Daily Writing", 1, "llama", 0), ("Math", 1, "llama", 1), ("None", 1, "llama", 2), ("Coding", 1, "llama", 3),
         ("None", 0, "llama", 3),
         ("Literary Writing; Math", 1, "vicuna", 0), ("Professional Writing", 1, "vicuna", 1),
         ("Coding", 1, "vicuna", 2), ("Translation", 1, "vicuna", 3)],
        [("Math", 1, "llama", 0), ("None", 1, "llama", 1), ("None", 1, "llama", 2), ("Coding", 1, "llama", 3),
         ("Daily Writing", 1, "vicuna", 0), ("Daily Writing", 1, "vicuna", 1),
         ("Math", 1, "vicuna", 2), ("None", 1, "vicuna", 3)],
        [("Daily Writing", 1, "llama", 0), ("Daily Writing", 1, "llama", 1), ("None", 1, "llama", 2),
         ("None", 1, "llama", 3),
         ("Literary Writing", 1, "vicuna", 0), ("Coding", 1, "vicuna", 1), ("Coding", 1, "vicuna", 2),
         ("Math", 1, "vicuna", 3)],
    ]
    return [seed_file(tmp_path / f"linear_task_seed{s}.tsv", "Task", rows) for s, rows in enumerate(seeds)]


def test_table5_shares_means_stds_and_student_t_by_hand(task_seeds):
    table = table5(task_seeds, "Task", "llama", "vicuna", ["writing", "math", "none"]).set_index("category")
    # writing: llama 1/4, 0/4, 2/4 -> mean 0.25, std sqrt(((0)^2 + 0.25^2 + 0.25^2)/3)
    #          vicuna 2/4, 2/4, 1/4 -> mean 5/12
    writing = table.loc["writing"]
    assert writing.mean_pretrained == pytest.approx(0.25)
    assert writing.std_pretrained == pytest.approx(math.sqrt(0.125 / 3))
    assert writing.mean_tuned == pytest.approx(5 / 12)
    # Student's t with pooled variance, two-sided, 4 degrees of freedom
    x, y = [0.25, 0.0, 0.5], [0.5, 0.5, 0.25]
    sp2 = (np.var(x, ddof=1) * 2 + np.var(y, ddof=1) * 2) / 4
    t = (np.mean(x) - np.mean(y)) / math.sqrt(sp2 * (1 / 3 + 1 / 3))
    assert writing.t == pytest.approx(t, rel=1e-9)
    assert writing.p_value == pytest.approx(2 * stats.t.cdf(-abs(t), 4), rel=1e-9)
    # the "Cannot Tell" row (Explainable 0, label None) is not counted: llama none = 1/4, 2/4, 2/4
    assert table.loc["none"].mean_pretrained == pytest.approx(5 / 12)
    # math: "Literary Writing; Math" counts for both writing and math
    assert table.loc["math"].mean_tuned == pytest.approx((1 / 4 + 1 / 4 + 1 / 4) / 3)


def test_columns_are_the_design_columns(task_seeds):
    assert list(table5(task_seeds, "Task", "llama", "vicuna", ["coding"]).columns) == [
        "category", "mean_pretrained", "std_pretrained", "mean_tuned", "std_tuned", "t", "p_value"]


def test_other_and_described_rows_account_for_every_described_concept(task_seeds):
    table = table5(task_seeds, "Task", "llama", "vicuna", ["writing", "math"]).set_index("category")
    assert list(table.index) == ["writing", "math", "other", "described"]
    # llama per seed: other = none/coding labels: 2/4, 3/4, 2/4; vicuna: coding+translation 2/4, none 1/4, coding 2/4
    assert table.loc["other"].mean_pretrained == pytest.approx(7 / 12)
    assert table.loc["other"].mean_tuned == pytest.approx(5 / 12)
    # "Cannot Tell" (Explainable 0) is not described: 4 concepts per model and seed
    assert table.loc["described"][["mean_pretrained", "std_pretrained", "mean_tuned"]].tolist() == [4, 0, 4]
    assert math.isnan(table.loc["described"].t)  # no spread: no test
    # no llama label names two categories: its shares and `other` add up to every described concept
    assert table.loc[["writing", "math", "other"], "mean_pretrained"].sum() == pytest.approx(1.0)


def test_one_model_constant_over_seeds_and_the_other_varying_is_still_tested(tmp_path):
    """Only when neither model's share moves is there no test: a rare category whose pre-trained share is 0 in
    every seed, while the tuned one's varies, is Student's t as the paper's `ttest_ind` gives it."""
    tuned_maths = (1, 0, 2)  # of 10 described tuned concepts per seed; none of the pre-trained's is maths
    files = [seed_file(tmp_path / f"linear_task_seed{s}.tsv", "Task",
                       [("Coding", 1, "llama", layer) for layer in range(10)]
                       + [("Math" if k < n else "Coding", 1, "vicuna", k) for k in range(10)])
             for s, n in enumerate(tuned_maths)]
    with warnings.catch_warnings():
        # scipy warned of "precision loss ... unreliable" for `other` (1.0 in every pre-trained seed): t is exact
        warnings.simplefilter("error")
        table = table5(files, "Task", "llama", "vicuna", ["math"]).set_index("category")
    row = table.loc["math"]
    expected = stats.ttest_ind([0.0, 0.0, 0.0], [0.1, 0.0, 0.2])
    assert row.std_pretrained == 0 and row.t == pytest.approx(-1.7320508, rel=1e-6)
    assert (row.t, row.p_value) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    assert row.p_value == pytest.approx(0.1583, abs=1e-4)
    other = table.loc["other"]  # pre-trained 1.0 in every seed; tuned 0.9, 1.0, 0.8
    assert (other.t, other.p_value) == pytest.approx((1.7320508, 0.1583024), rel=1e-6)


def test_a_single_seed_gives_no_test(task_seeds):
    row = table5(task_seeds[:1], "Task", "llama", "vicuna", ["coding"]).iloc[0]
    assert math.isnan(row.t) and math.isnan(row.p_value) and row.std_pretrained == 0


def test_bad_files_are_named(tmp_path, task_seeds):
    with pytest.raises(ValueError, match="no described concepts of the model 'mistral'"):
        table5(task_seeds, "Task", "mistral", "vicuna", ["coding"])
    bad = seed_file(tmp_path / "bad.tsv", "Task", [("Math", "yes", "llama", 0)])
    with pytest.raises(ValueError, match=r"bad.tsv:2: Explainable 'yes' is not a number"):
        read_seed_file(bad, "Task")
    with pytest.raises(ValueError, match=r"line 1: expected the header 'Concept Explainable"):
        read_seed_file(task_seeds[0], "Concept")


def test_a_refusal_counts_as_naming_no_category_not_as_every_category_its_text_names(tmp_path):
    """A refusal is written `Refused: <the endpoint's text>`; one reading "I can't classify this as
    Phonology, Morphology, Syntax or Semantic." once counted under all four levels, in Table 5 and in
    Figure 3 alike. It names no category (it is `other`), and the table says how many there were."""
    refusal = "Refused: I can't classify this as Phonology, Morphology, Syntax or Semantic."
    files = []
    for s in range(2):
        rows = [("Semantic", 1, "llama", 0), (refusal, 1, "llama", 1), ("Syntax", 1, "vicuna", 0),
                ("Semantic", 1, "vicuna", 1)]
        files.append(seed_file(tmp_path / f"linear_concept_seed{s}.tsv", "Concept", rows))
    table = table5(files, "Concept", "llama", "vicuna", LEVELS).set_index("category")
    assert table.loc["semantic"].mean_pretrained == pytest.approx(0.5)
    assert table.loc[["phonology", "morphology", "syntax"], "mean_pretrained"].tolist() == [0, 0, 0]
    assert table.loc["other"].mean_pretrained == pytest.approx(0.5)
    assert refusals_note(files, "Concept") == "2 of the 8 answers are refusals, counted as other (naming no category)"
    shares = level_shares_by_group(files, "llama", "vicuna", layers=2, groups=2)
    assert shares["llama"][:, 1, :].tolist() == [[0.0] * 4] * 2  # layer 1: the refusal only


def test_the_table_says_how_many_components_of_the_two_models_share_their_words_and_so_their_answers(tmp_path):
    """Rows asking the same question are asked once (the seed is sent, so an endpoint would answer them
    alike anyway), where the paper asked every row on its own: the two models' shares then move
    together in those components, which makes the t-test between them conservative. Said, counted."""
    def seed(path, rows):  # (label, model, words)
        lines = [HEADER.format(label="Task")]
        for r, (value, model, words) in enumerate(rows, start=1):
            lines.append(f"{value}\t1\t{words}\tWords are x.\t{model}\t7B\t0\tFFN\t0\t{r}\t0.1\ta|||b\n")
        path.write_text("".join(lines))
        return path

    files = [seed(tmp_path / "linear_task_seed0.tsv",
                  [("Math", "llama", "Words: a, b."), ("Math", "vicuna", "Words: a, b."),
                   ("None", "llama", "Words: c."), ("Coding", "vicuna", "Words: d.")]),
             seed(tmp_path / "linear_task_seed1.tsv",
                  [("Math", "llama", "Words: a, b."), ("None", "vicuna", "Words: e."),
                   ("Math", "vicuna", "Words: f.")])]
    assert shared_words_note(files, "Task", "llama", "vicuna") == (
        "Components of vicuna with the words of a component of llama, so one request and one answer for both: "
        "1 of 2 described (seed 0), 0 of 2 (seed 1); the paper asked each row on its own, so there the two "
        "models' shares move together and the t-test between them is conservative")
    files = [seed(tmp_path / "linear_task_seed2.tsv", [("Math", "llama", "Words: a."), ("Math", "vicuna", "W: b.")])]
    assert shared_words_note(files, "Task", "llama", "vicuna") == ""


def test_level_shares_by_layer_group_and_the_figure_files(tmp_path):
    files = []
    for s in range(2):
        rows = [("Semantic", 1, m, layer) for m in ("llama", "vicuna") for layer in range(8)]
        rows += [("Syntax", 1, "vicuna", 0), ("Morphology; Semantic", 1, "llama", 7 - s)]
        files.append(seed_file(tmp_path / f"linear_concept_seed{s}.tsv", "Concept", rows))
    shares = level_shares_by_group(files, "llama", "vicuna", layers=8, groups=4)
    semantic, syntax, morphology = LEVELS.index("semantic"), LEVELS.index("syntax"), LEVELS.index("morphology")
    assert shares["llama"].shape == (2, 4, 4)  # seeds, layer groups, levels
    assert shares["llama"][:, :, semantic].tolist() == [[1.0] * 4] * 2
    assert shares["vicuna"][:, 0, syntax].tolist() == pytest.approx([1 / 3, 1 / 3])  # layers 0-1: 1 of 3
    # layers 6-7: seed 0 has the morphology concept at layer 7 (1 of 3), seed 1 at layer 6 (1 of 3)
    assert shares["llama"][:, 3, morphology].tolist() == pytest.approx([1 / 3, 1 / 3])
    figure3(shares, "llama", "vicuna", 8, tmp_path / "fig" / "figure3")
    for suffix in (".pdf", ".png"):
        assert (tmp_path / "fig" / f"figure3{suffix}").stat().st_size > 1000


def test_figure3_points_are_means_and_bars_population_stds_over_seeds_with_gaps_kept():
    nan = float("nan")
    # 3 seeds, 2 layer groups, the 4 levels; group 1 has no described concept in seed 2 (NaN)
    per_seed = np.array([[[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]],
                         [[0.0, 0.25, 0.75, 0.0], [0.5, 0.5, 0.0, 0.0]],
                         [[0.0, 0.0, 1.0, 0.0], [nan, nan, nan, nan]]])
    empty = np.full((3, 2, 4), nan)
    series = figure3_series({"llama": per_seed, "vicuna": empty})
    mean, std = series["llama"]
    assert mean.shape == std.shape == (2, 4)
    assert mean[0].tolist() == [0.0, 0.25, 0.75, 0.0] and mean[1].tolist() == [0.75, 0.25, 0.0, 0.0]
    assert std[0, 1] == pytest.approx(math.sqrt(0.125 / 3))  # 0.5, 0.25, 0: ddof 0, as numpy's default
    assert std[1, 0] == pytest.approx(0.25)  # 1.0 and 0.5: the seed without concepts there does not count
    assert np.isnan(series["vicuna"][0]).all() and np.isnan(series["vicuna"][1]).all()  # a gap, not 0


def test_figure3_groups_the_papers_32_layers_by_four_and_a_small_model_by_layer():
    assert figure3_groups(32) == 8
    assert [layer * figure3_groups(32) // 32 for layer in range(32)] == [layer // 4 for layer in range(32)]
    assert figure3_groups(4) == 4  # the demo's 4 layers: one group each


def test_figure3_numbers_layers_from_zero_as_table3_does():
    assert layer_group_labels(4, 4) == ["0-0", "1-1", "2-2", "3-3"]  # as Table 3 labels them
    assert layer_group_labels(32, 8) == ["0-3", "4-7", "8-11", "12-15", "16-19", "20-23", "24-27", "28-31"]
