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
"""Every published original release, by name (`MODEL_TYPE:VARIANT`), as data.

Facts come from `../shared/reference/<model>/SPEC.md` (what the original code loads) and the model cards. Each
release lists the files its converter reads, by the role they play (`checkpoint`, its `original_config`, and the
side files CascadeV's converter takes as options); `sources.py` fetches them, `model_cache.py` keeps the conversion.
A `revision` of None means the repo's default branch: no Hub commit of these repos is known here in full.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RELEASES", "Release", "Source", "find_release", "is_release_name", "releases_in_repo"]


@dataclass(frozen=True)
class Source:
    """One file a converter reads, and where it is published.

    `role` is the converter argument it fills: `checkpoint`, `original_config`, or a reader option (CascadeV's
    `effnet`, `previewer`, `svd_vae`). `path` is relative to the repo root; a name with `*` is a pattern (the exact
    name is not known), matched against the repo's files.
    """

    role: str
    repo: str
    path: str
    host: str = "huggingface"  # or "modelscope"
    revision: str | None = None
    gated: bool = False
    # Other spellings of `path` the host may use (IV-VAE's files may sit under `weights/` on ModelScope).
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Release:
    name: str  # MODEL_TYPE:VARIANT
    sources: tuple[Source, ...]
    size: str
    license: str
    compression: str
    notes: str = ""

    @property
    def model_type(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def variant(self) -> str:
        return self.name.split(":", 1)[1]

    @property
    def main(self) -> Source:
        return next(source for source in self.sources if source.role == "checkpoint")

    @property
    def subfolder(self) -> str | None:
        folder = self.main.path.rpartition("/")[0]
        return folder or None

    @property
    def hosts(self) -> str:
        return ", ".join(sorted({f"{source.host}:{source.repo}" for source in self.sources}))


_IVVAE = "wpy1999/iv-vae"
_MIT = "MIT"


def _ivvae(z_dim: int, dim: int, size: str) -> Release:
    file = f"ivvae_z{z_dim}_dim{dim}.pth"
    return Release(
        name=f"ivvae:ivvae_z{z_dim}_dim{dim}",
        sources=(Source("checkpoint", _IVVAE, file, host="modelscope", alternatives=(f"weights/{file}",)),),
        size=size,
        license=_MIT,
        compression=f"4x8x8, {z_dim} channels",
    )


_RELEASE_LIST: tuple[Release, ...] = (
    _ivvae(4, 64, "409 MiB (fp32)"),
    _ivvae(8, 64, "410 MiB (fp32)"),
    _ivvae(16, 64, "411 MiB (fp32)"),
    _ivvae(16, 96, "923 MiB (fp32)"),
    Release(
        name="odvae:v1.2.0",
        sources=(
            Source("checkpoint", "LanguageBind/Open-Sora-Plan-v1.2.0", "vae/checkpoint.ckpt"),
            Source("original_config", "LanguageBind/Open-Sora-Plan-v1.2.0", "vae/config.json"),
        ),
        size="~0.96 GB (239 M params)",
        license=_MIT,
        compression="4x8x8, 4 channels",
    ),
    Release(
        name="odvae:v1.1.0",
        sources=(
            Source("checkpoint", "LanguageBind/Open-Sora-Plan-v1.1.0", "vae/diffusion_pytorch_model.*"),
            Source("original_config", "LanguageBind/Open-Sora-Plan-v1.1.0", "vae/config.json"),
        ),
        size="~0.96 GB (fp32)",
        license=_MIT,
        compression="4x8x8, 4 channels",
    ),
    Release(
        name="opensora:v1.2",
        sources=(
            Source("checkpoint", "hpcai-tech/OpenSora-VAE-v1.2", "model.safetensors"),
            Source("original_config", "hpcai-tech/OpenSora-VAE-v1.2", "config.json"),
        ),
        size="1.57 GB (fp32)",
        license="Apache-2.0",
        compression="4x8x8 (17 frames -> 5), 4 channels",
        notes="main was commit 33d153e (2024-06-17)",
    ),
    Release(
        name="reducio:ft4",
        sources=(Source("checkpoint", "microsoft/Reducio-VAE", "reducio-ft4-fs32-attn23.ckpt"),),
        size="1.75 GB (fp32)",
        license=_MIT,
        compression="4x32x32, 16 channels",
    ),
    Release(
        name="reducio:ft2",
        sources=(Source("checkpoint", "microsoft/Reducio-VAE", "reducio-ft2-fs32-attn23.ckpt"),),
        size="1.73 GB (fp32)",
        license=_MIT,
        compression="2x32x32, 16 channels",
    ),
    Release(
        name="cascadev:s1024.effn-f32",
        sources=(
            Source("checkpoint", "ByteDance/CascadeV", "s1024.effn-f32.pth"),
            Source("effnet", "stabilityai/StableWurst", "effnet_encoder.safetensors"),
            Source("previewer", "stabilityai/StableWurst", "previewer.safetensors"),
            Source("svd_vae", "stabilityai/stable-video-diffusion-img2vid-xt", "vae/config.json", gated=True),
            Source(
                "svd_vae",
                "stabilityai/stable-video-diffusion-img2vid-xt",
                "vae/diffusion_pytorch_model.fp16.safetensors",
                gated=True,
            ),
        ),
        size="~2.1 GB in 4 files",
        license="OpenRAIL++-M + StableCascade NC + SVD (gated)",
        compression="1x32x32, 16 channels",
        notes="DiT 456 M params (~1.8 GB if fp32), effnet encoder 81 MB, SVD VAE 196 MB (fp16). Licences: DiT "
        "CreativeML OpenRAIL++-M; StableWurst effnet/previewer: Stability AI's StableCascade licence (non-commercial "
        "research); SVD VAE: Stable Video Diffusion licence, a gated repo: accept its licence on the Hub and log in.",
    ),
)

RELEASES: dict[str, Release] = {release.name: release for release in _RELEASE_LIST}


def is_release_name(name: str) -> bool:
    """`MODEL_TYPE:VARIANT` shape (known or not): a path or Hub id never has a `:` before its first `/`."""
    head, colon, tail = name.partition(":")
    return bool(colon) and "/" not in head and head.isidentifier() and bool(tail) and "/" not in tail


def find_release(name: str) -> Release:
    """The release called `name`; a clear error naming the known ones otherwise."""
    if name in RELEASES:
        return RELEASES[name]
    model_type = name.partition(":")[0]
    same_type = [known for known in RELEASES if known.startswith(model_type + ":")]
    hint = (
        f"released {model_type} variants: {', '.join(same_type)}"
        if same_type
        else "known releases: " + ", ".join(RELEASES)
    )
    raise ValueError(f"No release called {name!r}; {hint} (videovae models lists them).")


def releases_in_repo(repo: str, subfolder: str | None = None) -> list[Release]:
    """The releases whose checkpoint lives in `repo` (under `subfolder` when given)."""
    return [
        release
        for release in RELEASES.values()
        if release.main.repo.lower() == repo.lower()
        and release.main.host == "huggingface"
        and (subfolder is None or (release.subfolder or "") == subfolder.strip("/"))
    ]
