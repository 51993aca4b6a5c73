"""The benchmark scripts are not run by the tests (they take minutes to hours), but they must still
start: a renamed module once left `bench/attribution_precision.py` failing at its first import."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "bench").glob("*.py"))


def project_imports(script: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from workflow_scripts... import name` in the script."""
    tree = ast.parse(script.read_text(encoding="utf8"), filename=str(script))
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workflow_scripts")
            for alias in node.names]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_project_name_a_benchmark_imports_exists(script):
    missing = []
    for module, name in project_imports(script):
        try:
            loaded = importlib.import_module(module)
        except ImportError as error:
            missing.append(f"{module} ({error})")
            continue
        if not hasattr(loaded, name):
            missing.append(f"{module}.{name}")
    assert not missing, f"{script.name} imports what the project no longer has: {missing}"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if "argparse" in s.read_text(encoding="utf8")],
                         ids=lambda p: p.name)
def test_every_benchmark_starts(script):
    result = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
