"""The analytic NPU model against hand-computed cases, and its invariants.

Hand cases use the mid preset: a 16x32 MAC array (512 MACs/cycle) and 16 DRAM bytes/cycle.
Every tiled layer also stages 24 B of per-channel parameters (bias, multiplier, shift) with its weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from tvm_npu.perf import Geometry, Tiles, footprint, layer_cost, pipeline, roofline
from tvm_npu.plan import choose_tiles
from tvm_npu.target import PRESETS, resolve_target

MID = PRESETS["mid"]


def test_single_1x1_conv_one_tile():
    g = Geometry("conv2d", 1, 32, 8, 8, 32, 8, 8)
    t = Tiles(8, 32, "weights")
    # One tile, nothing to overlap: weights (32*(32+24) B) / 16, then input 2048/16, compute, output 2048/16.
    # compute = ceil(32/32 channels) * ceil(64 pixels / 16 rows) * 32 taps = 128 cycles
    assert footprint(g, t) == {"input": 2048, "weights": 1024, "params": 768, "acc": 8192, "output": 2048}
    cost = layer_cost(g, t, MID)
    assert cost.cycles == 1792 / 16 + 128 + 128 + 128
    assert cost.compute_cycles == 128 and cost.dram_bytes == 2048 + 1792 + 2048
    assert roofline(g.compulsory_bytes, g.macs, MID) == (2048 + 1792 + 2048) / 16  # DRAM-bound: 368 > 128


def test_1x1_conv_double_buffered_row_tiles_reach_the_dram_bound():
    g = Geometry("conv2d", 1, 32, 8, 8, 32, 8, 8)
    cost = layer_cost(g, Tiles(2, 32, "weights"), MID)
    # 4 row tiles of 512 B in, 32 cycles compute, 512 B out: in + max(c, in) + 2*max(c, in+out) + max(c, out) + out
    assert cost.cycles == 112 + 32 + 32 + 64 + 64 + 32 + 32
    assert cost.cycles == roofline(g.compulsory_bytes, g.macs, MID)
    assert footprint(g, Tiles(2, 32, "weights"))["input"] == 2 * 32 * 2 * 8  # two slots


def test_depthwise_conv():
    g = Geometry("conv2d", 1, 32, 8, 8, 32, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), groups=32)
    assert g.depthwise and g.taps == 9
    t = Tiles(8, 32, "weights")
    # input tile: 32 channels x 10 padded rows x 10 padded columns in SRAM, 8x8 real bytes per channel from DRAM
    assert footprint(g, t)["input"] == 32 * 10 * 10
    cost = layer_cost(g, t, MID)
    assert cost.input_read == 32 * 8 * 8 and cost.weight_read == 32 * (9 + 24)
    compute = 1 * 4 * 9  # ceil(32/32) * ceil(64/16) * 9 taps
    assert cost.compute_cycles == compute
    assert cost.cycles == 32 * 33 / 16 + 2048 / 16 + compute + 2048 / 16


def test_dense_streams_weight_tiles():
    g = Geometry("dense", 1, 256, 1, 1, 64, 1, 1)
    t = Tiles(1, 32, "rows")
    assert sum(footprint(g, t).values()) == 256 + 2 * 32 * 256 + 2 * 32 * 24 + 4 * 32 + 2 * 32
    cost = layer_cost(g, t, MID)
    w_tile = 32 * (256 + 24) / 16  # 560 cycles per weight tile
    compute = 1 * 1 * 256  # one pixel row of 16 used: dense at batch 1 fills 1/16 of the array
    assert cost.cycles == 256 / 16 + w_tile + max(compute, w_tile) + max(compute, 32 / 16) + 32 / 16
    assert cost.dram_bytes == g.compulsory_bytes == 256 + 64 * 280 + 64


def test_pipeline_matches_a_step_by_step_simulation():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = int(rng.integers(1, 8))
        dma_in, compute, dma_out = (rng.uniform(0, 100, m) for _ in range(3))
        # simulate: step i computes tile i while the DMA loads tile i+1 and stores tile i-1
        time = dma_in[0]
        for i in range(m):
            time += max(compute[i], (dma_in[i + 1] if i + 1 < m else 0) + (dma_out[i - 1] if i else 0))
        time += dma_out[-1]
        assert pipeline(dma_in, compute, dma_out) == pytest.approx(time)


GEOMETRIES = [
    Geometry("conv2d", 1, 64, 56, 56, 64, 56, 56, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    Geometry("conv2d", 1, 512, 7, 7, 512, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    Geometry("conv2d", 1, 256, 56, 56, 64, 56, 56),
    Geometry("conv2d", 1, 1024, 14, 14, 2048, 7, 7, (1, 1), (2, 2)),
    Geometry("conv2d", 1, 3, 224, 224, 64, 112, 112, (7, 7), (2, 2), (1, 1), (3, 3, 3, 3)),
    Geometry("conv2d", 1, 96, 28, 28, 96, 14, 14, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), groups=96),
    Geometry("dense", 1, 2048, 1, 1, 1000, 1, 1),
]


@pytest.mark.parametrize("g", GEOMETRIES, ids=lambda g: g.describe())
def test_invariants_cycles_above_roofline_and_more_sram_never_more_traffic(g):
    traffic = None
    for kib in (64, 128, 256, 512, 1024, 4096):
        config = resolve_target("npu/mid", sram_kib=kib)
        tiles, smallest = choose_tiles(g, config)
        if tiles is None:
            assert smallest > config.sram_bytes
            continue
        assert sum(footprint(g, tiles).values()) <= config.sram_bytes
        cost = layer_cost(g, tiles, config)
        assert cost.cycles >= roofline(g.compulsory_bytes, g.macs, config) - 1e-9
        assert cost.dram_bytes >= g.compulsory_bytes
        if traffic is not None:
            assert cost.dram_bytes <= traffic
        traffic = cost.dram_bytes
    assert traffic is not None
