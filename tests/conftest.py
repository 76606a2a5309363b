"""Shared test set-up: offline Hub, the reference fixtures in ../shared/reference, small helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ROOT = Path(os.environ.get("VIDEOVAE_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference")).resolve()
MEDIA_ROOT = REFERENCE_ROOT.parent / "media"
# .ci/run sets this so that a missing ../shared fails the run instead of skipping the parity tests.
REQUIRE_REFERENCE = os.environ.get("VIDEOVAE_REQUIRE_REFERENCE", "") not in ("", "0")


def _missing(what: str, where: Path = REFERENCE_ROOT) -> None:
    message = (
        f"{what} not found (looked in {where}). The reference fixtures and media ship beside the repository as "
        "../shared/reference and ../shared/media; set VIDEOVAE_REFERENCE_DIR to point at another reference folder."
    )
    if REQUIRE_REFERENCE:
        pytest.fail(message + " VIDEOVAE_REQUIRE_REFERENCE is set, so this is a failure.", pytrace=False)
    pytest.skip(message)


def reference_dir(model: str) -> Path:
    """`../shared/reference/<model>`, or skip (fail under CI) with a clear reason."""
    path = REFERENCE_ROOT / model
    if not (path / "cases.json").exists():
        _missing(f"Reference fixtures for {model!r}")
    return path


def media_clip(name: str = "ivvae_ori.mp4") -> Path:
    path = MEDIA_ROOT / name
    if not path.exists():
        _missing(f"Media clip {name!r}", MEDIA_ROOT)
    return path


class ReferenceCases:
    """`cases.json` + `cases.safetensors` of one model folder."""

    def __init__(self, model: str):
        from safetensors.torch import load_file

        self.dir = reference_dir(model)
        self.meta = json.loads((self.dir / "cases.json").read_text())
        self.tensors = load_file(str(self.dir / "cases.safetensors"))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, name: str = "") -> None:
    """Max-abs comparison with a message that says how far off, where, and the tolerance."""
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    diff = (actual.detach().double().cpu() - expected.double().cpu()).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    assert worst <= atol, (
        f"{name}: max abs diff {worst:.3e} > atol {atol:.1e} (at {tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])})"
    )


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The tests run tiny models: thread start-up and synchronisation cost more than they give, up to 40x on a
    # busy 2-core machine. Processes the tests start (notebook kernels, accelerate workers) choose their own.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
