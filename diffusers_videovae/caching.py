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
"""Dataset latent caching (`videovae cache-latents`): a folder of videos -> sharded safetensors latents.

Each video is cut into clips of `--num-frames` frames (every `--frame-stride` frames; by default the longest prefix
that follows the model's frame rule), resized and center-cropped to the model's spatial multiple, and encoded. The
videos are split across processes (`accelerate launch --num_processes N -m diffusers_videovae.caching ...`).

Output folder:
    shard-<hash>.safetensors   latents of up to --shard-size clips; the safetensors metadata holds the index rows
                               of exactly those clips, so a shard is complete, or absent (written to a temporary
                               name, then renamed)
    index.json                 model id and class, latent normalisation, and one row per clip: clip path, frame
                               range, latent shape, shard and tensor name (rebuilt from the shards at the end)
    failed.json                clips and videos that could not be encoded, with the reason (the run goes on)

A second run with the same arguments skips every clip already in a shard, so an interrupted run resumes without
losing or duplicating a clip. Each clip stores the RAW posterior mean (`encode(x).latent_dist.mean`, entry
`tensor`), its normalised form (`model.normalize_latents(mean)`, entry `normalized`: what a diffusion model trains
on, e.g. Reducio's layer-normalised latents, which cannot be rebuilt from constants), the log variance with
`--store-logvar`, and the tensors the model's `decode` needs besides latents (`decode_conditions`, e.g. Reducio's
content frames, entry `conditions`); `index.json` records the normalisation (`latent_normalization`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cli_args import positive_int
from .loaders import TORCH_DTYPES
from .paths import atomic_output, check_output_dir
from .releases_cli import add_source_arguments

__all__ = ["ClipEntry", "add_arguments", "cache_latents", "main", "read_index", "register"]

INDEX_VERSION = 1
SHARD_PREFIX = "shard-"


@dataclass
class ClipEntry:
    """One row of the index: where a clip came from and where its latent is."""

    key: str
    path: str
    frame_start: int
    frame_end: int
    height: int
    width: int
    latent_shape: list[int]
    shard: str = ""
    tensor: str = ""
    normalized: str = ""
    """Tensor name of the normalised latents (`normalize_latents` of the mean: what a diffusion model trains on)."""
    conditions: dict[str, str] = field(default_factory=dict)
    """Decode condition name -> tensor name in the shard (empty for models whose decode needs only latents)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `videovae cache-latents` options."""
    parser.add_argument(
        "--data", nargs="+", required=True, help="video files, folders or .txt lists (`path [start end]`)"
    )
    parser.add_argument("-m", "--model", required=True, help="a diffusers folder, a Hub id or an original checkpoint")
    parser.add_argument("-o", "--output-dir", required=True)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an index.json / failed.json there that is not a cache's"
    )
    parser.add_argument(
        "--num-frames", type=positive_int, help="frames per clip (default: the longest valid prefix of each video)"
    )
    parser.add_argument(
        "--frame-stride",
        type=positive_int,
        help="first frames of successive clips are this far apart (default: --num-frames)",
    )
    parser.add_argument(
        "--size", type=positive_int, help="resize so that the short side is this many pixels (default: as is)"
    )
    parser.add_argument("--shard-size", type=positive_int, default=64, help="clips per shard")
    parser.add_argument("--store-logvar", action="store_true", help="also store the posterior log variance")
    parser.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="float32", help="storage dtype")
    parser.add_argument("--tiling", action="store_true", help="encode with the model's tiling (large clips)")
    parser.add_argument("--model-type", help="model type of an original checkpoint (else detected)")
    add_source_arguments(parser)
    parser.add_argument(
        "--max-clips", type=positive_int, help="stop after encoding this many new clips per process (a time box)"
    )
    parser.add_argument("--num-threads", type=positive_int, help="torch CPU threads per process")
    parser.add_argument("--cpu", action="store_true", help="encode on CPU even when a GPU is present")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `cache-latents` sub-command to the `videovae` command line."""
    parser = subparsers.add_parser(
        "cache-latents",
        help="encode a dataset of videos into sharded safetensors latents (resumable; accelerate)",
        description=__doc__.split("\n\n")[0] + " Start with `accelerate launch` for several processes.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_run_from_args)


# ---------------------------------------------------------------------------------------------------------- the index


def clip_key(path: str, frame_start: int, frame_end: int, height: int, width: int) -> str:
    return f"{path}|{frame_start}:{frame_end}|{height}x{width}"


def _tensor_name(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def _read_shard_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["videovae_cache"])


def scan_shards(output_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every complete shard in the folder with its metadata (unreadable ones are reported and ignored)."""
    shards = []
    for path in sorted(output_dir.glob(f"{SHARD_PREFIX}*.safetensors")):
        try:
            shards.append((path, _read_shard_meta(path)))
        except Exception as error:  # a foreign or damaged file must not stop the run
            print(f"Ignoring {path.name}: not a readable cache shard ({error}).", file=sys.stderr)
    return shards


def read_index(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The `index.json` of a cache folder."""
    return json.loads((Path(output_dir) / "index.json").read_text())


def _write_json_atomic(path: Path, data: Any) -> None:
    with atomic_output(path) as staging:
        staging.write_text(json.dumps(data, indent=1))


def write_shard(output_dir: Path, model_id: str, entries: list[ClipEntry], tensors: dict[str, torch.Tensor]) -> Path:
    """Write one shard atomically; its name is a hash of its clips, so re-writing the same clips is idempotent."""
    from safetensors.torch import save_file

    digest = hashlib.sha1("\n".join(e.key for e in entries).encode()).hexdigest()[:16]
    final = output_dir / f"{SHARD_PREFIX}{digest}.safetensors"
    for entry in entries:
        entry.shard = final.name
    metadata = {"videovae_cache": json.dumps({"model_id": model_id, "clips": [asdict(e) for e in entries]})}
    with atomic_output(final) as staging:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging), metadata=metadata)
    return final


# ---------------------------------------------------------------------------------------------------------- the work


def plan_clips(num_frames_available: int, num_frames: int | None, stride: int | None, rule) -> list[tuple[int, int]]:
    """Frame ranges `[start, end)` of the clips cut from a video of `num_frames_available` frames."""
    if num_frames is None:
        keep = rule.valid_num_frames(num_frames_available)
        return [(0, keep)] if keep else []
    stride = stride or num_frames
    return [(s, s + num_frames) for s in range(0, num_frames_available - num_frames + 1, stride)]


def _load_encoder(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from .loaders import load_model
    from .releases_cli import source_options
    from .video import check_clip_size

    vae = load_model(args.model, **source_options(args)).to(device).eval()
    if args.tiling:
        vae.enable_tiling()
    check_clip_size(vae.input_rule, num_frames=args.num_frames)
    return vae


def _cached_keys(output_dir: Path, model_id: str) -> set[str]:
    """Keys of the clips already in the folder's shards; refuses a folder holding another model's latents."""
    done: set[str] = set()
    for path, meta in scan_shards(output_dir):
        if meta["model_id"] != model_id:
            raise ValueError(
                f"{output_dir} already holds latents of model {meta['model_id']!r} ({path.name}); use another "
                f"--output-dir for {model_id!r}."
            )
        done.update(clip["key"] for clip in meta["clips"])
    return done


class _ShardWriter:
    """Collects encoded clips and writes a shard every `shard_size` of them."""

    def __init__(self, output_dir: Path, model_id: str, shard_size: int):
        self.output_dir, self.model_id, self.shard_size = output_dir, model_id, shard_size
        self.entries: list[ClipEntry] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.written = 0

    @property
    def count(self) -> int:
        return self.written + len(self.entries)

    def add(self, entry: ClipEntry, tensors: dict[str, torch.Tensor]) -> None:
        self.entries.append(entry)
        self.tensors.update(tensors)
        if len(self.entries) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.entries:
            write_shard(self.output_dir, self.model_id, self.entries, self.tensors)
            self.written += len(self.entries)
            self.entries, self.tensors = [], {}


def _encode_clip(vae, clip: torch.Tensor, key: str, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The tensors stored for one clip: posterior mean (+ logvar) and the model's decode conditions."""
    device = next(vae.parameters()).device
    dtype = TORCH_DTYPES[args.dtype]
    name = _tensor_name(key)
    with torch.no_grad():
        clip = clip.to(device=device, dtype=next(vae.parameters()).dtype)
        posterior = vae.encode(clip).latent_dist
        conditions = vae.decode_conditions(clip)
    tensors = {
        f"{name}.mean": posterior.mean[0].to("cpu", dtype),
        f"{name}.normalized": vae.normalize_latents(posterior.mean)[0].to("cpu", dtype),
    }
    if args.store_logvar:
        tensors[f"{name}.logvar"] = posterior.logvar[0].to("cpu", dtype)
    for condition, value in conditions.items():
        tensors[f"{name}.{condition}"] = value[0].to("cpu", dtype if value.is_floating_point() else value.dtype)
    return tensors


def _cache_source(vae, source, args, done: set[str], writer: _ShardWriter, failed: list, log) -> int:
    """Encode the clips of one video that are not cached yet; returns how many were skipped."""
    from .video import read_video

    try:
        video, _ = read_video(source.path, size=args.size, rule=vae.input_rule)
    except Exception as error:
        failed.append({"path": str(source), "error": f"{type(error).__name__}: {error}"})
        log(f"FAILED {source}: {error}")
        return 0
    end = video.shape[2] if source.end is None else min(source.end, video.shape[2])
    video = video[:, :, source.start : end]
    _, _, _, height, width = video.shape
    skipped = 0
    for start, stop in plan_clips(video.shape[2], args.num_frames, args.frame_stride, vae.input_rule):
        frame_start, frame_end = source.start + start, source.start + stop
        key = clip_key(str(source.path), frame_start, frame_end, height, width)
        if key in done:
            skipped += 1
            continue
        if args.max_clips is not None and writer.count >= args.max_clips:
            break
        try:
            tensors = _encode_clip(vae, video[:, :, start:stop], key, args)
        except Exception as error:
            failed.append({"path": str(source.path), "frames": f"{frame_start}:{frame_end}", "error": repr(error)})
            log(f"FAILED {source.path} frames {frame_start}:{frame_end}: {error}")
            if not isinstance(error, (ValueError, RuntimeError)):
                traceback.print_exc()
            continue
        name = _tensor_name(key)
        suffixes = {tensor.split(".", 1)[1] for tensor in tensors} - {"mean", "logvar", "normalized"}
        entry = ClipEntry(
            key, str(source.path), frame_start, frame_end, height, width, list(tensors[f"{name}.mean"].shape),
            tensor=f"{name}.mean", normalized=f"{name}.normalized",
            conditions={suffix: f"{name}.{suffix}" for suffix in sorted(suffixes)},
        )  # fmt: skip
        writer.add(entry, tensors)
        done.add(key)
    return skipped


def _write_index(output_dir: Path, vae, args: argparse.Namespace, model_id: str) -> dict[str, Any]:
    """Merge the processes' failure lists, rebuild `index.json` from the shards, print the summary."""
    all_failed = []
    for part in sorted(output_dir.glob(".failed-*.json")):
        all_failed.extend(json.loads(part.read_text()))
        part.unlink()
    clips = [clip for _, meta in scan_shards(output_dir) for clip in meta["clips"]]
    clips.sort(key=lambda c: (c["path"], c["frame_start"]))
    index = {
        "version": INDEX_VERSION,
        "model_id": model_id,
        "model_class": type(vae).__name__,
        "latent": "raw posterior mean, its normalised form" + (" and logvar" if args.store_logvar else ""),
        "latent_normalization": vae.latent_normalization,
        "dtype": args.dtype,
        "num_clips": len(clips),
        "clips": clips,
    }
    _write_json_atomic(output_dir / "index.json", index)
    _write_json_atomic(output_dir / "failed.json", all_failed)
    print(f"Cached {len(clips)} clips in {output_dir} ({len(all_failed)} failed; see failed.json).")
    for item in all_failed:
        print(f"  failed: {item['path']}: {item['error']}")
    return {"clips_in_index": len(clips), "failed": len(all_failed)}


def _check_index_files(output_dir: Path, overwrite: bool) -> None:
    """index.json / failed.json are rebuilt at the end: refuse, unless --overwrite, ones a cache run did not write."""
    for name, kind in (("index.json", dict), ("failed.json", list)):
        path = output_dir / name
        if not path.exists() or overwrite:
            continue
        try:
            data = json.loads(path.read_text())
            ours = isinstance(data, kind) and (kind is list or data.get("version") == INDEX_VERSION)
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise FileExistsError(
                f"--output-dir {output_dir}: its {name} was not written by cache-latents; pass --overwrite to "
                "replace it or choose another folder."
            )


def cache_latents(args: argparse.Namespace) -> dict[str, Any]:
    """Run `videovae cache-latents`; returns a summary (clips written, skipped, failed)."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .datasets import list_sources
    from .memory import accelerator_available

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    output_dir = check_output_dir(Path(args.output_dir).resolve(), "--output-dir")
    _check_index_files(output_dir, getattr(args, "overwrite", False))
    sources = list_sources(args.data)
    state = PartialState(cpu=args.cpu or not accelerator_available())
    vae = _load_encoder(args, state.device)
    model_id = str(args.model)
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    done = _cached_keys(output_dir, model_id)

    failed: list[dict[str, str]] = []
    writer = _ShardWriter(output_dir, model_id, args.shard_size)
    skipped = 0
    with state.split_between_processes(sources) as mine:
        progress = tqdm(mine, desc=f"cache-latents [{state.process_index}]", disable=not state.is_local_main_process)
        for source in progress:
            if args.max_clips is not None and writer.count >= args.max_clips:
                break
            skipped += _cache_source(vae, source, args, done, writer, failed, progress.write)
        writer.flush()
        progress.close()
    _write_json_atomic(output_dir / f".failed-{state.process_index}.json", failed)
    state.wait_for_everyone()
    summary = {"written": writer.written, "skipped": skipped, "failed": len(failed)}
    if state.is_main_process:
        summary = _write_index(output_dir, vae, args, model_id)
    state.wait_for_everyone()
    return summary


def _run_from_args(args: argparse.Namespace) -> int:
    cache_latents(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m diffusers_videovae.caching ...` (what `accelerate launch -m` runs)."""
    parser = argparse.ArgumentParser(prog="videovae cache-latents", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return _run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
