"""The report's data and picture modules: position profile, attribution views, heatmaps, HTML pages."""
import hashlib
import html
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_tables import ANALYSIS, DATASET_ROWS, GROUPS, attribution, tiny_shard

from workflow_scripts import heatmaps, position, report_pages
from workflow_scripts.attribution_views import SampleView, chosen_samples, load_views, token_text
from workflow_scripts.importance import instruction_score
from workflow_scripts.shards import Shard, load_header, save_shard
from workflow_scripts.table1_2 import instruction_scores
from workflow_scripts.table_files import write_table

# --- position profile ----------------------------------------------------------------------------


def test_sample_bins_average_the_tokens_of_each_relative_position_bin():
    # 20 tokens, 10 bins: two tokens per bin
    assert position.sample_bins(np.arange(20.0)).tolist() == [0.5, 2.5, 4.5, 6.5, 8.5, 10.5, 12.5, 14.5, 16.5, 18.5]
    # 5 tokens at relative positions 0.1, 0.3, ..., 0.9: bins 2, 4, 6, 8, 10 (1-based); the others empty
    five = position.sample_bins(np.array([1.0, 2, 3, 4, 5]))
    assert np.isnan(five[::2]).all() and five[1::2].tolist() == [1, 2, 3, 4, 5]
    assert np.isnan(position.sample_bins(np.zeros(0))).all()


def test_position_profile_is_the_mean_over_samples_with_a_standard_error_band():
    u_shape = np.array([1.0, 0.2, 0.1, 0.1, 0.2, 1.0, 0.2, 0.1, 0.1, 1.0])
    flat = np.full(10, 0.5)
    profile = position.position_profile([u_shape, flat, np.full(5, 0.3)])
    first = profile.iloc[0]
    assert (first["mean"], first["samples"]) == (pytest.approx(0.75), 2)  # the 5-token sample has no token in bin 1
    assert first["se"] == pytest.approx(np.std([1.0, 0.5], ddof=1) / np.sqrt(2))
    second = profile.iloc[1]  # all three samples: 0.2, 0.5, 0.3
    assert second["samples"] == 3 and second["mean"] == pytest.approx(1.0 / 3)
    assert second["se"] == pytest.approx(np.std([0.2, 0.5, 0.3], ddof=1) / np.sqrt(3))
    assert profile["start"].tolist()[:2] == [0.0, 0.1] and profile["end"].tolist()[-1] == 1.0


def test_position_profile_of_a_bin_with_one_sample_has_no_error_band():
    profile = position.position_profile([np.arange(10.0)])
    assert profile["mean"].tolist() == list(range(10)) and profile["se"].isna().all()


# --- views of attribution files -----------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path, write_tsv):
    save_shard(tiny_shard(), tmp_path / "demo.npz")
    return tmp_path / "demo.npz", write_tsv(DATASET_ROWS)


def test_views_score_exactly_as_the_tables(tiny):
    shard, dataset = tiny
    views = load_views(shard, dataset, ANALYSIS)
    scores = instruction_scores(shard, dataset, GROUPS, ANALYSIS).set_index("id")["score"]
    for sample_id, view in views.items():
        assert instruction_score(view.density, view.mask) == pytest.approx(scores[sample_id], abs=1e-12)
    first = views["user_oriented_task_0"]
    assert first.mask.tolist() == [False, True, True, True, False, False, False]
    # threshold 0 in the heatmap: "▁Say" (0.5, 1 -> 5, 10) keeps its 5, which b = 7 zeroes in the density
    assert first.binned[4].tolist() == [5, 10] and first.binned[3].tolist() == [0, 10]


def test_views_of_a_sample_missing_from_the_file_name_it(tiny):
    shard, dataset = tiny
    with pytest.raises(ValueError, match=r"demo\.npz: no attribution .* for lima_author_9"):
        load_views(shard, dataset, ANALYSIS, ["lima_author_1", "lima_author_9"])


def test_views_of_a_sample_missing_from_the_dataset_name_it_and_the_file(tiny, write_tsv):
    """A requested id the attribution file holds but the dataset lacks: an error naming both, not a KeyError."""
    shard, _ = tiny
    dataset = write_tsv([row for row in DATASET_ROWS if row[0] != "lima_author_1"])
    with pytest.raises(ValueError, match=r"demo\.npz: no attribution \(or no .*dataset\.tsv sample\) "
                                         r"for lima_author_1"):
        load_views(shard, dataset, ANALYSIS, ["lima_author_1"])


def test_views_refuse_attributions_binned_to_other_levels_as_the_tables_do(tmp_path, write_tsv):
    shard = tiny_shard()
    shard.meta["binned_levels"] = 10
    shard.samples[1].matrix = np.array([[10.0], [5.0]], dtype=np.float32)  # valid bins of L = 10
    save_shard(shard, tmp_path / "demo.npz")
    with pytest.raises(ValueError, match="binned to L=10, analysis.levels is 5"):
        load_views(tmp_path / "demo.npz", write_tsv(DATASET_ROWS), {**ANALYSIS, "levels": 5}, ["lima_author_1"])


def test_views_refuse_a_sample_attributed_on_another_prompt_as_the_tables_do(tiny, write_tsv):
    shard, _ = tiny
    rows = list(DATASET_ROWS)
    rows[1] = ("lima_author_1", "Hi!", "ok", "Hi!")
    with pytest.raises(ValueError, match="sample lima_author_1 was attributed on a different prompt"):
        load_views(shard, write_tsv(rows), ANALYSIS, ["lima_author_1"])


def test_views_of_every_sample_refuse_a_file_that_misses_a_dataset_sample_as_the_tables_do(tiny, write_tsv):
    shard, _ = tiny
    dataset = write_tsv(DATASET_ROWS + [("lima_author_9", "Extra.", "ok", "Extra.")])
    with pytest.raises(ValueError, match=r"1 samples without attribution \['lima_author_9'\]"):
        load_views(shard, dataset, ANALYSIS)


def test_chosen_samples_are_the_first_of_each_group_in_dataset_order(write_tsv):
    rows = [(f"{prefix}{i}", "Go.", "ok", "Go.") for i in range(3) for prefix in ("lima_author_", "mtbench_")]
    dataset = write_tsv(rows)
    assert chosen_samples(dataset, GROUPS, 2) == ["lima_author_0", "lima_author_1", "mtbench_0", "mtbench_1"]
    assert chosen_samples(dataset, GROUPS, 0) == []


def test_position_command_writes_the_profile_of_both_models(tiny, tmp_path):
    shard, dataset = tiny
    tuned = tiny_shard()  # the tuned model's own file: its Hi gets the lowest bin (density 0), not 1
    tuned.samples[1] = attribution("lima_author_1", "Hi.", ["▁Hi", "."], [[0, 2], [2, 3]], [[0.0], [1.0]])
    save_shard(tuned, tmp_path / "chat.npz")
    position.main(["--dataset", str(dataset), "--pretrained", "base", str(shard), "--tuned", "chat",
                   str(tmp_path / "chat.npz"),
                   "--levels", "10", "--threshold", "7", "--p", "4", "--pair", "demo",
                   "--png", str(tmp_path / "p.png"), "--tsv", str(tmp_path / "p.tsv")])
    table = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert table["model"].tolist() == ["base"] * 10 + ["chat"] * 10
    # bin 1 (positions below 0.1) holds only <s> of the 7-token sample (density 0); bin 3 (0.2-0.3) holds
    # ▁Be (1.5/7: density 2^-0.75), Hi (0.5/2: density 1) and Go (0.5/2: empty response, 0); Stop!'s
    # three tokens sit in bins 2, 6 and 9
    assert (table.loc[0, "mean"], table.loc[0, "samples"]) == (0, 1)
    assert table.loc[2, "mean"] == pytest.approx((2**-0.75 + 1) / 3, abs=1e-6) and table.loc[2, "samples"] == 3
    assert table.loc[1, "samples"] == 1 and table.loc[5, "samples"] == 2  # bin 6: "." (3.5/7) and ▁now (1.5/3)
    tuned_bins = table[table["model"] == "chat"].reset_index(drop=True)
    assert tuned_bins.loc[2, "mean"] == pytest.approx(2**-0.75 / 3, abs=1e-6) and tuned_bins.loc[2, "samples"] == 3
    assert Image.open(tmp_path / "p.png").size[0] > 600


# --- heatmaps -----------------------------------------------------------------------------------


def test_tick_labels_are_visible_short_and_safe_for_matplotlib():
    assert heatmaps.tick_label(token_text("\u2581the")) == "\u2423the"
    assert heatmaps.tick_label(token_text("<0x0A>")) == "\u21b5" == heatmaps.tick_label(token_text("\u010a"))
    assert heatmaps.tick_label("$x$") == r"\$x\$"  # not math text
    assert heatmaps.tick_label("abcdefghijklmnopq") == "abcdefghijk\u2026"
    assert heatmaps.tick_label("") == "\u2205"


def test_long_responses_label_every_kth_token_never_more_than_the_limit():
    assert heatmaps.response_ticks(12).tolist() == list(range(12))
    ticks = heatmaps.response_ticks(301)
    assert len(ticks) <= heatmaps.MAX_RESPONSE_LABELS and ticks[0] == 0 and np.diff(ticks).max() == 8


def long_views(n: int, m: int):
    tokens = [f"\u2581w{i}" for i in range(n)]
    offsets = [[3 * i, 3 * i + 2] for i in range(n)]
    prompt = " ".join(f"w{i:<1}"[:2] for i in range(n))
    rng = np.random.default_rng(0)
    shard = Shard([attribution("lima_author_0", prompt, tokens, offsets, rng.random((n, m)))], {"binned_levels": 0})
    return shard


def test_long_prompts_wrap_into_rows_of_panels(tmp_path, write_tsv):
    pngs = {}
    for n in (30, 45, 95):  # one row, then two and three rows of 40 tokens
        path = tmp_path / f"{n}.npz"
        save_shard(long_views(n, 60), path)
        prompt = long_views(n, 60).samples[0].prompt
        dataset = write_tsv([("lima_author_0", prompt, "r", prompt.split(" ")[0])], name=f"{n}.tsv")
        views = load_views(path, dataset, ANALYSIS)
        pair = {"base": ("pretrained", views["lima_author_0"]), "chat": ("tuned", views["lima_author_0"])}
        heatmaps.draw_sample(pair, 10, "t", tmp_path / f"{n}.png")
        pngs[n] = Image.open(tmp_path / f"{n}.png").size
    assert pngs[95][0] == pytest.approx(pngs[45][0], rel=0.02)  # same width: rows wrap, never squeeze
    assert pngs[30][0] < 0.9 * pngs[45][0]  # a prompt shorter than a row: a panel as wide as the prompt
    assert pngs[95][1] > 1.3 * pngs[45][1] and pngs[45][1] > 1.6 * pngs[30][1]


def test_byte_pieces_are_shown_as_the_characters_they_stand_for(tmp_path, write_tsv):
    """SentencePiece's byte fallback (`<0xF0>` ...) and byte-level BPE (`âĢĻ` for ’) were shown as such on
    the token pages and heatmap labels: every emoji, most non-Latin text, curly quotes under Llama 3 or Qwen."""
    prompt = "Say 😀 now."
    tokens = ["<s>", "▁Say", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "▁now", "."]
    offsets = [[0, 0], [0, 3], [3, 4], [4, 5], [4, 5], [4, 5], [4, 5], [6, 9], [9, 10]]
    sample = attribution("lima_author_1", prompt, tokens, offsets, np.ones((9, 3)))
    sample.response, sample.response_tokens = "It’s", ["It", "âĢĻ", "s"]
    sample.response_offsets = np.array([[0, 2], [2, 3], [3, 4]])
    save_shard(Shard([sample], {"model": "demo", "binned_levels": 0}), tmp_path / "b.npz")
    dataset = write_tsv([("lima_author_1", prompt, "It’s", "Say 😀 now.")])
    view = load_views(tmp_path / "b.npz", dataset, ANALYSIS)["lima_author_1"]
    assert view.prompt_texts == ["<s>", " Say", " ", "😀", "", "", "", " now", "."]
    assert view.response_texts == ["It", "’", "s"]
    page = heatmaps.sample_page({"base": ("pretrained", view), "chat": ("tuned", view)}, "Sample", "note")
    assert "😀" in page and "It’s" in page and "0xF0" not in page and "âĢĻ" not in page
    assert [heatmaps.tick_label(t) for t in view.prompt_texts[1:5]] == ["\u2423Say", "\u2423", "😀", "\u2205"]


def test_sample_page_colours_every_prompt_token_by_its_density(tiny):
    shard, dataset = tiny
    view = load_views(shard, dataset, ANALYSIS, ["user_oriented_task_0"])["user_oriented_task_0"]
    page = heatmaps.sample_page({"base": ("pretrained", view), "chat <b>": ("tuned", view)}, "Sample <x>", "note")
    values = [float(v) for v in re.findall(r'data-density="([0-9.]+)"', page)]
    assert values == pytest.approx(np.concatenate([view.density, view.density]), abs=1e-6)
    assert page.count('class="tok ins"') == 2 * view.mask.sum() + 1  # and the legend's sample
    assert 'title="token 2: density 1.000 instruction token"' in page
    assert "chat &lt;b&gt;" in page and "<x>" not in page  # escaped
    assert "http" not in page  # self-contained


def test_a_sample_page_wraps_long_tokens_inside_each_models_column(tmp_path):
    """An unbroken 500-letter response ran across the other model's column, opened in Chromium."""
    from browser import chromium

    view = SampleView("s", [" " + "y" * 300, " b"], ["z" * 500], np.zeros((2, 1)), np.array([1.0, 0.5]),
                      np.array([True, False]))
    (tmp_path / "s.html").write_text(heatmaps.sample_page({"base": ("pretrained", view), "chat": ("tuned", view)},
                                                          "Sample s", "note"), encoding="utf8")
    with chromium(tmp_path) as driver:
        driver.get((tmp_path / "s.html").as_uri())
        widths = driver.execute_script("""return [[document.documentElement.scrollWidth,
            document.documentElement.clientWidth], ...Array.from(document.querySelectorAll('section'),
            s => [s.scrollWidth, s.clientWidth])];""")
    assert len(widths) == 3 and all(scroll <= client for scroll, client in widths), widths


def run_heatmaps(tiny, tmp_path, groups):
    """The heatmaps command on the tiny shard, as `base` (pre-trained) and `chat` (tuned), one sample a group."""
    shard, dataset = tiny
    heatmaps.main(["--dataset", str(dataset), "--groups", groups, "--samples", "1", "--pretrained", "base",
                   str(shard), "--tuned", "chat", str(shard), "--levels", "10", "--threshold", "7", "--p", "4",
                   "--png-dir", str(tmp_path / "png"), "--html-dir", str(tmp_path / "html")])


def test_heatmaps_command_writes_a_png_and_a_page_per_chosen_sample(tiny, tmp_path):
    run_heatmaps(tiny, tmp_path, "lima_author_=lima,mtbench_=mtbench")
    names = ["lima_author_1", "mtbench_1", "user_oriented_task_0"]  # one per group; the others are "other"
    assert sorted(p.stem for p in (tmp_path / "png").iterdir()) == names
    assert sorted(p.stem for p in (tmp_path / "html").iterdir()) == names


def test_a_sample_id_with_dollar_signs_is_drawn_as_written_not_as_math(tiny, tmp_path):
    """`price_$5_vs_$10` was read as matplotlib math in the title: a ParseSyntaxException failed the whole job."""
    shard, dataset = tiny
    view = load_views(shard, dataset, ANALYSIS)["lima_author_1"]
    heatmaps.draw_sample({"base": ("pretrained", view), "chat": ("tuned", view)}, 10,
                         "Sample price_$5_vs_$10: attribution, pre-trained vs tuned", tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").size[0] > 300


def test_tick_label_keeps_a_token_of_exactly_the_limit_whole():
    assert heatmaps.tick_label("abcdefghijkl") == "abcdefghijkl"  # 12 characters: the limit, not cut
    assert heatmaps.tick_label("abcdefghijklm") == "abcdefghijk\u2026"


def drawn_figure(monkeypatch, views, levels, tmp_path):
    """draw_sample's figure, kept open (pyplot.close only records it) so that the test reads its axes."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    heatmaps.draw_sample(views, levels, "t", tmp_path / "s.png")
    monkeypatch.undo()
    (figure,) = figures
    return figure


def test_heatmap_shows_every_prompt_token_across_every_response_token_down_on_a_0_to_levels_scale(
        tmp_path, monkeypatch):
    """The cells are the binned attribution, prompt token i in column i and response token j in row j, each
    row of panels holding its 40 prompt tokens (the 40th too), coloured on the scale 0..levels; the bars
    and tick labels of instruction tokens red, the response rows labelled with their own index."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    n, m, levels = 45, 3, 7
    binned = np.arange(n * m).reshape(n, m) % (levels + 1)
    mask = np.zeros(n, bool)
    mask[[2, 41]] = True
    view = SampleView("s", [f"p{i}" for i in range(n)], ["r0", "r1", "r2"], binned, np.linspace(0, 1, n), mask)
    figure = drawn_figure(monkeypatch, {"base": ("pretrained", view)}, levels, tmp_path)
    try:
        heats = [ax for ax in figure.axes if ax.images]
        bars = [ax for ax in figure.axes if ax.patches and not ax.images]
        assert len(heats) == len(bars) == 2
        assert [ax.get_xlabel() for ax in heats] == ["prompt tokens 0..39", "prompt tokens 40..44"]
        for heat, bar, start, stop in zip(heats, bars, (0, 40), (40, 45)):
            image = heat.images[0]
            assert np.asarray(image.get_array()).tolist() == binned[start:stop].T.tolist()  # rows: response
            assert image.get_clim() == (0, levels)
            labels = heat.get_xticklabels()
            assert [t.get_text() for t in labels] == [f"p{i}" for i in range(start, stop)]
            assert [to_hex(t.get_color()) == heatmaps.INSTRUCTION_COLOUR for t in labels] == mask[start:stop].tolist()
            colours = [to_hex(p.get_facecolor()) for p in bar.patches]
            assert colours == [heatmaps.INSTRUCTION_COLOUR if marked else heatmaps.OTHER_COLOUR
                               for marked in mask[start:stop]]
            assert [t.get_text() for t in heat.get_yticklabels()] == ["0 r0", "1 r1", "2 r2"]
        assert figure.axes[-1].get_ylabel() == f"binned attribution (0..{levels}, b = 0)"  # the colour bar
    finally:
        plt.close(figure)


def test_sample_page_escapes_the_models_prompt_tokens_and_response():
    """Model text is text: a token or a response holding markup must not become HTML on the page."""
    view = SampleView("s", ["<script>alert(1)</script>", " &amp;"], ["<img src=x ", "onerror=alert(2)>"],
                      np.zeros((2, 2)), np.array([1.0, 0.5]), np.array([True, False]))
    page = heatmaps.sample_page({"base": ("pretrained", view)}, "Sample s", "note")
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;</span>" in page and "&amp;amp;</span>" in page
    assert '<pre class="response">&lt;img src=x onerror=alert(2)&gt;</pre>' in page


def test_sample_page_colours_a_denser_token_more_deeply():
    view = SampleView("s", ["a", "b", "c"], ["r"], np.zeros((3, 1)), np.array([0.0, 0.5, 1.0]),
                      np.zeros(3, bool))
    page = heatmaps.sample_page({"base": ("pretrained", view)}, "Sample s", "note")
    alphas = [float(a) for a in re.findall(r'<span class="tok" style="background:rgba\(214, 39, 40, ([0-9.]+)\)"',
                                           page)]
    assert alphas == pytest.approx([0.08, 0.505, 0.93])


def test_heatmaps_command_shows_each_model_with_its_own_role_pretrained_first(tiny, tmp_path):
    run_heatmaps(tiny, tmp_path, "lima_author_=lima")
    page = (tmp_path / "html" / "lima_author_1.html").read_text(encoding="utf8")
    assert re.findall(r"<h2>(.*?)</h2>", page) == ["base <small>(pretrained)</small>", "chat <small>(tuned)</small>"]

# --- report pages -------------------------------------------------------------------------------


def test_table_page_shows_the_numbers_title_notice_and_notes(tmp_path):
    table = pd.DataFrame({"dataset": ["lima", "mtbench"], "n": [300, 80], "mean": [1.26834, float("nan")],
                          "p_value": [2.53e-14, 0.5]})
    write_table(table, tmp_path / "t.tsv", "Table 2 (x): scores", ["2 sample(s) have an empty response"],
                "Offline demo.")
    page = report_pages.table_page(tmp_path / "t.tsv", tmp_path / "t.md", "fallback")
    assert "<h1>Table 2 (x): scores</h1>" in page and '<p class="notice">Offline demo.</p>' in page
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert cells == ["lima", "300", "1.2683", "2.5e-14", "mtbench", "80", "n/a", "0.5000"]
    assert "<p>2 sample(s) have an empty response.</p>" in page


def test_table_page_cells_are_the_markdown_twins_rounded_once_whatever_they_hold(tmp_path):
    """The page re-read the 6-digit TSV and rounded again (1.582849 -> 1.58285 -> 1.5829, the twin 1.5828),
    made floats of an integer column with a blank cell (seed 1.0000), and read groups NA or nan as missing."""
    table = pd.DataFrame({
        "dataset": ["NA", "nan", "a|b <i>&amp;", "total"],
        "seed": pd.array([1, 2, 3, None], dtype=object),
        "mean": [1.582849, 123.45678, 1234567.891, 0.12344996],
        "cost": [0, 0, 0, 0],
    })
    table.loc[3, "seed"] = ""
    write_table(table, tmp_path / "t.tsv", "T", notice=">= 3 seeds per table")
    markdown = (tmp_path / "t.md").read_text()
    page = report_pages.table_page(tmp_path / "t.tsv", tmp_path / "t.md", "fallback")
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", page)]
    assert cells == ["NA", "1", "1.5828", "0", "nan", "2", "123.4568", "0", "a|b <i>&amp;", "3", "1234567.8910", "0",
                     "total", "", "0.1234", "0"]
    assert '<p class="notice">&gt;= 3 seeds per table</p>' in page
    # the twin shows the same cells: a text cell's | and < cannot split a row or become HTML
    assert "| a\\|b &lt;i>&amp;amp; | 3 | 1234567.8910 | 0 |" in markdown
    assert len(re.findall(r"<td class=text>", page)) == 4 and "<th class=text>dataset</th>" in page


def test_paper_comparison_gives_the_difference_and_keeps_missing_rows():
    computed = pd.DataFrame({"dataset": ["self_instruct", "lima"], "n": [252, 300],
                             "mean_pretrained": [0.93941, 1.2683], "p_value": [1.9e-5, 2.5e-14]})
    # sorted keys, as the rule's JSON param passes them: shown in the computed table's row and column order
    printed = {"lima": {"n": 300, "mean_pretrained": 1.268}, "mtbench": {"n": 80},
               "self_instruct": {"p_value": 1.92e-5, "mean_pretrained": 0.9394}}
    table = report_pages.paper_comparison(computed, printed)
    assert table[["dataset", "quantity"]].values.tolist() == [
        ["self_instruct", "mean_pretrained"], ["self_instruct", "p_value"], ["lima", "n"], ["lima", "mean_pretrained"],
        ["mtbench", "n"]]
    assert table["difference"].tolist()[:4] == pytest.approx([1e-5, -2e-7, 0, 3e-4])
    assert np.isnan(table["computed"].iloc[4]) and np.isnan(table["difference"].iloc[4])
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", report_pages.comparison_page(table, "x", "Table 2"))
    # the printed digits, not the 4-decimal rounding of the tables
    assert cells[:20] == ["self_instruct", "mean_pretrained", "0.9394", "0.93941", "1e-05",
                          "self_instruct", "p_value", "1.92e-05", "1.9e-05", "-2e-07",
                          "lima", "n", "300", "300", "0",
                          "lima", "mean_pretrained", "1.2680", "1.2683", "0.0003"]  # as printed: 4 decimals
    assert cells[-3:] == ["80", "n/a", "n/a"]


def test_comparison_page_prints_the_papers_digits_a_two_digit_difference_and_right_aligns_number_headers():
    """A printed 0.12345 is shown as printed (not rounded to 4 decimals), the difference in 2 significant
    digits; the headers of numbers right-aligned; the title is text."""
    computed = pd.DataFrame({"dataset": ["lima"], "mean": [0.12357345]})
    table = report_pages.paper_comparison(computed, {"lima": {"mean": 0.12345}})
    page = report_pages.comparison_page(table, "<b>pair</b>", "Table 2")
    assert re.findall(r"<td[^>]*>([^<]*)</td>", page) == ["lima", "mean", "0.12345", "0.123573", "0.00012"]
    assert "<th>paper</th><th>computed</th><th>difference</th>" in page  # numbers: right-aligned
    assert "<h1>Table 2 (&lt;b&gt;pair&lt;/b&gt;): the paper" in page and "<b>" not in page


def test_html_table_left_aligns_the_headers_of_text_columns_as_their_cells():
    """Under pandas 3 a column of strings is of dtype `str`, not `object`: its header was right-aligned above
    left-aligned cells (the comparison and provenance pages)."""
    page = report_pages.html_table(pd.DataFrame({"dataset": ["lima"], "n": [3], "mean": [0.5]}))
    assert "<th class=text>dataset</th><th>n</th><th>mean</th>" in page
    assert "<td class=text>lima</td><td>3</td><td>0.5000</td>" in page


def test_table_page_shows_a_column_of_groups_named_nan_or_inf_as_text(tmp_path):
    table = pd.DataFrame({"dataset": ["nan", "inf"], "n": [3, 4]})
    write_table(table, tmp_path / "t.tsv", "T")
    page = report_pages.table_page(tmp_path / "t.tsv", tmp_path / "t.md", "fallback")
    assert "<th class=text>dataset</th><th>n</th>" in page
    assert "<td class=text>nan</td><td>3</td>" in page and "<td class=text>inf</td><td>4</td>" in page


def test_table_page_notes_are_text_not_markup(tmp_path):
    write_table(pd.DataFrame({"n": [1]}), tmp_path / "t.tsv", "T", ["p < 0.05 for <b>all</b> & more"])
    page = report_pages.table_page(tmp_path / "t.tsv", tmp_path / "t.md", "fallback")
    assert "<p>p &lt; 0.05 for &lt;b&gt;all&lt;/b&gt; &amp; more.</p>" in page and "<b>" not in page


def test_provenance_page_shows_a_model_name_as_text():
    entry = {"config": {}, "attributions": {}, "weights": {}}
    page = report_pages.provenance_page({"pair": "p", "models": {"<i>m</i>": entry}, "libraries": {},
                                         "config": {}})
    assert "<h2>&lt;i&gt;m&lt;/i&gt;</h2>" in page and "<i>" not in page


def test_compare_command_keeps_a_group_named_na(tmp_path):
    """pandas read the group NA as missing: the paper's numbers for it were shown beside n/a."""
    (tmp_path / "t2.tsv").write_text("dataset\tn\tmean_tuned\nNA\t20\t1.5\nlima\t300\t\n")
    report_pages.main(["compare", "--tsv", str(tmp_path / "t2.tsv"), "--pair", "x", "--name", "Table 2",
                       "--printed", '{"NA": {"mean_tuned": 1.6, "n": 20}, "lima": {"mean_tuned": 1.2}}',
                       "--output-tsv", str(tmp_path / "cmp.tsv"), "--output", str(tmp_path / "cmp.html")])
    rows = [line.split("\t") for line in (tmp_path / "cmp.tsv").read_text().splitlines()[1:]]
    assert rows == [["NA", "n", "20", "20", "0"], ["NA", "mean_tuned", "1.6", "1.5", "-0.1"],
                    ["lima", "mean_tuned", "1.2", "", ""]]


def test_provenance_records_hashes_recorded_device_and_config(tmp_path):
    shard = Shard(tiny_shard().samples, {"model": "m", "source": "computed:reference", "binned_levels": 0,
                                         "device": "cpu", "precision": "float32", "weights_dtype": "float32"})
    save_shard(shard, tmp_path / "a.npz")
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    (weights / ".snakemake_timestamp").write_text("")  # Snakemake's marker in a directory output: not the model
    record = report_pages.provenance("demo", {"m": str(tmp_path / "a.npz")}, {"m": {"path": str(weights)}},
                                     {"table 2": {"analysis": ANALYSIS}},
                                     {"table2_pair": "352ff6cbe51b382e", "attribute_shard": "attribution v1"})
    entry = record["models"]["m"]
    assert entry["attributions"]["digest"] == "sha256:" + hashlib.sha256((tmp_path / "a.npz").read_bytes()).hexdigest()
    assert (entry["attributions"]["device"], entry["attributions"]["precision"]) == ("cpu", "float32")
    assert entry["weights"]["files"] == {"config.json": "sha256:" + hashlib.sha256(b"{}").hexdigest()}
    assert record["libraries"]["numpy"] == np.__version__
    assert record["libraries"]["shiftlens"] != "not installed"
    page = report_pages.provenance_page(record)
    assert "sha256:" in page and "&quot;threshold&quot;: 7" in page and "weights file config.json" in page
    assert "<td class=text>attribute_shard</td><td class=text>attribution v1</td>" in page  # the code of each job


def test_load_header_reads_only_the_header(tmp_path):
    save_shard(Shard([], {"model": "m", "binned_levels": 10}), tmp_path / "e.npz")
    assert load_header(tmp_path / "e.npz") == {"model": "m", "binned_levels": 10}


@pytest.mark.parametrize("name", ["paper-released.yaml", "paper.yaml"])
def test_the_paper_configs_declare_the_printed_table2(name):
    from pathlib import Path

    import yaml
    from snakemake.utils import validate
    from test_released_workflow import PRINTED_TABLE2

    config = yaml.safe_load((Path(__file__).parents[1] / "config" / name).read_text())
    validate(config, str(Path(__file__).parents[1] / "schemas" / "config.schema.yaml"))
    printed = config["pairs"]["llama-vicuna"]["paper"]["table2"]
    assert {group: (row["n"], row["mean_pretrained"], row["mean_tuned"], row["p_value"])
            for group, row in printed.items()} == PRINTED_TABLE2
    assert config["report"]["samples"] >= 2


def test_the_position_picture_draws_the_pretrained_model_blue_and_the_tuned_model_red(tmp_path):
    """The caption tells the models apart by colour (pre-trained blue dashed, tuned red solid)."""
    profile = position.position_profile([np.arange(10.0), np.arange(10.0)[::-1]])

    def colours(role):
        position.draw_profiles({"m": (role, profile)}, "t", tmp_path / f"{role}.png")
        pixels = {tuple(p[:3]) for p in np.asarray(Image.open(tmp_path / f"{role}.png").convert("RGB")).reshape(-1, 3)}
        return (31, 119, 180) in pixels, (214, 39, 40) in pixels  # matplotlib's tab:blue, tab:red

    assert colours("pretrained") == (True, False)
    assert colours("tuned") == (False, True)


def test_token_texts_keep_the_space_a_byte_level_token_marks_before_a_character_it_spells_in_bytes():
    """Byte-level BPE's `ĠâĢĻ` is a space and ’; its offsets cover only the ’: the label is " ’", as for `▁x`."""
    from workflow_scripts.attribution_views import token_texts

    assert token_texts(["It", "\u0120\u00e2\u0122\u013b", "s"], "It ’s", [[0, 2], [3, 4], [4, 5]]) == ["It", " ’", "s"]


def test_token_texts_show_every_zero_width_special_token_even_two_in_a_row():
    """Only a further byte piece of one character (same non-empty span) shows nothing; `<s>` then a chat
    template's zero-width marker at the same place are two tokens to label."""
    from workflow_scripts.attribution_views import token_texts

    shown = token_texts(["<s>", "<|im_start|>", "\u2581x"], "x", [[0, 0], [0, 0], [0, 1]])
    assert shown == ["<s>", "<|im_start|>", " x"]
