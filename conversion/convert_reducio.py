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
"""Convert a Reducio-VAE release (microsoft/Reducio-VAE, ft4 or ft2) into a diffusers folder.

    # a released checkpoint: the variant is read from the tensor shapes (or name it with --variant ft4|ft2)
    python conversion/convert_reducio.py --checkpoint reducio-ft4-fs32-attn23.ckpt --output reducio-ft4
    # a custom model: give the original's own yaml (configs/autoencoder/*.yaml format)
    python conversion/convert_reducio.py --checkpoint model.ckpt --original-config model.yaml --output out

The lightning `.ckpt` is read without executing pickle code; a `module.` prefix is stripped. Every original key is
converted or dropped on purpose (`loss.*`, the content encoder's unused `mid.block_2` / `norm_out`: reported with
the reason); any other key, or a missing one, stops the conversion before anything is written (the original loads
non-strictly and would keep random weights). `--dtype bfloat16` stores half-size weights; `--push-to-hub REPO_ID`
also uploads the folder.
"""

import sys

from diffusers_videovae.checkpoints import run_conversion_script

if __name__ == "__main__":
    sys.exit(run_conversion_script("reducio"))
