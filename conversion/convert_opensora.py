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
"""Convert the Open-Sora 1.2 VAE release into a diffusers folder (`AutoencoderKLOpenSora`).

    python conversion/convert_opensora.py --checkpoint OpenSora-VAE-v1.2/ --output opensora-vae-v1.2-diffusers

`--checkpoint` is the release folder (config.json + model.safetensors) or the bare model.safetensors. For a custom
(non-release) model pass its pipeline config with --original-config and, when its spatial VAE is not the SDXL VAE,
that AutoencoderKL's config.json with --spatial-config.
"""

import sys

from diffusers_videovae.checkpoints import run_conversion_script

if __name__ == "__main__":
    sys.exit(run_conversion_script("opensora"))
