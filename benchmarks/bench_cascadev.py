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
"""CascadeV cost on CPU: effnet encode, one DiT step, the SVD decode (full-size configs, random weights, float32).

    python benchmarks/bench_cascadev.py [--original-repo PIXART_WITH_CASCADEV_PATCHES] [--threads 2] [--quick]

* effnet encode of 8 frames 256x256 (`AutoencoderCascadeV.encode`);
* ONE DiT step: `CascadeVTransformer3DModel.forward_windows` on the encode's 8 frames of 32x32 SVD latents (the
  PixArt-XL/2 config built with a 32x32 window, as the original's own cost table);
* the SVD decode of `(1, 4, 8, 32, 32)` in chunks of 4 (`decode_svd_latents`).

`--original-repo` is a PixArt-Sigma checkout with CascadeV's `patch/*.py` copied over it (what CascadeV's install
script does); the DiT step then also runs the original `PixArt.forward_with_dpmsolver` on the same weights and input.
Third-party modules missing here are replaced by stand-ins only for this run (xformers' attention by torch SDPA,
timm's `Mlp` / `Attention` / `DropPath`, mmcv's registry), as in the harness that measured the original's cost; the
original effnet needs torchvision, which has no CPU wheel here, so that row runs only where torchvision is installed.
The original's SVD decode is diffusers' own decoder called chunk by chunk, i.e. the same computation as ours.
`--quick` runs tiny sizes (2 DiT layers, 64 px) to prove the script works; its numbers mean nothing.
Every measurement runs in a fresh process (benchmarks/_harness.py); timings on a shared machine are indicative.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from benchmarks._harness import (
        add_device_argument,
        alternated_runs,
        format_table,
        gib,
        measure,
        peak_cell,
        rss_bytes,
    )
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import add_device_argument, alternated_runs, format_table, gib, measure, peak_cell, rss_bytes


def _sizes(quick: bool) -> dict:
    if quick:
        return {"frames": 8, "size": 64, "layers": 2}
    return {"frames": 8, "size": 256, "layers": 28}


def _dit_config(quick: bool) -> dict:
    sizes = _sizes(quick)
    return {"sample_size": sizes["size"] // 8, "num_layers": sizes["layers"]}


# -- the original DiT, imported from a patched PixArt-Sigma checkout with stand-ins for missing packages ---------


def _stand_ins() -> None:
    """Register minimal stand-ins for the original's third-party imports that are not installed here."""

    def module(name: str) -> types.ModuleType:
        if name in sys.modules:
            return sys.modules[name]
        created = types.ModuleType(name)
        sys.modules[name] = created
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(module(parent), child, created)
        return created

    try:
        import xformers.ops  # noqa: F401
    except ImportError:

        def memory_efficient_attention(q, k, v, p=0.0, attn_bias=None):
            # xformers takes (B, N, heads, head_dim)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias)
            return out.transpose(1, 2)

        module("xformers.ops").memory_efficient_attention = memory_efficient_attention
    try:
        import timm  # noqa: F401
    except ImportError:

        class Mlp(nn.Module):
            def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
                super().__init__()
                self.fc1 = nn.Linear(in_features, hidden_features or in_features)
                self.act = act_layer()
                self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)

            def forward(self, x):
                return self.fc2(self.act(self.fc1(x)))

        class Attention(nn.Module):
            def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0, **kwargs):
                super().__init__()
                self.num_heads = num_heads
                self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
                self.attn_drop = nn.Dropout(attn_drop)
                self.proj = nn.Linear(dim, dim)
                self.proj_drop = nn.Dropout(proj_drop)

        vit = module("timm.models.vision_transformer")
        vit.Mlp, vit.Attention = Mlp, Attention
        module("timm.models.layers").DropPath = lambda p: nn.Identity()
    for name in ("mmcv", "einops", "torchvision", "torchvision.transforms"):
        try:
            importlib.import_module(name)
        except ImportError:
            stand_in = module(name)
            if name == "mmcv":

                class Registry(dict):
                    def __init__(self, name=None):
                        super().__init__()

                    def register_module(self, name=None, module=None):
                        def add(obj):
                            self[obj.__name__] = obj
                            return obj

                        return add

                stand_in.Registry = Registry
            if name == "einops":
                stand_in.rearrange = None


def _original_dit(repo: str, quick: bool):
    root = Path(repo).resolve()
    if not (root / "diffusion" / "model" / "nets" / "PixArt.py").is_file():
        raise FileNotFoundError(f"{repo} is not a PixArt-Sigma checkout (no diffusion/model/nets/PixArt.py)")
    _stand_ins()
    # The packages' __init__ files import the whole training stack: register them empty, then import the DiT.
    for name, folder in (("diffusion", ""), ("diffusion.model", "model"), ("diffusion.model.nets", "model/nets")):
        package = types.ModuleType(name)
        package.__path__ = [str(root / "diffusion" / folder)]
        sys.modules[name] = package
    pixart = importlib.import_module("diffusion.model.nets.PixArt")
    config = _dit_config(quick)
    model = pixart.PixArt(
        input_size=config["sample_size"],
        in_channels=20,
        depth=config["num_layers"],
        pe_interpolation=2.0,
        attn_strides=[[1, 4], [4, 1]] * 4 + [None] * 4 + [[1, 4], [4, 1]] * 4 + [None] * 8,
        lats_per_vid=8,
    )
    for block in model.blocks:
        block.attn.fp32_attention = True
    return model.eval()


def _to_original_keys(state: dict) -> dict:
    renamed = {}
    for key, value in state.items():
        key = key.replace("t_embedder.linear_1.", "t_embedder.mlp.0.").replace(
            "t_embedder.linear_2.", "t_embedder.mlp.2."
        )
        renamed[key] = value
    return renamed


# -- measured calls (module level so that the spawned child can import them) ---------------------------------------


def _our_dit(quick: bool):
    from diffusers_videovae.models.cascadev import CascadeVTransformer3DModel

    torch.manual_seed(0)
    return CascadeVTransformer3DModel(**_dit_config(quick)).eval()


def _dit_input(quick: bool) -> tuple[torch.Tensor, torch.Tensor]:
    sizes = _sizes(quick)
    latent = sizes["size"] // 8
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(sizes["frames"], 20, latent, latent, generator=generator)
    return x, torch.full((sizes["frames"],), 856.2857)


def setup(part: str, side: str, quick: bool, repo: str | None, out: str):
    sizes = _sizes(quick)
    state = {"part": part, "side": side, "out": out}
    if part == "encode":
        from diffusers_videovae.models.cascadev import AutoencoderCascadeV

        torch.manual_seed(0)
        config = {"transformer_num_layers": 1, "transformer_sample_size": 16, "svd_block_out_channels": (32,) * 4}
        model = AutoencoderCascadeV(**config, with_previewer=False).eval()
        state["model"] = model
        state["data"] = torch.rand(1, 3, sizes["frames"], sizes["size"], sizes["size"]) * 2 - 1
    elif part == "dit_step":
        ours = _our_dit(quick)
        state["data"] = _dit_input(quick)
        if side == "original":
            model = _original_dit(repo, quick)
            model.load_state_dict(_to_original_keys(ours.state_dict()), strict=True)
            state["model"] = model
        else:
            state["model"] = ours
    else:
        from diffusers import AutoencoderKLTemporalDecoder

        from diffusers_videovae.models.cascadev import AutoencoderCascadeV

        torch.manual_seed(0)
        latent = sizes["size"] // 8
        state["data"] = torch.randn(1, 4, sizes["frames"], latent, latent, generator=torch.Generator().manual_seed(2))
        svd = AutoencoderKLTemporalDecoder(
            down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2
        ).eval()
        if side == "original":
            state["model"] = svd
        else:  # the same weights inside our model
            config = {"transformer_num_layers": 1, "transformer_sample_size": 16}
            model = AutoencoderCascadeV(**config, with_previewer=False).eval()
            model.svd_vae.load_state_dict(svd.state_dict())
            state["model"] = model
    return state


def call(state) -> tuple[str, int]:
    """Run the part; return the output's path and the resident memory just before the call."""
    model, data = state["model"], state["data"]
    start = rss_bytes()
    with torch.no_grad():
        if state["part"] == "encode":
            result = model.encode(data).latent_dist.mean
        elif state["part"] == "dit_step":
            if state["side"] == "original":
                result = model.forward_with_dpmsolver(*data)
            else:
                result = model.forward_windows(*data)
        elif state["side"] == "original":  # tvae_decode: chunks of 4 frames, each decoded on its own
            frames = data[0].transpose(0, 1)
            result = torch.cat([model.decode(chunk, num_frames=4).sample for chunk in frames.split(4)])
            result = result.transpose(0, 1)[None]
        else:
            result = model.decode_svd_latents(data)
    torch.save(result, state["out"])
    return state["out"], start


# -- driver ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original-repo", default=None, help="PixArt-Sigma checkout with CascadeV's patches")
    parser.add_argument("--workdir", default="/tmp/cascadev_bench", help="outputs go here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: prove the script runs (numbers mean nothing)"
    )
    parser.add_argument("--parts", nargs="+", default=["encode", "dit_step", "svd_decode"], help="what to measure")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = _sizes(args.quick)
    inputs = {
        "encode": f"{sizes['frames']}x{sizes['size']}x{sizes['size']} video",
        "dit_step": f"{sizes['frames']}x20x{sizes['size'] // 8}x{sizes['size'] // 8}, {sizes['layers']} layers",
        "svd_decode": f"1x4x{sizes['frames']}x{sizes['size'] // 8}x{sizes['size'] // 8}",
    }
    rows = []
    for part in args.parts:
        sides = ["ours"]
        if part == "svd_decode" or (part == "dit_step" and args.original_repo):
            sides.append("original")
        results = {}
        # Each run in a fresh process, the sides alternating.
        runs = alternated_runs(
            sides,
            args.repeats,
            lambda side, part=part: measure(
                setup,
                call,
                device=args.device,
                repeats=1,
                threads=args.threads,
                out=str(workdir / f"{side}_{part}.pt"),
                part=part,
                side=side,
                quick=args.quick,
                repo=args.original_repo,
            ),
        )
        for side in sides:
            out = str(workdir / f"{side}_{part}.pt")
            failed = [run for run in runs[side] if "error" in run]
            result = (
                failed[0]
                if failed
                else {
                    "seconds": statistics.median(run["seconds"] for run in runs[side]),
                    "peak_bytes": max(run["peak_bytes"] for run in runs[side]),
                    "accelerator_peak_bytes": runs[side][-1].get("accelerator_peak_bytes"),
                    "result": max(runs[side], key=lambda run: run["peak_bytes"])["result"],
                }
            )
            row = {"model": side, "part": part, "input": inputs[part]}
            if "error" in result:
                row["seconds"] = result["error"][:80]
            else:
                row["seconds"] = f"{result['seconds']:.2f}"
                above = result["peak_bytes"] - result["result"][1]
                row["peak RSS (above start)"] = f"{peak_cell(result)} ({gib(above)})"
                results[side] = (result, out)
            rows.append(row)
            print(row, flush=True)
        if "ours" in results and "original" in results:
            (ours, ours_out), (original, original_out) = results["ours"], results["original"]
            ours_row = next(row for row in rows if row["model"] == "ours" and row["part"] == part)
            diff = (torch.load(ours_out) - torch.load(original_out)).abs().max().item()
            ours_row["max abs diff vs original"] = f"{diff:.1e}"
            ours_row["speed-up"] = f"{original['seconds'] / ours['seconds']:.2f}x"
            ours_row["memory"] = f"{ours['peak_bytes'] / original['peak_bytes']:.2f}x"
            ours_row["memory above start"] = (
                f"{(ours['peak_bytes'] - ours['result'][1]) / (original['peak_bytes'] - original['result'][1]):.2f}x"
            )
    columns = ["model", "part", "input", "seconds", "peak RSS (above start)", "max abs diff vs original", "speed-up"]
    columns += ["memory", "memory above start"]
    print()
    mode = "QUICK (tiny sizes, numbers mean nothing)" if args.quick else "full-size configs"
    print(f"CascadeV, {mode}, random weights, float32, CPU, {args.threads} threads, median of {args.repeats}")
    print(format_table(rows, columns))


if __name__ == "__main__":
    main()
