"""npu.dense_csr: npu.dense with CSR weights (tvm_npu.sparse), zero-skipping; a variant the planner picks.

    acc[n,o] = sum over the non-zeros j of row o: (X[n, indices[j]] - zx) * values[j]
    Y = clamp(((acc << k) + B[o]) * M[o] >> S[o] (round half up) + zy)     (npu.dense's epilogue)

Per output-channel tile (parallel on the host) the tile's row pointers, non-zeros and parameters
are staged into SRAM, sized for the fullest tile; X row tiles stream through SRAM transposed
([K, rows]) so that each non-zero multiplies a vector of rows, double-buffered.
"""

from __future__ import annotations

import json

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from tvm_npu.fixed_point import epilogue_te
from tvm_npu.tiling import Tiles, buffer_slots, inner_trips, outer_trips
from tvm_npu.registry import KernelParams
from tvm_npu.sparse import (
    channel_loop,
    channel_tile_loop,
    csr_arguments,
    csr_layer,
    csr_variant,
    layer_geometry,
    lanes,
    sram_buffer,
    stage_weight_tile,
    stream_tiles,
)

from . import dense


def check(base: KernelParams) -> str | None:
    if base.attrs["lead"]:
        return "an input with unit dimensions before [N, K]: it stays dense"
    return None


def compute(p: KernelParams, inputs):
    ((x_shape, _),) = inputs
    return _primfunc(csr_layer(p, inputs), Tiles(x_shape[0], p.attrs["weight_shape"][0], "weights"))


def _primfunc(layer: dict, tiles: Tiles) -> tirx.PrimFunc:
    a, (x_shape, x_dtype) = layer["attrs"], layer["input"]
    (rows_total, depth), (out_channels, _) = x_shape, a["weight_shape"]
    g = layer_geometry(layer, dense.dense_geometry(x_shape, a["weight_shape"]))
    r, c = tiles.rows, tiles.channels
    row_tiles, chan_tiles = inner_trips(g, tiles), outer_trips(g, tiles)
    slots = buffer_slots(g, tiles)
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name("main")
            x, csr, params, y = csr_arguments(layer, (rows_total, out_channels))
            with channel_tile_loop(chan_tiles, tiles) as ct:
                first = ct * c
                rowptr_s, values_s, indices_s, (bias, mult, shift) = stage_weight_tile(
                    csr, params, out_channels, first, c, g.csr_tile_capacity(c)
                )
                x_s = sram_buffer((slots, depth, r), x_dtype)
                acc = sram_buffer((c, r), "int32")
                out = sram_buffer((slots, c, r), a["out_dtype"])

                def load(t, slot):
                    with T.grid(depth, r) as (k, n):  # rows past the end repeat the last: computed, never stored
                        x_s[slot, k, n] = x[tirx.min(t * r + n, rows_total - 1), k]

                def compute_tile(t, slot):
                    with channel_loop(chan_tiles, c, tiles) as i:
                        with lanes(r, tiles) as n:
                            acc[i, n] = 0
                        with T.serial(rowptr_s[i], rowptr_s[i + 1]) as j:
                            with lanes(r, tiles) as n:
                                acc[i, n] = acc[i, n] + (x_s[slot, indices_s[j], n].astype("int32") - a["zx"]) * values_s[
                                    j
                                ].astype("int32")
                        with lanes(r, tiles) as n:
                            out[slot, i, n] = epilogue_te(acc[i, n], bias[i], mult[i], shift[i], a)

                def store(t, slot):
                    with T.grid(r, c) as (n, i):
                        with T.If(tirx.all(t * r + n < rows_total, first + i < out_channels)):
                            with T.Then():
                                y[t * r + n, first + i] = out[slot, i, n]

                stream_tiles(row_tiles, load, compute_tile, store, tiles.double_buffer)
    return builder.get().with_attr("npu_csr_layer", json.dumps(layer))


KERNEL = csr_variant(
    dense.KERNEL, check, compute, _primfunc, ("a variant of npu.dense, chosen per layer by the model (--sparse auto|off|force)",)
)
