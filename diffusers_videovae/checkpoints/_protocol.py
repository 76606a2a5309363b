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
"""The one protocol every `checkpoints/<model_type>.py` follows.

A reader who knows one checkpoint module knows all of them: each answers the same questions with the same names.

* **Who it is**: `MODEL_TYPE` (the registry key in `MODEL_TYPES`, also `conversion/convert_<MODEL_TYPE>.py`),
  `MODEL_NAME` (how people call the model, used in messages such as "this looks like an Open-Sora 1.2 VAE
  checkpoint"), `CLASS_NAME` (our model class) and `ORIGINAL_REPO`.
* **What was released** (data): `VARIANTS` maps a variant name to the original's own config for it (the
  constructor arguments or config file of the original code), `DEFAULT_VARIANT` names the main release,
  `LATENT_NORMALIZATION` maps a variant to the config fields of its latent normalisation (e.g.
  `{"scaling_factor": 0.18215}`): `translate_config(VARIANTS[v])` gives exactly these values.
* **How a file is opened**: `read_original(path, original_config=None, **options)` opens the file safely
  (`_common.load_state_dict_file`: safetensors or `torch.load(weights_only=True)`), unwraps it
  (`_common.unwrap_state_dict`: `state_dict`, `ema_state_dict`, `module.`, ...) and returns an
  `OriginalCheckpoint`; it does not judge the layout. `looks_like(state_dict)` says whether a state dict has this
  release's layout: the driver (`checkpoints.convert_original`) refuses one that does not, naming the model it
  does look like, and `load_model` uses it to detect a bare file's model.
* **Which variant it is**: `infer_variant(state_dict) -> str | None` from tensor shapes (None: no release, or
  not this model's layout). `convert` decides with `_common.resolve_variant`, the same rule for every model.
* **How it becomes ours**: `translate_config(original_config) -> our config`; `RENAME_RULES` (a table of
  `RenameRule`s, the whole key map where it is static) and `DROPPED` (pattern -> reason: original keys left out on
  purpose); `convert(original, variant=None, **options) -> ConvertedCheckpoint` applies them plus the module's few
  named handlers (functions whose names say what they do, e.g. `_fuse_pairs`), and ends with
  `_common.finish_conversion` (float32 tensors, set-aside entries reported as dropped).
* Optionally `add_arguments(parser)` for model-specific converter flags; their `dest` names reach
  `read_original` / `convert` as keyword options.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import torch

from ._common import ConvertedCheckpoint, OriginalCheckpoint, RenameRule

__all__ = ["CheckpointModule", "check_checkpoint_module"]


@runtime_checkable
class CheckpointModule(Protocol):
    """The names every checkpoint module defines (checked on every registered module by the test suite)."""

    MODEL_TYPE: str
    MODEL_NAME: str
    CLASS_NAME: str
    ORIGINAL_REPO: str
    VARIANTS: dict[str, dict[str, Any]]
    DEFAULT_VARIANT: str
    LATENT_NORMALIZATION: dict[str, dict[str, Any]]
    RENAME_RULES: list[RenameRule]
    DROPPED: dict[str, str]

    def looks_like(self, state_dict: dict[str, torch.Tensor]) -> bool: ...

    def read_original(
        self, path: str | os.PathLike, original_config: str | os.PathLike | None = None, **options: Any
    ) -> OriginalCheckpoint: ...

    def infer_variant(self, state_dict: dict[str, torch.Tensor]) -> str | None: ...

    def translate_config(self, original_config: dict[str, Any]) -> dict[str, Any]: ...

    def convert(
        self, original: OriginalCheckpoint, variant: str | None = None, **options: Any
    ) -> ConvertedCheckpoint: ...


_TYPES = {
    "MODEL_TYPE": str,
    "MODEL_NAME": str,
    "CLASS_NAME": str,
    "ORIGINAL_REPO": str,
    "VARIANTS": dict,
    "DEFAULT_VARIANT": str,
    "LATENT_NORMALIZATION": dict,
    "RENAME_RULES": list,
    "DROPPED": dict,
}


def check_checkpoint_module(module: Any) -> list[str]:
    """What `module` lacks or gets wrong of the protocol (an empty list when it conforms)."""
    problems = []
    if not isinstance(module, CheckpointModule):
        names = [*_TYPES, "looks_like", "read_original", "infer_variant", "translate_config", "convert"]
        missing = [name for name in names if not hasattr(module, name)]
        problems.append(f"missing {sorted(missing)}")
        return problems
    for name, kind in _TYPES.items():
        if not isinstance(getattr(module, name), kind):
            problems.append(f"{name} is a {type(getattr(module, name)).__name__}, not a {kind.__name__}")
    if module.DEFAULT_VARIANT not in module.VARIANTS:
        problems.append(f"DEFAULT_VARIANT {module.DEFAULT_VARIANT!r} is not in VARIANTS")
    if set(module.LATENT_NORMALIZATION) != set(module.VARIANTS):
        problems.append("LATENT_NORMALIZATION must have one entry per variant")
    if not all(isinstance(rule, RenameRule) for rule in module.RENAME_RULES):
        problems.append("RENAME_RULES must hold RenameRule items")
    if not all(isinstance(reason, str) and reason for reason in module.DROPPED.values()):
        problems.append("DROPPED must map each pattern to the reason its keys are left out")
    for variant, original_config in module.VARIANTS.items():
        fields = module.LATENT_NORMALIZATION.get(variant)
        if not isinstance(fields, dict):
            problems.append(f"LATENT_NORMALIZATION[{variant!r}] must be a dict of config fields")
            continue
        try:
            config = module.translate_config(original_config)
        except Exception as error:  # report it with the rest instead of stopping the check
            problems.append(f"translate_config(VARIANTS[{variant!r}]) raised {type(error).__name__}: {error}")
            continue
        wrong = {key: config.get(key) for key, value in fields.items() if config.get(key) != value}
        if wrong:
            problems.append(
                f"translate_config(VARIANTS[{variant!r}]) gives {wrong}, not LATENT_NORMALIZATION[{variant!r}]"
            )
    if module.looks_like({}) or module.infer_variant({}) is not None:
        problems.append("an empty state dict must not look like this release nor infer a variant")
    add_arguments = getattr(module, "add_arguments", None)
    if add_arguments is not None and not callable(add_arguments):
        problems.append("add_arguments must be a function taking an argparse.ArgumentParser")
    return problems
