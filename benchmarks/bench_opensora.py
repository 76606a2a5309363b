"""Speed and peak memory of `AutoencoderKLOpenSora` (full Open-Sora 1.2 config, float32, CPU), optionally against the
original Open-Sora code with the same weights.

    python benchmarks/bench_opensora.py                                   # ours: 17x128x128, 720p tiled
    python benchmarks/bench_opensora.py --original-repo /tmp/opensora_v120  # + the original, max abs diff

Weights are random (seeded): speed does not depend on them, and the released file is not downloaded. With
`--original-repo` (a checkout of hpcaitech/Open-Sora at tag v1.2.0, never part of this repository; it needs
`einops`) the weights are those of a seeded original `VideoAutoencoderPipeline`, saved in the release layout and
loaded by our `from_single_file`, so both sides compute the same function. The original runs deterministically
(posterior modes in both stages, as in the fixtures' `z_mode`), with its only stubs being the registry and the
PixArt download, which is replaced by building the SDXL VAE from its config.

Every measurement runs in a fresh process (benchmarks/_harness.py): seconds of the call and the peak resident memory
during it (weights and inputs included). The original has no spatial tiling, so 720p runs ours only.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch

try:
    from benchmarks._harness import add_device_argument, format_table, measure, peak_cell
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import add_device_argument, format_table, measure, peak_cell

SHIFT = (-0.10, 0.34, 0.27, 0.98)
SCALE = (3.85, 2.32, 2.33, 3.06)


# -- the original code, imported from a checkout with its registry and PixArt download stubbed ----------------------


def _install_original(repo: str):
    """Import `opensora.models.vae.{vae,vae_temporal}` from `repo` without mmengine, colossalai or the Hub."""
    from diffusers import AutoencoderKL

    from diffusers_videovae.checkpoints.opensora import SDXL_VAE_CONFIG

    root = Path(repo).resolve() / "opensora"
    if not (root / "models" / "vae" / "vae_temporal.py").is_file():
        raise FileNotFoundError(f"{repo} is not an Open-Sora v1.2.0 checkout (no opensora/models/vae/vae_temporal.py)")

    class Registry(dict):
        def register_module(self, name=None):
            def add(obj):
                self[name or obj.__name__] = obj
                return obj

            return add

    def build_module(config, registry):
        config = dict(config)
        return registry[config.pop("type")](**config)

    def package(name, path=None):
        module = types.ModuleType(name)
        if path is not None:
            module.__path__ = [str(path)]
        sys.modules[name] = module
        return module

    package("opensora", root)
    package("opensora.models", root / "models")
    package("opensora.models.vae", root / "models" / "vae")
    package("opensora.utils", root / "utils")
    registry = package("opensora.registry")
    registry.MODELS, registry.build_module = Registry(), build_module
    ckpt = package("opensora.utils.ckpt_utils")
    ckpt.load_checkpoint = lambda *args, **kwargs: None

    vae = importlib.import_module("opensora.models.vae.vae")
    temporal = importlib.import_module("opensora.models.vae.vae_temporal")
    spatial_config = {key: value for key, value in SDXL_VAE_CONFIG.items() if not key.startswith("_")}

    class PixArtSDXLVAE(AutoencoderKL):
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return AutoencoderKL(**spatial_config)

    vae.AutoencoderKL = PixArtSDXLVAE
    return vae, temporal


def _build_original(repo: str, deterministic: bool = True):
    vae, temporal = _install_original(repo)
    if deterministic:  # the fixtures' z_mode path: posterior modes in both stages
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mode()
        importlib.import_module("opensora.models.vae.utils").DiagonalGaussianDistribution.sample = lambda self: (
            self.mode()
        )
    config = vae.VideoAutoencoderPipelineConfig(
        vae_2d={
            "type": "VideoAutoencoderKL",
            "from_pretrained": "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",
            "subfolder": "vae",
            "micro_batch_size": 4,
        },
        vae_temporal={"type": "VAE_Temporal_SD", "from_pretrained": None},
        micro_frame_size=17,
        shift=SHIFT,
        scale=SCALE,
    )
    return vae.VideoAutoencoderPipeline(config).eval()


def make_original_weights(repo: str, path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    pipeline = _build_original(repo, deterministic=False)
    save_file({key: value.contiguous() for key, value in pipeline.state_dict().items()}, str(path))


def make_our_weights(path: Path) -> None:
    from diffusers_videovae.models.opensora_vae import AutoencoderKLOpenSora

    torch.manual_seed(0)
    AutoencoderKLOpenSora().save_pretrained(path)


# -- measured calls (module level so that the spawned child can import them) ---------------------------------------


def _video(frames: int, height: int, width: int) -> torch.Tensor:
    from diffusers_videovae.video import synthetic_clip

    return synthetic_clip(frames, height, width, seed=0)


def setup_ours(weights: str, op: str, frames: int, height: int, width: int, tiling: bool, latents: str, out: str):
    from diffusers_videovae.models.opensora_vae import AutoencoderKLOpenSora

    path = Path(weights)
    model = (
        AutoencoderKLOpenSora.from_single_file(path) if path.is_file() else AutoencoderKLOpenSora.from_pretrained(path)
    )
    model.eval()
    # Weights loaded from safetensors may stay file-backed (paged in on first use); copy them so that peak RSS
    # counts every weight, as it does for the original (load_state_dict copies into its parameters).
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()
    if tiling:
        model.enable_tiling()
    data = _video(frames, height, width) if op == "encode" else torch.load(latents)
    return {"model": model, "op": op, "data": data, "frames": frames, "out": out}


def call_ours(state) -> str:
    model = state["model"]
    with torch.no_grad():
        if state["op"] == "encode":
            result = model.encode(state["data"]).latent_dist.mode()
        else:
            result = model.decode(state["data"], num_frames=state["frames"]).sample
    torch.save(result, state["out"])
    return state["out"]


def setup_original(repo: str, weights: str, op: str, frames: int, height: int, width: int, latents: str, out: str):
    from safetensors.torch import load_file

    pipeline = _build_original(repo)
    pipeline.load_state_dict(load_file(weights), strict=True)
    data = _video(frames, height, width) if op == "encode" else torch.load(latents)
    return {"model": pipeline, "op": op, "data": data, "frames": frames, "out": out}


def call_original(state) -> str:
    pipeline = state["model"]
    shift, scale = pipeline.shift, pipeline.scale
    with torch.no_grad():
        if state["op"] == "encode":  # compare raw latents: undo the pipeline's normalisation
            result = pipeline.encode(state["data"]) * scale + shift
        else:
            result = pipeline.decode((state["data"] - shift) / scale, num_frames=state["frames"])
    torch.save(result, state["out"])
    return state["out"]


# -- driver ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original-repo", default=None, help="checkout of hpcaitech/Open-Sora at v1.2.0")
    parser.add_argument("--workdir", default="/tmp/opensora_bench", help="weights and outputs go here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--frames-720p", type=int, default=1, help="frames of the 720p clip (0 = skip 720p)")
    parser.add_argument("--untiled-720p", action="store_true", help="also run ours untiled at 720p")
    parser.add_argument("--skip-128", action="store_true", help="skip the 17x128x128 comparison")
    add_device_argument(parser)
    return parser.parse_args(argv)


def prepare_weights(args: argparse.Namespace, workdir: Path) -> Path:
    """The original's random weights (when comparing) or ours, made once in `workdir` and reused."""
    if args.original_repo:
        weights = workdir / "model.safetensors"
        if not weights.exists():
            make_original_weights(args.original_repo, weights)
    else:
        weights = workdir / "ours"
        if not (weights / "config.json").exists():
            make_our_weights(weights)
    return weights


class Runner:
    """Measures one call at a time in a fresh process and keeps the table rows, printing each as it comes."""

    def __init__(self, args: argparse.Namespace, workdir: Path, weights: Path):
        self.args, self.workdir, self.weights = args, workdir, weights
        self.rows: list[dict] = []

    def run(self, label, shape, op, tiling=False, original=False, latents=""):
        """One measurement; `latents` is the encode output that a decode reads (the same file for every side)."""
        args = self.args
        frames, height, width = shape
        tag = f"{'orig' if original else 'ours'}_{op}_{frames}x{height}x{width}{'_tiled' if tiling else ''}"
        out = str(self.workdir / f"{tag}.pt")
        common = dict(device=args.device, repeats=args.repeats, threads=args.threads, weights=str(self.weights))
        clip = dict(op=op, frames=frames, height=height, width=width, latents=latents, out=out)
        if original:
            result = measure(setup_original, call_original, repo=args.original_repo, **common, **clip)
        else:
            result = measure(setup_ours, call_ours, tiling=tiling, **common, **clip)
        row = {"model": label, "input (T x H x W)": f"{frames}x{height}x{width}", "call": op}
        if "error" in result:
            row["seconds"] = result["error"][:60]
        else:
            row["seconds"] = f"{result['seconds']:.1f}"
            row["peak RSS"] = peak_cell(result)
            row["_seconds"], row["_peak"], row["_out"] = result["seconds"], result["peak_bytes"], out
        self.rows.append(row)
        print(row, flush=True)
        return row


def compare_with_original(runner: Runner) -> None:
    """Ours at 17x128x128, encode and decode, each beside the original's when a checkout is given."""
    shape = (17, 128, 128)
    latents = str(runner.workdir / "ours_encode_17x128x128.pt")
    for op in ("encode", "decode"):
        ours = runner.run("ours", shape, op, latents=latents)
        if runner.args.original_repo:
            original = runner.run("original v1.2.0", shape, op, original=True, latents=latents)
            if "_out" in ours and "_out" in original:
                diff = (torch.load(ours["_out"]) - torch.load(original["_out"])).abs().max().item()
                ours["max abs diff vs original"] = f"{diff:.1e}"
                ours["speed-up"] = f"{original['_seconds'] / ours['_seconds']:.2f}x"
                ours["memory"] = f"{ours['_peak'] / original['_peak']:.2f}x"


def run_720p(runner: Runner) -> None:
    """Ours tiled at 720p, and untiled beside it with `--untiled-720p`."""
    args = runner.args
    shape = (args.frames_720p, 720, 1280)
    latents = str(runner.workdir / f"ours_encode_{args.frames_720p}x720x1280_tiled.pt")
    for op in ("encode", "decode"):
        tiled = runner.run("ours, tiled (256 px tiles, stride 192)", shape, op, tiling=True, latents=latents)
        if args.untiled_720p:
            plain = runner.run("ours, untiled", shape, op, latents=latents)
            if "_out" in tiled and "_out" in plain:
                diff = (torch.load(tiled["_out"]) - torch.load(plain["_out"])).abs().max().item()
                tiled["max abs diff vs untiled"] = f"{diff:.1e}"
                tiled["memory"] = f"{tiled['_peak'] / plain['_peak']:.2f}x"


def print_table(args: argparse.Namespace, rows: list[dict]) -> None:
    columns = [
        "model",
        "input (T x H x W)",
        "call",
        "seconds",
        "peak RSS",
        "max abs diff vs original",
        "speed-up",
        "memory",
    ]
    if args.untiled_720p:
        columns.insert(6, "max abs diff vs untiled")
    print()
    print(f"Open-Sora 1.2 VAE, full config, float32, CPU, {args.threads} threads, median of {args.repeats}")
    print(format_table(rows, columns))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(args, workdir, prepare_weights(args, workdir))
    if not args.skip_128:
        compare_with_original(runner)
    if args.frames_720p:
        run_720p(runner)
    print_table(args, runner.rows)


if __name__ == "__main__":
    main()
