"""Half precision as diffusers does it: `force_upcast` in every config, honoured by `videovae --dtype float16`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_roofline import MODELS, _model_class  # noqa: E402

from diffusers_videovae import cli  # noqa: E402
from diffusers_videovae.models._common import upcast_if_forced  # noqa: E402

# True where the original decodes in float32 (its SPEC.md); False where it runs in bfloat16 / float16 itself.
FORCE_UPCAST = {"ivvae": False, "odvae": True, "opensora": True, "reducio": False, "cascadev": False}
CLIPS = {
    "ivvae": (5, 32, 32),
    "odvae": (5, 32, 32),
    "opensora": (5, 32, 32),
    "reducio": (16, 64, 64),
    "cascadev": (4, 32, 32),
}


def tiny(name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = _model_class(name)(**MODELS[name].tiny).eval()
    if hasattr(model, "set_progress_bar_config"):
        model.set_progress_bar_config(disable=True)
    return torch.nn.Module.to(model, dtype)  # without diffusers' warning about modules kept in float32


@pytest.mark.parametrize("name", list(FORCE_UPCAST))
def test_force_upcast_default_follows_the_original(name):
    assert tiny(name).config.force_upcast is FORCE_UPCAST[name]


@pytest.mark.parametrize("name", list(FORCE_UPCAST))
@torch.no_grad()
def test_a_float16_run_gives_finite_values_close_to_float32(name):
    x = torch.rand(1, 3, *CLIPS[name], generator=torch.Generator().manual_seed(0)) * 2 - 1
    outputs = {}
    for dtype in (torch.float32, torch.float16):
        model = tiny(name, dtype)
        options = {"num_inference_steps": 1, "generator": torch.Generator().manual_seed(0)}
        if name == "cascadev":
            z = model.encode(x.to(dtype)).latent_dist.mode()
            outputs[dtype] = (z, model.decode(z, **options).sample)
        else:
            outputs[dtype] = tuple(reversed(model.autoencode(x.to(dtype))))
            outputs[dtype] = (outputs[dtype][0].mode(), outputs[dtype][1])
    latent, video = outputs[torch.float16]
    # CascadeV's decoder runs in float16 and joins its frame chunks in float32 (as its `decode` documents).
    assert latent.dtype == torch.float16 and video.dtype == (torch.float32 if name == "cascadev" else torch.float16)
    for half, full in zip(outputs[torch.float16], outputs[torch.float32]):
        assert bool(torch.isfinite(half).all())
        # float16 keeps 11 bits: far from float32 rounding, far closer than the signal (values of order 1).
        assert float((half.float() - full).abs().max()) < 0.1


def test_upcast_if_forced_moves_float16_models_whose_config_asks():
    forced, kept = tiny("odvae", torch.float16), tiny("ivvae", torch.float16)
    assert upcast_if_forced(forced) and forced.dtype == torch.float32
    assert not upcast_if_forced(kept) and kept.dtype == torch.float16
    full = tiny("odvae")
    assert not upcast_if_forced(full) and full.dtype == torch.float32


def test_cli_float16_runs_a_force_upcast_model_in_float32_and_old_folders_take_the_default(tmp_path, capsys):
    folder = tmp_path / "odvae"
    tiny("odvae").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    del config["force_upcast"]  # a folder converted before the key existed
    (folder / "config.json").write_text(json.dumps(config))
    args = argparse.Namespace(model=str(folder), dtype="float16")
    model = cli.load(args)
    assert model.config.force_upcast is True and model.dtype == torch.float32 and args.dtype == "float32"
    assert "force_upcast" in capsys.readouterr().err
    kept_folder = tmp_path / "ivvae"
    tiny("ivvae").save_pretrained(kept_folder)
    assert cli.load(argparse.Namespace(model=str(kept_folder), dtype="float16")).dtype == torch.float16
