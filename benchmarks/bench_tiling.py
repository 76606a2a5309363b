"""What tiling costs and what it changes, on all five models: untiled vs default tiles vs exact tiles, and peak
memory against frame size.

    python benchmarks/bench_tiling.py                      # full-size configs: heavy (720p untiled is not run)
    python benchmarks/bench_tiling.py --quick              # tiny configs, small clips (smoke test, seconds)
    python benchmarks/bench_tiling.py --models odvae --size 256 --tile 128 --sizes 256 512 720x1280
    python benchmarks/bench_tiling.py --config '{"ivvae": {"base_dim": 32}}'    # other configs (mid-size runs)

Each model gets random seeded weights of its released config (tiny with `--quick`), saved once under `--workdir`,
and the clip length its frame rule and the issue's measurements use (17 frames; 16 for Reducio, 8 for CascadeV;
CascadeV decodes with one denoising step). Every measurement runs in a fresh process (`benchmarks/_harness.py`):
seconds of the call and the peak RSS during it (weights and inputs included). Encode means `encode` plus the
decode conditions a model computes from the clip (Reducio's content features); decode takes the latents of the
untiled encode.

1. At `--size` with `--tile`-px tiles (as `videovae --tiling on|exact --tile-size` sets them: default tiles keep the
   model's overlap ratio): untiled vs default tiles vs exact tiles (`enable_tiling(exact=True)`; "n/a" where a model
   has no exact mode): time, time vs untiled, peak RSS, max abs difference to untiled.
2. Peak RSS against frame size (`--sizes`, e.g. 256, 512 and 720x1280) with the model's own default tile size, for
   default and exact tiles; "growth" is the largest peak over the peak at the first size.

With `--traced`, table 2 is traced instead of measured, untiled included, and exact tiles get two rows: "exact",
their step boundaries (the whole tensors between two tiled layers) kept in memory, and "exact, disk", spilled to
temporary files (`tile_offload_device="disk"`, what the default "auto" does on the CPU). Traced: the peak bytes of
the tensors each call creates (`memory.LiveTensorBytes` on a `meta` copy of the model, no arithmetic), so all five
full-size models at 256, 512 and 720x1280 take minutes, not hours. Attention is counted as the CPU runs it: fused (no
attention matrix) where query, key and value are contiguous in their last dimension, else PyTorch's unfused form with
its whole `(L, S)` matrix. Inputs, allocator slack and kernel workspaces are not counted (RSS counts them). "growth"
is over the call's tensors alone; "with weights" adds the weights (the "weights" column, float32) to every peak, as a
process's peak RSS or an accelerator's `max_memory_allocated` counts them.

    python benchmarks/bench_tiling.py --traced --skip-modes --sizes 256 512 720x1280
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch.nn.functional as F  # noqa: E402
from _harness import add_device_argument, format_table, gib, measure, peak_cell  # noqa: E402
from bench_roofline import MODELS, released_config  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from diffusers_videovae.memory import LiveTensorBytes, _FusedAttention, cascadev_decode_on_meta  # noqa: E402

NAMES = ("ivvae", "odvae", "opensora", "reducio", "cascadev")
OPS = ("encode", "decode")
FRAMES = {"ivvae": 17, "odvae": 17, "opensora": 17, "reducio": 16, "cascadev": 8}
QUICK_FRAMES = {"ivvae": 5, "odvae": 5, "opensora": 5, "reducio": 16, "cascadev": 4}
# CascadeV's tiny model: a small DiT and SVD decoder (its EfficientNet encoder has one size).
CASCADEV_TINY = {
    "transformer_hidden_size": 96,
    "transformer_num_layers": 2,
    "transformer_num_attention_heads": 4,
    "transformer_sample_size": 4,
    "transformer_num_frames": 4,
    "transformer_attn_strides": [[1, 2], [2, 1], None],
    "previewer_hidden_channels": 32,
    "svd_block_out_channels": (32, 32, 32, 32),
    "svd_layers_per_block": 1,
}
MODES = ("untiled", "default tiles", "exact tiles")
TILING = {"untiled": "off", "default tiles": "on", "exact tiles": "exact", "exact tiles, spilled": "exact"}
# Traced rows: exact tiles with their step boundaries in memory (`tile_offload_device=None`, what the "exact" rows
# always meant) and spilled to disk ("disk", what the default "auto" does on the CPU).
TRACED_MODES = (*MODES, "exact tiles, spilled")
OFFLOAD = {"exact tiles": None, "exact tiles, spilled": "disk"}
LABELS = {
    "untiled": "untiled",
    "default tiles": "default",
    "exact tiles": "exact",
    "exact tiles, spilled": "exact, disk",
}


def _class(name: str):
    import diffusers_videovae

    return getattr(diffusers_videovae, MODELS[name].class_name)


def model_config(name: str, quick: bool, overrides: dict) -> dict:
    base = (MODELS[name].tiny or CASCADEV_TINY) if quick else released_config(name)
    return {**base, **overrides.get(name, {})}


def accepts_exact(model: torch.nn.Module) -> bool:
    """Whether the model's `enable_tiling` has an exact mode (an `exact` argument that takes True)."""
    return "exact" in inspect.signature(model.enable_tiling).parameters


# -- measured calls (module level so that the spawned child can import them) ---------------------------------------


def setup(
    name: str, weights: str, op: str, mode: str, tile: int | None, frames: int, size: tuple, data: str, out: str
):
    from diffusers_videovae.memory import enable_tiling
    from diffusers_videovae.video import synthetic_clip

    model = _class(name).from_pretrained(weights).eval()
    with torch.no_grad():  # resident copies, so that peak RSS counts every weight
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()
    enable_tiling(model, TILING[mode], tile)
    model.tile_offload_device = OFFLOAD.get(mode, model.tile_offload_device)
    clip = synthetic_clip(frames, *size, seed=0) if op == "encode" else torch.load(data)
    return {"model": model, "op": op, "data": clip, "frames": frames, "out": out}


def call(state) -> str:
    from diffusers_videovae.evaluation import decode_latents, encode_video

    model, data = state["model"], state["data"]
    if state["op"] == "encode":
        latents, conditions = encode_video(model, data)
        result = {"latents": latents, "conditions": conditions, "output": latents}
    else:
        generator = torch.Generator().manual_seed(0)
        options = {"num_frames": state["frames"], "num_inference_steps": 1, "generator": generator}
        result = {"output": decode_latents(model, data["latents"], data["conditions"], **options)}
    torch.save(result, state["out"])
    return state["out"]


# -- driver ------------------------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width or height)


class Runner:
    """Measures one model's calls in fresh processes; outputs and latents go to `work`."""

    def __init__(self, name: str, args: argparse.Namespace, work: Path):
        self.name, self.args, self.work = name, args, work
        self.weights = work / name
        if not (self.weights / "config.json").is_file():
            torch.manual_seed(0)
            _class(name)(**model_config(name, args.quick, args.config)).save_pretrained(self.weights)
        self.frames = (QUICK_FRAMES if args.quick else FRAMES)[name]
        self.exact = accepts_exact(_class(name).from_pretrained(self.weights))

    def run(self, op: str, mode: str, size: tuple[int, int], tile: int | None, latents: Path | None) -> dict:
        """`{"seconds", "peak_bytes", "output"}` of one call, `{"n/a": reason}` without an exact mode."""
        if "exact" in mode and not self.exact:
            return {"n/a": "no exact mode"}
        tag = f"{self.name}_{op}_{LABELS[mode].replace(', ', '_')}_{size[0]}x{size[1]}_{tile}"
        result = measure(
            setup,
            call,
            repeats=self.args.repeats,
            threads=self.args.threads,
            device=self.args.device,
            name=self.name,
            weights=str(self.weights),
            op=op,
            mode=mode,
            tile=tile,
            frames=self.frames,
            size=size,
            data=str(latents),
            out=str(self.work / f"{tag}.pt"),
        )
        if "error" in result:
            return {"n/a": result["error"][:80]}
        return {**result, "saved": Path(result["result"])}


def _output(result: dict) -> torch.Tensor:
    return torch.load(result["saved"])["output"]


def compare_modes(runner: Runner, size: tuple[int, int], tile: int) -> list[dict]:
    """Table 1 rows of one model: encode then decode, each untiled, default tiles, exact tiles."""
    rows, latents = [], None
    for op in ("encode", "decode"):
        results = {mode: runner.run(op, mode, size, tile, latents) for mode in MODES}
        untiled = results["untiled"]
        if "n/a" in untiled:
            raise SystemExit(f"{runner.name} {op} untiled failed: {untiled['n/a']}")
        reference = _output(untiled)
        for mode, result in results.items():
            row = {"model": runner.name, "call": op, "mode": mode}
            if "n/a" in result:
                rows.append({**row, "seconds": "n/a", "peak RSS": "n/a", "max abs diff vs untiled": result["n/a"]})
                continue
            difference = float((_output(result) - reference).abs().max())
            rows.append(
                {
                    **row,
                    "seconds": f"{result['seconds']:.2f}",
                    "vs untiled": f"{result['seconds'] / untiled['seconds']:.1f}x",
                    "peak RSS": peak_cell(result)
                    if result.get("accelerator_peak_bytes")
                    else gib(result["peak_bytes"]),
                    "max abs diff vs untiled": "-" if mode == "untiled" else f"{difference:.1e}",
                }
            )
            print(rows[-1], flush=True)
        latents = untiled["saved"]
    return rows


def memory_against_size(runner: Runner, sizes: list[tuple[int, int]], modes: list[str]) -> list[dict]:
    """Table 2 rows of one model: peak RSS per frame size, default tiles (the model's own tile size) and exact."""
    rows = []
    for op in ("encode", "decode"):
        for mode in modes:
            row, peaks = {"model": runner.name, "call": op, "tiles": LABELS[mode]}, []
            for size in sizes:
                latents = runner.work / f"{runner.name}_encode_default_{size[0]}x{size[1]}_None.pt"
                result = runner.run(op, mode, size, None, latents)
                label = f"{size[0]}x{size[1]}"
                if "n/a" in result:
                    row[label] = "n/a"
                    continue
                peaks.append(result["peak_bytes"])
                row[label] = gib(result["peak_bytes"])
            row["growth"] = f"{max(peaks) / peaks[0]:.2f}x" if len(peaks) == len(sizes) else "n/a"
            rows.append(row)
            print(row, flush=True)
    return rows


# -- traced peaks (meta device) ------------------------------------------------------------------------------------


class _CpuAttention(TorchFunctionMode):
    """`F.scaled_dot_product_attention` as a CPU dispatches it: the fused kernel's meta function (no attention
    matrix) when query, key and value are contiguous in their last dimension, else the unfused form (meta runs it,
    materialising the matrix as the CPU does)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and all(t.stride(-1) == 1 for t in args[:3]):
            with _FusedAttention():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _traced(call) -> int:
    with torch.no_grad(), LiveTensorBytes() as live, _CpuAttention():
        call()
    return live.peak


def traced_peaks(name: str, config: dict, mode: str, frames: int, size: tuple[int, int]) -> dict[str, int | None]:
    """`{"encode": bytes, "decode": bytes}` traced at `(1, 3, frames, *size)` on a meta model (None: refused)."""
    from diffusers_videovae.memory import enable_tiling

    with torch.device("meta"):
        model = _class(name)(**config)
    model = torch.nn.Module.to(model, "meta").eval()
    enable_tiling(model, TILING[mode], None)
    model.tile_offload_device = OFFLOAD.get(mode)
    video = torch.zeros(1, 3, frames, *size, device="meta")
    peaks: dict[str, int | None] = {}
    try:
        peaks["encode"] = _traced(lambda: (model.encode(video), model.decode_conditions(video)))
    except ValueError:  # the model refuses this clip in this mode (Reducio past its attention window)
        return {"encode": None, "decode": None}
    with torch.no_grad():
        z = model.latents_for_decode(model.encode(video).latent_dist.mode())
        conditions = model.decode_conditions(video)
    if hasattr(model, "decode_svd_latents"):  # CascadeV: one denoising step and the SVD decode (no scheduler on meta)
        peaks["decode"] = _traced(lambda: cascadev_decode_on_meta(model, z))
    else:
        options = model.decode_kwargs(num_frames=frames)
        peaks["decode"] = _traced(lambda: model.decode(z, **conditions, **options))
    return peaks


def traced_against_size(
    name: str, args: argparse.Namespace, sizes: list[tuple[int, int]], modes: list[str]
) -> list[dict]:
    """Table 2 rows of one model, traced: untiled, default and exact tiles (boundaries in memory, and on disk) per
    frame size."""
    config = model_config(name, args.quick, args.config)
    frames = (QUICK_FRAMES if args.quick else FRAMES)[name]
    exact = accepts_exact(_class(name)(**model_config(name, True, {})))
    with torch.device("meta"):
        weights = sum(t.numel() * t.element_size() for t in _class(name)(**config).state_dict().values())
    rows = {(op, mode): {"model": name, "call": op, "tiles": LABELS[mode]} for op in OPS for mode in modes}
    for size in sizes:
        for mode in modes:
            label = f"{size[0]}x{size[1]}"
            peaks = traced_peaks(name, config, mode, frames, size) if exact or "exact" not in mode else {}
            for op in OPS:
                rows[op, mode][label] = "n/a" if peaks.get(op) is None else gib(peaks[op])
                rows[op, mode].setdefault("bytes", []).append(peaks.get(op))
            print(name, label, mode, {op: peaks.get(op) for op in OPS}, flush=True)
    for row in rows.values():
        peaks = row.pop("bytes")
        grows = None not in peaks and row["tiles"] != "untiled"
        row["growth"] = f"{max(peaks) / peaks[0]:.2f}x" if grows else "n/a"
        row["with weights"] = f"{(max(peaks) + weights) / (peaks[0] + weights):.2f}x" if grows else "n/a"
        row["weights"] = gib(weights)
    return list(rows.values())


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument("--size", type=_size, default=(256, 256), help="frame size of table 1, HxW or S")
    parser.add_argument("--tile", type=int, default=128, help="tile size in pixels of table 1")
    parser.add_argument("--sizes", nargs="*", type=_size, default=None, help="frame sizes of table 2 (none: skip it)")
    parser.add_argument("--skip-modes", action="store_true", help="table 2 only")
    parser.add_argument(
        "--memory-modes",
        nargs="+",
        choices=TRACED_MODES,
        help="of table 2 (default: default and exact tiles; traced, untiled and exact tiles spilled too)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--config", type=json.loads, default={}, help='config overrides, {"model": {...}}')
    parser.add_argument("--workdir", default="/tmp/tiling_bench", help="weights and outputs go here")
    parser.add_argument("--quick", action="store_true", help="tiny configs, 64x64 clips, 32-px tiles, sizes 64 128")
    parser.add_argument("--traced", action="store_true", help="table 2 traced on meta (untiled included), not run")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.tile, args.threads = (64, 64), 32, 1
        args.sizes = args.sizes if args.sizes is not None else [(64, 64), (128, 128)]
    sizes = args.sizes if args.sizes is not None else [(256, 256), (512, 512), (720, 1280)]
    work = Path(args.workdir) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)

    modes, memory = [], []
    for name in args.models:
        runner = None if args.skip_modes and args.traced else Runner(name, args, work)
        modes += [] if args.skip_modes else compare_modes(runner, args.size, args.tile)
        if sizes:
            traced = args.traced and traced_against_size(name, args, sizes, list(args.memory_modes or TRACED_MODES))
            memory += traced or memory_against_size(runner, sizes, args.memory_modes or list(MODES[1:]))
    config = (
        "tiny configs"
        if args.quick
        else "released configs" + (f" with {json.dumps(args.config)}" if args.config else "")
    )
    setting = f"{config}, random weights, float32, CPU, {args.threads} threads, median of {args.repeats}"
    if modes:
        columns = ["model", "call", "mode", "seconds", "vs untiled", "peak RSS", "max abs diff vs untiled"]
        print(f"\nTiling at {args.size}x{args.size}, {args.tile}-px tiles; {setting}")
        print(format_table(modes, columns))
    if sizes and args.traced:
        print(f"\nTraced peak against frame size (traced: bytes of the call's tensors, meta device); {config}")
    elif sizes:
        print(f"\nPeak RSS against frame size, each model's default tile size; {setting}")
    if sizes:
        labels = [f"{h}x{w}" for h, w in sizes]
        growth = ["growth", "with weights", "weights"] if args.traced else ["growth"]
        print(format_table(memory, ["model", "call", "tiles", *labels, *growth]))
    return {"modes": modes, "memory": memory}


if __name__ == "__main__":
    main()
