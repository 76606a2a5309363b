# Sourced by scripts/test.sh and scripts/demo.sh: create .venv and install the package with CPU torch.
# Installing torch==2.13.0 first keeps pip from pulling a multi-GB CUDA build when it resolves the package.
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS:-test}]"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
