#!/usr/bin/env bash
# On a lent GPU machine, from the checkout's root, after scripts/gpu_prepare.sh here: the checks of issue 22 that
# need an accelerator, each step under its own time limit (7 minutes in all), its log in $OUT/<step>.log: one device
# call of at most 8 minutes, which leaves a 15-minute device budget time to start and to rerun a step. How long the
# steps take there is not known: this has never run on a GPU.
#   1. env: torch, diffusers and the device.
#   2. gpu_check: benchmarks/gpu_check.py at 17x256x256 (16 Reducio, 8 CascadeV), float32 / bfloat16 / float16
#      against float32 on the CPU (the 720p rows need a CPU reference at 720p: a later call, `--clips 720p`).
#   3. tests: the five models' parity and feature tests, the meta-device and diffusers-feature tests on the device
#      (VIDEOVAE_TEST_DEVICE; tolerances per dtype in tests/conftest.py).
#
#   run(command="bash scripts/gpu_session.sh", carry=[".gpu"], timeout_s=480)
#   DEVICE=cpu PYTHON=.venv/bin/python TEST_ARGS="-k 'odvae and encode'" GPU_CHECK_ARGS="--quick" \
#       bash scripts/gpu_session.sh                                            # a dry run here
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-session}"
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"
PACKED="${PACKED:-.gpu}"  # what scripts/gpu_prepare.sh packed
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 VIDEOVAE_TEST_DEVICE="$DEVICE"
if [ -f "$PACKED/reference.tar.gz" ]; then
    rm -rf /tmp/videovae-reference && mkdir -p /tmp/videovae-reference
    tar -xzf "$PACKED/reference.tar.gz" -C /tmp/videovae-reference || exit 1
    export VIDEOVAE_REFERENCE_DIR="$(ls -d /tmp/videovae-reference/*)" VIDEOVAE_REQUIRE_REFERENCE=1
fi
if compgen -G "$PACKED/whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/videovae-site "$PACKED"/whl/*.whl || exit 1
    export PYTHONPATH="/tmp/videovae-site:$PWD"
else
    export PYTHONPATH="$PWD"
fi

failed=0
step() {  # step NAME SECONDS COMMAND...: run it under `timeout`, log it, note its exit status
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    tail -n 25 "$OUT/$name.log"
    echo "=== $name exit status $status"
    [ "$status" -eq 0 ] || failed=1
}

step env 30 "$PYTHON" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__); \
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none: torch sees no CUDA device')"
# TEST_ARGS and GPU_CHECK_ARGS: more arguments, quoted as in a shell (e.g. TEST_ARGS="-k 'odvae and encode'").
eval "test_args=(${TEST_ARGS:-})"
eval "check_args=(${GPU_CHECK_ARGS:---clips small})"
# The table first: it is what the first run is for; each row is printed as it is done, so a timeout keeps the rows.
step gpu_check 240 "$PYTHON" benchmarks/gpu_check.py --device "$DEVICE" "${check_args[@]}"
step tests 150 "$PYTHON" -m pytest -q -p no:cacheprovider -x tests/test_ivvae.py tests/test_odvae.py \
    tests/test_opensora.py tests/test_reducio.py tests/test_cascadev.py tests/test_meta_device.py \
    tests/test_diffusers_features.py "${test_args[@]}"
exit "$failed"
