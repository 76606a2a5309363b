"""diffusers-videovae: published video VAEs as diffusers models, loading the original released checkpoints."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public names -> the module that defines them. Imported on first use so that `import diffusers_videovae`
# stays light and a model's dependencies load only when that model is used.
_LAZY = {
    "AutoencoderKLIVVAE": "diffusers_videovae.models.iv_vae",
    "AutoencoderKLODVAE": "diffusers_videovae.models.od_vae",
    "AutoencoderKLOpenSora": "diffusers_videovae.models.opensora_vae",
    "AutoencoderKLReducio": "diffusers_videovae.models.reducio_vae",
    "ReducioContentFeatures": "diffusers_videovae.models.reducio_vae",
    "AutoencoderCascadeV": "diffusers_videovae.models.cascadev",
    "CascadeVTransformer3DModel": "diffusers_videovae.models.cascadev",
    "load_model": "diffusers_videovae.loaders",
    "CheckpointError": "diffusers_videovae.checkpoints",
    # Not public: diffusers' pipeline loader finds a component's load method by looking its base classes up in the
    # library named in model_index.json, so ["diffusers_videovae", "AutoencoderKLIVVAE"] needs this name here.
    "ModelMixin": "diffusers.models.modeling_utils",
}

__all__ = [
    "AutoencoderCascadeV",
    "AutoencoderKLIVVAE",
    "AutoencoderKLODVAE",
    "AutoencoderKLOpenSora",
    "AutoencoderKLReducio",
    "CascadeVTransformer3DModel",
    "CheckpointError",
    "ReducioContentFeatures",
    "__version__",
    "load_model",
]

if TYPE_CHECKING:
    from .checkpoints import CheckpointError
    from .loaders import load_model
    from .models.cascadev import AutoencoderCascadeV, CascadeVTransformer3DModel
    from .models.iv_vae import AutoencoderKLIVVAE
    from .models.od_vae import AutoencoderKLODVAE
    from .models.opensora_vae import AutoencoderKLOpenSora
    from .models.reducio_vae import AutoencoderKLReducio, ReducioContentFeatures


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffusers_videovae' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
