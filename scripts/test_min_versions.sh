#!/usr/bin/env bash
# The lowest dependency versions pyproject.toml allows must really work: build a separate virtual environment with
# exactly those floors (from PyPI; torch==2.13.0 first, the CPU build) and run the parity tests (and loading of the
# original files) of the landed models in it. Extra arguments go to pytest. Run by .ci/run after the main suite.
#
#   bash scripts/test_min_versions.sh            # venv in build/min-versions-venv (kept for the next run)
#   MIN_VENV=/tmp/venv bash scripts/test_min_versions.sh -x
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${MIN_VENV:-build/min-versions-venv}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"

# "name>=X" in pyproject.toml -> "name==X", for the libraries whose API and numbers we rely on.
PINS=$("$VENV/bin/python" - <<'EOF'
import re
import tomllib

with open("pyproject.toml", "rb") as handle:
    dependencies = tomllib.load(handle)["project"]["dependencies"]
floors = {}
for requirement in dependencies:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?", requirement)
    if match:
        floors[match[1].lower().replace("_", "-")] = match[2]
wanted = ["diffusers", "huggingface-hub", "accelerate", "safetensors"]
missing = [name for name in wanted if name not in floors]
if missing:
    raise SystemExit(f"pyproject.toml has no '>=' floor for {missing}")
print(" ".join(f"{name}=={floors[name]}" for name in wanted))
EOF
)
echo "lowest allowed versions: $PINS"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet -e . "pytest>=8" $PINS
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE "^(torch|diffusers|huggingface.hub|accelerate|safetensors) "
"$VENV/bin/python" - <<EOF
from importlib.metadata import version
for pin in "$PINS".split():
    name, wanted = pin.split("==")
    assert version(name) == wanted, f"{name} {version(name)} installed, not the floor {wanted}"
EOF

exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q \
    tests/test_ivvae.py tests/test_odvae.py tests/test_opensora.py \
    -k "original or single_file" "$@"
