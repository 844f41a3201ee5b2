"""On-chip SRAM in TIR: the scope NPU tiles live in, double buffering, and the footprint proof.

- `SRAM_SCOPE` is the storage scope every per-tile buffer gets (`global.npu_sram`); on the
  host (llvm) it lowers to an ordinary workspace allocation.
- `double_buffer(sch, loop, loads, stores)` pipelines a tile loop with TVM's software
  pipeline (`software_pipeline_stage` annotations, lowered by `InjectSoftwarePipeline` in the
  default llvm pipeline): stage 0 = DMA-in of tile i+1, stage 1 = compute of tile i,
  stage 2 = DMA-out of tile i-1. TVM then turns every SRAM buffer written in one stage and
  read in a later one into a 2-slot buffer indexed by the tile parity, so both slots show up
  as allocations in the lowered TIR.
- `prove_footprint(func)` lowers a scheduled PrimFunc exactly as far as TVM's own pipeline
  does before flattening (block lowering, buffer compaction, software pipelining) and sums
  the `AllocBuffer` nodes in the SRAM scope: the footprint the planner promised is checked
  against what the compiler actually allocates, not against the planner's arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, tirx

SRAM_SCOPE = "global.npu_sram"

# The widest loop `vectorize` hands LLVM: two AVX2 (one AVX-512) registers of int32 lanes. A whole output
# row as one vector (2100 lanes of a YOLO head's table lookup, 160 of a conv's int64 requantize) runs no
# faster on the host, and LLVM spends seconds to minutes per kernel legalizing and scalarizing it.
HOST_VECTOR_LANES = 16


@dataclass(frozen=True)
class SramProof:
    """SRAM allocations read back from a lowered PrimFunc: (name, bytes) per buffer and the total."""

    buffers: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(size for _, size in self.buffers)


def double_buffer(sch: s_tir.Schedule, loop, loads: set[str], stores: set[str]) -> None:
    """Pipelines `loop`: its child blocks named in `loads` run a tile ahead, those in `stores` a tile behind."""
    names = [sch.get(block).name_hint for block in sch.get_child_blocks(loop)]
    stages = [0 if name in loads else 2 if name in stores else 1 for name in names]
    sch.annotate(loop, "software_pipeline_stage", stages)
    sch.annotate(loop, "software_pipeline_order", list(range(len(names))))


def stage_matrix_tiles(sch: s_tir.Schedule, y, acc, outer, inner, weights_outer: bool):
    """The SRAM tiles conv2d and dense share: output tile and int32 accumulator per inner tile;
    weight tile (acc's input 1) and per-channel parameters (Y's bias, multiplier, shift) at the
    tile loop over output channels. Returns the output copy-out block and the parameter loads."""
    y_out = sch.cache_write(y, 0, SRAM_SCOPE)
    sch.reverse_compute_at(y_out, inner)
    sch.compute_at(acc, inner)
    sch.set_scope(acc, 0, SRAM_SCOPE)
    stationary = [sch.cache_read(acc, 1, SRAM_SCOPE)] + [sch.cache_read(y, i, SRAM_SCOPE) for i in (1, 2, 3)]
    for block in stationary:
        sch.compute_at(block, outer if weights_outer else inner)
    return y_out, stationary


def vectorize(sch: s_tir.Schedule, loop) -> None:
    """Runs `loop` as SIMD lanes on the host: its innermost part of the largest extent that divides it
    and is at most `HOST_VECTOR_LANES` (a divisor, so no lane is predicated off); serial if that is 1."""
    extent = int(sch.get(loop).extent)
    lanes = max(d for d in range(1, min(extent, HOST_VECTOR_LANES) + 1) if extent % d == 0)
    if lanes == 1:
        return
    sch.vectorize(sch.split(loop, [None, lanes])[1] if lanes < extent else loop)


def finish_tile_loops(sch: s_tir.Schedule, tiles, y, y_out, outer, inner, loads: set[str], tile_loops: int) -> tirx.PrimFunc:
    """Applies the tiling's loop knobs (`tiling.Tiles`): vectorizes the output's innermost loops,
    double-buffers the inner tile loop, runs the outer one in parallel on the host. `tile_loops`
    counts the loops enclosing one tile."""
    for block in (y, y_out) if tiles.vectorize else ():
        loops = sch.get_loops(block)
        if len(loops) > tile_loops:  # never the tile loops themselves (a 1x1 output tile has none of its own)
            vectorize(sch, loops[-1])
    if tiles.double_buffer and int(sch.get(inner).extent) > 1:  # one inner tile has nothing to overlap
        double_buffer(sch, inner, loads, {sch.get(y_out).name_hint})
    if tiles.parallel:
        sch.parallel(outer)
    return sch.mod["main"]


def stream_tiles(
    func: tirx.PrimFunc, tiles, row_axis: int, stationary: frozenset[str] = frozenset(), inside: int | None = None
) -> tirx.PrimFunc:
    """The SRAM schedule of a one-block kernel `Y` without weights (elementwise, lookup table, concat):
    tiles of `tiles.rows` along dimension `row_axis` (`inside`: an earlier dimension moved into the
    tile, concat's axis). Every buffer Y reads streams into SRAM per tile, except those named in
    `stationary` (a lookup table: its index is data, so it is staged whole, once per layer,
    before the tile loops); the output tile is written back from
    SRAM. With one channel, the channel-tile loop is a unit loop: outer in order "weights" (the row
    tiles are the inner, double-buffered loop), inner in order "rows" (the row tiles are the outer,
    parallel loop)."""
    sch = s_tir.Schedule(func)
    y = sch.get_sblock("Y")
    loops = sch.get_loops(y)
    rows_outer, rows_inner = sch.split(loops[row_axis], [None, tiles.rows])
    if inside is not None:
        sch.reorder(rows_outer, loops[inside])
    unit = sch.add_unit_loop(rows_outer if tiles.order == "weights" else rows_inner if inside is None else loops[inside])
    outer, inner = (unit, rows_outer) if tiles.order == "weights" else (rows_outer, unit)
    y_out = sch.cache_write(y, 0, SRAM_SCOPE)
    sch.reverse_compute_at(y_out, inner)
    loads = set()
    for name in [region.source.name for region in sch.get(y).reads]:
        index = [region.source.name for region in sch.get(y).reads].index(name)
        block = sch.cache_read(y, index, SRAM_SCOPE)
        if name not in stationary:
            sch.compute_at(block, inner)
            loads.add(sch.get(block).name_hint)
    return finish_tile_loops(sch, tiles, y, y_out, outer, inner, loads, tile_loops=row_axis - (inside is not None) + 2)


_LOWER_TO_ALLOCATIONS = (
    s_tir.transform.CanonicalizeLoop,
    s_tir.transform.LowerInitBlock,
    s_tir.transform.PlanAndUpdateBufferAllocationLocation,
    s_tir.transform.ConvertBlocksToOpaque,
    s_tir.transform.CompactBufferAllocation,
    s_tir.transform.LowerMatchBuffer,
    s_tir.transform.StmtSimplify,
    s_tir.transform.InjectSoftwarePipeline,
    s_tir.transform.LowerOpaqueBlock,
    tirx.transform.FlattenBuffer,
)


def prove_footprint(func: tirx.PrimFunc) -> SramProof:
    """The SRAM bytes one tile iteration of `func` allocates, as TVM lowers it (both slots of double buffers)."""
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    lowered = tvm.transform.Sequential([make() for make in _LOWER_TO_ALLOCATIONS])(mod)["main"]
    found: list[tuple[str, int]] = []
    _collect(lowered.body, found)
    return SramProof(tuple(found))


def _collect(stmt, found: list[tuple[str, int]]) -> None:
    """Walks the TIR (no Python post-order visitor in 0.27) collecting SRAM AllocBuffer nodes."""
    if stmt is None:
        return
    if isinstance(stmt, tirx.AllocBuffer):
        buffer = stmt.buffer
        if buffer.scope() == SRAM_SCOPE:
            elements = int(np.prod([int(d) for d in buffer.shape]))
            found.append((buffer.name, elements * tvm.DataType(buffer.dtype).bits // 8))
    if isinstance(stmt, tirx.SeqStmt):
        for child in stmt.seq:
            _collect(child, found)
        return
    for attr in ("body", "then_case", "else_case", "block", "init"):
        child = getattr(stmt, attr, None)
        if isinstance(child, tirx.Stmt):
            _collect(child, found)
