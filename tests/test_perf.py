"""The analytic NPU model against hand-computed cases, and its invariants.

Hand cases use the mid preset: a 16x32 MAC array (512 MACs/cycle), 16 DRAM bytes/cycle and 32 SRAM
bytes/cycle. Every weighted layer also stages 24 B of per-channel parameters (bias, multiplier, shift)
with its weights. A tile's compute takes at least its SRAM traffic / 32: input + weights + parameters
(+ table lookups) read once, output written once (the int32 accumulators stay in the array).
"""

from __future__ import annotations

import numpy as np
import pytest

from tvm_npu.perf import layer_cost, layer_roofline, pipeline, roofline
from tvm_npu.tiling import Geometry, Tiles, footprint
from tvm_npu.plan import choose_tiles
from tvm_npu.target import PRESETS, resolve_target

MID = PRESETS["mid"]


def test_single_1x1_conv_one_tile():
    g = Geometry("conv2d", 1, 32, 8, 8, 32, 8, 8)
    t = Tiles(8, 32, "weights")
    # One tile, nothing to overlap: weights (32*(32+24) B) / 16, then input 2048/16, compute, output 2048/16.
    # array = ceil(32/32 channels) * ceil(64 pixels / 16 rows) * 32 taps = 128 cycles; but the tile moves
    # 2048 + 1024 + 768 B of operands and writes 2048 B: 5888 / 32 = 184 SRAM cycles
    assert footprint(g, t) == {"input": 2048, "weights": 1024, "params": 768, "acc": 8192, "output": 2048}
    cost = layer_cost(g, t, MID)
    assert cost.cycles == 1792 / 16 + 128 + 184 + 128
    assert cost.compute_cycles == 184 and cost.dram_bytes == 2048 + 1792 + 2048
    assert cost.sram_traffic == 5888
    assert roofline(g.compulsory_bytes, g.macs, MID) == (2048 + 1792 + 2048) / 16  # DRAM-bound: 368 > 128


def test_1x1_conv_double_buffered_row_tiles_are_sram_bound():
    g = Geometry("conv2d", 1, 32, 8, 8, 32, 8, 8)
    cost = layer_cost(g, Tiles(2, 32, "weights"), MID)
    # 4 row tiles of 512 B in (32 cycles), 512 B out (32); the array needs 32 cycles per tile, the SRAM
    # (512 input + 1792 weights and parameters + 512 output) / 32 = 88:
    # in + max(c, in) + 2 * max(c, in + out) + max(c, out) + out, after the weights (1792 / 16)
    assert cost.cycles == 112 + 32 + 4 * 88 + 32
    assert cost.cycles > roofline(g.compulsory_bytes, g.macs, MID)
    assert footprint(g, Tiles(2, 32, "weights"))["input"] == 2 * 32 * 2 * 8  # two slots


def test_single_buffered_tiles_take_half_the_streamed_sram_and_serialise_dma_and_compute():
    g = Geometry("conv2d", 1, 32, 8, 8, 32, 8, 8)
    double, single = Tiles(2, 32, "weights"), Tiles(2, 32, "weights", double_buffer=False)
    assert footprint(g, single) == footprint(g, double) | {"input": 32 * 2 * 8, "output": 32 * 2 * 8}
    cost = layer_cost(g, single, MID)
    # the same 4 tiles as above, one after the other: in (32) + compute (88) + out (32) each, after the weights
    assert cost.cycles == 112 + 4 * (32 + 88 + 32)
    assert cost.dram_bytes == layer_cost(g, double, MID).dram_bytes
    # the host knobs are the host's business: the NPU model ignores them
    assert layer_cost(g, Tiles(2, 32, "weights", parallel=False, vectorize=False), MID) == layer_cost(g, double, MID)


def test_depthwise_conv():
    g = Geometry("conv2d", 1, 32, 8, 8, 32, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), groups=32)
    assert g.depthwise and g.taps == 9
    t = Tiles(8, 32, "weights")
    # input tile: 32 channels x 10 padded rows x 10 padded columns in SRAM, 8x8 real bytes per channel from DRAM
    assert footprint(g, t)["input"] == 32 * 10 * 10
    cost = layer_cost(g, t, MID)
    assert cost.input_read == 32 * 8 * 8 and cost.weight_read == 32 * (9 + 24)
    # array: ceil(32/32) * ceil(64/16) * 9 taps = 36; SRAM: (3200 + 32 * 33 + 2048) / 32 = 197
    compute = (3200 + 32 * 33 + 2048) / 32
    assert cost.compute_cycles == compute == 197
    assert cost.cycles == 32 * 33 / 16 + 2048 / 16 + compute + 2048 / 16


def test_dense_streams_weight_tiles():
    g = Geometry("dense", 1, 256, 1, 1, 64, 1, 1)
    t = Tiles(1, 32, "rows")
    assert sum(footprint(g, t).values()) == 256 + 2 * 32 * 256 + 2 * 32 * 24 + 4 * 32 + 2 * 32
    cost = layer_cost(g, t, MID)
    w_tile = 32 * (256 + 24) / 16  # 560 cycles per weight tile
    # array: one pixel row of 16 used (dense at batch 1 fills 1/16 of it), 256 taps; SRAM per tile:
    # (256 input + 32 * 280 weights and parameters + 32 output) / 32 = 289
    compute = max(1 * 1 * 256, (256 + 32 * 280 + 32) / 32)
    assert compute == 289
    assert cost.cycles == 256 / 16 + w_tile + max(compute, w_tile) + max(compute, 32 / 16) + 32 / 16
    assert cost.dram_bytes == g.compulsory_bytes == 256 + 64 * 280 + 64


def test_narrow_channel_tiles_fold_pixels_onto_the_spare_columns():
    # The ResNet-50 stem: a 4-channel tile uses 4 of 32 columns unless the 8 column groups take
    # 8 pixel groups: ceil(4/32) * ceil(112 * 112 / (16 * 8)) * 147 taps per tile, 16 tiles = the MAC bound.
    g = Geometry("conv2d", 1, 3, 224, 224, 64, 112, 112, (7, 7), (2, 2), (1, 1), (3, 3, 3, 3))
    cost = layer_cost(g, Tiles(112, 4, "rows"), MID)
    assert cost.compute_cycles == 16 * 98 * 147 == g.macs / MID.macs_per_cycle


def test_elementwise_add_streams_two_inputs():
    g = Geometry("elementwise", 1, 1, 64, 64, 1, 64, 64, operands=2)  # add of two 1x64x8x8 tensors
    t = Tiles(16, 1, "weights")
    assert footprint(g, t) == {"input": 2 * 2 * 16 * 64, "output": 2 * 16 * 64}
    cost = layer_cost(g, t, MID)
    # 4 tiles: 2048 B in (128 cycles), 1024 B out (64); vector unit ceil(1024 / 32) = 32, SRAM 3072 / 32 = 96
    assert cost.compute_cycles == 4 * 96
    # in + max(c, in) + 2 * max(c, in + out) + max(c, out) + out
    assert cost.cycles == 128 + max(96, 128) + 2 * max(96, 128 + 64) + max(96, 64) + 64
    assert cost.dram_bytes == g.compulsory_bytes == 3 * 4096
    assert layer_roofline(g, MID) == 3 * 4096 / 16


def test_lookup_table_is_loaded_once():
    g = Geometry("lut", 1, 1, 8, 32, 1, 8, 32, table_bytes=256)
    t = Tiles(8, 1, "weights")
    assert footprint(g, t) == {"input": 256, "output": 256, "table": 256}
    cost = layer_cost(g, t, MID)
    # table 256 / 16, input 256 / 16, compute max(ceil(256 / 32), (256 in + 256 lookups + 256 out) / 32), output
    assert cost.cycles == 16 + 16 + 24 + 16 and cost.weight_read == 256


def test_global_pool_tiles_channels():
    g = Geometry("pool", 1, 64, 7, 7, 64, 1, 1, (7, 7), groups=64)
    t = Tiles(1, 32, "rows")  # two channel tiles, double-buffered
    assert footprint(g, t) == {"input": 2 * 32 * 49, "acc": 4 * 32, "output": 2 * 32}
    cost = layer_cost(g, t, MID)
    # per tile 1568 B in (98 cycles), 32 B out (2); array ceil(32/32) * ceil(1/16) * 49 = 49, SRAM (1568 + 32) / 32 = 50
    assert cost.cycles == 98 + max(50, 98) + max(50, 2) + 2
    assert g.macs == 0 and layer_roofline(g, MID) == max((64 * 49 + 64) / 16, 64 * 49 / 512)


def test_mac_depth_reduces_input_channels_and_leaves_depthwise_one_lane():
    """On the Ethos-U twins each array cell reduces 8 input channels per cycle (Vela's IFM micro-block
    depth): a 1x1 conv over 32 channels takes 4 cycles per kernel position, a depthwise conv still 1 per tap."""
    u65 = PRESETS["ethos-u65-512"]
    assert (u65.mac_rows, u65.mac_cols, u65.mac_depth, u65.macs_per_cycle) == (4, 16, 8, 512)
    wide = resolve_target("npu/ethos-u65-512", sram_bytes_per_cycle=10**6)  # the array alone
    conv = Geometry("conv2d", 1, 32, 8, 8, 32, 8, 8)
    dw = Geometry("conv2d", 1, 32, 8, 8, 32, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), groups=32)
    t = Tiles(8, 32, "weights")
    # conv: ceil(32/16) * ceil(64/4) * ceil(32/8) * 1 = 128 cycles = its MACs / 512: the array is full
    assert layer_cost(conv, t, wide).compute_cycles == 2 * 16 * 4 == conv.macs / 512
    # depthwise: ceil(32/16) * ceil(64/4) * ceil(1/8) * 9 = 288 cycles, 1/8 of the array
    assert layer_cost(dw, t, wide).compute_cycles == 2 * 16 * 9 == 8 * dw.macs / 512


def test_weights_from_their_own_memory_and_load_latency():
    """The ethos-u55-256 twin reads activations from system SRAM (8 B/cycle, latency 32) and weights from
    flash (1 B/cycle, latency 64); each DMA load pays its memory's latency once."""
    u55 = PRESETS["ethos-u55-256"]
    g = Geometry("conv2d", 1, 32, 8, 8, 32, 8, 8)
    cost = layer_cost(g, Tiles(8, 32, "weights"), u55)
    weights, x, out = 32 * (32 + 24), 2048, 2048
    assert cost.cycles == (64 + weights / 1) + (32 + x / 8) + cost.compute_cycles + out / 8
    bound = layer_roofline(g, u55)
    assert bound == (x + out) / 8 + weights / 1 <= cost.cycles


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
    Geometry("pool", 1, 64, 112, 112, 64, 56, 56, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), groups=64, label="max pool"),
    Geometry("pool", 1, 2048, 7, 7, 2048, 1, 1, (7, 7), groups=2048, label="global pool"),
    Geometry("elementwise", 1, 1, 256, 56 * 56, 1, 256, 56 * 56, operands=2, label="add 256x56x56"),
    Geometry("lut", 1, 1, 96, 28 * 28, 1, 96, 28 * 28, table_bytes=256, label="sigmoid 96x28x28"),
    Geometry("concat", 1, 1, 28, 512 * 28, 1, 28, 512 * 28, label="concat -> 512x28x28"),
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
        assert cost.cycles >= layer_roofline(g, config) - 1e-9
        assert cost.dram_bytes >= g.compulsory_bytes
        if traffic is not None:
            assert cost.dram_bytes <= traffic
        traffic = cost.dram_bytes
    assert traffic is not None


@pytest.mark.parametrize("twin", ["ethos-u55-256", "ethos-u65-512"])
def test_twins_cost_every_geometry_at_or_above_the_roofline(twin):
    """Weights in their own memory, load latency and mac_depth keep cycles >= the bound on the Vela twins."""
    config = PRESETS[twin]
    for g in GEOMETRIES:
        tiles, _ = choose_tiles(g, config)
        if tiles is not None:
            assert layer_cost(g, tiles, config).cycles >= layer_roofline(g, config) - 1e-9, g.describe()
