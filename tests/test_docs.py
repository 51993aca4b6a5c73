"""The documentation stays true to the workflow: the rule graph picture is the workflow's own, and
every pointer into the design document lands on a section that exists."""
from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"
OLD_NAME = "DESIGN" + ".md"  # spelled apart, so that this file is not a hit of its own search


def _rulegraph_module():
    spec = importlib.util.spec_from_file_location("rulegraph", REPO / "scripts" / "rulegraph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rulegraph = _rulegraph_module()

SNAKEMAKE_GRAPH = """digraph snakemake_dag {
    graph[bgcolor=white, margin=0];
\t0[label = "all", color = "0.00 0.6 0.85", style="rounded"];
\t1[label = "table", color = "0.52 0.6 0.85", style="rounded"];
\t2[label = "merge", color = "0.39 0.6 0.85", style="rounded"];
\t1 -> 0
\t2 -> 1
}
"""


def test_canonical_form_ignores_numbering_colours_and_order_but_not_edges():
    renumbered = (SNAKEMAKE_GRAPH.replace("0[", "9[").replace("-> 0", "-> 9").replace("0.52", "0.11")
                  .replace("\t1 -> 9\n\t2 -> 1\n", "\t2 -> 1\n\t1 -> 9\n"))
    assert rulegraph.canonical(renumbered) == rulegraph.canonical(SNAKEMAKE_GRAPH)
    text = rulegraph.canonical(SNAKEMAKE_GRAPH)
    assert '    "merge" -> "table";\n    "table" -> "all";\n}' in text and "color =" not in text
    assert rulegraph.canonical(SNAKEMAKE_GRAPH.replace("2 -> 1", "2 -> 0")) != text
    with pytest.raises(ValueError, match="not a snakemake rule graph"):
        rulegraph.canonical("Building DAG of jobs...")


def test_the_committed_rule_graph_is_the_workflows_current_one():
    committed = (REPO / "docs" / "rulegraph.dot").read_text(encoding="utf8")
    fresh = rulegraph.canonical(rulegraph.fresh_rulegraph())
    assert '"attribute_shard" -> "merge_attributions";' in fresh  # a real graph, not an empty one
    assert committed == fresh, (
        "docs/rulegraph.dot is not the current `snakemake --rulegraph` of the demo config: "
        f"run `{rulegraph.COMMAND}` and commit docs/rulegraph.dot (and docs/rulegraph.svg)"
    )


def _project_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        files = [REPO / name for name in listed]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but the usual outputs
        skip = {".git", ".venv", ".venv-floors", "results", "resources", "logs", "benchmarks", ".snakemake",
                "__pycache__"}
        files = [p for p in REPO.rglob("*") if not skip & set(p.relative_to(REPO).parts)]
    return [p for p in files if p.is_file() and p.suffix not in {".png", ".pdf", ".npz", ".gz"}]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_the_design_is_in_the_repository_and_every_pointer_lands_on_a_section():
    anchors = _anchors(DESIGN.read_text(encoding="utf8"))
    old, dangling = [], []
    for path in _project_files():
        text = path.read_text(encoding="utf8", errors="replace")
        name = path.relative_to(REPO)
        old += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}" for m in re.finditer(re.escape(OLD_NAME), text)]
        dangling += [f"{name}: #{a}" for a in re.findall(r"design\.md#([\w-]+)", text) if a not in anchors]
    assert not old, f"pointers to the design brief outside the repository (point at docs/design.md#...): {old}"
    assert not dangling, f"links to sections that docs/design.md does not have: {dangling}"


def test_the_licence_file_is_the_one_the_package_and_readme_declare():
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]["text"]
    licence = (REPO / "LICENSE").read_text(encoding="utf8")
    assert licence.splitlines()[0] == f"{declared} License"
    assert f"released under the {declared} licence (`LICENSE`)" in (REPO / "README.md").read_text(encoding="utf8")
