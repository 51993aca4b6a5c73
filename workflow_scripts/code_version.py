"""The code a job runs, as a rule param: an upgrade that changes how a number is computed reruns it.

Every rule runs `python -m workflow_scripts.<module> ...`, and Snakemake's code trigger sees only
that shell line, so without a param an upgraded shiftlens plans "Nothing to be done" and keeps the
tables the old code wrote. Two kinds of param (docs/design.md#code-changes):

- `code_digest(module)`: cheap jobs (tables, merges, report pages). A hash of the module and of
  every project module it imports, blind to docstrings, comments and layout: any change in what
  the code does reruns them.
- `method_version(name)`: expensive or paid jobs (GPU attribution and explanation layers, the demo
  models, the vocabulary they read, LLM annotation), and jobs upstream of them. A number kept in
  `code_versions.json`, raised by hand when a change alters what those jobs write, so a refactor
  never reruns hours of GPU work or a paid annotation. The same file records each one's code
  digest; `python -m workflow_scripts.code_version check` (a test runs it) fails when that code
  changed without a decision, and `record` writes the new digests once the version is right.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import sys
from importlib.util import find_spec
from pathlib import Path

from .atomic import atomic_write_text

PACKAGE = "workflow_scripts"
VERSIONS_FILE = Path(__file__).with_name("code_versions.json")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Docstrings explain; they never change what a job writes."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def _canonical(node) -> str:
    """The syntax tree as text, the same on every Python that parses it alike: fields that are empty
    or None are left out (newer Pythons add such fields, e.g. 3.12's `type_params`), and positions
    (line numbers) never enter it."""
    if isinstance(node, ast.AST):
        fields = (f"{name}={_canonical(value)}" for name, value in ast.iter_fields(node) if value not in (None, []))
        return f"{type(node).__name__}({', '.join(fields)})"
    if isinstance(node, list):
        return f"[{', '.join(_canonical(item) for item in node)}]"
    return repr(node)


@functools.cache
def _package_root() -> Path:
    """Where `python -m workflow_scripts.X` finds the package (an installed copy or PYTHONPATH's)."""
    spec = find_spec(PACKAGE)  # a top-level name: found, not imported
    if spec is None or not spec.origin:
        raise ValueError(f"code_version: no package {PACKAGE} on the path")
    return Path(spec.origin).parent


def _module_path(module: str) -> Path | None:
    """The file of a project module, by name alone: finding it must not import it (nor torch)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = _package_root().joinpath(*parts[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _module_file(module: str) -> Path:
    path = _module_path(module)
    if path is None:
        raise ValueError(f"code_version: {module!r} is not a Python module of {PACKAGE} ({_package_root()})")
    return path


def _imported_names(tree: ast.AST, module: str) -> list[str]:
    """Every module name `module` may import, at its top or inside functions (lazy imports run too)."""
    package = module.rpartition(".")[0] or module
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
            # `from package import name` imports a submodule when `name` is one
            names.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return sorted(names)


class _ParseCache:
    """Each module's parsed form (tree digest, imported names), keyed by Python version, module name
    and the file's bytes, kept in a file so that a planning process parses only what changed."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.entries: dict[str, list] = {}
        self.unsaved = False

    def load(self, path: Path) -> None:
        self.path = path
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError):
            loaded = {}  # none yet, or unreadable: parsed again and rewritten
        self.entries = loaded if isinstance(loaded, dict) else {}

    def get(self, key: str) -> list | None:
        entry = self.entries.get(key)
        valid = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], list)
        return entry if valid else None

    def put(self, key: str, entry: list) -> None:
        self.entries[key] = entry
        self.unsaved = True

    def save(self) -> None:
        if self.path is None or not self.unsaved:
            return
        self.unsaved = False
        try:
            atomic_write_text(self.path, json.dumps(self.entries, sort_keys=True))  # concurrent planners: whole files
        except OSError:
            pass  # a read-only folder: every plan parses again, nothing else changes


_PARSED = _ParseCache()


def use_cache(path: str | Path) -> None:
    """Keeps the parsed modules in `path` (the whole package takes ~0.2 s to parse, in every plan)."""
    _PARSED.load(Path(path))


@functools.cache
def _source(module: str) -> tuple[str, frozenset[str]]:
    """A digest of the module's code without docstrings, comments or layout, and the project modules
    it imports."""
    path = _module_file(module)
    raw = path.read_bytes()
    key = f"{sys.version_info[0]}.{sys.version_info[1]} {module} {hashlib.sha256(raw).hexdigest()}"
    entry = _PARSED.get(key)
    if entry is None:
        tree = _strip_docstrings(ast.parse(raw, filename=str(path)))
        entry = [hashlib.sha256(_canonical(tree).encode()).hexdigest(), _imported_names(tree, module)]
        _PARSED.put(key, entry)
    tree_digest, names = entry
    # which names are project modules is decided now: a module added since is found
    return tree_digest, frozenset([PACKAGE, *(n for n in names if _module_path(n) is not None)])


def _closure(module: str) -> list[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_source(name)[1])
    return sorted(seen)


@functools.cache
def code_digest(module: str, *assets: str) -> str:
    """16 hex digits of the code `python -m workflow_scripts.<module>` runs: the module, every project
    module it imports (transitively) and `assets` (files or folders of the package it reads)."""
    name = f"{PACKAGE}.{module}"
    digest = hashlib.sha256()
    for part in _closure(name):
        digest.update(f"{part}\0{_source(part)[0]}\0".encode())
    root = _package_root()
    for asset in assets:
        path = root / asset
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise ValueError(f"code_version: {module}: no asset {path}")
        for file in files:
            digest.update(f"{file.relative_to(root).as_posix()}\0".encode() + file.read_bytes() + b"\0")
    _PARSED.save()
    return digest.hexdigest()[:16]


@functools.cache
def _versions_file() -> dict:
    return json.loads(VERSIONS_FILE.read_text())


def method_version(name: str) -> str:
    """The param of an expensive job: `<name> v<N>`, N raised by hand when its results change."""
    versions = _versions_file()["versions"]
    if name not in versions:
        raise ValueError(f"{VERSIONS_FILE}: no version for {name!r} (known: {', '.join(sorted(versions))})")
    return f"{name} v{versions[name]}"


def changed(versions_file: dict) -> dict[str, tuple[str, str]]:
    """Versioned modules whose code differs from the recorded digest: name -> (recorded, now)."""
    recorded = versions_file["recorded_code"]
    now = {name: code_digest(name) for name in versions_file["versions"]}
    return {name: (recorded.get(name, ""), digest) for name, digest in now.items() if recorded.get(name) != digest}


def record(path: Path = VERSIONS_FILE) -> dict:
    """Writes the current digests of the versioned modules, keeping their versions."""
    data = json.loads(path.read_text())
    data["recorded_code"] = {name: code_digest(name) for name in sorted(data["versions"])}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "record", "digest"])
    parser.add_argument("module", nargs="?", help="digest: a module of the package (e.g. table1_2)")
    parser.add_argument("assets", nargs="*", help="digest: files or folders of the package it reads")
    args = parser.parse_args(argv)
    if args.command == "digest":
        if not args.module:
            parser.error("digest needs a module")
        print(code_digest(args.module, *args.assets))
        return 0
    if args.command == "record":
        record()
        return 0
    stale = changed(_versions_file())
    for name, (recorded, now) in stale.items():
        print(
            f"{name}: its code changed (recorded {recorded or 'nothing'}, now {now}). If what its jobs write "
            f"changes, raise versions.{name} in {VERSIONS_FILE.name}; then run "
            f"`python -m {PACKAGE}.code_version record`.",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
