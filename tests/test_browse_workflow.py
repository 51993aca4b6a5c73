"""The demo's explanation browser, built by real Snakemake on a copy of the finished demo and opened from
disk in headless Chromium: rows show, the layer filter and the word search narrow them to exactly the
rows the explanation files say, paging works, and the console stays clean."""
from __future__ import annotations

import json
import shutil

import pytest
from browser import chromium, console_errors
from browser_actions import choose, click, open_page, search, shown
from test_workflow import planned_jobs, snakemake

pytestmark = pytest.mark.workflow

MODELS = ("demo-base", "demo-tuned")


@pytest.fixture(scope="module")
def demo(finished_demo, tmp_path_factory):
    """A copy of the finished demo whose browser was deleted and rebuilt by `snakemake browse`."""
    from conftest import clone_run

    work = clone_run(finished_demo, tmp_path_factory.mktemp("browse") / "work")
    assert (work / "results/browse/demo/index.html").is_file()  # the default target built it
    shutil.rmtree(work / "results/browse")
    assert planned_jobs(work) == {"browse_pair": 1, "all": 1}  # nothing else reruns for it
    snakemake(work, "browse")
    return work


def lossless_rows(work, kind, model):
    """Per row of the model (by layer, head, rank, as the browser orders them), its words, read straight from
    the layer shards the browser was built from."""
    rows = []
    for layer in range(4):
        lines = (work / f"results/{kind}/{model}/layer-{layer}.tsv").read_text(encoding="utf8").splitlines()[1:]
        for fields in sorted((line.split("\t") for line in lines), key=lambda f: (int(f[4]), int(f[-3]))):
            words = json.loads(fields[-1])
            rows.append((layer, [w for pair in words for w in pair] if kind == "attention" else words))
    return rows


def test_the_browser_is_part_of_the_default_target_and_a_rerun_plans_nothing(demo):
    log = (demo / "logs/browse/demo.log").read_text()
    assert "attention: 256 + 256 rows" in log and "ffn: 256 + 256 rows" in log
    assert planned_jobs(demo) == {}


def test_the_demo_browser_filters_searches_and_pages_in_headless_chromium(demo, tmp_path):
    heads = {m: lossless_rows(demo, "attention", m) for m in MODELS}
    components = {m: lossless_rows(demo, "ffn", m) for m in MODELS}
    counts = {}
    for rows in heads.values():
        for _, words in rows:
            for w in {w.lower() for w in words}:
                counts[w] = counts.get(w, 0) + 1
    word = max(sorted(counts), key=counts.get)  # the most frequent word in pairs: rows in both models
    with chromium(tmp_path) as driver:
        open_page(driver, (demo / "results/browse/demo/index.html").as_uri())
        assert [(m, len(rows)) for m, rows in shown(driver)] == [(0, 100), (1, 100)]
        assert driver.find_element("id", "page-label").text == "page 1 of 3"

        choose(driver, "layer", "2")
        for m, rows in shown(driver):
            assert len(rows) == sum(layer == 2 for layer, _ in heads[MODELS[m]]) == 64
            assert {layer for layer, *_ in rows} == {2}
        choose(driver, "layer", "")

        search(driver, word.upper())
        for m, rows in shown(driver):
            truth = [i for i, (_, words) in enumerate(heads[MODELS[m]]) if word in (w.lower() for w in words)]
            assert len(rows) == min(len(truth), 100) > 0
            assert all(word in text.lower() and {k.lower() for k in marks} == {word} for _, _, text, marks in rows)
            assert [layer for layer, *_ in rows] == [heads[MODELS[m]][i][0] for i in truth[:100]]

        click(driver, "clear")
        click(driver, "next")
        assert driver.find_element("id", "page-label").text == "page 2 of 3"
        assert [(m, rows[0][0]) for m, rows in shown(driver)] == [(0, 1), (1, 1)]  # row 100: layer 1 (64 a layer)
        click(driver, "next")
        assert [len(rows) for _, rows in shown(driver)] == [56, 56]

        click(driver, "tab-ffn")
        first = components["demo-tuned"][0][1][0]
        search(driver, first)
        for m, rows in shown(driver):
            truth = [i for i, (_, words) in enumerate(components[MODELS[m]]) if first.lower() in map(str.lower, words)]
            assert len(rows) == len(truth) and (m == 0 or len(rows) > 0)
        notes = driver.find_elements("css selector", ".pane[data-model='1'] tr.row .notes li")
        assert any(n.text.startswith("seed 0: ") for n in notes)  # rank 1 is annotated (annotation.max_rank 4)
        assert console_errors(driver) == []
