#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv (CPU torch), then reconstruct a clip with a video VAE.
#
#   bash scripts/demo.sh [VIDEO] [extra `videovae reconstruct` options]
#
# VIDEO defaults to ../shared/media/ivvae_ori.mp4 when present, else a clip the package synthesises itself.
# The model defaults to the small demo IV-VAE shipped inside the package; pass `-m MODEL` (a release name such as
# odvae:v1.2.0 from `videovae models`, a converted folder, a Hub id or an ORIGINAL checkpoint file) to use another,
# with --subfolder / --revision / --variant where needed. Writes out/reconstruction.mp4 and out/compare.png and prints
# PSNR/SSIM, the latent shape, the compression ratio, time and peak memory (a rerun replaces its own out/ files).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test source scripts/_setup.sh
mkdir -p out
INPUT=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    INPUT=("$1")
    shift
elif [ -f ../shared/media/ivvae_ori.mp4 ]; then
    INPUT=(../shared/media/ivvae_ori.mp4)
fi
exec .venv/bin/videovae reconstruct "${INPUT[@]}" -o out/reconstruction.mp4 --compare out/compare.png --overwrite \
    --frames 33 --size 256 "$@"
