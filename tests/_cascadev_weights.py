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
"""The portable hash that stands in for the full-size StableWurst effnet / previewer weights in the fixtures.

`weights_<name>.json` lists, in state-dict order, every tensor's key, shape, offset, scale and float64 checksums.
Element j of entry k is `float32(offset + scale * (2u - 1))` with
`u = (splitmix64(seed * 0x9E3779B97F4A7C15 + k * 0xD1B54A32D192ED03 + j) >> 11) * 2**-53` (uint64 arithmetic);
integer buffers (`num_batches_tracked`) are 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_INDEX = np.uint64(0xD1B54A32D192ED03)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 values (wrap-around arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hashed_tensor(seed: int, index: int, shape: list[int], offset: float, scale: float) -> torch.Tensor:
    count = int(np.prod(shape)) if shape else 1
    with np.errstate(over="ignore"):
        base = np.uint64(seed) * _GOLDEN + np.uint64(index) * _INDEX
        u = (splitmix64(base + np.arange(count, dtype=np.uint64)) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    values = (offset + scale * (2.0 * u - 1.0)).astype(np.float32)
    return torch.from_numpy(values.reshape(shape))


def hashed_state_dict(listing: str | Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """The state dict described by a `weights_*.json` listing; checks every float tensor's sum and sum of squares."""
    meta = json.loads(Path(listing).read_text())
    state: dict[str, torch.Tensor] = {}
    for entry in meta["tensors"]:
        if entry["dtype"] != "float32":
            state[entry["key"]] = torch.zeros(entry["shape"], dtype=getattr(torch, entry["dtype"]))
            continue
        tensor = hashed_tensor(meta["seed"], entry["index"], entry["shape"], entry["offset"], entry["scale"])
        if verify:
            values = tensor.double()
            total, squares = float(values.sum()), float((values * values).sum())
            for name, got in (("sum", total), ("sumsq", squares)):
                want = entry[name]
                if abs(got - want) > 1e-9 * max(1.0, abs(want)) + 1e-9:
                    raise AssertionError(f"{entry['key']}: {name} {got!r} != {want!r} (hash generator is wrong)")
        state[entry["key"]] = tensor
    return state
