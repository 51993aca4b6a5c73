#!/usr/bin/env bash
# Set up, then run the workflow on the offline demo (config.yaml). Extra arguments go to snakemake,
# e.g. `bash scripts/demo.sh -n` for a dry run or `bash scripts/demo.sh table2`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1
exec snakemake --cores all "$@"
