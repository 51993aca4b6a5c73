"""Each method module owns one method (or one paper table); what two of them share lives in a module
that owns that concern (issue 13), so that a reader of one method never has to open another's."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workflow_scripts"
# One module per method or per paper table (docs/design.md#glossary).
METHOD_MODULES = ("attribution", "attention", "ffn", "annotate", "replay", "table1_2", "table3", "table5",
                  "annotation_cost")
# A method module may use another as what it is, never as a box of helpers: annotate asks the
# replay provider (one of its three providers) for answers.
ALLOWED = {("annotate", "replay"): {"Replay"}}


def sibling_imports(module: str) -> dict[str, set[str]]:
    """{imported method module: names} of every `from .x import ...` in `module` (lazy ones too)."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in METHOD_MODULES:
            found.setdefault(node.module, set()).update(alias.name for alias in node.names)
    return found


def test_every_method_module_exists():
    assert [m for m in METHOD_MODULES if not (PACKAGE / f"{m}.py").is_file()] == []


@pytest.mark.parametrize("module", METHOD_MODULES)
def test_a_method_module_takes_no_helpers_from_another(module):
    helpers = {
        other: names - ALLOWED.get((module, other), set())
        for other, names in sibling_imports(module).items()
        if other != module
    }
    assert {other: sorted(names) for other, names in helpers.items() if names} == {}
