"""The analytic NPU performance model: per tile -> per layer -> per model.

Entry point: `estimate(layers, config) -> ModelEstimate`; the planner calls `layer_cost`
on every candidate tiling. The formulas are documented in README ("NPU performance model");
this module is their only implementation.

Every NPU layer is a loop over tiles (conv2d, dense, pool, elementwise, lut, concat). Per tile i:

    array_i   = ceil(c_i / mac_cols) * ceil(rows_i * out_w / (mac_rows * fold_i)) * taps   conv, dense, pool
                (fold_i = max(1, mac_cols // c_i): a tile narrower than the array folds output
                 pixels onto its spare column groups)
              = ceil(elements_i / mac_cols)                             elementwise, lut, concat (vector unit)
    sram_i    = (input tile + weight tile + parameters + table reads
                 + accumulator (4 B) and output writes per output) / sram_bytes_per_cycle
    compute_i = max(array_i, sram_i)      the array cannot outrun the SRAM traffic it needs
    in_i      = bytes DMA'd in for the tile (input rows with halo, or a weight tile) / dram_bytes_per_cycle
    out_i     = output tile bytes / dram_bytes_per_cycle

The outer tile loop loads its stationary operand (the weight tile, or the input rows) once
per outer step, exposed; the inner loop is double-buffered, so tile i+1's DMA-in and tile
i-1's DMA-out (one shared DMA engine) overlap tile i's compute:

    inner = in_1 + sum_i max(compute_i, in_{i+1} + out_{i-1}) + out_m
    layer = batch * sum over outer steps (stationary / dram_bytes_per_cycle + inner)
            + table / dram_bytes_per_cycle                  (a lookup table, loaded once)

Roofline bound = max(compulsory bytes / dram_bytes_per_cycle, MACs / macs_per_cycle), where
compulsory bytes = inputs + weights (+ per-channel parameters, tables) + output, each moved
once; for pools the window operations stand in for MACs, for elementwise kinds the elements
over the mac_cols vector lanes. Since every max() above is at least its DMA term and at
least its compute term, cycles >= bound always holds.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .target import NpuConfig

# Per output channel, the kernels stage bias, multiplier and shift (three int64) with the weights.
PARAM_BYTES_PER_CHANNEL = 24
ACC_BYTES = 4  # int32 accumulator
ROWPTR_BYTES = 4  # CSR row pointers are int32
WEIGHTED = ("conv2d", "dense")  # MAC-array kinds with a weight operand
WINDOWED = WEIGHTED + ("pool",)  # kinds that reduce over taps on the MAC array into an accumulator


def window_span(outputs: int, kernel: int, stride: int, dilation: int) -> int:
    """Input positions (padding included) from the first a sliding window over `outputs` outputs reads
    to the last: the extent of a padded input tile, and of the whole padded input the kernels stage."""
    return (outputs - 1) * stride + (kernel - 1) * dilation + 1


@dataclass(frozen=True)
class Geometry:
    """A layer as the planner and the model see it: an NCHW convolution (dense = 1x1 conv over N rows).

    The other kinds are convolutions without weights: a pool is a depthwise window (groups =
    channels); elementwise (add/mul, `operands` = 2), lut (a resident `table_bytes` table) and
    concat (copies) are 1x1 "convolutions" over `out_h` rows of `out_w` bytes with one channel.
    """

    kind: str  # "conv2d" | "dense" | "pool" | "elementwise" | "lut" | "concat"
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
    # CSR weights (tvm_npu.sparse): non-zeros per output channel and the column index width; empty = dense
    row_nonzeros: tuple[int, ...] = ()
    index_bytes: int = 0
    operands: int = 1  # streamed input tensors of the same tile shape
    table_bytes: int = 0  # a lookup table resident in SRAM for the whole layer
    label: str = ""  # how describe() names a weightless layer

    @property
    def weighted(self) -> bool:
        return self.kind in WEIGHTED

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
    def ops(self) -> int:
        """Operations: MACs (with CSR weights, only those of non-zero weights), pooling window taps, or
        elementwise results."""
        taps_sum = sum(self.row_nonzeros) if self.sparse else self.out_channels * self.taps
        return self.batch * self.out_h * self.out_w * taps_sum

    @property
    def macs(self) -> int:
        return self.ops if self.weighted else 0

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.group_channels == 1 and self.per_group == 1

    @property
    def sparse(self) -> bool:
        return bool(self.row_nonzeros)

    def weight_bytes(self, channels: int | None = None, first: int = 0) -> int:
        """Weight + parameter bytes of output channels [first, first + channels): dense, or CSR's
        values and indices of the non-zeros plus channels + 1 row pointers (a lookup table is not per tile)."""
        if not self.weighted:
            return 0
        channels = self.out_channels if channels is None else channels
        if not self.sparse:
            return channels * (self.taps + PARAM_BYTES_PER_CHANNEL)
        nonzeros = sum(self.row_nonzeros[first:first + channels])
        return nonzeros * (1 + self.index_bytes) + ROWPTR_BYTES * (channels + 1) + channels * PARAM_BYTES_PER_CHANNEL

    def csr_tile_capacity(self, channels: int) -> int:
        """Most non-zeros of any tile of `channels` output channels (at least 1: buffers are never empty)."""
        counts = [sum(self.row_nonzeros[f:f + channels]) for f in range(0, self.out_channels, channels)]
        return max(1, *counts)

    def csr_steps(self, first: int, channels: int, mac_cols: int) -> int:
        """Zero-skipping steps of a channel tile: array columns advance in lockstep, so each group of
        mac_cols channels takes as many steps as its longest row has non-zeros."""
        rows = self.row_nonzeros[first:first + channels]
        return sum(max(rows[g:g + mac_cols]) for g in range(0, len(rows), mac_cols))

    @property
    def input_bytes(self) -> int:
        """The input the layer touches at least once (a strided 1x1 conv skips rows and columns)."""
        return self.operands * self.batch * self.in_channels * self._touched(0) * self._touched(1) * self.in_bytes

    def _touched(self, axis: int) -> int:
        out, k, s, d = ((self.out_h, self.out_w)[axis], self.kernel[axis], self.stride[axis], self.dilation[axis])
        start, extent = self.padding[axis], (self.in_h, self.in_w)[axis]
        return len({y * s + r * d for y in range(out) for r in range(k)} & set(range(start, start + extent)))

    @property
    def output_bytes(self) -> int:
        return self.batch * self.out_channels * self.out_h * self.out_w * self.out_bytes

    @property
    def compulsory_bytes(self) -> int:
        return self.input_bytes + self.weight_bytes() + self.table_bytes + self.output_bytes

    def rows_in(self, rows: int) -> int:
        """Padded input rows an output-row tile reads (with halo), as TVM compacts the tile buffer."""
        (kh, _), (sh, _), (dh, _) = self.kernel, self.stride, self.dilation
        return min(window_span(rows, kh, sh, dh), self.in_h + self.padding[0] + self.padding[2])

    @property
    def cols_in(self) -> int:
        (_, kw), (_, sw), (_, dw) = self.kernel, self.stride, self.dilation
        return window_span(self.out_w, kw, sw, dw)

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
        """Input channels an output-channel tile needs (all of them unless grouped and weights-outer;
        a pool's channel tile reads its own channels in either order)."""
        if self.groups == 1 or self.input_stationary(order):
            return self.in_channels
        return channels // self.per_group * self.group_channels

    def input_stationary(self, order: str) -> bool:
        """Whether the input rows stay in SRAM across the inner loop (rows outer, with weights to stream)."""
        return order == "rows" and self.weighted

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.kind == "dense":
            return f"dense {self.in_h}x{self.in_channels} -> {self.out_channels}"
        kh, kw = self.kernel
        dw = " depthwise" if self.depthwise else f" groups {self.groups}" if self.groups > 1 else ""
        return (f"conv {kh}x{kw}/{self.stride[0]}{dw} {self.in_channels}x{self.in_h}x{self.in_w} "
                f"-> {self.out_channels}x{self.out_h}x{self.out_w}")


@dataclass(frozen=True)
class Tiles:
    """A tiling: output rows x output channels per tile, which loop is outer, and how the tile loops run.

    order "weights": channel tiles outer (the weight tile stays in SRAM while input row tiles stream);
    order "rows": row tiles outer (the input rows stay while weight tiles stream).
    double_buffer: streamed buffers take two SRAM slots so the next tile's DMA overlaps this tile's
    compute; off, they take one (half the SRAM) and DMA and compute take turns.
    parallel, vectorize: how the host runs the kernel (outer tile loop on every core; innermost output
    loops as SIMD lanes). The NPU model ignores them; only measuring on the host (`tvmc tune --runner
    local|rpc`) searches them.
    """

    rows: int
    channels: int
    order: str
    double_buffer: bool = True
    parallel: bool = True
    vectorize: bool = True

    def describe(self, weighted: bool = True) -> str:
        outer = self.order if weighted else {"weights": "channels", "rows": "rows"}[self.order]
        knobs = [name for name, off in (("single-buffered", not self.double_buffer), ("serial", not self.parallel),
                                        ("scalar", not self.vectorize)) if off]
        return f"{self.rows} rows x {self.channels} ch, {outer} outer" + "".join(f", {k}" for k in knobs)


def inner_trips(g: Geometry, t: Tiles) -> int:
    """Iterations of the inner tile loop: the loop whose streamed buffers are double-buffered."""
    return -(-g.out_h // t.rows) if t.order == "weights" else -(-g.out_channels // t.channels)


def outer_trips(g: Geometry, t: Tiles) -> int:
    """Iterations of the outer tile loop: the loop the host runs in parallel."""
    return -(-g.out_channels // t.channels) if t.order == "weights" else -(-g.out_h // t.rows)


def footprint(g: Geometry, t: Tiles) -> dict[str, int]:
    """Planned SRAM bytes per buffer; streamed (inner-loop) buffers count twice when double-buffered."""
    x = g.operands * g.tile_in_channels(t.order, t.channels) * g.rows_in(t.rows) * g.cols_in * g.in_bytes
    w, p = (t.channels * g.taps, t.channels * PARAM_BYTES_PER_CHANNEL) if g.weighted else (0, 0)
    if g.sparse:  # the tile's values and indices (sized for the fullest tile) and its row pointers
        w = g.csr_tile_capacity(t.channels) * (1 + g.index_bytes) + ROWPTR_BYTES * (t.channels + 1)
    inner = 2 if t.double_buffer and inner_trips(g, t) > 1 else 1  # slots (one inner tile: nothing to overlap)
    xs, ws = (1, inner) if g.input_stationary(t.order) else (inner, 1)
    sizes = {
        "input": xs * x,
        "weights": ws * w,
        "params": ws * p,
        "acc": ACC_BYTES * t.channels * t.rows * g.out_w if g.kind in WINDOWED else 0,
        "output": inner * t.channels * t.rows * g.out_w * g.out_bytes,
        "table": g.table_bytes,
    }
    return {name: size for name, size in sizes.items() if size or name in ("input", "output")}


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


def pipeline(dma_in: np.ndarray, compute: np.ndarray, dma_out: np.ndarray, overlapped: bool = True) -> float:
    """Cycles of a tile loop. Double-buffered (`overlapped`): tile i+1's load and tile i-1's store overlap
    tile i's compute; single-buffered: each tile loads, computes and stores in turn."""
    if not overlapped:
        return float(np.sum(dma_in) + np.sum(compute) + np.sum(dma_out))
    nxt = np.append(dma_in[1:], 0.0)
    prev = np.concatenate(([0.0], dma_out[:-1]))
    return float(dma_in[0] + np.maximum(compute, nxt + prev).sum() + dma_out[-1])


def _splits(extent: int, size: int) -> list[tuple[int, int]]:
    """(first, size) of each tile of `extent` cut into `size` pieces (the last may be short)."""
    return [(s, min(size, extent - s)) for s in range(0, extent, size)]


def tile_sram_bytes(g: Geometry, order: str, channels, rows) -> np.ndarray:
    """SRAM bytes a tile's compute moves: its input (with halo), weights and parameters and table
    lookups read once each, and its accumulator and output written once each."""
    channels, rows = np.asarray(channels, float), np.asarray(rows, float)
    rows_in = np.array([g.rows_in(int(r)) for r in np.atleast_1d(rows)], float).reshape(rows.shape)
    outputs = channels * rows * g.out_w
    x = g.operands * g.tile_in_channels(order, channels) * rows_in * g.cols_in * g.in_bytes
    w = channels * (g.taps + PARAM_BYTES_PER_CHANNEL) if g.weighted else 0.0
    acc = ACC_BYTES * outputs if g.kind in WINDOWED else 0.0
    lookups = outputs if g.table_bytes else 0.0
    return x + w + lookups + acc + outputs * g.out_bytes


def tile_compute_cycles(g: Geometry, order: str, channels, rows, config: NpuConfig) -> np.ndarray:
    """Cycles of a tile's compute: the MAC array's (output channels on its columns, output pixels on its
    rows, one tap per cycle; a tile narrower than the array folds more pixels onto the spare column
    groups) or the vector unit's (one element per column per cycle), and never less than the tile's SRAM
    traffic at sram_bytes_per_cycle."""
    channels, rows = np.asarray(channels, float), np.asarray(rows, float)
    if g.kind in WINDOWED:
        fold = np.maximum(1.0, np.floor(config.mac_cols / channels))
        array = np.ceil(channels / config.mac_cols) * np.ceil(rows * g.out_w / (config.mac_rows * fold)) * g.taps
    else:
        array = np.ceil(channels * rows * g.out_w / config.mac_cols)
    return np.maximum(array, tile_sram_bytes(g, order, channels, rows) / config.sram_bytes_per_cycle)


def compute_bound(g: Geometry, config: NpuConfig) -> float:
    """The fewest compute cycles the layer can take: MACs (pool window taps) over the array, or
    elementwise results over the vector unit."""
    return g.ops / (config.macs_per_cycle if g.kind in WINDOWED else config.mac_cols)


def csr_tile_compute_cycles(g: Geometry, first: int, channels: int, rows, config: NpuConfig):
    """Zero-skipping cycles of a CSR tile: `csr_steps` lockstep steps per block of output pixels, and
    the irregular access: where a dense step broadcasts one input vector to every column, each column
    of a CSR step gathers its own (its non-zero's column differs), so a step moves
    columns * pixels * in_bytes input bytes from SRAM at sram_bytes_per_cycle."""
    pixels = np.asarray(rows) * g.out_w
    gathered = min(channels, config.mac_cols) * np.minimum(pixels, config.mac_rows) * g.in_bytes
    step = np.maximum(1.0, np.ceil(gathered / config.sram_bytes_per_cycle))
    return g.csr_steps(first, channels, config.mac_cols) * np.ceil(pixels / config.mac_rows) * step


def layer_cost(g: Geometry, t: Tiles, config: NpuConfig) -> LayerCost:
    bw = config.dram_bytes_per_cycle
    row_tiles = _splits(g.out_h, t.rows)
    chan_tiles = Counter(size for _, size in _splits(g.out_channels, t.channels))
    cycles = compute = 0.0
    weight_read = input_read = output_write = 0
    if g.sparse:  # CSR tiles differ by their non-zeros: one entry per channel tile
        chan_tiles = Counter(_splits(g.out_channels, t.channels))
    if t.order == "weights":
        rows = np.array([r for _, r in row_tiles], float)
        real = np.array([g.real_rows(f, r) for f, r in row_tiles], float)
        for tile, count in chan_tiles.items():
            first, ch = tile if g.sparse else (0, tile)
            x_in = g.operands * real * g.real_cols * g.tile_in_channels("weights", ch) * g.in_bytes
            c = csr_tile_compute_cycles(g, first, ch, rows, config) if g.sparse \
                else tile_compute_cycles(g, "weights", ch, rows, config)
            out = ch * rows * g.out_w * g.out_bytes
            weights = g.weight_bytes(ch, first)
            cycles += count * (weights / bw + pipeline(x_in / bw, c, out / bw, t.double_buffer))
            compute += count * float(c.sum())
            weight_read += count * weights
            input_read += count * int(x_in.sum())
            output_write += count * int(out.sum())
    elif g.sparse:
        raise ValueError("CSR layers keep their weight tile stationary (order 'weights')")
    else:
        chans = np.array([c for _, c in _splits(g.out_channels, t.channels)], float)
        for (r, real), count in Counter((r, g.real_rows(f, r)) for f, r in row_tiles).items():
            x_in = g.operands * real * g.real_cols * g.tile_in_channels("rows", chans) * g.in_bytes
            if g.input_stationary("rows"):  # input rows stay, weight tiles stream
                stationary, streamed = float(x_in), chans * (g.taps + PARAM_BYTES_PER_CHANNEL)
            else:  # nothing to keep: input tiles stream
                stationary, streamed = 0.0, x_in * np.ones_like(chans)
            c = tile_compute_cycles(g, "rows", chans, r, config)
            out = chans * r * g.out_w * g.out_bytes
            cycles += count * (stationary / bw + pipeline(streamed / bw, c, out / bw, t.double_buffer))
            compute += count * float(c.sum())
            if g.input_stationary("rows"):
                input_read, weight_read = input_read + count * int(x_in), weight_read + count * int(streamed.sum())
            else:
                input_read, weight_read = input_read + count * int(streamed.sum()), weight_read + count * int(stationary)
            output_write += count * int(out.sum())
    n, table = g.batch, g.table_bytes  # a lookup table is loaded once, before the tile loops
    tiles = len(row_tiles) * sum(chan_tiles.values())
    return LayerCost(n * cycles + table / bw, n * compute, n * weight_read + table, n * input_read,
                     n * output_write, n * tiles)


def extended_producer(producer: Geometry, consumer: Geometry) -> Geometry:
    """The producer as a cascade computes it: over the consumer's padded rows, its padding rows included
    (the extra rows are a taller output of a more padded conv), so every row band reads the same
    number of intermediate rows and the intermediate can roll; and only over the columns the consumer reads
    (a strided 1x1 consumer skips the last ones)."""
    top, bottom = consumer.padding[0], consumer.padding[2]
    pt, pl, pb, pr = producer.padding
    sh = producer.stride[0]
    return replace(producer, out_h=producer.out_h + top + bottom, out_w=consumer.real_cols,
                   padding=(pt + top * sh, pl, pb + bottom * sh, pr))


@dataclass(frozen=True)
class CascadeBand:
    """One row band of a cascade: consumer output rows, and the half-open row ranges of the intermediate
    (consumer's padded input) and of the producer's padded input it needs, with the rows new to this band."""

    rows: int
    intermediate: tuple[int, int]
    producer_input: tuple[int, int]
    new_intermediate: int
    new_input_real: int  # producer input rows this band reads from DRAM


def cascade_bands(producer: Geometry, consumer: Geometry, rows: int) -> list[CascadeBand]:
    """The bands of a cascade of `rows` consumer output rows each. A buffer whose consecutive ranges
    overlap rolls (s_tir rolling_buffer): only its rows new to the band are computed or loaded."""
    px = extended_producer(producer, consumer)
    (kh, _), (sh, _), (dh, _) = px.kernel, px.stride, px.dilation
    real = (px.padding[0], px.padding[0] + px.in_h)
    bands, prev_inter, prev_input = [], None, None
    for first, size in _splits(consumer.out_h, rows):
        start = first * consumer.stride[0]
        inter = (start, min(start + consumer.rows_in(size), px.out_h))
        inputs = (inter[0] * sh, (inter[1] - 1) * sh + (kh - 1) * dh + 1)
        new_inter = inter[1] - max(inter[0], prev_inter[1]) if _rolls(prev_inter, inter) else inter[1] - inter[0]
        load = (max(inputs[0], prev_input[1]), inputs[1]) if _rolls(prev_input, inputs) else inputs
        bands.append(CascadeBand(size, inter, inputs, new_inter, max(0, min(load[1], real[1]) - max(load[0], real[0]))))
        prev_inter, prev_input = inter, inputs
    return bands


def _rolls(previous: tuple[int, int] | None, current: tuple[int, int]) -> bool:
    return previous is not None and current[0] < previous[1]


def cascade_rolls(producer: Geometry, consumer: Geometry, rows: int) -> tuple[bool, bool]:
    """Whether the intermediate and the producer's input roll (consecutive bands overlap)."""
    bands = cascade_bands(producer, consumer, rows)
    return (any(_rolls(a.intermediate, b.intermediate) for a, b in zip(bands, bands[1:])),
            any(_rolls(a.producer_input, b.producer_input) for a, b in zip(bands, bands[1:])))


def cascade_footprint(producer: Geometry, consumer: Geometry, rows: int) -> dict[str, int]:
    """Planned SRAM bytes of a cascade: both layers' weights and parameters stay resident; the producer's
    input rows, its int32 accumulator and the intermediate (consumer's padded input, all channels, 8-bit)
    are row bands (rolling buffers where bands overlap); the consumer's accumulator and output tile. The
    band loop is double-buffered: the output tile and an input band that does not roll take two slots."""
    px = extended_producer(producer, consumer)
    bands = cascade_bands(producer, consumer, rows)
    _, input_rolls = cascade_rolls(producer, consumer, rows)
    slots = 2 if len(bands) > 1 else 1
    rows = max(b.rows for b in bands)
    inter_rows = max(b.intermediate[1] - b.intermediate[0] for b in bands)
    input_rows = max(b.producer_input[1] - b.producer_input[0] for b in bands)
    return {
        "input": (1 if input_rolls else slots) * px.in_channels * input_rows * px.cols_in * px.in_bytes,
        "weights": producer.out_channels * producer.taps + consumer.out_channels * consumer.taps,
        "params": (producer.out_channels + consumer.out_channels) * PARAM_BYTES_PER_CHANNEL,
        "acc": ACC_BYTES * (producer.out_channels * inter_rows * px.out_w + consumer.out_channels * rows * consumer.out_w),
        "intermediate": producer.out_channels * inter_rows * consumer.cols_in * producer.out_bytes,
        "output": slots * consumer.out_channels * rows * consumer.out_w * consumer.out_bytes,
    }


def cascade_cost(producer: Geometry, consumer: Geometry, rows: int, config: NpuConfig) -> tuple[LayerCost, LayerCost]:
    """(producer, consumer) costs of a cascade. The intermediate never touches DRAM; weights and parameters
    are read once (resident, loaded before the band loop, exposed); each producer input row is read once.
    The band loop is double-buffered like a layer's inner tile loop (`pipeline`): band b-1's output rows
    store while band b computes both layers; band b+1's input rows load then too, unless the input rolls
    (a rolling buffer has one slot: its new rows load exposed, before the band computes). The band loop's
    cycles are shared between the two layers in proportion to their compute."""
    bw = config.dram_bytes_per_cycle
    bands = cascade_bands(producer, consumer, rows)
    _, input_rolls = cascade_rolls(producer, consumer, rows)
    px = extended_producer(producer, consumer)
    n = producer.batch
    dma_in = np.array([b.new_input_real for b in bands], float) * px.real_cols * px.in_channels * px.in_bytes
    dma_out = np.array([b.rows for b in bands], float) * consumer.out_w * consumer.out_channels * consumer.out_bytes
    compute_p = np.array([float(tile_compute_cycles(px, "weights", producer.out_channels, b.new_intermediate, config)) for b in bands])
    compute_c = np.array([float(tile_compute_cycles(consumer, "weights", consumer.out_channels, b.rows, config)) for b in bands])
    compute = compute_p + compute_c
    if input_rolls:
        body = dma_in.sum() / bw + pipeline(np.zeros(len(bands)), compute, dma_out / bw)
    else:
        body = pipeline(dma_in / bw, compute, dma_out / bw)
    w_p, w_c = producer.weight_bytes(), consumer.weight_bytes()
    cycles = (w_p + w_c) / bw + n * body
    share = compute_p.sum() / compute.sum() if compute.sum() else 0.5
    return (LayerCost(share * cycles, n * float(compute_p.sum()), w_p, n * int(dma_in.sum()), 0, n * len(bands)),
            LayerCost((1 - share) * cycles, n * float(compute_c.sum()), w_c, 0, n * int(dma_out.sum()), n * len(bands)))


def cascade_compulsory(producer: Geometry, consumer: Geometry) -> tuple[int, int]:
    """(producer, consumer) compulsory DRAM bytes of a cascade: the input the consumer's outputs depend on
    through both layers and the producer's weights; the consumer's weights and output. The intermediate
    is not compulsory any more: it never leaves SRAM."""
    touched = []
    for axis in (0, 1):
        needed = {y * consumer.stride[axis] + r * consumer.dilation[axis] - consumer.padding[axis]
                  for y in range((consumer.out_h, consumer.out_w)[axis]) for r in range(consumer.kernel[axis])}
        needed &= set(range((producer.out_h, producer.out_w)[axis]))
        rows = {y * producer.stride[axis] + r * producer.dilation[axis] - producer.padding[axis]
                for y in needed for r in range(producer.kernel[axis])}
        touched.append(len(rows & set(range((producer.in_h, producer.in_w)[axis]))))
    x = producer.batch * producer.in_channels * touched[0] * touched[1] * producer.in_bytes
    return x + producer.weight_bytes(), consumer.weight_bytes() + consumer.output_bytes


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
    weight_bytes_original: int = 0  # the layer's int8 weights, dense (0: a layer without weights)
    weight_bytes_encoded: int = 0  # as the package stores them (CSR: values + indices + row pointers)
    cascade: dict | None = None  # tvm_npu.cascade.Cascade.describe: index, role, rows, dram_saved

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
        cascaded = [layer.cascade for layer in npu if layer.cascade is not None]
        return {
            "npu_layers": len(npu),
            "sram_fallback_layers": len(self.layers) - len(npu),  # planned, then moved to the CPU
            "tiled_layers": sum(layer.sram_planned is not None for layer in npu),
            "cascaded_layers": len(cascaded),
            "cascades": len({c["index"] for c in cascaded}),
            "dram_saved_by_cascades": sum(c["dram_saved"] for c in cascaded if c["role"] == "consumer"),
            "sram_bytes": self.config.sram_bytes,
            "sram_peak_proven": max(proven, default=0),
            "dram_weight_read": sum(x.weight_read for x in npu),
            "dram_activation_read": sum(x.activation_read for x in npu),
            "dram_activation_write": sum(x.activation_write for x in npu),
            "weight_bytes_original": sum(x.weight_bytes_original for x in npu),
            "weight_bytes_encoded": sum(x.weight_bytes_encoded for x in npu),
            "csr_layers": sum(x.kernel.endswith("_csr") for x in npu),
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


def layer_roofline(g: Geometry, config: NpuConfig) -> float:
    return max(g.compulsory_bytes / config.dram_bytes_per_cycle, compute_bound(g, config))


def estimate(layers, config: NpuConfig) -> ModelEstimate:
    """The model for planned layers (tvm_npu.plan.LayerPlan): tiled ones by their tiles, the others streamed."""
    result = ModelEstimate(config)
    for p in layers:
        if p.cascade is not None:
            # A cascade's layers share its cycles and its roofline bound in proportion to their compute.
            fused = p.cascade
            g1, g2 = fused.producer.geometry, fused.consumer.geometry
            costs = cascade_cost(g1, g2, fused.rows, config)
            compulsory = cascade_compulsory(g1, g2)
            share = costs[0].compute_cycles / (costs[0].compute_cycles + costs[1].compute_cycles)
            bound = roofline(sum(compulsory), g1.macs + g2.macs, config)
            first = p is fused.producer
            cost, neighbour = (costs[0], fused.consumer) if first else (costs[1], fused.producer)
            g = p.geometry
            result.layers.append(LayerEstimate(
                p.label, p.kernel, p.placement, g.describe(),
                f"cascade {fused.index} {'into' if first else 'from'} {neighbour.label}, {fused.rows} rows"
                + (" (tuned)" if fused.tuned else ""),
                g.macs, cost.cycles, cost.compute_cycles, cost.weight_read, cost.input_read, cost.output_write,
                compulsory[0 if first else 1], bound * (share if first else 1 - share), p.sram_planned, p.sram_proven,
                p.weights.get("original", 0), p.weights.get("encoded", 0), cascade=fused.describe(p),
            ))
        elif p.geometry is not None and p.tiles is not None and p.placement == "npu":
            g, cost = p.geometry, layer_cost(p.geometry, p.tiles, config)
            result.layers.append(LayerEstimate(
                p.label, p.kernel, p.placement, g.describe(), p.tiles.describe(g.weighted) + (" (tuned)" if p.tuned else ""),
                g.macs, cost.cycles, cost.compute_cycles, cost.weight_read, cost.input_read, cost.output_write,
                g.compulsory_bytes, layer_roofline(g, config), p.sram_planned, p.sram_proven,
                p.weights.get("original", 0), p.weights.get("encoded", 0),
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
                p.label, p.kernel, p.placement, s["shape"], "not tiled" if on_npu else f"cpu: {p.reason}",
                0, cycles, compute if on_npu else 0.0, 0, s["read"] if on_npu else 0, s["write"] if on_npu else 0,
                compulsory if on_npu else 0, bound if on_npu else 0.0, None, None,
            ))
    return result
