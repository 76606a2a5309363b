#!/usr/bin/env bash
# Here, before a session's first call to a lent GPU machine: pack into .gpu/ (git-ignored) what
# scripts/gpu_session.sh needs there and that machine cannot fetch. Its image has torch, huggingface_hub,
# safetensors, accelerate, psutil and pytest, but not diffusers (a pure-Python wheel, carried) nor the reference
# fixtures (../shared does not travel with the checkout; carried gzipped, which brings the call under the tool's
# 64 MiB). `av` is not carried (too large): the tests that gpu_session.sh runs import nothing that needs it.
#
#   bash scripts/gpu_prepare.sh        # then: run(command="bash scripts/gpu_session.sh", carry=[".gpu"], timeout_s=480)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
REFERENCE="${VIDEOVAE_REFERENCE_DIR:-../shared/reference}"
LIMIT=$((64 * 1024 * 1024))  # what the device tool sends: the checkout and the carried paths together

rm -rf .gpu
mkdir -p .gpu/whl
tar -czf .gpu/reference.tar.gz -C "$(dirname "$REFERENCE")" "$(basename "$REFERENCE")"
version=$("$PYTHON" -c "import diffusers; print(diffusers.__version__)")
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/whl \
    "diffusers==$version" importlib_metadata

tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
carried=$(du -sb .gpu | cut -f1)
echo "checkout $((tree / 1024)) KiB + .gpu $((carried / 1024)) KiB of the $((LIMIT / 1024)) KiB a call may send"
if [ $((tree + carried)) -gt "$LIMIT" ]; then
    echo "too large to send: leave some models' folders out of .gpu/reference.tar.gz" >&2
    exit 1
fi
