"""The analytic NPU performance model: per tile -> per layer -> per model.

Entry point: `estimate(layers, config) -> ModelEstimate`; the planner calls `layer_cost`
on every candidate tiling. The formulas are documented in README ("NPU performance model");
this module is their only implementation.

Every NPU layer is a loop over tiles (conv2d, dense, pool, elementwise, lut, concat). Per tile i:

    array_i   = ceil(c_i / mac_cols) * ceil(rows_i * out_w / (mac_rows * fold_i))
                * ceil(group input channels / mac_depth) * k_h * k_w                  conv, dense, pool
                (fold_i = max(1, mac_cols // c_i): a tile narrower than the array folds output
                 pixels onto its spare column groups)
              = ceil(elements_i / mac_cols)                             elementwise, lut, concat (vector unit)
    sram_i    = (input tile + weight tile + parameters + table reads + output writes)
                / sram_bytes_per_cycle   (int32 accumulators stay in the MAC array, as Ethos-U's do)
    compute_i = max(array_i, sram_i)      the array cannot outrun the SRAM traffic it needs
    in_i      = latency + bytes DMA'd in for the tile (input rows with halo, or a weight tile) / bandwidth
                (weights at weight_bandwidth from their own memory where the config has one)
    out_i     = output tile bytes / dram_bytes_per_cycle

The outer tile loop loads its stationary operand (the weight tile, or the input rows) once
per outer step, exposed; the inner loop is double-buffered, so tile i+1's DMA-in and tile
i-1's DMA-out (one shared DMA engine) overlap tile i's compute:

    inner = in_1 + sum_i max(compute_i, in_{i+1} + out_{i-1}) + out_m
    layer = batch * sum over outer steps (latency + stationary / bandwidth + inner)
            + table / dram_bytes_per_cycle                  (a lookup table, loaded once)

Roofline bound = max(activation bytes / dram_bytes_per_cycle + weight bytes / weight_bandwidth,
MACs / macs_per_cycle), where the bytes are the compulsory ones: inputs, weights (+ per-channel
parameters, tables) and output, each moved once (one DMA engine moves both); for pools the
window operations stand in for MACs, for elementwise kinds the elements over the mac_cols
vector lanes. Since every max() above is at least its DMA term and at
least its compute term, cycles >= bound always holds.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from .energy import energy
from .target import NpuConfig
from .tiling import (
    PARAM_BYTES_PER_CHANNEL,
    WINDOWED,
    Geometry,
    Tiles,
    cascade_bands,
    cascade_rolls,
    extended_producer,
    splits,
)


@dataclass
class LayerCost:
    cycles: float
    compute_cycles: float
    weight_read: int  # DRAM bytes
    input_read: int
    output_write: int
    tiles: int
    sram_traffic: float = 0.0  # bytes compute moves to and from SRAM (`tile_sram_bytes`), DMA excluded

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


def tile_sram_bytes(g: Geometry, order: str, channels, rows) -> np.ndarray:
    """SRAM bytes a tile's compute moves: its input (with halo), weights and parameters and table
    lookups read once each, and its output written once. The int32 accumulators are not SRAM traffic:
    the MAC array accumulates in its own registers (Ethos-U's accumulators are in the MAC units; the
    SRAM footprint still holds our kernels' accumulator tile, which TVM allocates there)."""
    channels, rows = np.asarray(channels, float), np.asarray(rows, float)
    rows_in = np.array([g.rows_in(int(r)) for r in np.atleast_1d(rows)], float).reshape(rows.shape)
    outputs = channels * rows * g.out_w
    x = g.operands * g.tile_in_channels(order, channels) * rows_in * g.cols_in * g.in_bytes
    w = channels * (g.taps + PARAM_BYTES_PER_CHANNEL) if g.weighted else 0.0
    lookups = outputs if g.table_bytes else 0.0
    return x + w + lookups + outputs * g.out_bytes


def tile_compute_cycles(g: Geometry, order: str, channels, rows, config: NpuConfig) -> np.ndarray:
    """Cycles of a tile's compute: the MAC array's (output channels on its columns, output pixels on its
    rows, mac_depth input channels of one kernel position per cycle, so a depthwise conv or a pool with
    one input channel per output uses 1 of them, as Ethos-U's does; a tile narrower than the array folds
    more pixels onto the spare column groups) or the vector unit's (one element per column per cycle),
    and never less than the tile's SRAM traffic at sram_bytes_per_cycle."""
    channels, rows = np.asarray(channels, float), np.asarray(rows, float)
    if g.kind in WINDOWED:
        fold = np.maximum(1.0, np.floor(config.mac_cols / channels))
        reduction = math.ceil(g.group_channels / config.mac_depth) * g.kernel[0] * g.kernel[1]
        array = np.ceil(channels / config.mac_cols) * np.ceil(rows * g.out_w / (config.mac_rows * fold)) * reduction
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


def load_cycles(nbytes, config: NpuConfig, weights: bool = False):
    """Cycles of DMA loads of `nbytes` each (array or scalar): the memory's read latency per transfer,
    then the bytes at its bandwidth (weights from their own memory where the config has one)."""
    nbytes = np.asarray(nbytes, float)
    bw, latency = (
        (config.weight_bandwidth, config.weight_latency) if weights else (config.dram_bytes_per_cycle, config.dram_latency_cycles)
    )
    return nbytes / bw + latency * (nbytes > 0)


def layer_cost(g: Geometry, t: Tiles, config: NpuConfig) -> LayerCost:
    bw = config.dram_bytes_per_cycle
    row_tiles = splits(g.out_h, t.rows)
    chan_tiles = Counter(size for _, size in splits(g.out_channels, t.channels))
    cycles = compute = sram = 0.0
    weight_read = input_read = output_write = 0
    if g.sparse:  # CSR tiles differ by their non-zeros: one entry per channel tile
        chan_tiles = Counter(splits(g.out_channels, t.channels))
    if t.order == "weights":
        rows = np.array([r for _, r in row_tiles], float)
        real = np.array([g.real_rows(f, r) for f, r in row_tiles], float)
        for tile, count in chan_tiles.items():
            first, ch = tile if g.sparse else (0, tile)
            x_in = g.operands * real * g.real_cols * g.tile_in_channels("weights", ch) * g.in_bytes
            c = (
                csr_tile_compute_cycles(g, first, ch, rows, config)
                if g.sparse
                else tile_compute_cycles(g, "weights", ch, rows, config)
            )
            out = ch * rows * g.out_w * g.out_bytes
            weights = g.weight_bytes(ch, first)
            cycles += count * (
                float(load_cycles(weights, config, weights=True))
                + pipeline(load_cycles(x_in, config), c, out / bw, t.double_buffer)
            )
            compute += count * float(c.sum())
            sram += count * float(tile_sram_bytes(g, "weights", ch, rows).sum())
            weight_read += count * weights
            input_read += count * int(x_in.sum())
            output_write += count * int(out.sum())
    elif g.sparse:
        raise ValueError("CSR layers keep their weight tile stationary (order 'weights')")
    else:
        chans = np.array([c for _, c in splits(g.out_channels, t.channels)], float)
        for (r, real), count in Counter((r, g.real_rows(f, r)) for f, r in row_tiles).items():
            x_in = g.operands * real * g.real_cols * g.tile_in_channels("rows", chans) * g.in_bytes
            streams_weights = g.input_stationary("rows")
            if streams_weights:  # input rows stay, weight tiles stream
                stationary, streamed = float(x_in), chans * (g.taps + PARAM_BYTES_PER_CHANNEL)
            else:  # nothing to keep: input tiles stream
                stationary, streamed = 0.0, x_in * np.ones_like(chans)
            c = tile_compute_cycles(g, "rows", chans, r, config)
            out = chans * r * g.out_w * g.out_bytes
            cycles += count * (
                float(load_cycles(stationary, config))
                + pipeline(load_cycles(streamed, config, weights=streams_weights), c, out / bw, t.double_buffer)
            )
            compute += count * float(c.sum())
            sram += count * float(tile_sram_bytes(g, "rows", chans, r).sum())
            if g.input_stationary("rows"):
                input_read, weight_read = input_read + count * int(x_in), weight_read + count * int(streamed.sum())
            else:
                input_read, weight_read = input_read + count * int(streamed.sum()), weight_read + count * int(stationary)
            output_write += count * int(out.sum())
    n, table = g.batch, g.table_bytes  # a lookup table is loaded once, before the tile loops
    tiles = len(row_tiles) * sum(chan_tiles.values())
    return LayerCost(
        n * cycles + float(load_cycles(table, config)),
        n * compute,
        n * weight_read + table,
        n * input_read,
        n * output_write,
        n * tiles,
        n * sram,
    )


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
    compute_p = np.array(
        [float(tile_compute_cycles(px, "weights", producer.out_channels, b.new_intermediate, config)) for b in bands]
    )
    compute_c = np.array([float(tile_compute_cycles(consumer, "weights", consumer.out_channels, b.rows, config)) for b in bands])
    compute = compute_p + compute_c
    sram_p = sum(float(tile_sram_bytes(px, "weights", producer.out_channels, b.new_intermediate)) for b in bands)
    sram_c = sum(float(tile_sram_bytes(consumer, "weights", consumer.out_channels, b.rows)) for b in bands)
    if input_rolls:
        body = float(load_cycles(dma_in, config).sum()) + pipeline(np.zeros(len(bands)), compute, dma_out / bw)
    else:
        body = pipeline(load_cycles(dma_in, config), compute, dma_out / bw)
    w_p, w_c = producer.weight_bytes(), consumer.weight_bytes()
    cycles = float(load_cycles(np.array([w_p, w_c]), config, weights=True).sum()) + n * body
    share = compute_p.sum() / compute.sum() if compute.sum() else 0.5
    return (
        LayerCost(share * cycles, n * float(compute_p.sum()), w_p, n * int(dma_in.sum()), 0, n * len(bands), n * sram_p),
        LayerCost((1 - share) * cycles, n * float(compute_c.sum()), w_c, 0, n * int(dma_out.sum()), n * len(bands), n * sram_c),
    )


def cascade_compulsory(producer: Geometry, consumer: Geometry) -> tuple[int, int]:
    """(producer, consumer) compulsory DRAM bytes of a cascade: the input the consumer's outputs depend on
    through both layers and the producer's weights; the consumer's weights and output. The intermediate
    is not compulsory any more: it never leaves SRAM."""
    touched = []
    for axis in (0, 1):
        needed = {
            y * consumer.stride[axis] + r * consumer.dilation[axis] - consumer.padding[axis]
            for y in range((consumer.out_h, consumer.out_w)[axis])
            for r in range(consumer.kernel[axis])
        }
        needed &= set(range((producer.out_h, producer.out_w)[axis]))
        rows = {
            y * producer.stride[axis] + r * producer.dilation[axis] - producer.padding[axis]
            for y in needed
            for r in range(producer.kernel[axis])
        }
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
    sram_traffic: float = 0.0  # SRAM bytes the compute reads and writes (LayerCost.sram_traffic)

    @property
    def dram_bytes(self) -> int:
        return self.weight_read + self.activation_read + self.activation_write

    def energy(self, config: NpuConfig) -> dict:
        """tvm_npu.energy's split; every DRAM byte also passes through SRAM once (the DMA's end)."""
        return energy(
            self.macs, self.sram_traffic + self.dram_bytes, self.activation_read + self.activation_write, self.weight_read, config
        )

    def to_dict(self, config: NpuConfig) -> dict:
        peak = config.macs_per_cycle
        return (
            asdict(self)
            | self.energy(config)
            | {
                "dram_bytes": self.dram_bytes,
                "utilization": self.macs / (self.cycles * peak) if self.cycles else 0.0,
                "array_utilization": self.macs / (self.compute_cycles * peak) if self.compute_cycles else 0.0,
                "roofline_ratio": self.cycles / self.roofline_cycles if self.roofline_cycles else 1.0,
            }
        )


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
        } | energy(
            macs,
            sum(x.sram_traffic + x.dram_bytes for x in npu),
            sum(x.activation_read + x.activation_write for x in npu),
            sum(x.weight_read for x in npu),
            self.config,
        )

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "layers": [layer.to_dict(self.config) for layer in self.layers]}


def roofline(compulsory_bytes: int, macs: int, config: NpuConfig, weight_bytes: int = 0) -> float:
    """The bound: compulsory bytes through the one DMA engine (`weight_bytes` of them from the weights'
    memory), or the MACs on the array."""
    dma = (compulsory_bytes - weight_bytes) / config.dram_bytes_per_cycle + weight_bytes / config.weight_bandwidth
    return max(dma, macs / config.macs_per_cycle)


def layer_roofline(g: Geometry, config: NpuConfig) -> float:
    return max(roofline(g.compulsory_bytes, 0, config, g.weight_bytes()), compute_bound(g, config))


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
            bound = roofline(sum(compulsory), g1.macs + g2.macs, config, g1.weight_bytes() + g2.weight_bytes())
            first = fused.produces(p)
            cost, neighbour = (costs[0], fused.consumer) if first else (costs[1], fused.producer)
            g = p.geometry
            result.layers.append(
                LayerEstimate(
                    p.label,
                    p.kernel,
                    p.placement,
                    g.describe(),
                    f"cascade {fused.index} {'into' if first else 'from'} {neighbour.label}, {fused.rows} rows"
                    + (" (tuned)" if fused.tuned else ""),
                    g.macs,
                    cost.cycles,
                    cost.compute_cycles,
                    cost.weight_read,
                    cost.input_read,
                    cost.output_write,
                    compulsory[0 if first else 1],
                    bound * (share if first else 1 - share),
                    p.sram_planned,
                    p.sram_proven,
                    p.weights.get("original", 0),
                    p.weights.get("encoded", 0),
                    cascade=fused.describe(p),
                    sram_traffic=cost.sram_traffic,
                )
            )
        elif p.geometry is not None and p.tiles is not None and p.placement == "npu":
            g, cost = p.geometry, layer_cost(p.geometry, p.tiles, config)
            result.layers.append(
                LayerEstimate(
                    p.label,
                    p.kernel,
                    p.placement,
                    g.describe(),
                    p.tiles.describe(g.weighted) + (" (tuned)" if p.tuned else ""),
                    g.macs,
                    cost.cycles,
                    cost.compute_cycles,
                    cost.weight_read,
                    cost.input_read,
                    cost.output_write,
                    g.compulsory_bytes,
                    layer_roofline(g, config),
                    p.sram_planned,
                    p.sram_proven,
                    p.weights.get("original", 0),
                    p.weights.get("encoded", 0),
                    sram_traffic=cost.sram_traffic,
                )
            )
        else:
            # Untiled (elementwise, pools) or on the CPU: the NPU streams its operands once; its vector unit
            # (one lane per MAC column) does `ops` operations. CPU layers cost the NPU nothing.
            s = p.stream
            on_npu = p.placement == "npu"
            compulsory = s["read"] + s["write"]
            bound = roofline(compulsory, 0, config)
            compute = s["ops"] / config.mac_cols
            cycles = max(bound, compute) if on_npu else 0.0
            result.layers.append(
                LayerEstimate(
                    p.label,
                    p.kernel,
                    p.placement,
                    s["shape"],
                    "not tiled" if on_npu else f"cpu: {p.reason}",
                    0,
                    cycles,
                    compute if on_npu else 0.0,
                    0,
                    s["read"] if on_npu else 0,
                    s["write"] if on_npu else 0,
                    compulsory if on_npu else 0,
                    bound if on_npu else 0.0,
                    None,
                    None,
                    sram_traffic=compulsory if on_npu else 0.0,  # the vector unit reads and writes each byte once
                )
            )
    return result
