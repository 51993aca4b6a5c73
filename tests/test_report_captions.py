"""The report's RST texts (report/*.rst) rendered as Snakemake 9 renders them: Jinja
(`Environment(trim_blocks=True, lstrip_blocks=True)`, snakemake/report/__init__.py) and then docutils'
`publish_parts(..., writer_name="html")`, whose defaults allow `.. raw:: html`, `.. include::` and links of
any scheme. A config string or a sample id must reach the page as text, never as markup."""
from __future__ import annotations

import html
from pathlib import Path
from types import SimpleNamespace

import pytest
from docutils.core import publish_parts
from jinja2 import Environment

REPORT = Path(__file__).resolve().parents[1] / "report"
TABLES = ("table1", "table2", "table3", "table5_tasks", "table5_levels", "annotation_cost")
HOSTILE = [
    "x`` `click <javascript:alert(1)>`_ ``y",  # out of an inline literal, into a link
    "see javascript:alert(1) and *this* _that_ |sub| [1]_ `role`:raw: \\",  # a bare URI, inline markup
    "price_$5_vs_$10 <img src=x onerror=alert(1)> & more",
]


def render(name: str, notice: str = "", **wildcards) -> str:
    namespace = SimpleNamespace(
        wildcards=SimpleNamespace(**wildcards),
        config={"pairs": {"demo": {"pretrained": "demo-base", "tuned": "demo-chat"}}, "notice": notice},
    )
    text = Environment(trim_blocks=True, lstrip_blocks=True).from_string((REPORT / name).read_text()).render(
        snakemake=namespace, categories={}, files=[]
    )
    return publish_parts(text, writer_name="html")["html_body"]


def assert_shown_as_text(page: str, text: str) -> None:
    assert "system-message" not in page and "problematic" not in page, page  # docutils' error boxes
    assert "javascript:" not in page.replace(html.escape(text, quote=False), "")  # no link made of it
    assert "<img" not in page and "<a " not in page.replace('<a class="reference external" href="results/browse/', "")
    assert html.escape(text, quote=False) in " ".join(page.split()) or text in page


@pytest.mark.parametrize("sample", HOSTILE)
@pytest.mark.parametrize("name", ["heatmap.rst", "sample_page.rst"])
def test_a_sample_id_reaches_the_caption_as_text(name, sample):
    assert_shown_as_text(render(name, pair="demo", sample=sample), sample)


@pytest.mark.parametrize("notice", HOSTILE + ["Smoke test: see *.tsv files and results_dir_"])
def test_the_notice_reaches_the_front_page_as_text(notice):
    assert_shown_as_text(render("workflow.rst", notice), notice)


def test_every_caption_renders_without_a_docutils_error():
    pages = [render(n, pair="demo", sample="lima_author_demo_1") for n in ("heatmap.rst", "sample_page.rst")]
    pages += [render(n, pair="demo") for n in ("figure3.rst", "paper_comparison.rst", "position.rst", "provenance.rst")]
    pages += [render("table.rst", pair="demo", table=t) for t in TABLES]
    pages.append(render("workflow.rst", "Offline demo: a smoke test."))
    assert all("system-message" not in p for p in pages)
    assert "of sample lima_author_demo_1 (pair" in " ".join(pages[0].split())
    assert "Offline demo: a smoke test." in pages[-1]
