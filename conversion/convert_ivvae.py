"""Convert an original IV-VAE checkpoint (ali-vilab/iv-vae) into a diffusers folder.

    python conversion/convert_ivvae.py --checkpoint ivvae_z16_dim64.pth --output ivvae-z16-dim64
    python conversion/convert_ivvae.py --checkpoint tiny.pth --original-config tiny_config.json --output out/

The variant is inferred from tensor shapes unless `--variant` names it; `--dtype` and `--push-to-hub REPO_ID`
are optional. Every original key is accounted for; the folder is written atomically.
"""

import sys

from diffusers_videovae.checkpoints import run_conversion_script

if __name__ == "__main__":
    sys.exit(run_conversion_script("ivvae"))
