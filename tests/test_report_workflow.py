"""`snakemake --report` through real Snakemake on the finished demo (and on the paper's released data),
opened in headless Chromium the way a user opens it: every table shows numbers, every image loads."""
from __future__ import annotations

import json
import re
import zipfile

import pandas as pd
import pytest
from browser import broken_images, chromium, console_errors
from conftest import PAPER_DIR, clone_run
from test_workflow import copy_workflow, planned_jobs, snakemake

from workflow_scripts.code_version import method_version

pytestmark = pytest.mark.workflow

CATEGORIES = {  # category -> the labels of its results, the demo's (pair demo; report.samples 2 of 3 groups)
    "Attribution (Tables 1 and 2)": {"Table 1", "Table 2", "importance by prompt position"}
    | {f"{kind} {group}_demo_{i}" for kind in ("attribution heatmap", "tokens by density")
       for group in ("user_oriented_task", "lima_author", "mtbench_writing") for i in (1, 2)},
    "Self-attention heads (Table 3)": {"Table 3"},
    "FFN concepts (Table 5, Figure 3)": {"Table 5, tasks", "Table 5, linguistic levels", "annotation cost", "Figure 3"},
    "Provenance": {"provenance"},
}
NUMBER = re.compile(r"^-?\d+(\.\d+)?(e-?\d+)?$")


@pytest.fixture(scope="module")
def demo_report(finished_demo, tmp_path_factory):
    """The demo's report, built from the finished run (the report pages are part of `all`)."""
    work = clone_run(finished_demo, tmp_path_factory.mktemp("report") / "work")
    snakemake(work, "--report", "report.html")
    snakemake(work, "--report", "report.zip")
    return work


def test_report_job_adds_nothing_to_plan_after_it(demo_report):
    assert planned_jobs(demo_report) == {}
    assert (demo_report / "report.html").stat().st_size > 100_000
    with zipfile.ZipFile(demo_report / "report.zip") as archive:
        names = archive.namelist()
    assert "report/report.html" in names and len(names) == 1 + 6 + 12 + 2 + 1  # pages, heatmaps, figures, provenance
    assert {n.rsplit("/", 1)[1] for n in names} >= {"table2.html", "figure3.png", "lima_author_demo_1.png"}


def wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def open_category(driver, url: str, category: str) -> None:
    """Load the report (a single-page app: wait until its menu lists the category), open the category."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    item = wait(driver, lambda d: d.find_elements(By.XPATH, f"//*[text()='{category}']"))[0]
    item.click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "tr a[iconname=eye]"))


def shown_content(driver, previous: str | None) -> tuple[str, str]:
    """After a click on a result's eye: ("img", size) or ("html", the page's text, its table cells)."""
    from selenium.webdriver.common.by import By

    def new_content(d):  # the shown result, not the report's own logo
        found = [e for e in d.find_elements(By.CSS_SELECTOR, "iframe[src^='data:'], img[src^='data:']")
                 if "filename=logo.svg" not in e.get_attribute("src")]
        return found[0] if found and found[0].get_attribute("src") != previous else False

    element = wait(driver, new_content)
    src = element.get_attribute("src")
    if element.tag_name == "img":
        wait(driver, lambda d: d.execute_script("return arguments[0].complete", element))
        return "img", src
    driver.switch_to.frame(element)
    try:
        wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")
        return "html", src
    finally:
        driver.switch_to.default_content()


def frame_cells(driver) -> tuple[str, list[str], int]:
    from selenium.webdriver.common.by import By

    frame = driver.find_element(By.TAG_NAME, "iframe")
    driver.switch_to.frame(frame)
    try:
        cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "table td")]
        tokens = len(driver.find_elements(By.CSS_SELECTOR, "span[data-density]"))
        return driver.find_element(By.TAG_NAME, "body").text, cells, tokens
    finally:
        driver.switch_to.default_content()


def visit(driver, url: str, category: str) -> dict[str, tuple]:
    """Every result of a category, opened in turn: label -> (kind, text, table cells, density tokens)."""
    from selenium.webdriver.common.by import By

    open_category(driver, url, category)
    seen, previous = {}, None
    for i in range(len(driver.find_elements(By.CSS_SELECTOR, "tr a[iconname=eye]"))):
        row = driver.find_elements(By.CSS_SELECTOR, "tr:has(a[iconname=eye])")[i]
        label = " ".join(cell.text for cell in row.find_elements(By.TAG_NAME, "td") if cell.text)
        row.find_element(By.CSS_SELECTOR, "a[iconname=eye]").click()
        kind, previous = shown_content(driver, previous)
        if kind == "img":
            assert broken_images(driver) == [], label
            seen[label] = ("img", "", [], 0)
        else:
            seen[label] = ("html", *frame_cells(driver))
    return seen


def test_demo_report_shows_every_table_with_numbers_and_every_image(demo_report, tmp_path):
    url = (demo_report / "report.html").as_uri()
    with chromium(tmp_path) as driver:
        results = {category: visit(driver, url, category) for category in CATEGORIES}
        errors = console_errors(driver)
    for category, labels in CATEGORIES.items():
        assert set(results[category]) == labels, category
    for seen in results.values():
        for label, (kind, text, cells, tokens) in seen.items():
            if label.startswith(("Table", "annotation cost")):
                assert kind == "html" and sum(bool(NUMBER.match(c)) for c in cells) >= 3, (label, cells)
                assert "Offline demo" in text or label == "annotation cost", label  # the config's notice
            elif label.startswith("tokens by density"):
                assert kind == "html" and tokens > 10 and "demo-base" in text and "demo-tuned" in text, label
            elif label == "provenance":
                assert "sha256:" in text and "snakemake" in text and "float32" in text, text[:500]
                assert "attribute_shard" in text and method_version("attribution") in text, text[:500]  # its code
            else:
                assert kind == "img", label
    table2 = pd.read_csv(demo_report / "results/tables/demo/table2.tsv", sep="\t")
    shown = results["Attribution (Tables 1 and 2)"]["Table 2"][2]
    assert f"{table2['mean_tuned'].iloc[0]:.4f}" in shown  # the TSV's numbers, as its Markdown twin rounds them
    assert errors == []


def test_a_clone_of_a_finished_run_copies_the_config_files_a_test_may_edit(tmp_path):
    (tmp_path / "run/results").mkdir(parents=True)
    for name in ("config.yaml", "results/table.tsv"):
        (tmp_path / "run" / name).write_text("x")
    clone = clone_run(tmp_path / "run", tmp_path / "clone")
    assert (clone / "config.yaml").stat().st_ino != (tmp_path / "run/config.yaml").stat().st_ino
    assert (clone / "results/table.tsv").stat().st_ino == (tmp_path / "run/results/table.tsv").stat().st_ino


def test_a_report_made_after_a_config_edit_states_the_settings_its_numbers_were_computed_with(finished_demo, tmp_path):
    """`--report` does not check that the outputs are up to date: after `analysis.threshold: 7 -> 5`,
    before the run, the captions said b = 5 beside tables, pictures and a paper comparison computed with
    b = 7. Every setting a result shows now comes from the files the job wrote, never from the config."""
    work = clone_run(finished_demo, tmp_path / "work")
    config = (work / "config.yaml").read_text()
    edited = config.replace("  threshold: 7 ", "  threshold: 5 ").replace("seeds: [0, 1, 2, 3, 4]", "seeds: [0, 1]")
    assert edited.count("threshold: 5") == 1, "the demo config's lines changed"
    (work / "config.yaml").write_text(edited)
    assert "table2_pair" in planned_jobs(work)  # stale, and the report is made anyway
    snakemake(work, "--report", "report.zip")
    with zipfile.ZipFile(work / "report.zip") as archive:
        text = "\n".join(archive.read(n).decode("utf8", "replace") for n in archive.namelist() if n.endswith(".html"))
    assert not re.search(r"b = 5|threshold\W{0,12}= 5|threshold&quot;: 5|\"threshold\": 5", text)
    assert not re.search(r"seeds\W{0,12}= \[0, 1\]", text)
    assert "b = 7 (analysis.threshold)" in text  # under Tables 1 and 2, as the tables were computed
    assert "seeds 0, 1, 2, 3, 4" in text  # under Table 5


def test_the_notice_reaches_the_reports_front_page_as_text(finished_demo, tmp_path):
    """The notice went into the front page's RST as it was: a link or a raw HTML directive in it ran in the
    report (docutils allows both); now every character that is not a letter or digit is escaped."""
    work = clone_run(finished_demo, tmp_path / "work")
    notice = "Demo: see `the docs <javascript:alert(1)>`_ and <img src=x onerror=alert(1)> *.tsv results_"
    config = (work / "config.yaml").read_text()
    edited = re.sub(r"(?m)^notice: .*$", "notice: " + json.dumps(notice), config)
    assert edited != config, "the demo config has no notice line"
    (work / "config.yaml").write_text(edited)
    snakemake(work, "--report", "report.html")
    text = (work / "report.html").read_text(encoding="utf8")
    assert "javascript:alert" not in text.replace("javascript:alert(1)&gt;`_", "")
    assert "<img src=x" not in text and "System Message" not in text
    shown = "Demo: see `the docs &lt;javascript:alert(1)&gt;`_ and &lt;img src=x onerror=alert(1)&gt; *.tsv results_"
    assert shown in text


@pytest.mark.paper
def test_released_data_report_shows_the_paper_table2_beside_the_computed_one(tmp_path):
    if not PAPER_DIR.is_dir():
        pytest.skip(f"the paper's released data is not at {PAPER_DIR}")
    work = copy_workflow(tmp_path)
    config = ["--configfile", "config/paper-released.yaml", "--config", f"paper_data={PAPER_DIR}",
              "report={samples: 1}"]
    snakemake(work, "report_attribution", *config)
    comparison = pd.read_csv(work / "results/report/llama-vicuna/table2_vs_paper.tsv", sep="\t")
    assert comparison["dataset"].unique().tolist() == ["self_instruct", "lima", "mtbench"]
    means = comparison[comparison["quantity"].str.startswith("mean")]
    assert len(means) == 6 and means["difference"].abs().max() <= 5e-5
    assert (comparison.loc[comparison["quantity"] == "n", "difference"] == 0).all()
    assert sorted(p.name for p in (work / "results/report/llama-vicuna/heatmaps").glob("*.png")) == [
        "lima_author_1.png", "mtbench_writing_81.png", "user_oriented_task_0.png"]
    profile = pd.read_csv(work / "results/report/llama-vicuna/position_importance.tsv", sep="\t")
    pretrained = profile[profile["model"] == "llama-7b"]["mean"].to_numpy()
    assert pretrained[0] > pretrained[4] < pretrained[9]  # U-shaped, as the paper reports
    snakemake(work, "report_attribution", "--report", "report.html", *config)
    assert "Table 2 vs the paper" in (work / "report.html").read_text()
    assert planned_jobs(work, "report_attribution", *config) == {}
    # the paper's attributions: no setting of this workflow's attribution made them (it listed the defaults:
    # greedy responses in float32), and a change of one is no change of these tables
    slices = json.loads((work / "results/report/llama-vicuna/provenance.json").read_text())["config"]
    assert slices["tables 1 and 2"]["attribution"].startswith("not used: every model of the pair has released")
    assert planned_jobs(work, "report_attribution", *config, "attribution={precision: bfloat16}") == {}
