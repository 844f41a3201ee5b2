"""The tiling contract: how a layer and its SRAM tiles are described, and how many bytes of SRAM a tiling
takes. The planner chooses tiles by it, each kernel's schedule implements it, `tvm_npu.sram` proves it on
the lowered TIR, and the performance model (`tvm_npu.perf`) costs it; this module is its only statement.

A layer is a `Geometry` (an NCHW convolution; the other kinds are convolutions without weights), a tiling
is `Tiles` (output rows x output channels per tile, loop order, on/off knobs). `footprint` is the SRAM a
tiling plans; `cascade_footprint` the SRAM of a fused conv -> conv pair in row bands (`cascade_bands`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
        nonzeros = sum(self.row_nonzeros[first : first + channels])
        return nonzeros * (1 + self.index_bytes) + ROWPTR_BYTES * (channels + 1) + channels * PARAM_BYTES_PER_CHANNEL

    def csr_tile_capacity(self, channels: int) -> int:
        """Most non-zeros of any tile of `channels` output channels (at least 1: buffers are never empty)."""
        counts = [sum(self.row_nonzeros[f : f + channels]) for f in range(0, self.out_channels, channels)]
        return max(1, *counts)

    def csr_steps(self, first: int, channels: int, mac_cols: int) -> int:
        """Zero-skipping steps of a channel tile: array columns advance in lockstep, so each group of
        mac_cols channels takes as many steps as its longest row has non-zeros."""
        rows = self.row_nonzeros[first : first + channels]
        return sum(max(rows[g : g + mac_cols]) for g in range(0, len(rows), mac_cols))

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
        return (
            f"conv {kh}x{kw}/{self.stride[0]}{dw} {self.in_channels}x{self.in_h}x{self.in_w} "
            f"-> {self.out_channels}x{self.out_h}x{self.out_w}"
        )


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
        knobs = [
            name
            for name, off in (
                ("single-buffered", not self.double_buffer),
                ("serial", not self.parallel),
                ("scalar", not self.vectorize),
            )
            if off
        ]
        return f"{self.rows} rows x {self.channels} ch, {outer} outer" + "".join(f", {k}" for k in knobs)


def inner_trips(g: Geometry, t: Tiles) -> int:
    """Iterations of the inner tile loop: the loop whose streamed buffers are double-buffered."""
    return -(-g.out_h // t.rows) if t.order == "weights" else -(-g.out_channels // t.channels)


def outer_trips(g: Geometry, t: Tiles) -> int:
    """Iterations of the outer tile loop: the loop the host runs in parallel."""
    return -(-g.out_channels // t.channels) if t.order == "weights" else -(-g.out_h // t.rows)


def buffer_slots(g: Geometry, t: Tiles) -> int:
    """SRAM slots of a streamed (inner-loop) buffer: two when double-buffered, one when not or when the
    inner loop has one tile (nothing to overlap)."""
    return 2 if t.double_buffer and inner_trips(g, t) > 1 else 1


def footprint(g: Geometry, t: Tiles) -> dict[str, int]:
    """Planned SRAM bytes per buffer; streamed (inner-loop) buffers count twice when double-buffered."""
    x = g.operands * g.tile_in_channels(t.order, t.channels) * g.rows_in(t.rows) * g.cols_in * g.in_bytes
    w, p = (t.channels * g.taps, t.channels * PARAM_BYTES_PER_CHANNEL) if g.weighted else (0, 0)
    if g.sparse:  # the tile's values and indices (sized for the fullest tile) and its row pointers
        w = g.csr_tile_capacity(t.channels) * (1 + g.index_bytes) + ROWPTR_BYTES * (t.channels + 1)
    inner = buffer_slots(g, t)
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


def splits(extent: int, size: int) -> list[tuple[int, int]]:
    """(first, size) of each tile of `extent` cut into `size` pieces (the last may be short)."""
    return [(s, min(size, extent - s)) for s in range(0, extent, size)]


def extended_producer(producer: Geometry, consumer: Geometry) -> Geometry:
    """The producer as a cascade computes it: over the consumer's padded rows, its padding rows included
    (the extra rows are a taller output of a more padded conv), so every row band reads the same
    number of intermediate rows and the intermediate can roll; and only over the columns the consumer reads
    (a strided 1x1 consumer skips the last ones)."""
    top, bottom = consumer.padding[0], consumer.padding[2]
    pt, pl, pb, pr = producer.padding
    sh = producer.stride[0]
    return replace(
        producer, out_h=producer.out_h + top + bottom, out_w=consumer.real_cols, padding=(pt + top * sh, pl, pb + bottom * sh, pr)
    )


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
    for first, size in splits(consumer.out_h, rows):
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
    return (
        any(_rolls(a.intermediate, b.intermediate) for a, b in zip(bands, bands[1:])),
        any(_rolls(a.producer_input, b.producer_input) for a, b in zip(bands, bands[1:])),
    )


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
