"""npu.pool: quantized max pool, average pool and global average pool (NCHW), integer-only.

    max: Y = clamp((max over valid taps of X - zx) * M >> S (round half up) + zy)
         (M >> S is exactly 1 when input and output share their quantization)
    avg: Y = clamp(round(sum (X - zx) * M / (count * 2^S)) + zy)   integer division, half up;
         count = window taps, or only the taps inside the image without count_include_pad
         (a TFLite model's AVERAGE_POOL_2D, which keeps its input's quantization: TFLite's
         round(sum X / count), half away from zero, so that it is bit-exact to TFLite's interpreter)

Tiled like a depthwise conv without weights: padded 8-bit input rows with halo (padding
generated on chip: the dtype's minimum for max, zx for avg), an int32 accumulator and the
output tile per (channel tile, row tile) in SRAM; a global pool is one row over whole planes,
tiled by channels.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import s_tir, te, tirx
from tvm.relax.dpl import is_const, is_op

from tvm_npu.fixed_point import (
    arithmetic_attrs,
    multiplier,
    requantize_np,
    requantize_te,
    scale_problem,
    tflite_divide_np,
    tflite_divide_te,
)
from tvm_npu.onnx_builder import quantized_operator, random_activation
from tvm_npu.tiling import Geometry, Tiles, window_span
from tvm_npu.registry import (
    Composite,
    KernelParams,
    NpuKernel,
    const_value,
    dequantized_tensor,
    op_name,
    per_tensor_problem,
)
from tvm_npu.sram import SRAM_SCOPE, finish_tile_loops

_POOLS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.mean")


def patterns():
    dq_x = dequantized_tensor()
    anchor = is_op("relax.nn.max_pool2d")(dq_x) | is_op("relax.nn.avg_pool2d")(dq_x) | is_op("relax.mean")(dq_x)
    root = is_op("relax.quantize")(anchor, is_const(), is_const())
    return [(root, {"x": dq_x, "anchor": anchor, "root": root})]


def check(ann) -> str | None:
    dq_x, anchor = ann["x"], ann["anchor"]
    problem = per_tensor_problem(dq_x, ann["root"])
    if problem:
        return problem
    if len(dq_x.ty.shape) != 4:
        return "shape: pooling needs an NCHW tensor"
    attrs = anchor.attrs
    if op_name(anchor) == "relax.mean":
        if sorted(int(a) % 4 for a in attrs.axis) != [2, 3] or not attrs.keepdims:
            return "attribute: mean over other axes than H, W with keepdims (not a global average pool)"
        if math.prod([int(d) for d in dq_x.ty.shape][2:]) * 255 > 2**31 - 1:
            return "shape: a plane too large for the int32 accumulator"
    else:
        if attrs.layout != "NCHW" or attrs.ceil_mode:
            return f"attribute: layout {attrs.layout} / ceil_mode {bool(attrs.ceil_mode)} (the NPU pools NCHW, floor mode)"
        if op_name(anchor) == "relax.nn.avg_pool2d" and any(int(d) != 1 for d in attrs.dilation):
            return "attribute: dilated average pool"
    return scale_problem(float(const_value(dq_x.args[1])) / float(const_value(ann["root"].args[1])))


def params(comp: Composite) -> KernelParams:
    (anchor,) = [v for v in comp.bindings.values() if op_name(v) in _POOLS]
    sx, zx = comp.activation_input(comp.value(anchor.args[0]))
    sy, zy, dtype, lo, hi = comp.output()
    mult, shift = multiplier(sx / sy)
    attrs = {"zx": zx, "zy": zy, "lo": lo, "hi": hi, "out_dtype": dtype, "mult": int(mult), "shift": int(shift)}
    if op_name(anchor) == "relax.mean":
        _, _, h, w = (int(d) for d in anchor.args[0].ty.shape)
        attrs.update(mode="avg", pool=(h, w), strides=(1, 1), dilation=(1, 1), padding=(0, 0, 0, 0), include_pad=True)
    else:
        a = anchor.attrs
        attrs.update(
            mode="max" if op_name(anchor) == "relax.nn.max_pool2d" else "avg",
            pool=tuple(int(v) for v in a.pool_size),
            strides=tuple(int(v) for v in a.strides),
            dilation=tuple(int(v) for v in a.dilation),
            padding=tuple(int(v) for v in a.padding),
            include_pad=bool(a.count_include_pad),
        )
        if attrs["mode"] == "avg" and (sx, zx) == (sy, zy):  # TFLite's AVERAGE_POOL_2D (its MEAN computes in float)
            attrs.update(arithmetic_attrs())
    return KernelParams(attrs)


def out_shape(attrs, x_shape):
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = attrs["pool"], attrs["strides"], attrs["dilation"], attrs["padding"]
    return (n, c, (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def _count(attrs, x_shape, i, j, minimum, maximum):
    """Taps averaged at output (i, j): the whole window, or only those inside the image."""
    (kh, kw), (sh, sw), (pt, pl, _, _) = attrs["pool"], attrs["strides"], attrs["padding"]
    if attrs["include_pad"]:
        return kh * kw
    h, w = x_shape[2:]
    rows = minimum(i * sh - pt + kh, h) - maximum(i * sh - pt, 0)
    cols = minimum(j * sw - pl + kw, w) - maximum(j * sw - pl, 0)
    return rows * cols


def _rounded_divide(num, den, floordiv):
    return floordiv(2 * num + den, 2 * den)


def compute(p: KernelParams, inputs):
    ((x_shape, x_dtype),) = inputs
    a = p.attrs
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, _, _) = a["pool"], a["strides"], a["dilation"], a["padding"]
    n_, c_, height, width = x_shape
    shape = out_shape(a, x_shape)
    x = te.placeholder(x_shape, x_dtype, "X")
    # Padding that never wins a max (the dtype's minimum) or adds nothing to a sum (zx): the padded
    # input stays 8-bit, as the tile the SRAM schedule stages. It ends at the last row and column a window
    # reads, as npu.conv2d's (window_span: rows past it would let TVM compact a short last row tile larger).
    fill = tirx.const(int(np.iinfo(x_dtype).min) if a["mode"] == "max" else a["zx"], x_dtype)
    xp = te.compute(
        (n_, c_, window_span(shape[2], kh, sh, dh), window_span(shape[3], kw, sw, dw)),
        lambda n, c, h, w: tirx.if_then_else(
            tirx.all(h >= pt, h < pt + height, w >= pl, w < pl + width), x[n, c, h - pt, w - pl], fill
        ),
        name="Xp",
    )
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")

    def tap(n, c, i, j, r=rh, s=rw):
        return xp[n, c, i * sh + r * dh, j * sw + s * dw].astype("int32") - a["zx"]

    if kh * kw == 1:  # no reduction: a reduction block over unit loops would leave a one-pixel tile loop-free
        acc = te.compute(shape, lambda n, c, i, j: tap(n, c, i, j, 0, 0), name="acc")
    else:
        reduce_op = te.max if a["mode"] == "max" else te.sum
        acc = te.compute(shape, lambda n, c, i, j: reduce_op(tap(n, c, i, j), axis=[rh, rw]), name="acc")
    if a["mode"] == "max":
        y = te.compute(
            shape,
            lambda *i: requantize_te(acc[i].astype("int64"), a["mult"], a["shift"], a["zy"], a["lo"], a["hi"], a["out_dtype"]),
            name="Y",
        )
    else:

        def average(n, c, i, j):
            count = tirx.Cast("int64", _count(a, x_shape, i, j, tirx.min, tirx.max))
            if a.get("arithmetic"):  # TFLite: the raw sum (padding taps add nothing) over the valid taps
                q = tflite_divide_te(acc[n, c, i, j].astype("int64") + count * a["zx"], count) - a["zx"]
            else:
                q = _rounded_divide(acc[n, c, i, j].astype("int64") * a["mult"], count << a["shift"], tirx.floordiv)
            clamped = tirx.max(tirx.min(q + a["zy"], tirx.const(a["hi"], "int64")), tirx.const(a["lo"], "int64"))
            return clamped.astype(a["out_dtype"])

        y = te.compute(shape, average, name="Y")
    return te.create_prim_func([x, y])


def reference(p: KernelParams, inputs) -> np.ndarray:
    (x,) = inputs
    a = p.attrs
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = a["pool"], a["strides"], a["dilation"], a["padding"]
    n, c, oh, ow = out_shape(a, x.shape)
    xs = x.astype(np.int64) - a["zx"]
    fill = np.iinfo(x.dtype).min - a["zx"] if a["mode"] == "max" else 0
    xp = np.pad(xs, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    taps = np.stack(
        [
            xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            for i in range(kh)
            for j in range(kw)
        ]
    )
    if a["mode"] == "max":
        return requantize_np(taps.max(0), a["mult"], a["shift"], a["zy"], a["lo"], a["hi"], a["out_dtype"])
    count = np.array([[_count(a, x.shape, i, j, min, max) for j in range(ow)] for i in range(oh)], np.int64)
    if a.get("arithmetic"):
        q = tflite_divide_np(taps.sum(0) + count * a["zx"], count) - a["zx"]
    else:
        q = _rounded_divide(taps.sum(0) * a["mult"], count << a["shift"], np.floor_divide)
    return np.clip(q + a["zy"], a["lo"], a["hi"]).astype(a["out_dtype"])


def examples(rng):
    def pool(name, op_type, shape, openvino_deviation=None, **attributes):
        example = quantized_operator(
            name, op_type, [random_activation(rng, shape)], rng, out_dtype=str(rng.choice(["int8", "uint8"])), **attributes
        )
        example.openvino_deviation = openvino_deviation
        return example

    k = int(rng.integers(1, 4))
    return [
        pool("max_3x3_stride2_pad1", "MaxPool", (1, 5, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        pool(
            "avg_3x3_pad1_exclude_pad", "AveragePool", (1, 5, 5, 6), kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0
        ),
        pool(
            "avg_2x2_stride2_pad1_include_pad",
            "AveragePool",
            (1, 3, 7, 6),
            kernel_shape=[2, 2],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            count_include_pad=1,
            openvino_deviation="OpenVINO 2026.4 averages quantized border windows with count_include_pad=1 as if "
            "the padding held integer 0, not the zero point (real 0)",
        ),
        pool("avg_2x2_stride2_uneven_pads", "AveragePool", (1, 3, 7, 6), kernel_shape=[2, 2], strides=[2, 2], pads=[1, 0, 0, 1]),
        pool("global_average", "GlobalAveragePool", (1, 7, 5, 3)),
        pool(
            f"random_{k}x{k}",
            str(rng.choice(["MaxPool", "AveragePool"])),
            (1, int(rng.integers(1, 9)), k + 4, k + 3),
            kernel_shape=[k, k],
            strides=[int(rng.integers(1, 3))] * 2,
            pads=[int(p) for p in rng.integers(0, k, 4)],
        ),
    ]


def geometry(p: KernelParams, inputs) -> Geometry:
    """A depthwise window without weights (groups = channels)."""
    ((x_shape, _),) = inputs
    a = p.attrs
    n, c, oh, ow = out_shape(a, x_shape)
    return Geometry(
        "pool",
        n,
        c,
        x_shape[2],
        x_shape[3],
        c,
        oh,
        ow,
        tuple(a["pool"]),
        tuple(a["strides"]),
        tuple(a["dilation"]),
        tuple(a["padding"]),
        groups=c,
        label=f"{a['mode']} pool {a['pool'][0]}x{a['pool'][1]}/{a['strides'][0]} "
        f"{'x'.join(map(str, x_shape[1:]))} -> {c}x{oh}x{ow}",
    )


def schedule(func: tirx.PrimFunc, tiles: Tiles) -> tirx.PrimFunc:
    """SRAM tiles of padded input rows with halo (per channel tile: no weights to keep, so the input
    streams in either loop order), int32 accumulator and output; inner tile loop double-buffered
    unless `tiles` says otherwise."""
    sch = s_tir.Schedule(func)
    y, acc, xp = sch.get_sblock("Y"), sch.get_sblock("acc"), sch.get_sblock("Xp")
    n, c, h, _ = sch.get_loops(y)
    co, ci = sch.split(c, [None, tiles.channels])
    ho, hi = sch.split(h, [None, tiles.rows])
    outer, inner = (co, ho) if tiles.order == "weights" else (ho, co)
    sch.reorder(n, outer, inner, ci, hi)
    y_out = sch.cache_write(y, 0, SRAM_SCOPE)
    sch.reverse_compute_at(y_out, inner)
    for block in (acc, xp):
        sch.compute_at(block, inner)
        sch.set_scope(block, 0, SRAM_SCOPE)
    return finish_tile_loops(sch, tiles, y, y_out, outer, inner, {"Xp"}, tile_loops=3)


KERNEL = NpuKernel(
    name="npu.pool",
    anchors=_POOLS,
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    reference=reference,
    examples=examples,
    limits=(
        "MaxPool, AveragePool (NCHW, floor mode, no dilation for AveragePool), GlobalAveragePool / mean over H, W",
        "activations and output per tensor",
        "rescale factor (input scale / output scale) within the fixed-point range",
    ),
    geometry=geometry,
    schedule=schedule,
)
