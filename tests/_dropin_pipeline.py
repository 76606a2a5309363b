"""A tiny latent video diffusion pipeline for the drop-in test: it uses the VAE only through what pipelines read.

The denoiser is a stock diffusers `UNet2DModel` applied to each latent frame; the VAE is whatever `model_index.json`
names. The pipeline reads the latent size from `vae.config.latent_channels` and `vae.input_rule`, and turns its
normalised latents into what `vae.decode` takes with `vae.denormalize_latents`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput


@dataclass
class TinyVideoPipelineOutput(BaseOutput):
    frames: torch.Tensor  # (B, 3, T, H, W) in [0, 1]
    latents: torch.Tensor  # normalised latents fed to the decoder, (B, C, t, h, w)


class TinyVideoPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "denoiser->vae"

    def __init__(self, vae, denoiser, scheduler):
        super().__init__()
        self.register_modules(vae=vae, denoiser=denoiser, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        num_frames: int = 5,
        height: int = 32,
        width: int = 32,
        num_inference_steps: int = 2,
        generator: torch.Generator | None = None,
    ) -> TinyVideoPipelineOutput:
        vae = self.vae
        rule = vae.input_rule
        temporal, spatial = rule.temporal_compression, rule.spatial_multiple
        shape = (1, vae.config.latent_channels, (num_frames - 1) // temporal + 1, height // spatial, width // spatial)
        latents = torch.randn(shape, generator=generator, dtype=self.denoiser.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        batch, channels, frames, h, w = shape
        for t in self.progress_bar(self.scheduler.timesteps):
            per_frame = latents.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, h, w)
            noise = self.denoiser(per_frame, t).sample
            noise = noise.reshape(batch, frames, channels, h, w).permute(0, 2, 1, 3, 4)
            latents = self.scheduler.step(noise, t, latents).prev_sample
        video = vae.decode(vae.denormalize_latents(latents).to(vae.dtype)).sample
        return TinyVideoPipelineOutput(frames=(video / 2 + 0.5).clamp(0, 1), latents=latents)
