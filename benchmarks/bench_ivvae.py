"""IV-VAE speed and memory: our `AutoencoderKLIVVAE` against the original `VAutoencoder3d` (ali-vilab/iv-vae).

    python benchmarks/bench_ivvae.py                                 # ours only
    python benchmarks/bench_ivvae.py --original-repo /tmp/iv-vae     # also the original, same weights
    python benchmarks/bench_ivvae.py --quick                         # tiny config, seconds (smoke test)

Rows: the full-size default config (`ivvae_z16_dim64`, random weights, seeded and shared by both implementations)
on a 1x3x17x128x128 clip in float32 on CPU (encode; decode of the latent of that clip), then a longer clip with
temporal chunking, without and with spatial (halo) tiling. Each measurement runs in a fresh process
(`benchmarks/_harness.py`): median seconds of `--repeats` runs and the peak RSS of the call (weights and inputs count,
model construction does not).

`--original-repo` is a checkout of ali-vilab/iv-vae (`models/vae3d.py`; not part of this project, never committed;
it needs `einops`). Its `encode` always samples; here it takes the posterior mean, so that the outputs of both
implementations can be compared: the table reports the max abs difference of latents and reconstructions.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import add_device_argument, format_table, measure, peak_cell  # noqa: E402

VARIANT = "ivvae_z16_dim64"
TINY = dict(latent_channels=8, base_dim=8)


def _original_module(repo: str):
    spec = importlib.util.spec_from_file_location("ivvae_original_vae3d", Path(repo) / "models" / "vae3d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _original_config(quick: bool) -> dict:
    from diffusers_videovae.checkpoints import ivvae

    config = dict(ivvae.VARIANTS[VARIANT])
    if quick:
        config.update(z_dim=TINY["latent_channels"], dim=TINY["base_dim"])
    return config


def _clip(frames: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, frames, size, size, generator=generator) * 2 - 1


# --- set-up and calls, run in fresh processes ---------------------------------------------------------------------


def setup_ours(
    weights: str, frames: int, size: int, stage: str, tiling: dict | None = None, latent: str | None = None
):
    from diffusers_videovae import AutoencoderKLIVVAE

    if Path(weights).is_dir():
        model = AutoencoderKLIVVAE.from_pretrained(weights).eval()
    else:
        model = AutoencoderKLIVVAE.from_single_file(weights, original_config=weights + ".json").eval()
    if tiling:
        model.enable_tiling(**tiling)
    data = _clip(frames, size) if stage == "encode" else torch.load(latent, weights_only=True)
    return model, stage, data


def call_ours(state):
    model, stage, data = state
    with torch.no_grad():
        out = model.encode(data).latent_dist.mean if stage == "encode" else model.decode(data).sample
    # A numpy array travels back by value (a tensor would be shared through a file descriptor that dies with us).
    return out.cpu().numpy()


def setup_original(weights: str, frames: int, size: int, stage: str, repo: str, latent: str | None = None):
    import json

    module = _original_module(repo)
    config = json.loads(Path(weights + ".json").read_text())
    model = module.VAutoencoder3d(**config).eval()
    model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    model.sample = lambda mu, log_var, deterministic=False: mu  # the posterior mean instead of a sample
    if stage == "encode":
        data = _clip(frames, size)
    else:
        data = config["scale_factor"] * (torch.load(latent, weights_only=True) - config["shift_factor"])
    return model, stage, data, config


def call_original(state):
    model, stage, data, config = state
    with torch.no_grad():
        if stage == "encode":
            out = model.encode(data) / config["scale_factor"] + config["shift_factor"]  # back to the raw mean
        else:
            out = model.decode(data)
    return out.cpu().numpy()


# --- driver ------------------------------------------------------------------------------------------------------


def write_weights(folder: Path, quick: bool, repo: str | None) -> str:
    """A random original-format state dict (+ its config) that both implementations load."""
    import json

    from diffusers_videovae import AutoencoderKLIVVAE
    from diffusers_videovae.checkpoints import ivvae

    config = _original_config(quick)
    torch.manual_seed(0)
    if not repo:  # without the original code: our own randomly initialised model
        AutoencoderKLIVVAE(**ivvae.translate_config(config)).save_pretrained(folder / "ours")
        return str(folder / "ours")
    state_dict = _original_module(repo).VAutoencoder3d(**config).state_dict()
    path = folder / "ivvae_random.pth"
    torch.save(state_dict, path)
    Path(str(path) + ".json").write_text(json.dumps(config))
    return str(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original-repo", default=None, help="checkout of ali-vilab/iv-vae to compare against")
    parser.add_argument("--quick", action="store_true", help="tiny config (smoke test)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--long-frames", type=int, default=33, help="frames of the long clip (1 + 4k)")
    parser.add_argument("--long-size", type=int, default=256, help="height = width of the long clip")
    parser.add_argument("--skip-long", action="store_true", help="only the 17x128x128 comparison")
    add_device_argument(parser)
    return parser.parse_args(argv)


def clip_configs(args: argparse.Namespace) -> list[tuple[str, int, int, dict | None]]:
    """`(clip, frames, size, tiling)` of each row of ours: the 17x128x128 comparison, then the long clip."""
    configs = [("17x128x128", 17, 128, None)]
    if not args.skip_long:
        # Halo tiling with 128-px cores (strides equal the cores) and the default 4-frame chunks, so that this
        # row differs from the untiled one only by the tiles. Each tile also reads the architecture's halo
        # (40 px encoding, 56 px decoding): tiled outputs equal untiled ones up to float rounding.
        tiling = dict(tile_sample_min_height=128, tile_sample_min_width=128)
        clip = f"{args.long_frames}x{args.long_size}x{args.long_size}"
        configs += [
            (clip, args.long_frames, args.long_size, None),
            (clip, args.long_frames, args.long_size, tiling),
        ]
    return configs


def run_ours(args, weights: str, folder: Path, clip: str, frames: int, size: int, tiling: dict | None):
    """Our encode, then the decode of its latent (saved in `folder`): the table row, both outcomes, the latent."""
    options = dict(repeats=args.repeats, threads=args.threads)
    settings = "halo tiles, 128-px cores, 4-frame chunks" if tiling else "4-frame chunks (default)"
    common = dict(device=args.device, weights=weights, frames=frames, size=size, tiling=tiling, **options)
    encoded = measure(setup_ours, call_ours, stage="encode", **common)
    if "error" in encoded:
        raise SystemExit(f"ours, encode {clip}: {encoded['error']}")
    latent = folder / f"latent_{clip}_{bool(tiling)}.pt"
    torch.save(torch.from_numpy(encoded["result"]), latent)
    decoded = measure(setup_ours, call_ours, stage="decode", latent=str(latent), **common)
    if "error" in decoded:
        raise SystemExit(f"ours, decode {clip}: {decoded['error']}")
    row = {
        "implementation": "diffusers-videovae",
        "clip": clip,
        "settings": settings,
        "encode s": f"{encoded['seconds']:.2f}",
        "encode peak": peak_cell(encoded),
        "decode s": f"{decoded['seconds']:.2f}",
        "decode peak": peak_cell(decoded),
    }
    return row, encoded, decoded, latent


def run_original(args, weights: str, clip: str, frames: int, size: int, latent: Path, encoded: dict, decoded: dict):
    """The original's encode and decode of the same clip and latent, and the differences to ours."""
    options = dict(repeats=args.repeats, threads=args.threads)
    common = dict(device=args.device, weights=weights, frames=frames, size=size, repo=args.original_repo, **options)
    original_encoded = measure(setup_original, call_original, stage="encode", **common)
    original_decoded = measure(setup_original, call_original, stage="decode", latent=str(latent), **common)
    for name, outcome in (("encode", original_encoded), ("decode", original_decoded)):
        if "error" in outcome:
            raise SystemExit(f"original, {name}: {outcome['error']}")
    latent_diff = abs(original_encoded["result"] - encoded["result"]).max()
    recon_diff = abs(original_decoded["result"] - decoded["result"]).max()
    return {
        "implementation": "original (ali-vilab/iv-vae)",
        "clip": clip,
        "settings": "frame groups one by one",
        "encode s": f"{original_encoded['seconds']:.2f}",
        "encode peak": peak_cell(original_encoded),
        "decode s": f"{original_decoded['seconds']:.2f}",
        "decode peak": peak_cell(original_decoded),
        "max abs diff (latent / video)": f"{latent_diff:.1e} / {recon_diff:.1e}",
    }


def print_table(args: argparse.Namespace, rows: list[dict]) -> None:
    threads = args.threads or torch.get_num_threads()
    print(f"\nIV-VAE {'tiny' if args.quick else VARIANT} (random weights), float32, CPU, {threads} threads\n")
    columns = ["implementation", "clip", "settings", "encode s", "encode peak", "decode s", "decode peak"]
    if args.original_repo:
        columns.append("max abs diff (latent / video)")
    print(format_table(rows, columns))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = write_weights(folder, args.quick, args.original_repo)
        for clip, frames, size, tiling in clip_configs(args):
            row, encoded, decoded, latent = run_ours(args, weights, folder, clip, frames, size, tiling)
            rows.append(row)
            print(rows[-1], flush=True)
            if args.original_repo and tiling is None and clip == "17x128x128":
                rows.append(run_original(args, weights, clip, frames, size, latent, encoded, decoded))
                print(rows[-1], flush=True)
    print_table(args, rows)


if __name__ == "__main__":
    main()
