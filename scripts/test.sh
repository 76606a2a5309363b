#!/usr/bin/env bash
# Set up a virtual environment from scratch (CPU torch) and run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ivvae -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Install the CPU build of torch first, so that resolving the package does not pull a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
