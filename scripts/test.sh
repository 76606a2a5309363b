#!/usr/bin/env bash
# Set up a virtual environment from scratch (CPU torch) and run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ivvae -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh
exec .venv/bin/python -m pytest "$@"
