#!/usr/bin/env bash
# Set up, then run the test suite (unit tests, real Snakemake runs of the demo, the paper's
# released data when ../shared/paper is present). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1
exec python -m pytest "$@"
