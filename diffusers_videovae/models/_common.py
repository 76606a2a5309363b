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
"""What every model of the package answers in the same way: which clips it accepts and how its latents are normalised.

The command line, latent caching, training and the notebooks ask a model these questions through
`VideoAutoencoderMixin` instead of probing configs and signatures:

* `model.input_rule` -> `InputRule`: the valid frame counts, the spatial multiple, and whether `decode` needs the
  clip's frame count;
* `model.latent_normalization` -> a dict of the config constants and the formula pipelines apply;
* `model.normalize_latents(z)` (raw posterior latents -> what a diffusion model is trained on) and
  `model.denormalize_latents(latents)` (normalised latents -> what `decode` takes);
* `model.latents_for_decode(z)` (raw posterior latents -> what `decode` takes: the raw latents themselves, except
  for a model whose decoder reads normalised latents), `model.decode_conditions(video)` (tensors besides the latents
  that `decode` needs, computed from the input clip: none, except e.g. Reducio's content frames) and
  `model.decode_kwargs(num_frames=..., num_inference_steps=..., generator=...)` (the options this model's
  `decode` takes), so that `model.decode(model.latents_for_decode(z), **conditions, **model.decode_kwargs(...))`
  decodes any model's latents;
* `model.autoencode(video, sample_posterior, generator)` -> `(reconstruction, posterior)`, what training and
  evaluation run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["InputRule", "VideoAutoencoderMixin", "register_compression_ratios", "upcast_if_forced"]


@dataclass(frozen=True)
class InputRule:
    """The clip sizes a model accepts.

    Valid frame counts are `first_num_frames + k * frame_step` (k >= 0); `H` and `W` must be multiples of
    `spatial_multiple`. `frame_step` defaults to `temporal_compression` (the causal rule `T = 1 + 4k` is
    `InputRule(4, 8)`); a model that takes any T has `frame_step = 1`.
    """

    temporal_compression: int
    spatial_multiple: int
    first_num_frames: int = 1
    frame_step: int | None = None
    decode_needs_num_frames: bool = False
    """True when `decode` takes the clip's frame count (`num_frames=`) because the latents do not determine it."""

    @property
    def step(self) -> int:
        return self.frame_step or self.temporal_compression

    @property
    def any_num_frames(self) -> bool:
        return self.step == 1 and self.first_num_frames == 1

    def valid_num_frames(self, num_frames: int) -> int:
        """The largest frame count `<= num_frames` this model accepts (0 when none)."""
        if num_frames < self.first_num_frames:
            return 0
        return self.first_num_frames + (num_frames - self.first_num_frames) // self.step * self.step

    def nearest_num_frames(self, num_frames: int) -> tuple[int, int]:
        """The valid frame counts just below (at least the smallest valid one) and just above `num_frames`."""
        below = max(self.valid_num_frames(num_frames), self.first_num_frames)
        above = below if below >= num_frames else below + self.step
        return below, above

    def describe(self) -> str:
        if self.any_num_frames:
            frames = "any T"
        elif self.first_num_frames == self.step:
            frames = f"T = {self.step}k"
        else:
            frames = f"T = {self.first_num_frames} + {self.step}k"
        return f"{frames}, H and W multiples of {self.spatial_multiple}"


def register_compression_ratios(
    model: Any,
    *,
    temporal: int,
    spatial: int,
    temporal_compression_ratio: int | None,
    spatial_compression_ratio: int | None,
) -> None:
    """Store the compression ratios the architecture gives (`temporal`, `spatial`) in `model`'s config, where
    pipelines and `input_rule` read them. Ratios passed to `__init__` (a saved config has them) must agree: a
    contradiction means the other arguments describe another model than the one the config was written for."""
    for name, given, derived in (
        ("temporal_compression_ratio", temporal_compression_ratio, temporal),
        ("spatial_compression_ratio", spatial_compression_ratio, spatial),
    ):
        if given is not None and given != derived:
            raise ValueError(f"{name}={given} contradicts the architecture, which gives {derived}.")
    model.register_to_config(temporal_compression_ratio=temporal, spatial_compression_ratio=spatial)


def upcast_if_forced(model: torch.nn.Module) -> bool:
    """diffusers' rule for half precision: a float16 model whose config sets `force_upcast` runs in float32, as
    pipelines do (`if vae.dtype == torch.float16 and vae.config.force_upcast: upcast`; they upcast for decode, and
    SDXL's img2img for encode too). Moves `model` to float32 and returns True when the rule applies. A folder
    converted before the key existed gets the class's default; a model without the key is left as it is."""
    if model.dtype == torch.float16 and getattr(model.config, "force_upcast", False):
        model.to(torch.float32)
        return True
    return False


def block_offload_names(model: torch.nn.Module, top: list[str], layer_by_layer: list[str]) -> list[str]:
    """`_group_offload_block_modules` for diffusers' block-level group offloading of a model whose `layer_by_layer`
    submodules (dotted paths) have their layers called one by one (frame streaming, exact tiles, a method other than
    `forward`): diffusers onloads a block's group when the block's own `forward` runs, and offloading to disk leaves
    uninitialised tensors in place of the weights of a layer called without it. Every module under those paths gets
    a group of its own (as leaf-level offloading would); `top` (names of modules called directly whose module lists
    run block by block) and module lists elsewhere keep their block groups. Names match at any depth."""
    names = set(top)
    for path in layer_by_layer:
        names.update(path.split("."))
        names.update(name.rsplit(".", 1)[-1] for name, _ in model.get_submodule(path).named_modules() if name)
    return sorted(names)


_NORMALIZATION_FIELDS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")


class VideoAutoencoderMixin:
    """Frame rule and latent normalisation, answered the same way by every model of the package.

    The default normalisation reads the config: `(z - latents_mean) / latents_std` per channel when the config has
    `latents_mean` / `latents_std`, else `(z - shift_factor) * scaling_factor` (no shift when `shift_factor` is
    absent or None). A model whose normalisation is not an affine map of config constants overrides the three
    latent methods. Each model overrides `input_rule`.
    """

    @property
    def input_rule(self) -> InputRule:
        config = self.config
        return InputRule(int(config.temporal_compression_ratio), int(config.spatial_compression_ratio))

    @property
    def latent_normalization(self) -> dict[str, Any]:
        """The config constants of the latent normalisation and its formula (`"formula"`), e.g. for an index file."""
        config = self.config
        info = {}
        for name in _NORMALIZATION_FIELDS:
            value = getattr(config, name, None)
            if value is not None:
                info[name] = list(value) if isinstance(value, (list, tuple)) else value
        if "latents_mean" in info and "latents_std" in info:
            info["formula"] = "(z - latents_mean) / latents_std  (per channel)"
        elif "shift_factor" in info:
            info["formula"] = "(z - shift_factor) * scaling_factor"
        else:
            info["formula"] = "z * scaling_factor"
        return info

    def _channel_constants(self, name: str, z: torch.Tensor) -> torch.Tensor:
        values = torch.tensor(list(getattr(self.config, name)), dtype=z.dtype, device=z.device)
        return values.view(1, -1, *([1] * (z.ndim - 2)))

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Raw posterior latents `(B, C, t, h, w)` -> the normalised latents a diffusion model is trained on."""
        config = self.config
        if getattr(config, "latents_mean", None) is not None:
            return (z - self._channel_constants("latents_mean", z)) / self._channel_constants("latents_std", z)
        shift = getattr(config, "shift_factor", None) or 0.0
        return (z - shift) * config.scaling_factor

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> what `decode` takes (the inverse of `normalize_latents`)."""
        config = self.config
        if getattr(config, "latents_mean", None) is not None:
            return latents * self._channel_constants("latents_std", latents) + self._channel_constants(
                "latents_mean", latents
            )
        shift = getattr(config, "shift_factor", None) or 0.0
        return latents / config.scaling_factor + shift

    def _to_compute_dtype(self, x: torch.Tensor) -> torch.Tensor:
        """The input in the dtype the model computes in (its weights' dtype, or the compute dtype of diffusers'
        layerwise casting): `encode` and `decode` cast a floating input of another dtype (e.g. float64, or float32
        for a bfloat16 model) instead of failing inside the first layer. Eager calls only; a compiled model takes
        inputs of its dtype."""
        if torch.compiler.is_compiling():
            return x
        dtype = self.dtype
        return x if x.dtype == dtype else x.to(dtype)

    def latents_for_decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw posterior latents -> what `decode` takes (the raw latents for every model that decodes raw latents)."""
        return z

    def decode_conditions(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tensors besides the latents that `decode` needs, computed from the encoded clip `(B, 3, T, H, W)`."""
        return {}

    def decode_kwargs(
        self,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """The subset of these options that this model's `decode` takes (None values are left out)."""
        if num_frames is not None and self.input_rule.decode_needs_num_frames:
            return {"num_frames": num_frames}
        return {}

    def autoencode(
        self, sample: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Any]:
        """Encode, take the posterior's sample (or mode), decode: `(reconstruction, posterior)`."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        options = self.decode_kwargs(num_frames=sample.shape[2], generator=generator)
        reconstruction = self.decode(self.latents_for_decode(z), **self.decode_conditions(sample), **options).sample
        return reconstruction, posterior
