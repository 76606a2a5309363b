"""`videovae compare`: the numbers are `videovae eval`'s, and the report opens in a browser as a person sees it."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, REQUIRE_REFERENCE, media_clip, reference_dir
from PIL import Image

from diffusers_videovae import checkpoints
from diffusers_videovae.cli import main
from diffusers_videovae.video import synthetic_clip, write_video

SETTINGS = ["--frames", "5", "--size", "64", "--threads", "1"]


def videovae(*argv) -> subprocess.CompletedProcess:
    """The installed command in a fresh process, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "diffusers_videovae.cli", *map(str, argv)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny reference IV-VAE, converted (z 8)."""
    folder = reference_dir("ivvae")
    return checkpoints.convert_to_folder(
        "ivvae", folder / "tiny_original.pth", tmp_path_factory.mktemp("models") / "ivvae-tiny",
        original_config=folder / "tiny_config.json", verbose=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny) -> dict:
    """The demo model and the tiny IV-VAE compared on the real clip and a synthetic one."""
    root = tmp_path_factory.mktemp("compare")
    clips = [media_clip(), write_video(root / "pattern.mp4", synthetic_clip(9, 72, 96, seed=3), 25, crf=10)]
    output = root / "report"
    videovae("compare", *clips, "-m", "ivvae-demo", "-m", tiny, "-o", output, *SETTINGS, "-q")
    return {"root": root, "tiny": tiny, "clips": clips, "output": output}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_csv_has_one_row_per_model_and_clip_with_every_column(report):
    rows = read_csv(report["output"] / "metrics.csv")
    assert list(rows[0]) == [
        "model", "clip", "frames", "height_x_width", "psnr", "ssim", "lpips", "encode_s", "decode_s", "peak_gib",
        "compression", "latent_shape",
    ]  # fmt: skip
    clips = [clip.name for clip in report["clips"]]
    assert [(row["model"], row["clip"]) for row in rows] == [
        (model, clip) for model in ("ivvae-demo", "ivvae-tiny") for clip in clips
    ]
    # The demo model: z16, 4x temporal and 8x spatial compression; the tiny one: z8.
    demo, tiny = rows[0], rows[2]
    assert (demo["frames"], demo["height_x_width"], demo["latent_shape"]) == ("5", "64x64", "16x2x8x8")
    assert tiny["latent_shape"] == "8x2x8x8"
    assert float(demo["compression"]) == pytest.approx(3 * 5 * 64 * 64 / (16 * 2 * 8 * 8))
    assert all(
        float(row["encode_s"]) > 0 and float(row["decode_s"]) > 0 and float(row["peak_gib"]) > 0 for row in rows
    )


def test_csv_numbers_are_videovae_evals(report):
    """Same settings, same code path: PSNR and SSIM equal to the last printed digit."""
    rows = read_csv(report["output"] / "metrics.csv")
    for model, label in ((Path("ivvae-demo"), "ivvae-demo"), (report["tiny"], "ivvae-tiny")):
        table = report["root"] / f"eval-{label}.csv"
        # In this process: the report's own run is the real command's.
        assert main(["eval", *map(str, report["clips"]), "-m", str(model), *SETTINGS, "--csv", str(table), "-q"]) == 0
        expected = {row["clip"]: row for row in read_csv(table) if row["clip"] != "mean"}
        mine = {row["clip"]: row for row in rows if row["model"] == label}
        assert set(mine) == set(expected)
        for clip, row in mine.items():
            assert (row["psnr"], row["ssim"]) == (expected[clip]["psnr"], expected[clip]["ssim"]), (label, clip)
            assert (row["frames"], row["height_x_width"]) == (
                expected[clip]["frames"],
                expected[clip]["height_x_width"],
            )


def image_sources(page: Path) -> list[str]:
    return re.findall(r"<img src='([^']+)'", page.read_text())


def test_every_figure_of_the_page_is_a_png_beside_it(report):
    page = report["output"] / "index.html"
    sources = image_sources(page)
    assert len(sources) == 3 * len(report["clips"])  # PSNR plot, strips, heat maps per clip
    for source in sources:
        assert not re.match(r"[a-z]+:", source), f"{source} is not relative to the page"
        with Image.open(page.parent / source) as image:
            image.load()
            assert image.width > 100 and image.height > 100


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "headless Chromium is needed (apt-get install -y chromium; .ci/run installs it)"
        if REQUIRE_REFERENCE:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def run_chromium(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", *options,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# Appended to a copy of the page: once everything has loaded, each <img> records its decoded width in the DOM.
IMAGE_PROBE = (
    "<script>window.addEventListener('load', () => { for (const img of document.images) "
    "img.setAttribute('data-natural-width', img.complete ? img.naturalWidth : -1); "
    "document.body.setAttribute('data-probed', document.images.length); });</script>"
)


def test_headless_chromium_shows_the_page_with_every_image_loaded(report, tmp_path):
    page = report["output"] / "index.html"
    screenshot = tmp_path / "page.png"
    run_chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1200,1600", page.as_uri())
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 20, "the page renders blank"

    probe = page.with_name("probe.html")  # beside the page, so its relative image paths are the page's
    probe.write_text(page.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    try:
        dom = run_chromium(
            tmp_path, "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000", "--dump-dom",
            probe.as_uri(),
        ).stdout  # fmt: skip
    finally:
        probe.unlink()
    assert f'data-probed="{3 * len(report["clips"])}"' in dom
    widths = [int(width) for width in re.findall(r'data-natural-width="(-?\d+)"', dom)]
    assert len(widths) == 3 * len(report["clips"]) and min(widths) > 0, widths
    text = re.sub(r"<[^>]+>", " ", dom)
    for name in ("ivvae-demo", "ivvae-tiny", *(clip.name for clip in report["clips"])):
        assert name in text


def test_existing_report_is_kept_without_overwrite_and_nothing_is_computed(report, tmp_path, monkeypatch, capsys):
    from diffusers_videovae import compare

    output = tmp_path / "report"
    output.mkdir()
    (output / "metrics.csv").write_text("mine")
    monkeypatch.setattr(compare, "compare_models", lambda *a, **k: pytest.fail("computed before checking outputs"))
    code = main(["compare", str(report["clips"][0]), "-m", "ivvae-demo", "-o", str(output), "-q"])
    assert code == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (output / "metrics.csv").read_text() == "mine"


def test_an_output_folder_that_is_a_file_is_refused(report, tmp_path, capsys):
    target = tmp_path / "report"
    target.write_text("not a folder")
    code = main(["compare", str(report["clips"][0]), "-m", "ivvae-demo", "-o", str(target), "-q"])
    assert code == 1
    assert "is a file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def other_models(tmp_path_factory) -> dict[str, Path]:
    """Reducio (the tiny reference, converted: decode takes content frames) and a small random CascadeV (a diffusion
    decoder: its reconstruction depends on the seed)."""
    import torch

    from diffusers_videovae.models.cascadev import AutoencoderCascadeV

    root = tmp_path_factory.mktemp("models")
    folder = reference_dir("reducio")
    reducio = checkpoints.convert_to_folder(
        "reducio", folder / "tiny_original.ckpt", root / "reducio-tiny", original_config=folder / "tiny_config.yaml",
        verbose=False,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoencoderCascadeV(
        previewer_hidden_channels=16, transformer_hidden_size=48, transformer_num_layers=1,
        transformer_num_attention_heads=2, transformer_sample_size=16, transformer_num_frames=4,
        transformer_attn_strides=[None], svd_block_out_channels=(32, 32, 32, 32), svd_layers_per_block=1,
        num_inference_steps=2,
    ).save_pretrained(root / "cascadev-random")  # fmt: skip
    return {"reducio": Path(reducio), "cascadev": root / "cascadev-random"}


def test_models_with_content_frames_or_a_seeded_decoder_get_evals_numbers(tiny, other_models, tmp_path):
    """17 frames: the IV-VAE reads 17, Reducio 16 (T = 16k); CascadeV's noise follows the seed, as in eval."""
    from diffusers_videovae.compare import compare_models, write_report
    from diffusers_videovae.evaluation import EvalSettings, evaluate_clips
    from diffusers_videovae.loaders import load_model

    clip = write_video(tmp_path / "long.mp4", synthetic_clip(17, 64, 64, seed=5), 25, crf=10)
    settings = EvalSettings(frames=17, size=64, seed=3)
    specs = [str(tiny), str(other_models["reducio"]), str(other_models["cascadev"])]
    results = compare_models(specs, [clip], settings, load_model, progress=False)
    assert [result.row["frames"] for result in results] == [17, 16, 17]
    for spec, result in zip(specs, results):
        expected = evaluate_clips(load_model(spec), [clip], settings, progress=False)[0]
        assert (result.row["psnr"], result.row["ssim"]) == (expected["psnr"], expected["ssim"]), spec
    other_seed = evaluate_clips(load_model(specs[2]), [clip], EvalSettings(frames=17, size=64, seed=4), False)[0]
    assert other_seed["psnr"] != results[2].row["psnr"]  # so the equality above says the seed reached the decoder
    paths = write_report(results, tmp_path / "report")
    for key, path in paths.items():
        if key.startswith(("psnr", "strips", "errors")):
            with Image.open(path) as image:
                image.load()
