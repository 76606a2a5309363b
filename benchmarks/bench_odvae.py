"""OD-VAE speed and memory: our `AutoencoderKLODVAE` against the original Open-Sora-Plan `CausalVAEModel`.

    python benchmarks/bench_odvae.py                                   # ours only
    python benchmarks/bench_odvae.py --original-repo /tmp/Open-Sora-Plan  # also the original, same weights
    python benchmarks/bench_odvae.py --quick                           # tiny config, seconds (smoke test)

Rows: full-size released v1.2.0 config with random weights (seeded, shared by both implementations) on a
1x3x17x128x128 clip (encode; decode of a 1x4x5x16x16 latent), then tiled decoding of longer clips showing that peak
memory stays flat as the clip grows. Each measurement runs in a fresh process (`benchmarks/_harness.py`): median
seconds of `--repeats` runs and the peak RSS of the call (weights and inputs count, model construction does not).

`--original-repo` is a checkout of PKU-YuanGroup/Open-Sora-Plan at tag v1.2.0 (not part of this project, never
committed). Its I/O-only imports (decord, torchvision, pytorch_lightning, ...) are replaced by empty stand-ins so
that only `opensora/models/causalvideovae` is exercised; it needs `einops`.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    ORIGINAL_COLUMNS,
    SIDE_BY_SIDE_COLUMNS,
    add_device_argument,
    format_table,
    gib,
    measure,
    peak_cell,
    side_by_side_row,
    stub_imports,
)

TINY = dict(block_out_channels=(32, 64, 32, 32), layers_per_block=2)
_STUBS = (
    "decord",
    "pytorchvideo",
    "torchvision",
    "pytorch_lightning",
    "torch.utils.tensorboard",
    "opensora.models.causalvideovae.utils",
    "opensora.models.causalvideovae.eval",
)


class _Anything(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *args, **kwargs: None})


def original_class(repo: str):
    """`CausalVAEModel` from an Open-Sora-Plan v1.2.0 checkout, without running the packages' heavy `__init__`s."""
    import diffusers.configuration_utils  # noqa: F401  (imported before the stand-ins exist)
    import diffusers.models.modeling_utils  # noqa: F401

    root = Path(repo) / "opensora"
    if not (root / "models" / "causalvideovae" / "model" / "causal_vae" / "modeling_causalvae.py").exists():
        raise SystemExit(f"{repo} is not an Open-Sora-Plan v1.2.0 checkout (no opensora/models/causalvideovae).")
    stub_imports(_STUBS, _Anything)
    for name in (
        "",
        "models",
        "models/causalvideovae",
        "models/causalvideovae/model",
        "models/causalvideovae/model/causal_vae",
    ):
        package = types.ModuleType(".".join(["opensora", *filter(None, name.split("/"))]))
        package.__path__ = [str(root / name)]
        sys.modules[package.__name__] = package
    module = importlib.import_module("opensora.models.causalvideovae.model.causal_vae.modeling_causalvae")
    return module.CausalVAEModel


def _config(quick: bool) -> dict:
    from diffusers_videovae.checkpoints.odvae import VARIANTS, translate_config

    config = translate_config(VARIANTS["v1.2.0"])
    if quick:
        config.update(TINY)
    return config


def write_weights(path: Path, quick: bool) -> None:
    from safetensors.torch import save_file

    from diffusers_videovae.models.od_vae import AutoencoderKLODVAE

    torch.manual_seed(0)
    model = AutoencoderKLODVAE(**_config(quick))
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))


def setup(
    impl: str, weights: str, quick: bool, original_repo: str | None, task: str, shape: tuple, tiling: dict | None
):
    from safetensors.torch import load_file

    from diffusers_videovae.checkpoints.odvae import VARIANTS

    if impl == "ours":
        from diffusers_videovae.models.od_vae import AutoencoderKLODVAE

        # Loaded exactly like the original below (built, then weights copied in), so that both start with all
        # weights resident and the peak-memory columns compare like with like.
        model = AutoencoderKLODVAE(**_config(quick))
        model.load_state_dict(load_file(weights))
        if tiling is not None:
            model.enable_tiling(**tiling)
    else:
        original = VARIANTS["v1.2.0"] | ({"hidden_size": 32, "hidden_size_mult": [1, 2, 1, 1]} if quick else {})
        model = original_class(original_repo).from_config(original)
        model.load_state_dict(load_file(weights))
        if tiling is not None:
            model.enable_tiling()
            model.tile_sample_min_size = tiling["tile_sample_min_height"]
            model.tile_latent_min_size = tiling["tile_sample_min_height"] // 8
            model.tile_sample_min_size_t = tiling["tile_sample_min_num_frames"]
            model.tile_latent_min_size_t = (tiling["tile_sample_min_num_frames"] - 1) // 4 + 1
            model.tile_overlap_factor = 1 - tiling["tile_sample_stride_height"] / tiling["tile_sample_min_height"]
    model.eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    data = (
        torch.rand(shape, generator=generator) * 2 - 1 if task == "encode" else torch.randn(shape, generator=generator)
    )
    return impl, model, task, data


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def call(state):
    """Run the task; return its output and the resident memory just before (weights, input, interpreter)."""
    impl, model, task, data = state
    start = _rss_bytes()
    cpu_start = time.process_time()
    with torch.no_grad():
        if task == "encode":
            posterior = model.encode(data)
            output = getattr(posterior, "latent_dist", posterior).mean
        else:
            decoded = model.decode(data)
            output = getattr(decoded, "sample", decoded)
    # numpy, not a tensor: torch would share the tensor through a file descriptor of the exiting child process
    return output.cpu().numpy().copy(), start, time.process_time() - cpu_start


def _peak(result: dict) -> str:
    """Peak RSS of the call, and in brackets the part above the RSS at its start (activations and outputs)."""
    return f"{peak_cell(result)} ({gib(result['peak_bytes'] - result['result'][1])} above start)"


def _summary(results: list[dict]) -> dict:
    """Median wall and CPU seconds over runs, the largest peak, and the output of the last run."""
    worst = max(results, key=lambda result: result["peak_bytes"])
    return {
        "seconds": statistics.median(result["seconds"] for result in results),
        "cpu": statistics.median(result["result"][2] for result in results),
        "peak": _peak(worst),
        "output": results[-1]["result"][0],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original-repo", default=None, help="Open-Sora-Plan v1.2.0 checkout to compare against")
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process runs per measurement (median)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: BENCH_THREADS or all cores)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny config and small clips (smoke test)")
    parser.add_argument("--frames", type=int, default=17, help="frames of the comparison clip (1 + 4k)")
    parser.add_argument("--size", type=int, default=128, help="height and width of the comparison clip")
    parser.add_argument(
        "--long-frames", type=int, nargs="+", default=[17, 33, 65], help="clip lengths for the tiling rows"
    )
    parser.add_argument("--skip-long", action="store_true", help="only the encode/decode comparison")
    add_device_argument(parser)
    return parser.parse_args(argv)


def _measure_once(args: argparse.Namespace, common: dict, what: str, **case) -> dict:
    """One run of `case` (impl, task, shape, tiling) in a fresh process; a failed run ends the benchmark, named by
    `what`."""
    result = measure(setup, call, device=args.device, repeats=1, threads=args.threads, **case, **common)
    if "error" in result:
        raise SystemExit(f"{what}: {result['error']}")
    return result


def compare_implementations(args: argparse.Namespace, common: dict) -> None:
    """Encode and decode, ours and the original alternating, then their table."""
    side = 32 if args.quick else args.size
    latent_frames = (args.frames - 1) // 4 + 1
    impls = ["ours"] + (["original"] if args.original_repo else [])
    tasks = [
        (f"encode 1x3x{args.frames}x{side}x{side}", "encode", (1, 3, args.frames, side, side)),
        (
            f"decode 1x4x{latent_frames}x{side // 8}x{side // 8}",
            "decode",
            (1, 4, latent_frames, side // 8, side // 8),
        ),
    ]
    rows = []
    for label, task, shape in tasks:
        # Runs alternate between implementations so that a change in machine load hits both alike.
        runs = {impl: [] for impl in impls}
        for _ in range(args.repeats):
            for impl in impls:
                result = _measure_once(args, common, f"{impl} {label}", impl=impl, task=task, shape=shape, tiling=None)
                runs[impl].append(result)
        summary = {impl: _summary(results) for impl, results in runs.items()}
        rows.append({"case": label, **side_by_side_row(summary)})
    columns = ["case", *SIDE_BY_SIDE_COLUMNS, *(ORIGINAL_COLUMNS if args.original_repo else [])]
    print(
        f"\nOD-VAE, {'tiny' if args.quick else 'full-size v1.2.0'} config, random weights, fp32, CPU, "
        f"{torch.get_num_threads() if args.threads is None else args.threads} threads, median of {args.repeats}\n"
    )
    print(format_table(rows, columns))


def tiled_decode_growth(args: argparse.Namespace, common: dict) -> None:
    """Our tiled decode of ever longer clips: peak memory as the clip grows, and its table."""
    long_side = 32 if args.quick else 64
    tiling = dict(
        tile_sample_min_height=long_side,
        tile_sample_min_width=long_side,
        tile_sample_stride_height=long_side,
        tile_sample_stride_width=long_side,
        tile_sample_min_num_frames=9,
        tile_sample_stride_num_frames=8,
    )
    rows = []
    for frames in args.long_frames:
        latent_frames = (frames - 1) // 4 + 1
        shape = (1, 4, latent_frames, long_side // 8, long_side // 8)
        what = f"tiled decode {frames} frames"
        result = _measure_once(args, common, what, impl="ours", task="decode", shape=shape, tiling=tiling)
        rows.append(
            {
                "frames": frames,
                "latent": "x".join(map(str, shape)),
                "seconds": f"{result['seconds']:.2f}",
                "peak (above start)": _peak(result),
                "output": gib(result["result"][0].nbytes),
            }
        )
    print(f"\nTiled decode (9-frame chunks, {long_side}x{long_side}): peak memory as the clip grows\n")
    print(format_table(rows, ["frames", "latent", "seconds", "peak (above start)", "output"]))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_odvae_") as folder:
        weights = Path(folder) / "weights.safetensors"
        write_weights(weights, args.quick)
        common = dict(weights=str(weights), quick=args.quick, original_repo=args.original_repo)
        compare_implementations(args, common)
        if not args.skip_long:
            tiled_decode_growth(args, common)


if __name__ == "__main__":
    main()
