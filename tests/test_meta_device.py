"""Every model runs on the `meta` device: no forward reads values or makes a tensor on the CPU.

With parameters, buffers and inputs on `meta`, a forward that calls `.item()` or branches on a tensor's values
raises, and a `CPUWatch` records every tensor an op returns on the CPU: the places that would fail, or copy from the
host at every call, on a GPU. Every attention call must get a layout the CPU's fused kernel takes
(`AttentionLayouts`). Each model runs in float32 and float16, untiled and tiled (clips larger than the default
tiles, so the tiled path really tiles). CascadeV runs encode, preview, one DiT forward (over overlapping
frame windows) and the SVD decode, not a whole `decode`: diffusers' schedulers cannot run on `meta` (their
`set_timesteps` copies sigmas back to the CPU, and `step` looks the step index up from tensor values).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_roofline import MODELS, _model_class  # noqa: E402

# Frames of the clip per model (the smallest the model takes past one temporal group); tiled runs take a clip of
# 2x2 tiles of 64 px (meta runs cost Python time per op: small tiles keep the test short).
FRAMES = {"ivvae": 9, "odvae": 9, "opensora": 9, "reducio": 16, "cascadev": 6}
TILES = dict(tile_sample_min_height=64, tile_sample_min_width=64)  # each model's own stride for that size
DTYPES = [torch.float32, torch.float16]


class CPUWatch(TorchDispatchMode):
    """Records where any op returns a tensor on the CPU while it is active (`made`: op name and caller)."""

    def __init__(self):
        super().__init__()
        self.made: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tree_flatten(out)[0]):
            caller = next(
                (
                    f"{f.filename}:{f.lineno}"
                    for f in reversed(traceback.extract_stack()[:-1])
                    if "/torch/" not in f.filename
                ),
                "?",
            )
            self.made.append(f"{func} at {caller}")
        return out


class AttentionLayouts(TorchFunctionMode):
    """Records every `F.scaled_dot_product_attention` call and those whose query, key or value a CPU could not give
    its fused kernel (4D, channels contiguous): PyTorch then builds the whole attention matrix per head."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.unfused: list[tuple] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls += 1
            if any(t.dim() != 4 or t.stride(-1) != 1 for t in args[:3]):
                self.unfused.append(tuple((tuple(t.shape), t.stride()) for t in args[:3]))
        return func(*args, **(kwargs or {}))


def meta_model(name: str, dtype: torch.dtype, tiled: bool) -> torch.nn.Module:
    """The tiny model, built on the CPU and moved with `.to("meta")` (as a user's model is moved to a GPU)."""
    torch.manual_seed(0)
    model = _model_class(name)(**MODELS[name].tiny).eval().to("meta", dtype)
    if tiled:
        model.enable_tiling(**TILES)
    else:
        model.disable_tiling()
    return model


def count_calls(model: torch.nn.Module, method: str) -> list[int]:
    """A list that grows by one at every call of `model.<method>` (to see that the tiled path is taken)."""
    calls: list[int] = []
    original = getattr(model, method)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    setattr(model, method, counted)
    return calls


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float16"])
@pytest.mark.parametrize("name", ["ivvae", "odvae", "opensora", "reducio"])
@torch.no_grad()
def test_autoencoder_runs_on_meta_without_cpu_tensors(name, dtype, tiled):
    model = meta_model(name, dtype, tiled)
    tiled_calls = [count_calls(model, "tiled_encode"), count_calls(model, "tiled_decode")]
    side = 96 if tiled else 64
    x = torch.zeros(1, 3, FRAMES[name], side, side, device="meta", dtype=dtype)
    with CPUWatch() as watch, AttentionLayouts() as attention:
        reconstruction, posterior = model.autoencode(x)
    assert watch.made == []
    assert attention.calls > 0 and attention.unfused == []
    z = posterior.mode()
    spatial = model.input_rule.spatial_multiple
    assert z.device.type == "meta" and z.dtype == dtype
    assert tuple(z.shape[-2:]) == (side // spatial, side // spatial)
    assert reconstruction.device.type == "meta" and reconstruction.dtype == dtype
    assert tuple(reconstruction.shape) == tuple(x.shape)
    assert [bool(calls) for calls in tiled_calls] == [tiled, tiled]


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float16"])
@torch.no_grad()
def test_cascadev_stages_run_on_meta_without_cpu_tensors(dtype, tiled):
    model = meta_model("cascadev", dtype, tiled)
    model.set_progress_bar_config(disable=True)
    svd_decoder_calls = count_calls(model.svd_vae, "decode")
    frames, config, side = FRAMES["cascadev"], model.config, 96
    x = torch.zeros(1, 3, frames, side, side, device="meta", dtype=dtype)
    svd_side = side // 8
    with CPUWatch() as watch, AttentionLayouts() as attention:
        z = model.encode(x).latent_dist.mode()
        preview = model.preview(z)
        window = config.transformer_sample_size
        hidden = torch.zeros(frames, model.transformer.config.in_channels, window, window, device="meta", dtype=dtype)
        eps = model.transformer.forward_windows(hidden, torch.full((frames,), 500.0, device="meta"))
        video = model.decode_svd_latents(torch.zeros(1, 4, frames, svd_side, svd_side, device="meta", dtype=dtype))
    assert watch.made == []
    assert attention.calls > 0 and attention.unfused == []
    assert z.device.type == "meta" and tuple(z.shape) == (1, 16, frames, side // 32, side // 32)
    assert preview.device.type == "meta" and tuple(preview.shape) == (1, 3, frames, side // 4, side // 4)
    assert eps.device.type == "meta" and tuple(eps.shape) == (frames, 4, window, window)
    assert video.device.type == "meta" and tuple(video.shape) == tuple(x.shape)
    chunks = -(-frames // config.decode_chunk_size)
    assert (len(svd_decoder_calls) > chunks) == tiled


def test_the_attention_watch_sees_a_layout_the_fused_kernel_refuses():
    tokens = torch.zeros(1, 1, 8, 4, device="meta")
    with AttentionLayouts() as attention:
        F.scaled_dot_product_attention(tokens, tokens, tokens)
        F.scaled_dot_product_attention(tokens, tokens.transpose(-1, -2).contiguous().transpose(-1, -2), tokens)
    assert attention.calls == 2 and len(attention.unfused) == 1


def test_the_watch_sees_a_cpu_tensor_made_in_a_forward():
    class MakesAHostTensor(torch.nn.Module):
        def forward(self, x):
            return x * torch.tensor(2.0)  # a host scalar: allowed by meta and CUDA alike, a copy at every call

    with CPUWatch() as watch:
        MakesAHostTensor()(torch.zeros(2, device="meta"))
    assert len(watch.made) == 1 and "test_meta_device.py" in watch.made[0]
