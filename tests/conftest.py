"""Shared test set-up: offline Hub, the reference fixtures in ../shared/reference, small helpers."""

from __future__ import annotations

import copy
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


# --- the device the tests run on -----------------------------------------------------------------------------------
# `VIDEOVAE_TEST_DEVICE=cuda bash scripts/test.sh` runs the parity and feature tests on a GPU (default: the CPU).
TEST_DEVICE = torch.device(os.environ.get("VIDEOVAE_TEST_DEVICE", "cpu"))

# Max abs tolerance on a device other than the CPU, per dtype; a test takes the larger of its own (CPU) tolerance and
# this (`device_atol`). float32: TF32 is switched off below, so what remains is another summation order (cuDNN and
# cuBLAS pick their own algorithms), of the order of the fixtures' float32-vs-float64 gap (1e-5 .. 1e-4 on pixels in
# [-1, 1]) times the depth of the network. bfloat16 / float16: 8 / 11 bits of mantissa, as measured against float32
# on the CPU by benchmarks/gpu_check.py --quick (at most 0.23 / 0.06 on tiny random models).
DEVICE_ATOL = {torch.float32: 2e-4, torch.bfloat16: 0.25, torch.float16: 0.1}


def device_atol(atol: float, dtype: torch.dtype = torch.float32) -> float:
    """A test's tolerance where it runs: unchanged on the CPU (the fixtures' own), else at least `DEVICE_ATOL`."""
    return atol if TEST_DEVICE.type == "cpu" else max(atol, DEVICE_ATOL[dtype])


def cpu_only(reason: str):
    """Mark a test that cannot run on another device, with the reason (e.g. it measures the process's RSS)."""
    return pytest.mark.skipif(TEST_DEVICE.type != "cpu", reason=f"{reason} (VIDEOVAE_TEST_DEVICE={TEST_DEVICE})")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device under test (`VIDEOVAE_TEST_DEVICE`, default cpu); fails at once when torch cannot use it."""
    return TEST_DEVICE


class DeviceCases:
    """`ReferenceCases` whose tensors come on the device under test (expected values are compared on the CPU)."""

    def __init__(self, cases: ReferenceCases, device: torch.device):
        self.meta, self.dir, self._cases, self._device = cases.meta, cases.dir, cases, device

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._cases[name].to(self._device)


@pytest.fixture(scope="module")
def device_cases(cases: ReferenceCases):
    """The module's `cases` on the device under test (the same object on the CPU)."""
    return cases if TEST_DEVICE.type == "cpu" else DeviceCases(cases, TEST_DEVICE)


@pytest.fixture(scope="module")
def device_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module's `model` on the device under test (the same object on the CPU)."""
    return model if TEST_DEVICE.type == "cpu" else copy.deepcopy(model).to(TEST_DEVICE)


def pytest_sessionstart(session) -> None:
    if TEST_DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            pytest.exit(f"VIDEOVAE_TEST_DEVICE={TEST_DEVICE}, but this torch sees no CUDA device.", returncode=4)
        # float32 must stay float32: TF32 matmuls and convolutions keep 10 bits of mantissa.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, name: str = "") -> None:
    """Max-abs comparison with a message that says how far off, where, and the tolerance."""
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    atol = device_atol(atol, actual.dtype if actual.dtype in DEVICE_ATOL else torch.float32)
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
