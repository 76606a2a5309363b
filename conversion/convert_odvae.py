#!/usr/bin/env python
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
"""Convert an Open-Sora-Plan CausalVideoVAE (OD-VAE v1.2.0 or v1.1.0) release into a diffusers folder.

    # the release folder (config.json + checkpoint.ckpt), EMA weights when the file has them
    python conversion/convert_odvae.py --checkpoint Open-Sora-Plan-v1.2.0/vae --output odvae-v1.2.0
    # a bare checkpoint of a released variant, non-EMA weights, stored as bfloat16
    python conversion/convert_odvae.py --checkpoint checkpoint.ckpt --variant v1.2.0 --weights non-ema \
        --dtype bfloat16 --output odvae-bf16
    # a custom model: give the original's own config.json
    python conversion/convert_odvae.py --checkpoint model.ckpt --original-config config.json --output out

Every original key is either converted or dropped on purpose (`loss.*`, reported with the reason); anything else
stops the conversion before anything is written. `--push-to-hub REPO_ID` also uploads the folder.
"""

import sys

from diffusers_videovae.checkpoints import run_conversion_script

if __name__ == "__main__":
    sys.exit(run_conversion_script("odvae"))
