"""Self-contained HTML pages for the Snakemake report: tables as tables, the paper comparison, and
provenance (docs/design.md#report).

Snakemake 9's report shows images, PDFs and HTML pages inline but offers a TSV only as a download,
so every table is rendered here to a small HTML page from its Markdown twin: title, notice, the cells as
the twin prints them (numbers rounded once, from the full-precision values), and notes.
"""
from __future__ import annotations

import argparse
import html
import json
import logging
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from .atomic import atomic_file, atomic_write_text
from .cli import setup_logging
from .paper_data import sha256
from .table_files import cell_text, markdown_cells, markdown_unescape

log = logging.getLogger(__name__)

STYLE = """
body { font-family: sans-serif; margin: 1.2em; }
table { border-collapse: collapse; font-size: 14px; margin: .8em 0; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
.notice { border-left: 4px solid #e6a23c; padding: .3em .8em; background: #fdf6ec; }
.worse { color: #b03a2e; } pre { background: #f4f4f4; padding: .5em; white-space: pre-wrap; }
"""


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


Cell = tuple[str, bool]  # (text, left-aligned as text rather than right-aligned as a number)


def table_html(head: list[Cell], rows: list[list[Cell]]) -> str:
    """The one way a page writes a table: every cell escaped, text left-aligned, numbers right-aligned."""

    def cells(tag: str, row: list[Cell]) -> str:
        return "".join(f'<{tag}{" class=text" if text_cell else ""}>{html.escape(text)}</{tag}>'
                       for text, text_cell in row)

    body = "\n".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table>\n<thead><tr>{cells('th', head)}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def html_table(frame: pd.DataFrame, formats: dict | None = None) -> str:
    """Numbers right-aligned, 4 decimals (tiny p-values in 2 significant digits) unless `formats` names a
    column's own formatter; NaN as n/a.

    Args:
        frame: the table as written to its TSV (rows and columns shown as they are)
    """
    formats = formats or {}
    head = [(str(c), not pd.api.types.is_numeric_dtype(frame[c])) for c in frame.columns]  # pandas 3: str, not object
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, row):
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            text = formats[column](value) if column in formats and numeric and value == value else cell_text(value)
            cells.append((text, not numeric))
        rows.append(cells)
    return table_html(head, rows)


@dataclass
class MarkdownTable:
    """A table's Markdown twin as `write_table` wrote it: the page shows its cells, so that numbers are
    rounded once, from the full-precision values (the TSV holds 6 significant digits)."""

    title: str = ""
    notices: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_markdown_table(markdown: str) -> MarkdownTable:
    """Title, notice lines (`> `), the table's header and rows, and note paragraphs, unescaped."""
    twin, table_lines = MarkdownTable(), 0
    for line in markdown.splitlines():
        line = line.strip()
        if line.startswith("# ") and not twin.title:
            twin.title = markdown_unescape(line[2:])
        elif line.startswith(">"):
            twin.notices.append(markdown_unescape(line[2:] if line.startswith("> ") else line[1:]))
        elif line.startswith("|"):  # the header, the |---| line, then the rows
            table_lines += 1
            if table_lines == 1:
                twin.columns = markdown_cells(line)
            elif table_lines > 2:
                twin.rows.append(markdown_cells(line))
        elif line and not line.startswith("#"):
            twin.notes.append(markdown_unescape(line))
    return twin


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.lower() not in ("nan", "inf", "-inf", "infinity")


def cells_table(columns: list[str], rows: list[list[str]]) -> str:
    """Cells as printed; a column of numbers (n/a and blanks aside) right-aligned, any other left-aligned."""
    text_columns = [
        not all(is_number(r[i]) or r[i] in ("n/a", "") for r in rows if i < len(r)) for i in range(len(columns))
    ]
    return table_html(list(zip(columns, text_columns)),
                      [[(text, text_columns[i]) for i, text in enumerate(row)] for row in rows])


def table_page(tsv: str | Path, markdown: str | Path, fallback_title: str) -> str:
    twin = read_markdown_table(Path(markdown).read_text(encoding="utf8"))
    title = twin.title or fallback_title
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f'<p class="notice">{html.escape(n)}</p>' for n in twin.notices]
    body.append(cells_table(twin.columns, twin.rows))
    body += [f"<p>{html.escape(n)}</p>" for n in twin.notes]
    source = html.escape(str(tsv))
    body.append(f"<p><small>{len(twin.rows)} rows; the data, to 6 significant digits: {source}</small></p>")
    return page(title, "\n".join(body))


# --- the paper's printed numbers beside the computed ones ----------------------------------------


def paper_comparison(computed: pd.DataFrame, printed: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per (dataset, quantity) the paper printed: paper, computed, computed - paper.

    A printed dataset missing from the computed table is a row with computed n/a, never dropped.

    Args:
        computed: Table 2 as its TSV holds it, one row per dataset
    """
    by_dataset = computed.set_index("dataset")
    order = {name: i for i, name in enumerate([*computed["dataset"], *computed.columns])}
    rows = []
    for dataset in sorted(printed, key=lambda name: order.get(name, len(order))):  # the computed table's order
        quantities = printed[dataset]
        for quantity in sorted(quantities, key=lambda name: order.get(name, len(order))):
            paper = quantities[quantity]
            value = float(by_dataset.loc[dataset, quantity]) if dataset in by_dataset.index else float("nan")
            rows.append((dataset, quantity, float(paper), value, value - float(paper)))
    return pd.DataFrame(rows, columns=["dataset", "quantity", "paper", "computed", "difference"])


def as_printed(value: float) -> str:
    """A printed number in the paper's style: counts whole, 4 decimals where that is exact (1.3440, not
    the 1.344 the config's YAML keeps), else its significant digits (p-values such as 1.92e-05)."""
    if value == int(value):
        return f"{value:.0f}"
    if abs(value) >= 1e-3 and round(value, 4) == value:
        return f"{value:.4f}"
    return f"{value:.6g}"


# the paper's column as printed, the computed one with the 6 significant digits its TSV holds, the difference in 2
COMPARISON_FORMATS = {"paper": as_printed, "computed": "{:.6g}".format, "difference": "{:.2g}".format}


def comparison_page(table: pd.DataFrame, pair: str, name: str) -> str:
    """The comparison as a report page.

    Args:
        table: paper_comparison's rows (dataset, quantity, paper, computed, difference)
    """
    title = f"{name} ({pair}): the paper's printed numbers beside the computed ones"
    body = (f"<h1>{html.escape(title)}</h1>\n<p>difference = computed - paper; the paper prints 4 decimals "
            "(p-values 3 significant digits) and the computed TSV 6 significant digits, so a mean within 5e-5 "
            "agrees.</p>\n" + html_table(table, COMPARISON_FORMATS))
    return page(title, body)


# --- provenance ---------------------------------------------------------------------------------

LIBRARIES = ("shiftlens", "snakemake", "torch", "transformers", "numpy", "scipy", "pandas", "matplotlib", "safetensors")
HASH_LIMIT = 1 << 30  # files above 1 GiB are listed with their size only (hashing them is slow)


def file_digest(path: Path) -> str:
    if path.stat().st_size > HASH_LIMIT:
        return f"{path.stat().st_size} bytes (not hashed: over 1 GiB)"
    return "sha256:" + sha256(path)


def model_source(path: str) -> dict:
    """A local model directory: its files' hashes; a hub id: the cached snapshot's commit."""
    from .model_paths import cached_config

    folder = Path(path).expanduser()
    if folder.is_dir():
        files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
        return {"path": path, "files": {f.name: file_digest(f) for f in files}}
    config = cached_config(path)
    if config is None:
        return {"path": path, "revision": "not in the local Hugging Face cache"}
    return {"path": path, "revision": config.parent.name + " (Hugging Face cache snapshot)"}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# What a shard header says about how its attributions were made (attribution_model.precision_record, shards).
RECORDED = ("source", "device", "precision", "weights_dtype", "activations_dtype", "matmul", "binned_levels",
            "autodiff", "autodiff_samples", "forward_failed", "forward_out_of_memory", "generate_batch")


def provenance(pair: str, attributions: dict[str, str], models: dict[str, dict], slices: dict,
               code: dict[str, str] | None = None) -> dict:
    """What the pair's tables came from: per model its config, weights source, attribution file
    (hash and recorded device/precision), the library versions of this report job, config slices, and
    the `code` param of each rule behind the tables (a digest, or a method version: code_version)."""
    from .shards import load_header

    entries = {}
    for model, settings in models.items():
        path = Path(attributions[model])
        header = load_header(path)
        recorded = {k: header[k] for k in RECORDED if k in header}
        entries[model] = {
            "config": settings,
            "weights": model_source(settings["path"]) if header.get("source") != "released" else
            {"path": settings["path"], "note": "attributions released by the paper; weights not loaded"},
            "attributions": {"file": str(path), "digest": file_digest(path), **recorded},
        }
    return {"pair": pair, "models": entries, "libraries": library_versions(), "code": code or {}, "config": slices}


def provenance_page(record: dict) -> str:
    pair = record["pair"]
    parts = [f"<h1>Provenance of pair {html.escape(pair)}</h1>",
             "<p>Device and precision are those recorded in the attribution files (newer shards record them); "
             "library versions are those of the environment that built this report.</p>"]
    for model, entry in record["models"].items():
        rows = [("config", json.dumps(entry["config"], sort_keys=True))]
        rows += [(f"attributions {k}", str(v)) for k, v in entry["attributions"].items()]
        weights = dict(entry["weights"])
        rows += [(f"weights file {name}", digest) for name, digest in weights.pop("files", {}).items()]
        rows += [(f"weights {k}", str(v)) for k, v in weights.items()]
        parts.append(f"<h2>{html.escape(model)}</h2>")
        parts.append(html_table(pd.DataFrame(rows, columns=["what", "value"])))
    parts.append("<h2>Libraries</h2>")
    parts.append(html_table(pd.DataFrame(list(record["libraries"].items()), columns=["library", "version"])))
    if record.get("code"):
        parts.append("<h2>shiftlens code of each job</h2><p>A digest of the code a cheap job ran, or the method "
                     "version of an expensive one (docs/design.md, Code changes).</p>")
        parts.append(html_table(pd.DataFrame(sorted(record["code"].items()), columns=["job", "code"])))
    parts.append("<h2>Config slice of each table</h2>")
    for name, config_slice in record["config"].items():
        parts.append(f"<h3>{html.escape(name)}</h3><pre>{html.escape(json.dumps(config_slice, indent=2))}</pre>")
    return page(f"Provenance ({pair})", "\n".join(parts))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="a table's TSV (and Markdown twin) as an HTML page")
    table.add_argument("--tsv", required=True)
    table.add_argument("--markdown", required=True)
    table.add_argument("--title", required=True)
    table.add_argument("--output", required=True)
    compare = sub.add_parser("compare", help="the paper's printed numbers beside the computed table")
    compare.add_argument("--tsv", required=True)
    compare.add_argument("--printed", required=True, help="JSON: dataset -> quantity -> printed value")
    compare.add_argument("--pair", required=True)
    compare.add_argument("--name", required=True)
    compare.add_argument("--output-tsv", required=True)
    compare.add_argument("--output", required=True)
    prov = sub.add_parser("provenance", help="models, attribution files, libraries and config slices")
    prov.add_argument("--pair", required=True)
    prov.add_argument("--attributions", nargs="+", required=True, help="MODEL=FILE")
    prov.add_argument("--models", required=True, help="JSON: model -> its config")
    prov.add_argument("--slices", required=True, help="JSON: table -> its config slice")
    prov.add_argument("--code", default="{}", help="JSON: rule -> its code param")
    prov.add_argument("--output-json", required=True)
    prov.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "table":
        atomic_write_text(args.output, table_page(args.tsv, args.markdown, args.title))
    elif args.command == "compare":
        computed = pd.read_csv(args.tsv, sep="\t", keep_default_na=False, na_values=[""], dtype={"dataset": str})
        result = paper_comparison(computed, json.loads(args.printed))  # a group named NA stays one
        with atomic_file(args.output_tsv) as tmp:
            result.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
        atomic_write_text(args.output, comparison_page(result, args.pair, args.name))
        log.info("%s:\n%s", args.output_tsv, result.to_string(index=False))
    else:
        files = dict(item.split("=", 1) for item in args.attributions)
        record = provenance(args.pair, files, json.loads(args.models), json.loads(args.slices), json.loads(args.code))
        atomic_write_text(args.output_json, json.dumps(record, indent=2, sort_keys=True) + "\n")
        atomic_write_text(args.output, provenance_page(record))
    log.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
