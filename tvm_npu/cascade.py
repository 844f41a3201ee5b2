"""Stage: cascade (part of planning). Consecutive NPU convolutions fuse where that lowers DRAM traffic.

Entry point: `cascade(mod, layers, config, tuned=None) -> layers`, on the partitioned module and the
`plan` stage's layers: the layers it fuses come back with their `Cascade` and its footprint. A producer
conv whose only consumer is the next conv can run inside the consumer's loop over output row bands: per
band it computes just the rows the consumer needs into an SRAM intermediate (the consumer's padded
input, all channels, 8-bit), a rolling buffer, so halo rows are computed once and the intermediate never
goes to DRAM. Both layers' weights stay resident in SRAM. Each candidate band height whose footprint
(`tiling.cascade_footprint`) fits (`band_heights`) is costed with `perf.cascade_cost` against the two
layers' own planned tilings; a pair fuses when its DRAM traffic drops (ties: fewer cycles). With tuning
records (`tvmc tune --cascade`: one task per distinct pair, `task_key`, its knob the band height) the
records decide instead where they cover the pair: it fuses, with the recorded band height, when its best
cascade record costs less than the two layers' best records together. Records first, then pairs with the
largest saving first; each layer in at most one cascade.

`primfunc` is the cascade's lowering (`lower.lower_cascade` proves its footprint): the consumer's TE compute composed on
the producer's output in ONE PrimFunc, the consumer scheduled in row bands, every producer stage
`compute_at` the band loop in SRAM, and `s_tir.Schedule.rolling_buffer` on the buffers whose
bands overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import tvm
from tvm import relax, s_tir, te, tirx

from .perf import LayerCost, cascade_cost, layer_cost
from .plan import LayerPlan, task_key as layer_task_key
from .records import CASCADE_TASK
from .registry import KernelParams, kernel
from .sram import SRAM_SCOPE, double_buffer, vectorize
from .target import NpuConfig
from .tiling import Geometry, cascade_footprint, cascade_rolls, extended_producer

KERNELS = ("npu.conv2d",)  # kernels with a `tensors` compute the cascade schedule below knows how to fuse


@dataclass(frozen=True)
class Cascade:
    """A fused producer -> consumer pair: `rows` consumer output rows per band."""

    index: int
    producer: LayerPlan  # the two layers as planned apart (geometry, tiles, params, inputs)
    consumer: LayerPlan
    rows: int
    sram_planned: int
    dram_saved: int  # DRAM bytes the two layers no longer move (their own tilings minus the cascade)
    tuned: bool = False  # fused and banded as tuning records say, not by the DRAM heuristic

    def produces(self, layer: LayerPlan) -> bool:
        """Whether `layer` is the pair's producer (computed inside the consumer's band loop)."""
        return layer.function == self.producer.function

    def describe(self, layer: LayerPlan) -> dict:
        role = "producer" if self.produces(layer) else "consumer"
        return {
            "index": self.index,
            "role": role,
            "rows": self.rows,
            "dram_saved": self.dram_saved,
            "producer": self.producer.row,
            "consumer": self.consumer.row,
            "tuned": self.tuned,
        }


def cascade(
    mod: tvm.IRModule, layers: list[LayerPlan], config: NpuConfig, tuned: dict[str, dict] | None = None
) -> list[LayerPlan]:
    """`layers` with the chosen pairs fused; `tuned`: the best tuning record per task (`records.tuned_records`)."""
    by_function = {layer.function: layer for layer in layers}
    options = []  # (rank, producer, consumer, rows, from records): records first, then the largest saving
    for producer, consumer in pairs(mod, by_function):
        found = recorded(tuned or {}, producer, consumer)
        if found is not None and found[0] in band_heights(producer.geometry, consumer.geometry, config):
            rows, fused, apart = found
            if fused < apart:
                options.append(((0, fused - apart), producer, consumer, rows, True))
        else:  # no records of the pair (or a hand-edited band height the tuner never tries): the DRAM heuristic
            best = _best(producer, consumer, config)
            if best is not None:
                options.append(((1, -best[2]), producer, consumer, best[0], False))
    fused: dict[str, Cascade] = {}  # by the functions of both its layers
    for _, producer, consumer, rows, from_records in sorted(options, key=lambda o: o[0]):
        if producer.function not in fused and consumer.function not in fused:
            g1, g2 = producer.geometry, consumer.geometry
            apart = _dram(layer_cost(g1, producer.tiles, config), layer_cost(g2, consumer.tiles, config))
            pair = Cascade(
                len(fused) // 2,
                producer,
                consumer,
                rows,
                sum(cascade_footprint(g1, g2, rows).values()),
                apart - _dram(*cascade_cost(g1, g2, rows, config)),
                from_records,
            )
            fused[producer.function] = fused[consumer.function] = pair
    return [
        replace(layer, cascade=fused[layer.function], sram_planned=fused[layer.function].sram_planned)
        if layer.function in fused
        else layer
        for layer in layers
    ]


def task_key(producer: LayerPlan, consumer: LayerPlan) -> str:
    """What identifies a pair's cascade tuning task: the two layers' tasks (pairs alike share a band height)."""
    return (
        f"{CASCADE_TASK}{layer_task_key(producer.kernel, producer.geometry)} -> "
        f"{layer_task_key(consumer.kernel, consumer.geometry)}"
    )


def recorded(best: dict[str, dict], producer: LayerPlan, consumer: LayerPlan) -> tuple[int, float, float] | None:
    """(band height, cost) of the pair's best cascade record and the cost of its two layers' best records
    together, when the records have all three (costs in the log's units: one runner per log)."""
    keys = (
        task_key(producer, consumer),
        layer_task_key(producer.kernel, producer.geometry),
        layer_task_key(consumer.kernel, consumer.geometry),
    )
    if not all(key in best for key in keys):
        return None
    fused, first, second = (best[key] for key in keys)
    return fused["rows"], fused["cost"], first["cost"] + second["cost"]


def _tiled(layer: LayerPlan | None) -> bool:
    """A tiled NPU conv of the shapes the cascade schedule and model are verified on (tests/test_cascade.py):
    odd kernels with "same" padding (k // 2 on every side), any stride, no dilation, as in ResNet or
    MobileNet/ShuffleNet blocks."""
    if layer is None or layer.placement != "npu" or layer.tiles is None or layer.kernel not in KERNELS:
        return False
    g = layer.geometry
    (kh, kw) = g.kernel
    return g.dilation == (1, 1) and kh % 2 == kw % 2 == 1 and g.padding == (kh // 2, kw // 2) * 2


def pairs(mod: tvm.IRModule, by_function: dict[str, LayerPlan]):
    """(producer, consumer) layers where the consumer's only input is the producer's output and nothing
    else (no other binding, not the function's result) reads that output."""
    main = mod["main"]
    producer_of: dict[relax.Var, LayerPlan] = {}
    users: dict[relax.Var, int] = {}
    candidates = []
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            for var in relax.analysis.free_vars(value):
                users[var] = users.get(var, 0) + 1
            if isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar):
                layer = by_function.get(value.op.name_hint)
                if _tiled(layer):
                    producer_of[binding.var] = layer
                    if len(value.args) == 1 and isinstance(value.args[0], relax.Var):
                        candidates.append((value.args[0], layer))
    for var in relax.analysis.free_vars(main.body.body):
        users[var] = users.get(var, 0) + 1
    for var, consumer in candidates:
        if var in producer_of and users.get(var) == 1:
            yield producer_of[var], consumer


def band_heights(producer: Geometry, consumer: Geometry, config: NpuConfig) -> list[int]:
    """The band heights (consumer output rows per band: each distinct ceil(out_h / k)) whose cascade
    footprint fits the SRAM: the heuristic's candidates and the tuner's search space."""
    heights = sorted({-(-consumer.out_h // k) for k in range(1, consumer.out_h + 1)})
    return [rows for rows in heights if sum(cascade_footprint(producer, consumer, rows).values()) <= config.sram_bytes]


def default_band(producer: Geometry, consumer: Geometry, config: NpuConfig) -> int | None:
    """The fitting band height with the least DRAM traffic, then cycles, then footprint."""

    def key(rows):
        costs = cascade_cost(producer, consumer, rows, config)
        return _dram(*costs), sum(c.cycles for c in costs), sum(cascade_footprint(producer, consumer, rows).values())

    return min(band_heights(producer, consumer, config), key=key, default=None)


def _dram(*costs: LayerCost) -> int:
    return sum(c.dram_bytes for c in costs)


def _best(producer: LayerPlan, consumer: LayerPlan, config: NpuConfig) -> tuple[int, int, int] | None:
    """(rows, footprint, DRAM saved) of the cheapest fitting cascade, if it beats the layers' own tilings."""
    g1, g2 = producer.geometry, consumer.geometry
    rows = default_band(g1, g2, config)
    if rows is None:
        return None
    apart = [layer_cost(g1, producer.tiles, config), layer_cost(g2, consumer.tiles, config)]
    fused = cascade_cost(g1, g2, rows, config)
    if (_dram(*fused), sum(c.cycles for c in fused)) >= (_dram(*apart), sum(c.cycles for c in apart)):
        return None
    return rows, sum(cascade_footprint(g1, g2, rows).values()), _dram(*apart) - _dram(*fused)


def primfunc(producer: LayerPlan, consumer: LayerPlan, rows: int) -> tvm.tirx.PrimFunc:
    """The cascade as ONE PrimFunc(x, producer constants..., consumer constants..., out) in bands of `rows`."""
    return schedule(compute(producer, consumer), producer.geometry, consumer.geometry, rows)


def compute(producer: LayerPlan, consumer: LayerPlan) -> tvm.tirx.PrimFunc:
    """The pair's unscheduled PrimFunc: the consumer's TE compute on the producer's output."""
    producer_kernel, consumer_kernel = kernel(producer.kernel), kernel(consumer.kernel)
    p1, p2 = producer.params, consumer.params
    (x_spec,) = producer.inputs
    g1, g2 = producer.geometry, consumer.geometry
    # The producer runs over the consumer's padded rows (see tiling.extended_producer); the consumer reads the
    # real rows through a row-shifted view, which inlines away, so its padded input indexes the producer rows 1:1.
    px = extended_producer(g1, g2)
    extended = KernelParams(p1.attrs | {"padding": px.padding}, p1.consts)
    top = g2.padding[0]
    x = te.placeholder(x_spec[0], x_spec[1], "X")
    consts1, y1 = producer_kernel.tensors(extended, x, "_p")
    real = te.compute(
        (y1.shape[0], y1.shape[1], g1.out_h, y1.shape[3]), lambda n, c, h, w: y1[n, c, h + top, w], name="intermediate"
    )
    consts2, y2 = consumer_kernel.tensors(p2, real, "_c")
    return te.create_prim_func([x, *consts1, *consts2, y2])


def schedule(func: tvm.tirx.PrimFunc, producer: Geometry, consumer: Geometry, rows: int) -> tvm.tirx.PrimFunc:
    """`compute`'s PrimFunc in bands of `rows`: consumer in row bands (serial: rolling buffers carry rows from
    one band to the next); per band the producer's input rows, accumulator and the intermediate are computed at
    the band loop in SRAM; weights and per-channel parameters of both layers are staged in SRAM once, before
    the band loop."""
    sch = s_tir.Schedule(func)
    y, acc = sch.get_sblock("Y_c"), sch.get_sblock("acc_c")
    xp, acc_p, xp_p = sch.get_sblock("Xp_c"), sch.get_sblock("acc_p"), sch.get_sblock("Xp_p")
    sch.compute_inline(sch.get_sblock("intermediate"))
    sch.compute_inline(sch.get_sblock("Y_p"))  # requantize while writing the intermediate
    # Resident operands: weights of both accumulators, then the per-channel parameters of both requantizes
    # (the producer's now read by the intermediate's block).
    for block, index in ((acc_p, 1), (acc, 1), (xp, 1), (xp, 2), (xp, 3), (y, 1), (y, 2), (y, 3)):
        sch.cache_read(block, index, SRAM_SCOPE)
    n, o, h, _ = sch.get_loops(y)
    band, inner = sch.split(h, [None, rows])
    sch.reorder(n, band, o, inner)
    out = sch.cache_write(y, 0, SRAM_SCOPE)
    sch.reverse_compute_at(out, band)
    for block in (acc, xp, acc_p, xp_p):
        sch.compute_at(block, band)
        sch.set_scope(block, 0, SRAM_SCOPE)
    for block in (y, out):
        vectorize(sch, sch.get_loops(block)[-1])  # output columns as SIMD lanes on the host
    intermediate_rolls, input_rolls = cascade_rolls(producer, consumer, rows)
    # Rolling changes the band loop's iterators to opaque ones: every compute_at above comes first.
    rolled = set()
    for block, rolls_here in ((xp_p, input_rolls), (acc_p, intermediate_rolls), (xp, intermediate_rolls)):
        if rolls_here:
            sch.rolling_buffer(block, 0)
            rolled.add(sch.get(block).name_hint)
    band_local = {sch.get(block).name_hint for block in (acc, y, out, xp, acc_p, xp_p)} - rolled
    if int(sch.get(band).extent) > 1:
        # Band b+1's input rows load (unless they roll: a rolling buffer cannot take two slots) and band b-1's
        # output rows store while band b computes.
        double_buffer(sch, band, {sch.get(xp_p).name_hint} - rolled, {sch.get(out).name_hint})
    return _spatial_again(sch.mod["main"], band_local)


def _spatial_again(func: tvm.tirx.PrimFunc, names: set[str]) -> tvm.tirx.PrimFunc:
    """Rolling marks the band loop's iterators opaque in every block under it, and TVM allocates a buffer
    whose accesses use an opaque iterator outside that loop. The blocks writing buffers that do not roll
    (`names`: the consumer's accumulator and output tile, and whatever has no overlap between bands)
    carry nothing from one band to the next: they get their spatial iterators back, so those buffers
    stay one band in SRAM. No Python TIR mutator exists in 0.27: the path is rebuilt by hand."""

    def visit(stmt):
        if isinstance(stmt, tirx.SeqStmt):
            return tirx.SeqStmt([visit(child) for child in stmt.seq])
        if isinstance(stmt, tirx.For):
            return tirx.For(
                stmt.loop_var, stmt.min, stmt.extent, stmt.kind, visit(stmt.body), stmt.thread_binding, stmt.annotations
            )
        if isinstance(stmt, s_tir.SBlockRealize):
            block = stmt.block
            iters = block.iter_vars
            if block.name_hint in names:
                iters = [
                    tirx.IterVar(v.dom, v.var, tirx.IterVar.DataPar if v.iter_type == tirx.IterVar.Opaque else v.iter_type)
                    for v in iters
                ]
            body = block.body if block.name_hint in names else visit(block.body)
            rebuilt = s_tir.SBlock(
                iters,
                block.reads,
                block.writes,
                block.name_hint,
                body,
                block.init,
                block.alloc_buffers,
                block.match_buffers,
                block.annotations,
            )
            return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, rebuilt)
        return stmt

    return func.with_body(visit(func.body))
