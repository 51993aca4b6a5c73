"""The explanation browser opened from disk (file://) in headless Chromium, on small synthetic explanations
with awkward words: rows show, filters and search narrow them exactly, paging walks them, nothing from data
runs as HTML, and the console stays clean."""
from __future__ import annotations

import shutil
from collections import Counter

import pytest
from browser import chromium, console_errors
from browser_actions import choose, click, open_page, search, shown, status
from synthetic_browser import LONG, MODELS, RTL_PAIR, XSS, write_inputs

from workflow_scripts.browser_index import build

LAYERS, HEADS, DIMS = 3, 4, 24  # 288 head rows per model: pages of 100, 100 and 88, not aligned with heads


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser_page")
    inputs = write_inputs(folder, layers=LAYERS, heads=HEADS, dims=DIMS, ranks=40)
    build("demo", list(MODELS), list(MODELS), inputs["attention"], inputs["ffn"], inputs["seeds"],
          inputs["describe"], inputs["task"], inputs["level"], str(folder / "browse"), per_bucket=50, chunk_bytes=1000)
    return folder / "browse", inputs["expected"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium")) as session:
        yield session


@pytest.fixture
def page(site, driver):
    """The page freshly opened (state in the URL hash cleared), and its console checked afterwards."""
    folder, expected = site
    driver.get("about:blank")
    open_page(driver, (folder / "index.html").as_uri())
    yield driver, expected
    assert console_errors(driver) == []


def holding(rows, word):
    return [i for i, words in enumerate(rows) if word.lower() in (w.lower() for w in words)]


def test_first_page_shows_both_models_side_by_side_one_page_of_rows(page):
    driver, _ = page
    panes = shown(driver)
    assert [m for m, _ in panes] == [0, 1]
    assert [len(rows) for _, rows in panes] == [100, 100]
    assert [(layer, head) for layer, head, _, _ in panes[0][1][:25:24]] == [(0, 0), (0, 1)]
    assert driver.find_element("id", "page-label").text == "page 1 of 3"
    headings = [e.text for e in driver.find_elements("css selector", ".pane h2")]
    assert headings == ["base (pre-trained)", "tuned (tuned)"]
    assert [e.text for e in driver.find_elements("css selector", ".pane .count")] == ["288 head dimensions"] * 2


def test_layer_and_head_filters_keep_only_their_rows(page):
    driver, _ = page
    choose(driver, "layer", "1")
    panes = shown(driver)
    assert [len(rows) for _, rows in panes] == [HEADS * DIMS] * 2
    assert {layer for _, rows in panes for layer, *_ in rows} == {1}
    assert driver.find_element("id", "page-label").text == "page 1 of 1"
    choose(driver, "head", "2")
    panes = shown(driver)
    assert [len(rows) for _, rows in panes] == [DIMS] * 2
    assert {(layer, head) for _, rows in panes for layer, head, *_ in rows} == {(1, 2)}


def keys(driver):
    """(layer, head, rank) of every row of every pane, from the table cells."""
    return driver.execute_script("""return Array.from(document.querySelectorAll('.pane')).map(p =>
        Array.from(p.querySelectorAll('tr.row')).map(r => [0, 1, 3].map(i => Number(r.cells[i].textContent))));""")


def test_paging_walks_the_rows_in_order(page):
    driver, _ = page
    order = [[i // (HEADS * DIMS), i % (HEADS * DIMS) // DIMS, i % DIMS + 1] for i in range(LAYERS * HEADS * DIMS)]
    assert keys(driver) == [order[:100]] * 2
    click(driver, "next")
    assert driver.find_element("id", "page-label").text == "page 2 of 3"
    assert keys(driver) == [order[100:200]] * 2  # row 100: layer 1 (96 rows a layer), head 0, rank 5
    click(driver, "next")
    assert keys(driver) == [order[200:]] * 2 and len(order[200:]) == 88
    assert not driver.find_element("id", "next").is_enabled()
    click(driver, "prev")
    click(driver, "prev")
    assert driver.find_element("id", "page-label").text == "page 1 of 3"
    assert not driver.find_element("id", "prev").is_enabled()


@pytest.mark.parametrize("word", ["translate", "TrAnSlAtE", XSS, "__proto__", "it's", 'say "hi"', "back\\slash"])
def test_word_search_shows_exactly_the_rows_holding_the_word(page, word):
    driver, expected = page
    search(driver, word)
    panes = shown(driver)
    summaries = driver.execute_script("return Array.from(document.querySelectorAll('.heads'), h => h.textContent)")
    for m, rows in panes:
        truth = holding(expected["heads"][MODELS[m]], word)
        assert len(rows) == len(truth) > 0
        # which heads hold it: most rows first, then by layer and head
        counts = Counter((i // (HEADS * DIMS), i % (HEADS * DIMS) // DIMS) for i in truth)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        listed = ", ".join(f"L{layer} H{head} \u00d7{n}" for (layer, head), n in ranked[:12])
        assert summaries[m] == f"in {len(counts)} heads: {listed}" + (", \u2026" if len(counts) > 12 else "")
        for _, _, text, marks in rows:
            assert marks and {w.lower() for w in marks} == {word.lower()} and marks[0] in text
    assert driver.execute_script("return document.querySelectorAll('#panes img, #panes script').length") == 0


def test_search_and_layer_filter_combine(page):
    driver, expected = page
    choose(driver, "layer", "2")
    search(driver, "w03")
    for m, rows in shown(driver):
        truth = [i for i in holding(expected["heads"][MODELS[m]], "w03") if i // (HEADS * DIMS) == 2]
        assert len(rows) == len(truth) and {layer for layer, *_ in rows} == {2}
    search(driver, "no-such-word")
    assert shown(driver) == [[0, []], [1, []]]
    assert "no head dimensions hold the word" in status(driver)


def test_counts_of_one_are_said_in_the_singular(page):
    """A word in one dimension of one head read "1 head dimensions" and "in 1 heads"."""
    driver, _ = page
    search(driver, LONG)  # in every model's first head row only
    counts = [e.text for e in driver.find_elements("css selector", ".pane .count")]
    assert counts == [f"1 head dimension with \u201c{LONG}\u201d"] * 2
    summaries = driver.execute_script("return Array.from(document.querySelectorAll('.heads'), h => h.textContent)")
    assert summaries == ["in 1 head: L0 H0 \u00d71"] * 2
    assert status(driver).startswith("2 head dimensions,")


def test_a_single_model_view_shows_one_pane(page):
    driver, _ = page
    choose(driver, "view", "1")
    panes = shown(driver)
    assert [m for m, _ in panes] == [1] and len(panes[0][1]) == 100


def test_the_ffn_tab_shows_components_with_each_seeds_annotation_as_text(page):
    driver, expected = page
    click(driver, "tab-ffn")
    assert not driver.find_element("id", "head-filter").is_displayed()
    panes = shown(driver)
    assert [len(rows) for _, rows in panes] == [100, 100]
    first = driver.find_element("css selector", ".pane[data-model='1'] tr.row .notes").text
    labels = "task: translation; coding · level: semantic"
    assert first.splitlines() == [f"seed {s}: {XSS} concept tuned 0 1 seed {s} · {labels}" for s in (0, 1)]
    search(driver, "w11")
    for m, rows in shown(driver):
        assert len(rows) == len(holding(expected["ffn"][MODELS[m]], "w11")) > 0
        assert all(marks == ["w11"] for *_, marks in rows)
    assert driver.execute_script("return document.querySelectorAll('#panes img').length") == 0


def test_suggestions_list_the_indexed_words_with_the_typed_prefix(page):
    driver, _ = page
    driver.find_element("id", "word").send_keys("w0")
    from selenium.webdriver.support.ui import WebDriverWait

    options = WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#word-suggestions option')).map(o => o.value)"))
    assert options == [f"w{i:02d}" for i in range(10)]


def test_a_long_word_wraps_inside_its_pane_and_a_right_to_left_pair_reads_key_then_query(page):
    """A 240-letter word ran across the other model's pane; two right-to-left words under "key = query" were
    drawn query first (one bidi run)."""
    driver, _ = page
    geometry = driver.execute_script("""
        const left = (node, text) => {  // where `text` is drawn inside `node`, whatever elements hold it
          const walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
          for (let t = walker.nextNode(); t; t = walker.nextNode()) {
            const at = t.data.indexOf(text);
            if (at >= 0) { const r = document.createRange(); r.setStart(t, at); r.setEnd(t, at + text.length);
                           return r.getBoundingClientRect().left; }
          }
          return null;
        };
        const pairs = Array.from(document.querySelectorAll('.pair'));
        const rtl = pairs.filter(p => p.textContent === arguments[0] + ' = ' + arguments[1]);
        const long = pairs.filter(p => p.textContent.includes(arguments[2]));
        return {page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
                long: long.map(p => [p.closest('.pane').getBoundingClientRect().right,
                                     p.getBoundingClientRect().right]),
                rtl: rtl.map(p => [left(p, arguments[0]), left(p, arguments[1])])};""", *RTL_PAIR, LONG)
    assert len(geometry["long"]) == 2 and len(geometry["rtl"]) == 2  # one per model's first row
    assert geometry["page"][0] <= geometry["page"][1]  # no horizontal scrolling
    assert all(pair_right <= pane_right + 1 for pane_right, pair_right in geometry["long"])
    assert all(key < query for key, query in geometry["rtl"])


def test_the_state_in_the_address_opens_the_same_view(page, site):
    driver, expected = page
    url = (site[0] / "index.html").as_uri()
    for how in ("opened", "edited"):  # a link opened, or the address edited on the open page (no reload)
        if how == "opened":
            driver.get("about:blank")
        open_page(driver, url + f"#kind=ffn&view=0&word=w05&layer=1&{how}")
        ((m, rows),) = shown(driver)
        assert m == 0 and len(rows) == len([i for i in holding(expected["ffn"]["base"], "w05") if i // 40 == 1]) > 0
        assert driver.find_element("id", "word").get_attribute("value") == "w05"
        assert driver.find_element("id", "layer").get_attribute("value") == "1"
        open_page(driver, url + "#kind=constructor&view=__proto__")  # nonsense falls back to the defaults
        assert [m for m, _ in shown(driver)] == [0, 1]


def test_a_missing_data_file_is_named_on_the_page(site, driver, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    folder = tmp_path / "browse"
    shutil.copytree(site[0], folder)
    (folder / "data" / "attention-1-0.js").unlink()
    driver.get("about:blank")
    driver.get((folder / "index.html").as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.state") != "loading")
    assert driver.execute_script("return document.body.dataset.state") == "error"
    assert status(driver) == "could not load data/attention-1-0.js (is the browser folder complete?)"
    assert any("attention-1-0.js" in e for e in console_errors(driver))
