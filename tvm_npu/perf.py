"""The analytic NPU performance model: per tile -> per layer -> per model.

Entry point: `estimate(layers, config) -> ModelEstimate`; the planner calls `layer_cost`
on every candidate tiling. The formulas are documented in README ("NPU performance model");
this module is their only implementation.

A tiled layer (conv2d, dense) is a loop over tiles. Per tile i:

    compute_i = ceil(channels_i / mac_cols) * ceil(rows_i * out_w / mac_rows) * taps   cycles
    in_i      = bytes DMA'd in for the tile (input rows with halo, or a weight tile) / dram_bytes_per_cycle
    out_i     = output tile bytes / dram_bytes_per_cycle

The outer tile loop loads its stationary operand (the weight tile, or the input rows) once
per outer step, exposed; the inner loop is double-buffered, so tile i+1's DMA-in and tile
i-1's DMA-out (one shared DMA engine) overlap tile i's compute:

    inner = in_1 + sum_i max(compute_i, in_{i+1} + out_{i-1}) + out_m
    layer = batch * sum over outer steps (stationary / dram_bytes_per_cycle + inner)

Roofline bound = max(compulsory bytes / dram_bytes_per_cycle, MACs / macs_per_cycle), where
compulsory bytes = input + weights (+ per-channel parameters) + output, each moved once.
Since every max() above is at least its DMA term and at least its compute term, cycles >=
bound always holds.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from .target import NpuConfig

# Per output channel, the kernels stage bias, multiplier and shift (three int64) with the weights.
PARAM_BYTES_PER_CHANNEL = 24
ACC_BYTES = 4  # int32 accumulator


@dataclass(frozen=True)
class Geometry:
    """A layer as the planner and the model see it: an NCHW convolution (dense = 1x1 conv over N rows)."""

    kind: str  # "conv2d" | "dense"
    batch: int
    in_channels: int
    in_h: int
    in_w: int
    out_channels: int
    out_h: int
    out_w: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1
    in_bytes: int = 1
    out_bytes: int = 1

    @property
    def group_channels(self) -> int:
        return self.in_channels // self.groups

    @property
    def per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def taps(self) -> int:
        return self.group_channels * self.kernel[0] * self.kernel[1]

    @property
    def macs(self) -> int:
        return self.batch * self.out_channels * self.out_h * self.out_w * self.taps

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.group_channels == 1 and self.per_group == 1

    def weight_bytes(self, channels: int | None = None) -> int:
        channels = self.out_channels if channels is None else channels
        return channels * (self.taps + PARAM_BYTES_PER_CHANNEL)

    @property
    def input_bytes(self) -> int:
        """The input the layer touches at least once (a strided 1x1 conv skips rows and columns)."""
        return self.batch * self.in_channels * self._touched(0) * self._touched(1) * self.in_bytes

    def _touched(self, axis: int) -> int:
        out, k, s, d = ((self.out_h, self.out_w)[axis], self.kernel[axis], self.stride[axis], self.dilation[axis])
        start, extent = self.padding[axis], (self.in_h, self.in_w)[axis]
        return len({y * s + r * d for y in range(out) for r in range(k)} & set(range(start, start + extent)))

    @property
    def output_bytes(self) -> int:
        return self.batch * self.out_channels * self.out_h * self.out_w * self.out_bytes

    @property
    def compulsory_bytes(self) -> int:
        return self.input_bytes + self.weight_bytes() + self.output_bytes

    def rows_in(self, rows: int) -> int:
        """Padded input rows an output-row tile reads (with halo), as TVM compacts the tile buffer."""
        (kh, _), (sh, _), (dh, _) = self.kernel, self.stride, self.dilation
        return min((rows - 1) * sh + (kh - 1) * dh + 1, self.in_h + self.padding[0] + self.padding[2])

    @property
    def cols_in(self) -> int:
        (_, kw), (_, sw), (_, dw) = self.kernel, self.stride, self.dilation
        return (self.out_w - 1) * sw + (kw - 1) * dw + 1

    @property
    def real_cols(self) -> int:
        """Columns of the padded tile that come from DRAM (padding is generated on chip)."""
        left = self.padding[1]
        return max(0, min(self.cols_in, left + self.in_w) - left)

    def real_rows(self, first: int, rows: int) -> int:
        start = first * self.stride[0]
        top = self.padding[0]
        return max(0, min(start + self.rows_in(rows), top + self.in_h) - max(start, top))

    def tile_in_channels(self, order: str, channels: int) -> int:
        """Input channels an output-channel tile needs (all of them unless grouped and weights-outer)."""
        if self.groups == 1 or order == "rows":
            return self.in_channels
        return channels // self.per_group * self.group_channels

    def describe(self) -> str:
        if self.kind == "dense":
            return f"dense {self.in_h}x{self.in_channels} -> {self.out_channels}"
        kh, kw = self.kernel
        dw = " depthwise" if self.depthwise else f" groups {self.groups}" if self.groups > 1 else ""
        return (f"conv {kh}x{kw}/{self.stride[0]}{dw} {self.in_channels}x{self.in_h}x{self.in_w} "
                f"-> {self.out_channels}x{self.out_h}x{self.out_w}")


@dataclass(frozen=True)
class Tiles:
    """A tiling: output rows x output channels per tile, and which loop is outer.

    order "weights": channel tiles outer (the weight tile stays in SRAM while input row tiles stream);
    order "rows": row tiles outer (the input rows stay while weight tiles stream).
    """

    rows: int
    channels: int
    order: str


def footprint(g: Geometry, t: Tiles) -> dict[str, int]:
    """Planned SRAM bytes per buffer; streamed (inner-loop) buffers count twice (double buffering)."""
    x = g.tile_in_channels(t.order, t.channels) * g.rows_in(t.rows) * g.cols_in * g.in_bytes
    w, p = t.channels * g.taps, t.channels * PARAM_BYTES_PER_CHANNEL
    trips = -(-g.out_h // t.rows) if t.order == "weights" else -(-g.out_channels // t.channels)
    inner = 2 if trips > 1 else 1  # slots of a double-buffered buffer (one inner tile: nothing to overlap)
    xs, ws = (inner, 1) if t.order == "weights" else (1, inner)
    return {
        "input": xs * x,
        "weights": ws * w,
        "params": ws * p,
        "acc": ACC_BYTES * t.channels * t.rows * g.out_w,
        "output": inner * t.channels * t.rows * g.out_w * g.out_bytes,
    }


@dataclass
class LayerCost:
    cycles: float
    compute_cycles: float
    weight_read: int  # DRAM bytes
    input_read: int
    output_write: int
    tiles: int

    @property
    def dram_bytes(self) -> int:
        return self.weight_read + self.input_read + self.output_write


def pipeline(dma_in: np.ndarray, compute: np.ndarray, dma_out: np.ndarray) -> float:
    """Cycles of a double-buffered tile loop: tile i+1's load and tile i-1's store overlap tile i's compute."""
    nxt = np.append(dma_in[1:], 0.0)
    prev = np.concatenate(([0.0], dma_out[:-1]))
    return float(dma_in[0] + np.maximum(compute, nxt + prev).sum() + dma_out[-1])


def _splits(extent: int, size: int) -> list[tuple[int, int]]:
    """(first, size) of each tile of `extent` cut into `size` pieces (the last may be short)."""
    return [(s, min(size, extent - s)) for s in range(0, extent, size)]


def tile_compute_cycles(g: Geometry, channels, rows, config: NpuConfig):
    """MAC-array cycles of a tile: output channels on the array's columns, output pixels on its rows."""
    return np.ceil(np.asarray(channels) / config.mac_cols) * np.ceil(np.asarray(rows) * g.out_w / config.mac_rows) * g.taps


def layer_cost(g: Geometry, t: Tiles, config: NpuConfig) -> LayerCost:
    bw = config.dram_bytes_per_cycle
    row_tiles = _splits(g.out_h, t.rows)
    chan_tiles = Counter(size for _, size in _splits(g.out_channels, t.channels))
    cycles = compute = 0.0
    weight_read = input_read = output_write = 0
    if t.order == "weights":
        rows = np.array([r for _, r in row_tiles], float)
        real = np.array([g.real_rows(f, r) for f, r in row_tiles], float)
        for ch, count in chan_tiles.items():
            x_in = real * g.real_cols * g.tile_in_channels("weights", ch) * g.in_bytes
            c = tile_compute_cycles(g, ch, rows, config)
            out = ch * rows * g.out_w * g.out_bytes
            cycles += count * (g.weight_bytes(ch) / bw + pipeline(x_in / bw, c, out / bw))
            compute += count * float(c.sum())
            weight_read += count * g.weight_bytes(ch)
            input_read += count * int(x_in.sum())
            output_write += count * int(out.sum())
    else:
        chans = np.array([c for _, c in _splits(g.out_channels, t.channels)], float)
        w_in = chans * (g.taps + PARAM_BYTES_PER_CHANNEL)
        for (r, real), count in Counter((r, g.real_rows(f, r)) for f, r in row_tiles).items():
            x_bytes = real * g.real_cols * g.in_channels * g.in_bytes
            c = tile_compute_cycles(g, chans, r, config)
            out = chans * r * g.out_w * g.out_bytes
            cycles += count * (x_bytes / bw + pipeline(w_in / bw, c, out / bw))
            compute += count * float(c.sum())
            input_read += count * x_bytes
            weight_read += count * int(w_in.sum())
            output_write += count * int(out.sum())
    n = g.batch
    tiles = len(row_tiles) * sum(chan_tiles.values())
    return LayerCost(n * cycles, n * compute, n * weight_read, n * input_read, n * output_write, n * tiles)


@dataclass
class LayerEstimate:
    """One layer's row of the report (all byte counts are DRAM traffic unless named sram_*)."""

    name: str
    kernel: str
    placement: str  # "npu" | "cpu"
    shape: str
    tiles: str  # "16 rows x 32 ch, weights outer" or "not tiled"
    macs: int
    cycles: float
    compute_cycles: float
    weight_read: int
    activation_read: int
    activation_write: int
    compulsory_bytes: int
    roofline_cycles: float
    sram_planned: int | None
    sram_proven: int | None

    @property
    def dram_bytes(self) -> int:
        return self.weight_read + self.activation_read + self.activation_write

    def to_dict(self, config: NpuConfig) -> dict:
        peak = config.macs_per_cycle
        return asdict(self) | {
            "dram_bytes": self.dram_bytes,
            "utilization": self.macs / (self.cycles * peak) if self.cycles else 0.0,
            "array_utilization": self.macs / (self.compute_cycles * peak) if self.compute_cycles else 0.0,
            "roofline_ratio": self.cycles / self.roofline_cycles if self.roofline_cycles else 1.0,
        }


@dataclass
class ModelEstimate:
    config: NpuConfig
    layers: list[LayerEstimate] = field(default_factory=list)

    @property
    def npu_layers(self) -> list[LayerEstimate]:
        return [layer for layer in self.layers if layer.placement == "npu"]

    def summary(self) -> dict:
        npu = self.npu_layers
        cycles = sum(layer.cycles for layer in npu)
        macs = sum(layer.macs for layer in npu)
        conv = [layer for layer in npu if layer.kernel == "npu.conv2d"]
        conv_macs, conv_cycles = sum(x.macs for x in conv), sum(x.cycles for x in conv)
        peak = self.config.macs_per_cycle
        dram = sum(layer.dram_bytes for layer in npu)
        compulsory = sum(layer.compulsory_bytes for layer in npu)
        proven = [layer.sram_proven for layer in npu if layer.sram_proven is not None]
        return {
            "npu_layers": len(npu),
            "sram_fallback_layers": len(self.layers) - len(npu),  # planned, then moved to the CPU
            "tiled_layers": sum(layer.sram_planned is not None for layer in npu),
            "sram_bytes": self.config.sram_bytes,
            "sram_peak_proven": max(proven, default=0),
            "dram_weight_read": sum(x.weight_read for x in npu),
            "dram_activation_read": sum(x.activation_read for x in npu),
            "dram_activation_write": sum(x.activation_write for x in npu),
            "dram_bytes": dram,
            "compulsory_bytes": compulsory,
            "dram_over_compulsory": dram / compulsory if compulsory else 1.0,
            "macs": macs,
            "cycles": cycles,
            "roofline_cycles": sum(layer.roofline_cycles for layer in npu),
            "utilization": macs / (cycles * peak) if cycles else 0.0,
            "conv_utilization": conv_macs / (conv_cycles * peak) if conv_cycles else 0.0,
            "inferences_per_second": self.config.clock_mhz * 1e6 / cycles if cycles else math.inf,
            "clock_mhz": self.config.clock_mhz,
        }

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "layers": [layer.to_dict(self.config) for layer in self.layers]}


def roofline(compulsory_bytes: int, macs: int, config: NpuConfig) -> float:
    return max(compulsory_bytes / config.dram_bytes_per_cycle, macs / config.macs_per_cycle)


def estimate(layers, config: NpuConfig) -> ModelEstimate:
    """The model for planned layers (tvm_npu.plan.LayerPlan): tiled ones by their tiles, the others streamed."""
    result = ModelEstimate(config)
    for p in layers:
        if p.geometry is not None and p.tiles is not None and p.placement == "npu":
            g, cost = p.geometry, layer_cost(p.geometry, p.tiles, config)
            t = p.tiles
            result.layers.append(LayerEstimate(
                f"{p.row}:{p.name}", p.kernel, p.placement, g.describe(),
                f"{t.rows} rows x {t.channels} ch, {t.order} outer" + (" (tuned)" if p.tuned else ""),
                g.macs, cost.cycles, cost.compute_cycles, cost.weight_read, cost.input_read, cost.output_write,
                g.compulsory_bytes, roofline(g.compulsory_bytes, g.macs, config), p.sram_planned, p.sram_proven,
            ))
        else:
            # Untiled (elementwise, pools) or on the CPU: the NPU streams its operands once; its vector unit
            # (one lane per MAC column) does `ops` operations. CPU layers cost the NPU nothing.
            s = p.stream
            on_npu = p.placement == "npu"
            compulsory = s["read"] + s["write"]
            bound = roofline(compulsory, 0, config)
            compute = s["ops"] / config.mac_cols
            cycles = max(bound, compute) if on_npu else 0.0
            result.layers.append(LayerEstimate(
                f"{p.row}:{p.name}", p.kernel, p.placement, s["shape"], "not tiled" if on_npu else f"cpu: {p.reason}",
                0, cycles, compute if on_npu else 0.0, 0, s["read"] if on_npu else 0, s["write"] if on_npu else 0,
                compulsory if on_npu else 0, bound if on_npu else 0.0, None, None,
            ))
    return result
