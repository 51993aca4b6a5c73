"""Every public function that takes an array, a tensor or a table says, per such argument, its shape
(or, for a table, its rows and columns) in an `Args:` section (issue 13: the maths was stated, the
shapes were not). attribution.py is left to its own rewrite."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workflow_scripts"
SKIPPED = {"attribution.py"}
ARRAYS = re.compile(r"\b(np\.ndarray|torch\.Tensor|pd\.DataFrame|pd\.Series)\b")


def array_functions():
    """(module:function, docstring, [(argument, annotation)]) of each public function taking arrays."""
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in SKIPPED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                arguments = [(a.arg, ast.unparse(a.annotation)) for a in [*node.args.args, *node.args.kwonlyargs]
                             if a.annotation is not None and ARRAYS.search(ast.unparse(a.annotation))]
                if arguments:
                    yield f"{path.stem}:{node.name}", ast.get_docstring(node) or "", arguments


FUNCTIONS = list(array_functions())


def test_the_check_sees_the_array_functions():
    names = {name for name, _, _ in FUNCTIONS}
    assert {"importance:sample_score", "ffn:principal_components", "table1_2:table2"} <= names


@pytest.mark.parametrize(("name", "docstring", "arguments"), FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_each_array_argument_has_a_shape_line(name, docstring, arguments):
    section = docstring.split("Args:", 1)[1] if "Args:" in docstring else ""
    lines = {m[1]: m[2] for m in re.finditer(r"^\s*(\w+): (.*)$", section, re.M)}
    missing = [arg for arg, _ in arguments if arg not in lines]
    no_shape = [arg for arg, annotation in arguments
                if arg in lines and "DataFrame" not in annotation and not lines[arg].startswith("(")]
    assert (missing, no_shape) == ([], []), f"{name}: Args lines missing {missing}, without a (shape) {no_shape}"
