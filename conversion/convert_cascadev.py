# Copyright 2026 The diffusers-videovae contributors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Convert the CascadeV release (four files) into one diffusers folder (`AutoencoderCascadeV`).

    python conversion/convert_cascadev.py --checkpoint s1024.effn-f32.pth --effnet effnet_encoder.safetensors \
        --previewer previewer.safetensors --svd-vae stable-video-diffusion-img2vid-xt/vae --output cascadev-diffusers

The release config is built in; for a custom DiT pass its mmcv-style config with --original-config (parsed, never
executed). `--previewer` is optional (without it the folder has no `preview()`).
"""

import sys

from diffusers_videovae.checkpoints import run_conversion_script

if __name__ == "__main__":
    sys.exit(run_conversion_script("cascadev"))
