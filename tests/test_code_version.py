"""The `code` param of every rule: what changes it, what does not, and the guard on the versioned jobs.

Digests are taken in a subprocess on a copy of the package (PYTHONPATH first), as a planning
process of a user who upgraded shiftlens sees it."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_package

from workflow_scripts import code_version

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def package(tmp_path) -> Path:
    """A copy of the package, found before the installed one by the commands below."""
    return copy_package(tmp_path)


def run(package: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(package.parent))
    result = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.code_version", *args],
        env=env, cwd=package.parent, capture_output=True, text=True, timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def digests(package: Path, *modules: str) -> list[str]:
    return [run(package, "digest", *module.split()).stdout.strip() for module in modules]


def edit(path: Path, old: str | None, new: str) -> None:
    """Replaces the first `old` by `new`, or appends `new` when `old` is None."""
    text = path.read_text()
    if old is None:
        path.write_text(text + new)
    else:
        assert old in text, f"{old!r} not in {path.name}"
        path.write_text(text.replace(old, new, 1))


def test_the_digest_is_of_the_copy_that_would_run(package):
    """The planning process digests the package `python -m` finds: here the copy, not the repo."""
    (before,) = digests(package, "table1_2")
    assert before == code_version.code_digest("table1_2")
    edit(package / "table1_2.py", None, "\nLEVELS_DEFAULT = 11\n")
    assert digests(package, "table1_2") != [before]


def test_docstrings_comments_and_layout_change_no_digest(package):
    before = digests(package, "table1_2", "table3")
    module = package / "table1_2.py"
    text = module.read_text()
    docstring_end = text.index('"""', 3)
    module.write_text(text[:docstring_end] + " Reworded at length." + text[docstring_end:] + "\n\n# a comment\n")
    edit(module, "\ndef ", "\n\n# a comment between functions\ndef ")
    assert digests(package, "table1_2", "table3") == before


def test_fields_a_newer_python_adds_empty_change_no_digest(monkeypatch):
    """3.12 gave every function a `type_params` field, empty unless the code uses type parameters:
    the same code must keep its digest (and the recorded ones must hold on a contributor's Python)."""
    tree = ast.parse("def f(x):\n    return x\n")
    before = code_version._canonical(tree)
    monkeypatch.setattr(ast.FunctionDef, "_fields", (*ast.FunctionDef._fields, "type_params"))
    tree.body[0].type_params = []
    assert code_version._canonical(tree) == before
    tree.body[0].type_params = [ast.Name(id="T")]
    assert code_version._canonical(tree) != before


def test_a_change_in_an_imported_module_reaches_the_importers_only(package):
    """table1_2 imports importance (binning, the density); table3 does not."""
    assert "workflow_scripts.importance" in code_version._closure("workflow_scripts.table1_2")
    assert "workflow_scripts.importance" not in code_version._closure("workflow_scripts.table3")
    before = digests(package, "table1_2", "table3")
    edit(package / "importance.py", None, "\nEPSILON = 1e-12\n")
    after = digests(package, "table1_2", "table3")
    assert after[0] != before[0] and after[1] == before[1]


def test_imports_inside_functions_count(package):
    """annotate imports its local chat client only where it builds it: that code runs too."""
    assert "workflow_scripts.local_chat" not in code_version._source("workflow_scripts.table5")[1]
    (before,) = digests(package, "annotate")
    edit(package / "local_chat.py", None, "\nDEFAULT_TEMPERATURE = 0.0\n")
    assert digests(package, "annotate") != [before]


def test_assets_the_job_reads_are_part_of_its_digest(package):
    """The explanation browser copies its page, script and style sheet into every build."""
    before = digests(package, "browser_index browser_assets", "browser_index")
    edit(package / "browser_assets" / "browser.css", None, "\nbody { margin: 0; }\n")
    after = digests(package, "browser_index browser_assets", "browser_index")
    assert after[0] != before[0] and after[1] == before[1]


def test_a_missing_asset_or_module_is_named(package):
    missing = run(package, "digest", "browser_index", "no_such_folder", check=False)
    assert missing.returncode != 0 and "no asset" in missing.stderr and "no_such_folder" in missing.stderr
    unknown = run(package, "digest", "no_such_module", check=False)
    assert unknown.returncode != 0 and "'workflow_scripts.no_such_module' is not a Python module" in unknown.stderr


def test_the_parse_cache_gives_the_same_digests_and_follows_edits(package):
    """What the planning process keeps in .snakemake/ (keyed by each file's bytes) is never stale."""
    cache = package.parent / ".snakemake" / "parsed-code.json"
    program = (f"from workflow_scripts import code_version as c; c.use_cache({str(cache)!r}); "
               "print(c.code_digest('table1_2'), c.code_digest('browser_index', 'browser_assets'))")

    def planned() -> str:
        env = dict(os.environ, PYTHONPATH=str(package.parent))
        return subprocess.run([sys.executable, "-c", program], env=env, cwd=package.parent, capture_output=True,
                              text=True, check=True).stdout

    uncached = " ".join(digests(package, "table1_2", "browser_index browser_assets")) + "\n"
    assert planned() == uncached and len(json.loads(cache.read_text())) >= 8  # written
    assert planned() == uncached  # read
    cache.write_text("{not json")
    assert planned() == uncached and json.loads(cache.read_text())  # unreadable: parsed and rewritten
    edit(package / "importance.py", None, "\nEPSILON = 1e-12\n")
    assert planned().split()[0] != uncached.split()[0]


def test_a_class_docstring_changes_no_digest():
    def canonical(source: str) -> str:
        return code_version._canonical(code_version._strip_docstrings(ast.parse(source)))

    assert canonical('class Shard:\n    """Old words."""\n    size = 2\n') == \
        canonical('class Shard:\n    """Reworded at length."""\n    size = 2\n')


def test_a_string_and_a_number_of_the_same_text_are_different_code():
    """`LEVELS = "10"` and `LEVELS = 10` compute differently: their digests must differ."""
    assert code_version._canonical(ast.parse('LEVELS = "10"\n')) != code_version._canonical(ast.parse("LEVELS = 10\n"))


def test_a_module_imported_by_name_from_its_package_counts():
    """`from . import importance` imports the module importance, not only the package."""
    names = code_version._imported_names(ast.parse("from . import importance\n"), "workflow_scripts.table9")
    assert "workflow_scripts.importance" in names


def test_a_renamed_asset_changes_the_digest(package):
    """The page loads its files by name: the same bytes under another name are another page."""
    (before,) = digests(package, "browser_index browser_assets")
    assets = package / "browser_assets"
    (assets / "browser.css").rename(assets / "browser.css.old")  # the same place in the sorted listing
    assert digests(package, "browser_index browser_assets") != [before]


def test_an_empty_asset_folder_is_named_as_missing(package):
    (package / "no_files_yet").mkdir()
    missing = run(package, "digest", "browser_index", "no_files_yet", check=False)
    assert missing.returncode != 0 and "no asset" in missing.stderr and "no_files_yet" in missing.stderr


def test_a_newly_versioned_job_without_a_recorded_digest_is_changed():
    """A version added to code_versions.json without `record` must fail the check, not pass it unseen."""
    now = code_version.code_digest("table3")
    assert code_version.changed({"versions": {"table3": 1}, "recorded_code": {}}) == {"table3": ("", now)}
    assert code_version.changed({"versions": {"table3": 1}, "recorded_code": {"table3": now}}) == {}


def test_a_change_in_the_package_init_reaches_every_digest(package):
    """`python -m workflow_scripts.X` runs the package's __init__ first (it sets the jobs' environment)."""
    before = digests(package, "table3", "table1_2")
    edit(package / "__init__.py", None, '\nos.environ.setdefault("TOKENIZERS_PARALLELISM", "false")\n')
    after = digests(package, "table3", "table1_2")
    assert after[0] != before[0] and after[1] != before[1]


def test_the_recorded_code_of_every_versioned_job_is_current():
    """The guard: a change to what a GPU, demo-model or annotation job runs lands only with a decision
    (raise its version if its results change), then `python -m workflow_scripts.code_version record`."""
    assert code_version.changed(json.loads(code_version.VERSIONS_FILE.read_text())) == {}


def test_check_names_the_changed_versioned_job_and_what_to_do(package):
    assert run(package, "check").returncode == 0
    edit(package / "attribution.py", None, "\nREFACTORED = True\n")
    result = run(package, "check", check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("attribution: its code changed")
    assert "raise versions.attribution in code_versions.json" in result.stderr
    run(package, "record")
    assert run(package, "check").returncode == 0
    recorded = json.loads((package / "code_versions.json").read_text())
    assert recorded["versions"] == json.loads(code_version.VERSIONS_FILE.read_text())["versions"]


def test_a_method_version_names_its_job_and_an_unknown_one_is_an_error():
    assert code_version.method_version("attribution").startswith("attribution v")
    with pytest.raises(ValueError, match=r"code_versions.json: no version for 'atribution' \(known: annotate, "):
        code_version.method_version("atribution")


def test_every_rule_running_project_code_carries_its_code():
    """A rule without a `code` param would keep what an older release computed."""
    import re

    missing = []
    for rules in sorted((REPO / "rules").glob("*.smk")):
        for rule, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", rules.read_text(), re.M | re.S):
            runs_code = "python -m workflow_scripts." in body and "workflow_scripts.paper_data" not in body
            if (runs_code or "annotation_shell(" in body) and "        code=" not in body:
                missing.append(f"{rules.name}: {rule}")
    assert missing == []
