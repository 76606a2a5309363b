"""Memory estimates: the run traced on `meta` at its real shape, what is resident, and the measured peak."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_memory  # noqa: E402
from _harness import measure  # noqa: E402

from diffusers_videovae import memory  # noqa: E402
from diffusers_videovae.memory import LiveTensorBytes, choose_tiling, estimate_memory, meta_copy  # noqa: E402
from diffusers_videovae.models import _tiling  # noqa: E402

MiB, GiB = 2**20, 2**30
CLIPS = {"ivvae": (9, 64, 64), "odvae": (9, 64, 64), "opensora": (9, 64, 64), "reducio": (16, 64, 64)}
QUICK_TILES = dict(tile_sample_min_height=32, tile_sample_min_width=32)  # each model's own stride for that size


def test_live_tensor_bytes_counts_what_is_alive_and_not_views_or_inputs():
    outside = torch.zeros(MiB // 4)  # 1 MiB made before the mode: never counted
    with LiveTensorBytes() as live:
        a = outside * 2  # 1 MiB
        view = a[: MiB // 8]  # a view: no allocation
        b = a + 1  # 2 MiB alive
        del a, view  # 1 MiB alive
        c = b.reshape(-1, 2) * 3  # 2 MiB alive again
        outside.add_(1)  # in place on an outside tensor: nothing
        assert live.current == 2 * MiB
        del b, c
        assert live.current == 0
    assert live.peak == 2 * MiB


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
@pytest.mark.parametrize("name", list(CLIPS))
def test_meta_trace_equals_the_bytes_a_real_run_allocates(name, tiled):
    """The estimate (traced on a meta copy) is what the same run on real CPU tensors keeps alive at its peak."""
    model = bench_memory.build(name, quick=True, frames=CLIPS[name][0], size=CLIPS[name][1])
    if tiled:
        model.enable_tiling(**QUICK_TILES)
    estimate = estimate_memory(model, CLIPS[name], torch.device("cpu"))
    video = torch.rand(1, 3, *CLIPS[name]) * 2 - 1
    with torch.no_grad(), LiveTensorBytes(conv_workspace=True) as live:  # the estimate counts it on the CPU
        model.autoencode(video)
    assert (estimate.tiled if tiled else estimate.untiled) == live.peak > 0
    if tiled:  # the tiled figure traces the tiled path (on a clip this small its halos can cost more than they save)
        assert estimate.tiled != estimate.untiled


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
@pytest.mark.parametrize("name", [*CLIPS, "cascadev"])
def test_replayed_trace_has_the_full_traces_peak(name, tiled):
    """Module calls that repeat (tiles, frame chunks) are replayed from their first trace: same peak, fewer ops."""
    shape = CLIPS.get(name, (8, 64, 64))
    model = bench_memory.build(name, quick=True, frames=shape[0], size=shape[1])
    if tiled:
        model.enable_tiling(**QUICK_TILES)
    full, cheap = meta_copy(model), meta_copy(model)
    tracer = memory._ReplayingTrace(cheap)
    for workspace in (False, True):
        assert memory._traced_peak(cheap, shape, workspace, tracer) == memory._traced_peak(full, shape, workspace)
    assert tracer.replayed > 0 or not tiled and name in ("odvae", "reducio")  # these repeat nothing untiled


class _KeepsACache(torch.nn.Module):
    """Keeps what it made on the side and reads it on the next call: a replay of its record would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 4, 1)
        self.cache = None

    def forward(self, x):
        y = self.conv(x)
        if self.cache is not None:
            y = y + self.cache[..., : x.shape[-1]]
        self.cache = torch.cat([y, y], dim=-1)
        return y


class _ReadsWhatItIsGiven(torch.nn.Module):
    """Reads a tensor its caller set on it (no argument, no parameter): its allocations follow that tensor."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 4, 1)
        self.extra = None

    def forward(self, x):
        return torch.cat([self.conv(x), self.extra], dim=-1)


class _Calls(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.keeps = _KeepsACache()
        self.reads = _ReadsWhatItIsGiven()
        self.pure = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 1), torch.nn.SiLU())

    def forward(self, x):
        sums = []
        for step in range(4):
            self.reads.extra = x.new_zeros(1, 4, (step + 1) * x.shape[-1])
            sums.append(self.pure(self.keeps(x)).sum() + self.reads(x).sum())
        return sums


def test_replay_leaves_modules_with_state_on_the_side_to_the_full_trace():
    with torch.device("meta"):
        full, cheap = _Calls(), _Calls()
    tracer = memory._ReplayingTrace(cheap)
    x = torch.zeros(1, 4, MiB, device="meta")
    with torch.no_grad(), LiveTensorBytes() as expected:
        full(x)
    with torch.no_grad(), LiveTensorBytes() as live:
        tracer.live = live
        cheap(x)
    assert live.peak == expected.peak > 8 * MiB
    assert tracer.replayed == 3  # the Sequential, not the modules with state
    assert sum(record == memory._IMPURE for record in tracer.records.values()) == 2


def test_conv_workspace_is_what_a_cpu_convolution_takes():
    """The scratch space counted per convolution (`conv_workspace`) against the RSS a real one adds (fresh process)."""
    outcome = measure(_conv_setup, _conv_call, threads=1)
    assert "error" not in outcome, outcome.get("error")
    traced, base = outcome["result"]
    assert traced == 2 * 144 * MiB  # output + the larger of input and output
    assert 0.85 < (outcome["peak_bytes"] - base) / traced < 1.15


def _conv_setup():
    x, weight = torch.randn(1, 64, 9, 128, 128), torch.randn(256, 64, 3, 3, 3)
    with torch.no_grad():
        torch.nn.functional.conv3d(x[..., :8, :8], weight, padding=1)  # loads the kernels first
    x_meta, weight_meta = x.to("meta"), weight.to("meta")
    with torch.no_grad(), LiveTensorBytes(conv_workspace=True) as live:
        torch.nn.functional.conv3d(x_meta, weight_meta, padding=1)
    return x, weight, live.peak


def _conv_call(state):
    x, weight, traced = state
    base = memory.resident_bytes()
    with torch.no_grad():
        torch.nn.functional.conv3d(x, weight, padding=1)
    return traced, base


def test_meta_copy_keeps_the_settings_and_leaves_the_model_alone():
    model = bench_memory.build("opensora", quick=True, frames=9, size=64)
    model.enable_tiling(**QUICK_TILES)
    copy = meta_copy(model)
    assert copy.use_tiling and copy.tile_sample_min_height == 32
    assert copy.tile_sample_stride_width == model.tile_sample_stride_width
    assert all(p.is_meta for p in copy.parameters()) and not any(p.is_meta for p in model.parameters())


def test_meta_copy_keeps_every_form_of_tile_offload_device(tmp_path):
    """The estimate's meta copy carries `tile_offload_device` in each form it takes, so the traced run keeps step
    boundaries where the real run would (a folder given as a `Path` was once left behind)."""
    model = bench_memory.build("odvae", quick=True, frames=5, size=64)
    for value in (None, torch.device("cpu"), "cpu", "disk", "auto", str(tmp_path), tmp_path):
        model.tile_offload_device = value
        assert meta_copy(model).tile_offload_device == value
    model.enable_tiling(32, 32, exact=True)
    tiled = {}
    for value in (None, tmp_path):
        model.tile_offload_device = value
        tiled[value] = memory._traced_peak(meta_copy(model), (5, 64, 64))  # the estimate's tiled figure
    assert tiled[tmp_path] < 0.5 * tiled[None]  # 4.0 MB against 8.5 MB: the step boundaries are in files
    assert list(tmp_path.iterdir()) == []  # a traced spill writes no file


def test_auto_tiling_follows_the_estimate(monkeypatch):
    model = bench_memory.build("odvae", quick=True, frames=9, size=64)
    estimate = estimate_memory(model, (9, 64, 64), torch.device("cpu"))
    monkeypatch.setattr("diffusers_videovae.memory.available_memory_bytes", lambda device: 10 * estimate.untiled)
    assert choose_tiling(model, "auto", (9, 64, 64), torch.device("cpu")).startswith("off")
    monkeypatch.setattr("diffusers_videovae.memory.available_memory_bytes", lambda device: estimate.untiled)
    assert choose_tiling(model, "auto", (9, 64, 64), torch.device("cpu")).startswith("on")


@pytest.mark.parametrize("fits", [True, False], ids=["fits", "one_byte_over"])
def test_auto_tiling_takes_the_largest_tile_whose_traced_estimate_fits(monkeypatch, fits):
    """Each candidate tile is traced at its size (no extrapolation from the default tile): the 128 px tile is kept
    exactly when its own traced peak fits the headroom, else the tile is halved again."""
    model = bench_memory.build("odvae", quick=True, frames=9, size=256)
    shape, cpu = (9, 256, 256), torch.device("cpu")
    needs = memory._tiled_peaks(model, shape, cpu)(128)
    available = int(needs / memory.MEMORY_HEADROOM) + (2 if fits else -2)
    monkeypatch.setattr("diffusers_videovae.memory.available_memory_bytes", lambda device: available)
    choice = choose_tiling(model, "auto", shape, cpu)
    assert f"{128 if fits else 64} px tiles" in choice, choice
    assert model.use_tiling and model.tile_sample_min_height == (128 if fits else 64)


# Small configs whose traced tensors are a real part of the peak (> 50 MiB beside the ~0.4 GiB interpreter).
MEASURED_CLIPS = {
    "ivvae": (17, 128),
    "odvae": (17, 128),
    "opensora": (17, 384),
    "reducio": (16, 64),
    "cascadev": (8, 128),
}


@pytest.mark.parametrize("name", list(MEASURED_CLIPS))
def test_estimate_is_within_30_percent_of_the_measured_peak_rss(name):
    """A fresh process (benchmarks/bench_memory.py's set-up): resident + traced vs its peak RSS during the run."""
    frames, size = MEASURED_CLIPS[name]
    outcome = measure(
        bench_memory.setup,
        bench_memory.call,
        threads=1,
        name=name,
        quick=True,
        frames=frames,
        size=size,
        tiled=False,
        target="cpu",
    )
    assert "error" not in outcome, outcome.get("error")
    estimate = outcome["result"]["resident"] + outcome["result"]["traced"]
    assert outcome["result"]["traced"] > 50 * MiB  # the activations are a real part of the peak
    assert 0.7 < estimate / outcome["peak_bytes"] < 1.3


# --- available memory under a container's cgroup limit -------------------------------------------------------------

HOST_AVAILABLE = 64 * GiB  # what psutil reports (the host's /proc/meminfo) in every case below
V1_NO_LIMIT = "9223372036854771712"  # what cgroup v1 writes for "no limit"
# `/proc/self/cgroup`, the files of the fake tree (relative to its root) and the headroom they give.
CGROUP_TREES = {
    "v2_limited": ("0::/job.slice/run\n", {"job.slice/run/memory.max": 8 * GiB, "job.slice/run/memory.current": 3 * GiB}, 5 * GiB),
    "v2_inactive_file_is_reclaimable": (
        "0::/\n",
        {"memory.max": 8 * GiB, "memory.current": 7 * GiB, "memory.stat": f"anon 1\ninactive_file {2 * GiB}\nfile 9\n"},
        3 * GiB,
    ),
    "v2_tighter_parent": (
        "0::/job.slice/run\n",
        {
            "job.slice/memory.max": 8 * GiB, "job.slice/memory.current": 7 * GiB,
            "job.slice/run/memory.max": "max", "job.slice/run/memory.current": 5 * GiB,
        },
        1 * GiB,
    ),
    "v2_max": ("0::/job\n", {"job/memory.max": "max", "job/memory.current": 3 * GiB}, HOST_AVAILABLE),
    "v2_over_its_limit": ("0::/\n", {"memory.max": 8 * GiB, "memory.current": 9 * GiB}, 0),
    "v1_limited": (
        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        {"memory/docker/abc/memory.limit_in_bytes": 8 * GiB, "memory/docker/abc/memory.usage_in_bytes": 3 * GiB},
        5 * GiB,
    ),
    "v1_container_root": (  # the host's path for this cgroup does not exist in the container: its root is the limit
        "4:memory:/docker/abc\n",
        {"memory/memory.limit_in_bytes": 8 * GiB, "memory/memory.usage_in_bytes": 3 * GiB, "memory/memory.stat": f"total_inactive_file {GiB}\n"},
        6 * GiB,
    ),
    "v1_unlimited": (
        "4:memory:/docker/abc\n",
        {"memory/docker/abc/memory.limit_in_bytes": V1_NO_LIMIT, "memory/docker/abc/memory.usage_in_bytes": 3 * GiB},
        HOST_AVAILABLE,
    ),
    "v2_current_missing": ("0::/\n", {"memory.max": 8 * GiB}, HOST_AVAILABLE),
    "v1_usage_missing": ("4:memory:/\n", {"memory/memory.limit_in_bytes": 8 * GiB}, HOST_AVAILABLE),
    "v2_limit_unreadable": ("0::/\n", {"memory.max": "garbage", "memory.current": 3 * GiB}, HOST_AVAILABLE),
    "no_proc_self_cgroup": (None, {"memory.max": 8 * GiB, "memory.current": 3 * GiB}, HOST_AVAILABLE),
}  # fmt: skip


def _fake_cgroups(monkeypatch, tmp_path: Path, membership: str | None, files: dict, host: int = HOST_AVAILABLE):
    """Points `memory` at a cgroup tree under `tmp_path` and psutil at `host` bytes available."""
    root = tmp_path / "sys_fs_cgroup"
    root.mkdir(parents=True)
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{content}\n")
    if membership is not None:
        (tmp_path / "proc_self_cgroup").write_text(membership)
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    monkeypatch.setattr(memory, "PROC_SELF_CGROUP", tmp_path / "proc_self_cgroup")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=host, total=host))


@pytest.mark.parametrize("case", list(CGROUP_TREES))
def test_available_memory_is_the_smaller_of_the_hosts_and_the_cgroups_headroom(monkeypatch, tmp_path, case):
    membership, files, expected = CGROUP_TREES[case]
    _fake_cgroups(monkeypatch, tmp_path, membership, files)
    assert memory.available_memory_bytes() == expected
    assert memory.available_memory_bytes(torch.device("cpu")) == expected
    assert memory.cgroup_memory_headroom() == (None if expected == HOST_AVAILABLE else expected)


def test_a_cgroup_limit_above_what_the_host_has_free_leaves_the_hosts_figure(monkeypatch, tmp_path):
    membership, files, _ = CGROUP_TREES["v2_limited"]
    _fake_cgroups(monkeypatch, tmp_path, membership, files, host=2 * GiB)
    assert memory.cgroup_memory_headroom() == 5 * GiB and memory.available_memory_bytes() == 2 * GiB


def test_exact_tiles_auto_offload_spills_what_the_container_cannot_hold(monkeypatch, tmp_path):
    """A 2 GiB step boundary where the temp folder is a RAM disk (else the CPU spills it anyway): a quarter of the
    host's 64 GiB holds it in memory, a quarter of the cgroup's 5 GiB does not."""
    like, numel = torch.zeros(1), 2 * GiB // 4
    monkeypatch.setattr(_tiling, "_ram_disk", lambda folder: "tmpfs")
    _fake_cgroups(monkeypatch, tmp_path, *CGROUP_TREES["v2_max"][:2])
    assert _tiling._boundary_place("auto", like, numel) is None
    _fake_cgroups(monkeypatch, tmp_path / "limited", *CGROUP_TREES["v2_limited"][:2])
    assert isinstance(_tiling._boundary_place("auto", like, numel), Path)


def test_auto_tiling_plans_for_the_containers_limit(monkeypatch, tmp_path):
    """`--tiling auto` / `videovae info` on a host with plenty free, in a container whose limit the clip does not fit."""
    model = bench_memory.build("odvae", quick=True, frames=9, size=64)
    untiled = estimate_memory(model, (9, 64, 64), torch.device("cpu")).untiled
    membership, limit = "0::/\n", 1024 * untiled
    _fake_cgroups(
        monkeypatch, tmp_path, membership, {"memory.max": limit, "memory.current": limit - untiled}, 10 * limit
    )
    assert estimate_memory(model, (9, 64, 64), torch.device("cpu")).available == untiled
    assert choose_tiling(model, "auto", (9, 64, 64), torch.device("cpu")).startswith("on")
