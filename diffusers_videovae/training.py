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
"""Training and fine-tuning of any diffusers-videovae model (`videovae train`), on `accelerate`.

The same command runs on one CPU, on many GPUs, or on many nodes: start it with `accelerate launch` (for example
`accelerate launch --num_processes 8 -m diffusers_videovae.training --data clips/ ...`) and nothing else changes.

What one step does, for a batch `x` of `(B, 3, T, H, W)` clips in [-1, 1]:

    posterior = model.encode(x).latent_dist          # the RAW posterior
    z = posterior.sample()                            # or posterior.mode() with --no-sample-posterior
    recon = model.decode(model.latents_for_decode(z), **model.decode_conditions(x), **model.decode_kwargs(...)).sample
    loss = l1_weight * |recon - x| + mse_weight * (recon - x)^2      (means over pixels)
         + kl_weight * KL(posterior || N(0, I))                       (mean over latent elements)
         + perceptual_weight * LPIPS(recon, x)                        (per frame; only with local LPIPS weights)

Sample `i` of the dataset depends only on `(seed, i)`, and step `s` on process `r` of `n` reads samples
`(s * n + r) * B ... + B - 1` (a `DataLoader` over `StepBatchSampler`, whose workers decode the clips), so a run
resumed with `accelerator.skip_first_batches` sees exactly the batches the uninterrupted run would have seen.

Output folder layout:
    checkpoints/step-000500/   accelerate `save_state` (model, optimizer, EMA, LR scheduler) + trainer_state.json
    log.csv                    step, kind (train/val), losses, learning rate, validation PSNR, elapsed seconds
    model/                     the trained model (EMA weights when --ema-decay is set), a diffusers folder
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cli_args import positive_int
from .releases_cli import add_source_arguments

__all__ = ["add_arguments", "build_model", "main", "register", "train"]

CHECKPOINT_PREFIX = "step-"
LOG_FIELDS = ["step", "kind", "loss", "recon_l1", "recon_mse", "kl", "perceptual", "lr", "val_psnr", "elapsed_s"]
# Parameter-name prefixes of the two halves of a VAE, for --train-only / --freeze.
PART_PREFIXES = {
    "encoder": ("encoder.", "quant_conv."),
    "decoder": ("decoder.", "post_quant_conv."),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `videovae train` options (shared by the CLI sub-command and `python -m diffusers_videovae.training`)."""
    what = parser.add_argument_group("model")
    source = what.add_mutually_exclusive_group(required=True)
    source.add_argument("-m", "--model", help="fine-tune: a diffusers folder, a Hub id or an original checkpoint file")
    source.add_argument(
        "--config",
        help="train from scratch: a config.json with `_class_name` (e.g. a model folder's config.json)",
    )
    what.add_argument("--model-type", help="model type of an original checkpoint given to --model (else detected)")
    add_source_arguments(what)

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", nargs="+", required=True, help="video files, folders or .txt lists (`path [start end]`)"
    )
    data.add_argument("--val-data", nargs="+", help="held-out videos for validation PSNR")
    data.add_argument(
        "--num-frames", type=positive_int, default=9, help="frames per clip; must follow the model's frame rule"
    )
    data.add_argument(
        "--height", type=positive_int, default=64, help="crop height (a multiple of the spatial compression)"
    )
    data.add_argument(
        "--width", type=positive_int, default=64, help="crop width (a multiple of the spatial compression)"
    )
    data.add_argument(
        "--short-side", type=positive_int, default=144, help="videos are first resized to this shorter side"
    )
    data.add_argument("--random-scale", type=float, default=1.0, help="random extra zoom-out in [this, 1] per sample")
    data.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch-size", type=positive_int, default=1, help="clips per process and step")
    optim.add_argument("--max-steps", type=positive_int, default=1000)
    optim.add_argument(
        "--stop-at-step",
        type=positive_int,
        help="stop (checkpoint and save) at this step, keeping the LR schedule of --max-steps (staged runs)",
    )
    optim.add_argument("--max-minutes", type=float, help="stop (checkpoint and save) after this much wall time")
    optim.add_argument("--learning-rate", "--lr", type=float, default=1e-4)
    optim.add_argument("--lr-scheduler", default="constant_with_warmup", help="a diffusers.optimization schedule name")
    optim.add_argument("--lr-warmup-steps", type=int, default=0)
    optim.add_argument("--adam-beta1", type=float, default=0.9)
    optim.add_argument("--adam-beta2", type=float, default=0.999)
    optim.add_argument("--weight-decay", type=float, default=0.0)
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 disables it)")
    optim.add_argument("--gradient-accumulation-steps", type=positive_int, default=1)
    optim.add_argument("--l1-weight", type=float, default=1.0)
    optim.add_argument("--mse-weight", type=float, default=0.0)
    optim.add_argument("--kl-weight", type=float, default=1e-6)
    optim.add_argument("--perceptual-weight", type=float, default=0.0, help="LPIPS weight (needs local weights)")
    optim.add_argument("--perceptual-net", default="alex", choices=["alex", "vgg", "squeeze"], help="LPIPS backbone")
    optim.add_argument("--no-sample-posterior", action="store_true", help="decode the posterior mean, not a sample")
    optim.add_argument("--ema-decay", type=float, default=0.0, help="keep an EMA of the weights (e.g. 0.999)")
    optim.add_argument("--gradient-checkpointing", action="store_true")
    optim.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parts = optim.add_mutually_exclusive_group()
    parts.add_argument(
        "--train-only",
        nargs="+",
        metavar="PART",
        help="train only these parts: `encoder`, `decoder`, or parameter-name prefixes",
    )
    parts.add_argument("--freeze", nargs="+", metavar="PART", help="freeze these parts (same names as --train-only)")

    run = parser.add_argument_group("run")
    run.add_argument("-o", "--output-dir", required=True)
    run.add_argument("--resume", help="`latest` or a checkpoint folder; `latest` starts fresh when there is none")
    run.add_argument(
        "--overwrite", action="store_true", help="start over in a folder that holds a previous run (its log, model)"
    )
    run.add_argument("--checkpoint-every", type=positive_int, default=500, help="save a checkpoint every N steps")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="how many recent checkpoints to keep")
    run.add_argument("--val-every", type=positive_int, default=500)
    run.add_argument("--val-samples", type=positive_int, default=8, help="number of fixed validation clips")
    run.add_argument("--log-every", type=positive_int, default=10)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--find-unused-parameters", action="store_true", help="for models whose forward skips some parameters (DDP)"
    )
    run.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")
    run.add_argument("--num-threads", type=positive_int, help="torch CPU threads per process")
    run.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes decoding clips")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` sub-command to the `videovae` command line."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a video VAE on a folder of videos (accelerate; CPU or many GPUs)",
        description=__doc__.split("\n\n")[0] + " Start with `accelerate launch` for several processes.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_run_from_args)


# ---------------------------------------------------------------------------------------------------------------- model


def _class_for_name(class_name: str) -> type:
    from . import checkpoints

    for model_type, (_, known_class) in checkpoints.MODEL_TYPES.items():
        if known_class == class_name:
            return checkpoints.get_model_class(model_type)
    import diffusers

    model_class = getattr(diffusers, class_name, None)
    if model_class is None:
        raise ValueError(f"Unknown model class {class_name!r}: neither a diffusers-videovae nor a diffusers model.")
    return model_class


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model to train: loaded with `loaders.load_model` (--model) or freshly initialised from --config."""
    if args.model:
        from .loaders import load_model
        from .releases_cli import source_options

        return load_model(args.model, **source_options(args))
    config = json.loads(Path(args.config).read_text())
    if "_class_name" not in config:
        raise ValueError(f"{args.config} has no `_class_name`; write it as a diffusers config.json.")
    model_class = _class_for_name(config["_class_name"])
    return model_class.from_config(config)


def select_trainable(model: torch.nn.Module, train_only: list[str] | None, freeze: list[str] | None) -> list[str]:
    """Set `requires_grad` from --train-only / --freeze; returns the trainable parameter names."""
    names = [name for name, _ in model.named_parameters()]

    def matcher(parts: list[str]):
        prefixes = []
        for part in parts:
            part_prefixes = PART_PREFIXES.get(part, (part if part.endswith(".") else part + ".", part))
            if not any(name.startswith(p) for name in names for p in part_prefixes):
                raise ValueError(f"No parameter of {type(model).__name__} matches {part!r}.")
            prefixes.extend(part_prefixes)
        prefixes = tuple(prefixes)
        return lambda name: name.startswith(prefixes)

    if train_only:
        keep = matcher(train_only)
    elif freeze:
        frozen = matcher(freeze)

        def keep(name: str) -> bool:
            return not frozen(name)
    else:

        def keep(name: str) -> bool:
            return True

    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(keep(name))
        if keep(name):
            trainable.append(name)
    if not trainable:
        raise ValueError("No trainable parameters left after --train-only / --freeze.")
    return trainable


class ReconstructionStep(torch.nn.Module):
    """encode -> sample -> decode as one `forward`, so that DDP sees (and synchronises) the whole step."""

    def __init__(self, vae: torch.nn.Module, sample_posterior: bool = True):
        super().__init__()
        self.vae = vae
        self.sample_posterior = sample_posterior

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        vae = self.vae
        encoder_trainable = any(p.requires_grad for n, p in vae.named_parameters() if n.startswith("encoder"))
        with torch.set_grad_enabled(torch.is_grad_enabled() and encoder_trainable):
            posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=generator) if self.sample_posterior else posterior.mode()
        options = vae.decode_kwargs(num_frames=x.shape[2], generator=generator)
        recon = vae.decode(vae.latents_for_decode(z), **vae.decode_conditions(x), **options).sample
        return recon, posterior.mean, posterior.logvar


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over all latent elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


class PerceptualLoss(torch.nn.Module):
    """LPIPS over frames, from the `lpips` package; only with its backbone weights already on this machine."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        from .metrics import lpips_unavailable_reason

        reason = lpips_unavailable_reason(net)
        if reason is not None:
            raise RuntimeError(
                f"--perceptual-weight needs LPIPS, which cannot run here: {reason}. Training never downloads "
                "weights; install them or drop --perceptual-weight to train with L1/MSE + KL only."
            )
        import lpips

        self.lpips = lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731  (B, 3, T, H, W) -> (B*T, 3, H, W)
        return self.lpips(frames(reconstruction), frames(target)).mean()


# ------------------------------------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (those with trainer_state.json), oldest first."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / "trainer_state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(accelerator, output_dir: Path, step: int, keep: int) -> Path:
    """`accelerator.save_state` into a temporary folder, renamed into place once every process has written."""
    final = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"
    staging = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        from .paths import remove_stale_temporaries

        shutil.rmtree(staging, ignore_errors=True)
        remove_stale_temporaries(final)  # an old checkpoint a killed run had renamed aside
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from .paths import publish_folder

        (staging / "trainer_state.json").write_text(json.dumps({"step": step}))
        publish_folder(staging, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise FileNotFoundError(f"{path} is not a complete training checkpoint (no trainer_state.json).")
    return path


class CsvLog:
    """CSV of losses and validation PSNR, rewritten through `atomic_output` at each row (a killed run leaves the
    previous complete log); on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= resume_step]
        self._save()

    def write(self, **row: Any) -> None:
        self.rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._save()

    def _save(self) -> None:
        from .paths import atomic_output

        with atomic_output(self.path) as staging, staging.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)


# -------------------------------------------------------------------------------------------------------------- train


@torch.no_grad()
def validate(vae: torch.nn.Module, clips: list[torch.Tensor], device: torch.device) -> float:
    """Mean PSNR (dB, per frame as in `videovae eval`) of mode reconstructions of the fixed validation clips."""
    from .metrics import frame_psnr, mean_psnr

    was_training = vae.training
    vae.eval()
    values = []
    for clip in clips:
        x = clip.unsqueeze(0).to(device)
        recon, _ = vae.autoencode(x)
        values.append(mean_psnr(frame_psnr(x[0].float(), recon[0].float().clamp(-1, 1))))
    vae.train(was_training)
    return sum(values) / len(values)


class StepBatchSampler(torch.utils.data.Sampler):
    """Batch `k` (a micro step) on process `rank` of `world`: samples `(k * world + rank) * B ... + B - 1`."""

    def __init__(self, num_batches: int, batch_size: int, rank: int, world: int):
        self.num_batches, self.batch_size, self.rank, self.world = num_batches, batch_size, rank, world

    def first_sample(self, batch: int) -> int:
        return (batch * self.world + self.rank) * self.batch_size

    def __iter__(self):
        for batch in range(self.num_batches):
            first = self.first_sample(batch)
            yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return self.num_batches


def _build_accelerator(args: argparse.Namespace):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from .memory import accelerator_available

    # Without a device, processes started by `accelerate launch --multi_gpu` / torchrun must use gloo on CPU.
    return Accelerator(
        cpu=args.cpu or not accelerator_available(),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.find_unused_parameters)],
    )


def _prepare_model(args: argparse.Namespace) -> tuple[torch.nn.Module, list[str]]:
    """The model to train, checked against the clip size, with its trainable parameters selected."""
    from .video import check_clip_size

    vae = build_model(args)
    check_clip_size(vae.input_rule, args.num_frames, args.height, args.width)
    trainable = select_trainable(vae, args.train_only, args.freeze)
    if args.gradient_checkpointing:
        if not getattr(vae, "_supports_gradient_checkpointing", False):
            raise ValueError(f"{type(vae).__name__} does not support gradient checkpointing.")
        vae.enable_gradient_checkpointing()
    return vae.train(), trainable


def _datasets(args: argparse.Namespace, is_main: bool):
    """The training dataset, and the fixed validation clips (main process only)."""
    from .datasets import VideoClipDataset

    sizes = {"num_frames": args.num_frames, "height": args.height, "width": args.width, "short_side": args.short_side}
    dataset = VideoClipDataset(
        args.data, **sizes, random_scale=args.random_scale, flip=not args.no_flip, seed=args.seed
    )
    val_clips = []
    if args.val_data and is_main:
        val_set = VideoClipDataset(args.val_data, **sizes, flip=False, seed=args.seed + 1)
        val_clips = [val_set[i] for i in range(args.val_samples)]
    return dataset, val_clips


def _optimisation(args: argparse.Namespace, parameters: list[torch.nn.Parameter]):
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(
        parameters, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay
    )
    # Stepped once per optimisation step by us (not by accelerate, which would step it once per process).
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=args.max_steps,
    )
    return optimizer, lr_scheduler


def _make_ema(args: argparse.Namespace, vae: torch.nn.Module, accelerator):
    if args.ema_decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    ema = EMAModel(vae.parameters(), decay=args.ema_decay, model_cls=type(vae), model_config=vae.config)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return ema


def _resume(args: argparse.Namespace, accelerator, output_dir: Path) -> tuple[int, bool]:
    """`(step, resumed)`: the state of the checkpoint --resume names loaded into the accelerator."""
    resume_from = resolve_resume(args.resume, output_dir)
    if resume_from is None:
        return 0, False
    accelerator.load_state(str(resume_from))
    return json.loads((resume_from / "trainer_state.json").read_text())["step"], True


class _Losses:
    """The loss terms of one micro step, and their running sums between log lines."""

    def __init__(self, args: argparse.Namespace, perceptual):
        self.args, self.perceptual = args, perceptual
        self.sums: dict[str, float] = {}
        self.steps = 0

    def __call__(self, recon: torch.Tensor, x: torch.Tensor, mean, logvar) -> torch.Tensor:
        args = self.args
        terms = {
            "recon_l1": (recon - x).abs().mean(),
            "recon_mse": (recon - x).pow(2).mean(),
            "kl": kl_divergence(mean.float(), logvar.float()),
        }
        loss = args.l1_weight * terms["recon_l1"] + args.mse_weight * terms["recon_mse"]
        loss = loss + args.kl_weight * terms["kl"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(recon, x)
            loss = loss + args.perceptual_weight * terms["perceptual"]
        for name, value in {"loss": loss, **terms}.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach()) / args.gradient_accumulation_steps
        return loss

    def means(self, accelerator) -> dict[str, float]:
        """Means over processes and steps since the last call."""
        names = sorted(self.sums)
        totals = accelerator.reduce(torch.tensor([self.sums[k] for k in names], device=accelerator.device), "mean")
        means = {k: float(v) / self.steps for k, v in zip(names, totals)}
        self.sums, self.steps = {}, 0
        return means


def train(args: argparse.Namespace) -> Path:
    """Run `videovae train`; returns the folder of the trained model."""
    from accelerate.utils import set_seed

    from .checkpoints._common import check_output_dir as check_model_dir
    from .paths import atomic_output, check_output_dir

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    output_dir = check_output_dir(Path(args.output_dir).resolve(), "--output-dir")
    # The trained model replaces `model/` at the end only when it holds a previous model of ours: say so now.
    check_model_dir(output_dir / "model", overwrite=True)
    _check_previous_run(output_dir, args)
    accelerator = _build_accelerator(args)
    set_seed(args.seed)
    vae, trainable = _prepare_model(args)
    perceptual = PerceptualLoss(args.perceptual_net).to(accelerator.device) if args.perceptual_weight > 0 else None
    dataset, val_clips = _datasets(args, accelerator.is_main_process)
    parameters = [p for p in vae.parameters() if p.requires_grad]
    optimizer, lr_scheduler = _optimisation(args, parameters)
    step_module, optimizer = accelerator.prepare(ReconstructionStep(vae, not args.no_sample_posterior), optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    ema = _make_ema(args, vae, accelerator)
    step, resumed = _resume(args, accelerator, output_dir)
    log = None
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        log = CsvLog(output_dir / "log.csv", resume_step=step if resumed else None)
        with atomic_output(output_dir / "train_args.json") as staging:
            staging.write_text(json.dumps(vars(args), indent=2, default=str))
        accelerator.print(
            f"Training {type(vae).__name__}: {sum(p.numel() for p in parameters):,} trainable parameters "
            f"({len(trainable)} tensors), {len(dataset.sources)} videos, {accelerator.num_processes} process(es), "
            f"{'resuming at step ' + str(step) if step else 'from step 0'}."
        )
    parts = _TrainingParts(accelerator, step_module, optimizer, lr_scheduler, ema, parameters, log)
    step = _train_loop(args, parts, dataset, val_clips, _Losses(args, perceptual), step, output_dir)
    return _save_model(accelerator, step_module, ema, output_dir, step)


def _check_previous_run(output_dir: Path, args: argparse.Namespace) -> None:
    """A folder holding another run is continued only with --resume and replaced only with --overwrite."""
    found = [name for name in ("log.csv", "train_args.json", "model") if (output_dir / name).exists()]
    if found and args.resume is None and not getattr(args, "overwrite", False):
        raise FileExistsError(
            f"--output-dir {output_dir} holds a previous training run ({', '.join(found)}); pass --resume latest to "
            "continue it or --overwrite to start over there."
        )


@dataclass
class _TrainingParts:
    accelerator: Any
    step_module: torch.nn.Module
    optimizer: Any
    lr_scheduler: Any
    ema: Any
    parameters: list
    log: CsvLog | None


def _train_loop(args, parts: _TrainingParts, dataset, val_clips, losses: _Losses, step: int, output_dir) -> int:
    """Optimisation steps from `step` to the last one; returns the step reached."""
    from tqdm.auto import tqdm

    accelerator = parts.accelerator
    micro = args.gradient_accumulation_steps
    last_step = args.max_steps if args.stop_at_step is None else min(args.max_steps, args.stop_at_step)
    sampler = StepBatchSampler(
        last_step * micro, args.batch_size, accelerator.process_index, accelerator.num_processes
    )
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers)
    if step:
        loader = accelerator.skip_first_batches(loader, step * micro)
    progress = tqdm(
        total=args.max_steps,
        initial=step,
        desc="train",
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    start_time = time.monotonic()
    batches = iter(loader)
    while step < last_step:
        for micro_step in range(micro):
            first = sampler.first_sample(step * micro + micro_step)
            _micro_step(args, parts, losses, next(batches), args.seed * 1_000_003 + first)
        parts.lr_scheduler.step()
        if parts.ema is not None:
            parts.ema.step(accelerator_unwrap(parts).parameters())
        step += 1
        losses.steps += 1
        progress.update(1)
        elapsed = time.monotonic() - start_time
        out_of_time = args.max_minutes is not None and elapsed > 60 * args.max_minutes
        _after_step(
            args, parts, losses, val_clips, progress, output_dir, step, elapsed, step == last_step or out_of_time
        )
        if out_of_time:
            accelerator.print(f"Stopping at step {step}: --max-minutes {args.max_minutes} reached.")
            break
    progress.close()
    return step


def _micro_step(args, parts: _TrainingParts, losses: _Losses, batch: torch.Tensor, seed: int) -> None:
    """Forward, loss, backward and (at the end of an accumulation) the optimiser step of one batch."""
    accelerator = parts.accelerator
    x = batch.to(accelerator.device)
    generator = torch.Generator(accelerator.device).manual_seed(seed)
    with accelerator.accumulate(parts.step_module), accelerator.autocast():
        recon, mean, logvar = parts.step_module(x, generator=generator)
        loss = losses(recon.float(), x, mean, logvar)
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(parts.parameters, args.max_grad_norm)
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)


def _after_step(args, parts: _TrainingParts, losses, val_clips, progress, output_dir, step, elapsed, last) -> None:
    """Log line, validation and checkpoint when they are due (always at the `last` step)."""
    accelerator, vae = parts.accelerator, accelerator_unwrap(parts)
    if step % args.log_every == 0 or last:
        means = losses.means(accelerator)
        progress.set_postfix(loss=f"{means['loss']:.4f}")
        if parts.log is not None:
            lr = parts.lr_scheduler.get_last_lr()[0]
            parts.log.write(step=step, kind="train", lr=lr, elapsed_s=elapsed, **means)
    if val_clips and (step % args.val_every == 0 or last):
        with _ema_weights(parts.ema, vae):
            value = validate(vae, val_clips, accelerator.device)
        progress.write(f"step {step}: validation PSNR {value:.2f} dB")
        parts.log.write(step=step, kind="val", val_psnr=value, elapsed_s=elapsed)
    if step % args.checkpoint_every == 0 or last:
        save_checkpoint(accelerator, output_dir, step, args.keep_checkpoints)


def accelerator_unwrap(parts: _TrainingParts) -> torch.nn.Module:
    return parts.accelerator.unwrap_model(parts.step_module).vae


def _save_model(accelerator, step_module, ema, output_dir: Path, step: int) -> Path:
    model_dir = output_dir / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from .checkpoints._common import save_pretrained_atomic

        vae = accelerator.unwrap_model(step_module).vae
        with _ema_weights(ema, vae):
            save_pretrained_atomic(vae, model_dir, overwrite=True)
        accelerator.print(f"Saved the trained model to {model_dir} (step {step}).")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return model_dir


class _ema_weights:
    """Context manager: the EMA weights in `vae` inside, the training weights back afterwards."""

    def __init__(self, ema, vae: torch.nn.Module):
        self.ema, self.vae = ema, vae

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(self.vae.parameters())
            self.ema.copy_to(self.vae.parameters())

    def __exit__(self, *exc_info):
        if self.ema is not None:
            self.ema.restore(self.vae.parameters())


def _run_from_args(args: argparse.Namespace) -> int:
    train(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m diffusers_videovae.training ...` (what `accelerate launch -m` runs)."""
    parser = argparse.ArgumentParser(prog="videovae train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return _run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
