"""npu.conv2d_csr: npu.conv2d with CSR weights (tvm_npu.sparse), zero-skipping; a variant the planner picks.

Rows are output channels, columns the reduction K = cin*kh*kw in OIHW order; each non-zero
(c, r, s) adds its weight times the input shifted by (r, s) to a whole output row tile:

    acc[o,y,x] = sum over the non-zeros j of row o: (Xp[c_j, y*sh + r_j*dh, x*sw + s_j*dw] - zx) * values[j]
    Y = clamp(((acc << k) + B[o]) * M[o] >> S[o] (round half up) + zy)     (npu.conv2d's epilogue)

Xp is the input padded with zx (real 0), exactly as npu.conv2d stages it: per output-channel tile
(parallel on the host) the row pointers, non-zeros and parameters go to SRAM, sized for the fullest
tile; padded input row tiles (with halo) stream through SRAM double-buffered, and the output
columns are the host's vector lanes. Grouped and depthwise convolutions stay dense (`check`).
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

from . import conv2d


def check(base: KernelParams) -> str | None:
    if base.attrs["groups"] > 1:
        return "grouped/depthwise conv: its rows have only kh*kw*cin/groups taps, it stays dense"
    return None


def compute(p: KernelParams, inputs):
    ((x_shape, _),) = inputs
    shape = conv2d.out_shape(p.attrs, x_shape, p.attrs["weight_shape"])
    return _primfunc(csr_layer(p, inputs), Tiles(shape[2], shape[1], "weights"))


def _primfunc(layer: dict, tiles: Tiles) -> tirx.PrimFunc:
    a, (x_shape, x_dtype) = layer["attrs"], layer["input"]
    batch, c_in, height, width = x_shape
    out_channels, _, kh, kw = a["weight_shape"]
    _, _, out_h, out_w = y_shape = conv2d.out_shape(a, x_shape, a["weight_shape"])
    (sh, sw), (pt, pl, _, _), (dh, dw) = a["strides"], a["padding"], a["dilation"]
    g = layer_geometry(layer, conv2d.conv_geometry(a, x_shape, a["weight_shape"]))
    r, c = tiles.rows, tiles.channels
    rows_in, cols_in = g.rows_in(r), g.cols_in
    row_tiles, chan_tiles = inner_trips(g, tiles), outer_trips(g, tiles)
    slots = buffer_slots(g, tiles)
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name("main")
            x, csr, params, y = csr_arguments(layer, y_shape)
            with channel_tile_loop(chan_tiles, tiles) as ct, T.serial(0, batch) as n:
                first = ct * c
                rowptr_s, values_s, indices_s, (bias, mult, shift) = stage_weight_tile(
                    csr, params, out_channels, first, c, g.csr_tile_capacity(c)
                )
                x_s = sram_buffer((slots, c_in, rows_in, cols_in), x_dtype)
                acc = sram_buffer((c, r, out_w), "int32")
                out = sram_buffer((slots, c, r, out_w), a["out_dtype"])

                def load(t, slot):
                    top = t * r * sh - pt  # first (unpadded) input row of the tile
                    with T.grid(c_in, rows_in, cols_in) as (ch, h, w):
                        inside = tirx.all(top + h >= 0, top + h < height, w >= pl, w < pl + width)
                        x_s[slot, ch, h, w] = tirx.if_then_else(
                            inside,
                            x[n, ch, tirx.max(tirx.min(top + h, height - 1), 0), tirx.max(tirx.min(w - pl, width - 1), 0)],
                            tirx.const(a["zx"], x_dtype),
                        )

                def compute_tile(t, slot):
                    valid = tirx.min(r, out_h - t * r)  # the last row tile may be short
                    with channel_loop(chan_tiles, c, tiles) as i:
                        with T.grid(r, out_w) as (h, w):
                            acc[i, h, w] = 0
                        with T.serial(rowptr_s[i], rowptr_s[i + 1]) as j:
                            k = indices_s[j].astype("int32")
                            ch, tap_h, tap_w = k // (kh * kw), k // kw % kh, k % kw
                            weight = values_s[j].astype("int32")
                            with T.serial(0, valid) as h:
                                with lanes(out_w, tiles) as w:
                                    acc[i, h, w] = acc[i, h, w] + weight * (
                                        x_s[slot, ch, h * sh + tap_h * dh, w * sw + tap_w * dw].astype("int32") - a["zx"]
                                    )
                        with T.grid(r, out_w) as (h, w):
                            out[slot, i, h, w] = epilogue_te(acc[i, h, w], bias[i], mult[i], shift[i], a)

                def store(t, slot):
                    row = t * r
                    with T.grid(c, r, out_w) as (i, h, w):
                        with T.If(tirx.all(first + i < out_channels, row + h < out_h)):
                            with T.Then():
                                y[n, first + i, row + h, w] = out[slot, i, h, w]

                stream_tiles(row_tiles, load, compute_tile, store, tiles.double_buffer)
    return builder.get().with_attr("npu_csr_layer", json.dumps(layer))


KERNEL = csr_variant(
    conv2d.KERNEL,
    check,
    compute,
    _primfunc,
    (
        "a variant of npu.conv2d, chosen per layer by the model (--sparse auto|off|force)",
        "not grouped or depthwise (those stay dense)",
    ),
)
