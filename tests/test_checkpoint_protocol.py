"""Every registered checkpoint module answers the same questions with the same names (`checkpoints/_protocol.py`)."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from diffusers_videovae import checkpoints
from diffusers_videovae.checkpoints._protocol import check_checkpoint_module

CHECKPOINTS_DIR = Path(checkpoints.__file__).parent


@pytest.mark.parametrize("model_type", sorted(checkpoints.MODEL_TYPES))
def test_every_registered_checkpoint_module_follows_the_protocol(model_type):
    module = checkpoints.get_checkpoint_module(model_type)
    assert check_checkpoint_module(module) == []
    assert module.MODEL_TYPE == model_type
    assert module.CLASS_NAME == checkpoints.MODEL_TYPES[model_type][1]


@pytest.mark.parametrize("model_type", sorted(checkpoints.MODEL_TYPES))
def test_checkpoint_modules_keep_no_names_of_the_old_shapes(model_type):
    module = checkpoints.get_checkpoint_module(model_type)
    for old in ("SCALING", "WEIGHTS_LOCATION", "RULES", "DROP", "convert_config", "_unwrap", "_temporal_rules"):
        assert not hasattr(module, old), f"{model_type}.{old} is a second name for a protocol answer"


def _module_like(model_type: str, **changes) -> SimpleNamespace:
    module = checkpoints.get_checkpoint_module(model_type)
    names = {name: getattr(module, name) for name in dir(module) if not name.startswith("__")}
    names.update(changes)
    return SimpleNamespace(**{name: value for name, value in names.items() if value is not None})


def test_the_protocol_check_names_what_a_module_gets_wrong():
    assert check_checkpoint_module(_module_like("ivvae")) == []
    missing = check_checkpoint_module(_module_like("ivvae", LATENT_NORMALIZATION=None, translate_config=None))
    assert missing == ["missing ['LATENT_NORMALIZATION', 'translate_config']"]
    wrong_scale = {**checkpoints.get_checkpoint_module("odvae").LATENT_NORMALIZATION, "v1.1.0": {"scaling_factor": 1}}
    problems = check_checkpoint_module(_module_like("odvae", LATENT_NORMALIZATION=wrong_scale))
    assert problems == [
        "translate_config(VARIANTS['v1.1.0']) gives {'scaling_factor': 0.18215}, not LATENT_NORMALIZATION['v1.1.0']"
    ]

    def refuses(original_config):
        raise KeyError("dim")

    problems = check_checkpoint_module(_module_like("ivvae", translate_config=refuses))
    assert problems == [
        f"translate_config(VARIANTS[{variant!r}]) raised KeyError: 'dim'"
        for variant in checkpoints.get_checkpoint_module("ivvae").VARIANTS
    ]
    problems = check_checkpoint_module(_module_like("opensora", DEFAULT_VARIANT="v1.3", DROPPED={"shift": ""}))
    assert problems == [
        "DEFAULT_VARIANT 'v1.3' is not in VARIANTS",
        "DROPPED must map each pattern to the reason its keys are left out",
    ]


def test_checkpoints_package_does_not_import_the_loaders_or_the_models_at_import_time():
    # `loaders` imports `checkpoints` (from_single_file, load_model): the other direction would be a cycle.
    for path in sorted(CHECKPOINTS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: lazy imports inside functions are how models are reached
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                assert node.module and not node.module.startswith(("loaders", "models", "cli")) and node.level == 1, (
                    f"{path.name} imports {'.' * node.level}{node.module} at import time"
                )
