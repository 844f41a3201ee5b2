"""npu.conv2d: quantized 2-D convolution (any kernel size, stride, padding, dilation, groups,
depthwise) with bias and fused ReLU / ReLU6 / Clip, integer-only inside.

    acc[n,o,y,x] = sum (X - zx) * W          int8 x int8 -> int32, padding taps hold zx (= real 0)
    Y = clamp(((acc << k) + B[o]) * M[o] >> S[o] (round half up) + zy)    per output channel

The attribute `upsample` (u_h, u_w) convolves the input with u - 1 rows and columns of zx (real 0)
inserted between its own: a transposed convolution is that (npu.conv2d_transpose); 1 for a plain conv.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, te, tirx
from tvm.relax.dpl import is_const, is_op, wildcard

from tvm_npu.fixed_point import (
    BIAS_FRACTION_BITS,
    arithmetic_attrs,
    epilogue_consts,
    epilogue_np,
    epilogue_te,
    scale_problem,
)
from tvm_npu.onnx_builder import Constant, quantized_operator, random_activation, random_weight
from tvm_npu.tiling import Geometry, Tiles, window_span
from tvm_npu.registry import (
    Composite,
    KernelParams,
    NpuKernel,
    accumulator_overflows,
    const_value,
    dequantized_constant,
    dequantized_tensor,
    dtype_of,
    pattern_activation,
    per_tensor_problem,
)
from tvm_npu.sram import SRAM_SCOPE, finish_tile_loops, stage_matrix_tiles, vectorize


def patterns():
    dq_x = dequantized_tensor()
    dq_w = dequantized_constant()
    conv = is_op("relax.nn.conv2d")(dq_x, dq_w)
    bias_src = is_const() | dequantized_constant()
    biased = is_op("relax.add")(conv, bias_src | is_op("relax.reshape")(bias_src, wildcard()))
    root = is_op("relax.quantize")(pattern_activation(conv | biased), is_const(), is_const())
    return [(root, {"x": dq_x, "w": dq_w, "anchor": conv, "root": root})]


def _input_problem(dq_x, conv) -> str | None:
    """As for every kernel the input is per tensor, except that a depthwise conv (each output channel
    reads one input channel) also takes per-channel inputs: the scale folds into that channel's
    multiplier. NNCF quantizes depthwise inputs per channel for OpenVINO's CPU plugin."""
    if not all(isinstance(a, tvm.ir.expr.Constant) for a in dq_x.args[1:3]) or const_value(dq_x.args[1]).size == 1:
        return per_tensor_problem(dq_x)
    scale, zp = const_value(dq_x.args[1]), const_value(dq_x.args[2]).reshape(-1)
    channels = int(dq_x.ty.shape[1])
    if int(dq_x.attrs.axis) % 4 != 1 or scale.size != channels or int(conv.attrs.groups) != channels:
        return "attribute: per-channel activation quantization (the NPU takes it on depthwise conv inputs only)"
    if np.any(zp != zp[0]):
        return "attribute: per-channel activation zero points that differ"
    if dtype_of(dq_x.args[0]) not in ("int8", "uint8"):
        return f"dtype: {dtype_of(dq_x.args[0])} activations (the NPU takes int8/uint8)"
    return None


def check(ann) -> str | None:
    conv, dq_w = ann["anchor"], ann["w"]
    problem = output_problem(ann["root"]) or _input_problem(ann["x"], conv)
    if problem:
        return problem
    attrs = conv.attrs
    if (attrs.data_layout, attrs.kernel_layout) != ("NCHW", "OIHW"):
        return f"attribute: layout {attrs.data_layout}/{attrs.kernel_layout} (the NPU takes NCHW/OIHW)"
    return weight_problem(dq_w, 0) or scale_problem(
        _input_scale(const_value(ann["x"].args[1]), conv)
        * const_value(dq_w.args[1]).astype(np.float64)
        / float(const_value(ann["root"].args[1])),
        BIAS_FRACTION_BITS,
    )


def output_problem(root) -> str | None:
    """Why the NPU conv cannot write this output quantize (it requantizes per tensor)."""
    if all(isinstance(a, tvm.ir.expr.Constant) for a in root.args[1:3]) and const_value(root.args[1]).size > 1:
        # NNCF does this when the output feeds a depthwise conv (see _input_problem).
        return "attribute: per-channel output quantization (the NPU conv requantizes per tensor)"
    return per_tensor_problem(root)


def weight_problem(dq_w, out_axis: int) -> str | None:
    """Why these weights are not int8, symmetric, per tensor or per output channel (`out_axis`)."""
    w = const_value(dq_w.args[0])
    if w.dtype != np.int8:
        return f"dtype: {w.dtype} weights (the NPU takes int8)"
    if np.any(const_value(dq_w.args[2]) != 0):
        return "attribute: asymmetric weights (non-zero weight zero point)"
    if const_value(dq_w.args[1]).size > 1 and int(dq_w.attrs.axis) % w.ndim != out_axis:
        return "attribute: weight scales not per output channel"
    taps = int(np.prod(w.shape)) // w.shape[out_axis]
    if accumulator_overflows(taps):
        return f"shape: {taps} taps per output overflow the int32 accumulator"
    return None


def _input_scale(scale: np.ndarray, conv) -> np.ndarray | float:
    """The input scale per output channel (depthwise per-channel inputs), or the one scale."""
    scale = np.asarray(scale, np.float64).reshape(-1)
    if scale.size == 1:
        return float(scale[0])
    out_channels = int(conv.ty.shape[1])
    return np.repeat(scale, out_channels // scale.size)  # groups == input channels: o reads o // per_group


def params(comp: Composite) -> KernelParams:
    conv = comp.call("relax.nn.conv2d")
    dq_x, dq_w = comp.value(conv.args[0]), comp.value(conv.args[1])
    sx, zx = comp.quant(dq_x)
    w = comp.const(dq_w.args[0]).astype(np.int8)
    w_scale = np.broadcast_to(comp.quant(dq_w)[0].reshape(-1), (w.shape[0],))
    return KernelParams(
        conv_attrs(comp, conv, int(zx.reshape(-1)[0])),  # zero points are uniform (check)
        [w, *epilogue(comp, _input_scale(sx, conv) * w_scale)],
    )


def conv_attrs(comp: Composite, conv, zx: int, upsample=(1, 1)) -> dict:
    """The attributes of a conv2d-family call and its output quantization."""
    _, zy, dtype, lo, hi = comp.output()
    a = conv.attrs
    return {
        "strides": tuple(int(v) for v in a.strides),
        "padding": tuple(int(v) for v in a.padding),
        "dilation": tuple(int(v) for v in a.dilation),
        "groups": int(a.groups),
        "upsample": tuple(upsample),
        "zx": zx,
        "zy": zy,
        "lo": lo,
        "hi": hi,
        "out_dtype": dtype,
        **arithmetic_attrs(),
    }


def epilogue(comp: Composite, acc_scale: np.ndarray) -> list[np.ndarray]:
    """Bias (in accumulator units), multiplier and shift per output channel (`fixed_point.epilogue_consts`),
    from the accumulator's real scale per output channel and the output quantize."""
    adds = comp.calls("relax.add")
    bias = comp.const(adds[0].args[1]).reshape(-1) if adds else np.zeros(acc_scale.size)
    return epilogue_consts(bias, acc_scale, comp.output()[0])


def upsampled(attrs: dict, height: int, width: int) -> tuple[int, int]:
    """The height and width of the input with `upsample - 1` zero rows/columns between its own."""
    uh, uw = attrs["upsample"]
    return (height - 1) * uh + 1, (width - 1) * uw + 1


def out_shape(attrs: dict, x_shape, w_shape) -> tuple[int, ...]:
    n, _, h, w = x_shape
    h, w = upsampled(attrs, h, w)
    o, _, kh, kw = w_shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = attrs["strides"], attrs["padding"], attrs["dilation"]
    return (n, o, (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def compute(p: KernelParams, inputs):
    ((x_shape, x_dtype),) = inputs
    x = te.placeholder(x_shape, x_dtype, "X")
    consts, y = tensors(p, x)
    return te.create_prim_func([x, *consts, y])


def tensors(p: KernelParams, x: te.Tensor, tag: str = ""):
    """The TE compute on a given input tensor (a cascade passes the producer's output):
    (weight, bias, multiplier, shift placeholders), output. `tag` suffixes every stage name."""
    a = p.attrs
    w_np = p.consts[0]
    _, c_in, height, width = (int(d) for d in x.shape)
    x_dtype = x.dtype
    out_channels, group_channels, kh, kw = w_np.shape
    per_group = out_channels // a["groups"]
    (sh, sw), (pt, pl, _, _), (dh, dw) = a["strides"], a["padding"], a["dilation"]
    shape = out_shape(a, tuple(int(d) for d in x.shape), w_np.shape)
    w = te.placeholder(w_np.shape, "int8", "W" + tag)
    bias, mult, shift = (te.placeholder((out_channels,), "int64", n + tag) for n in ("B", "M", "S"))
    # The padded (and upsampled) input stays 8-bit and pads with zx (real 0): it is the tile the SRAM
    # schedule stages. It ends at the last row and column a window reads (window_span), not at the padded edge: rows past
    # the last window (a stride that does not divide the padded height) widen the short last row tile's
    # predicate beyond what the tile reads, and TVM then compacts Xp's SRAM buffer past tiling.footprint.
    (uh, uw), (up_h, up_w) = a["upsample"], upsampled(a, height, width)

    def inside(i, pad, up, extent):
        """Whether padded index i reads an input element (not padding, not an inserted zero)."""
        on_grid = [] if up == 1 else [tirx.floormod(i - pad, up) == 0]
        return [i >= pad, i < pad + extent, *on_grid]

    xp = te.compute(
        (shape[0], c_in, window_span(shape[2], kh, sh, dh), window_span(shape[3], kw, sw, dw)),
        lambda n, c, h, w_: tirx.if_then_else(
            tirx.all(*inside(h, pt, uh, up_h), *inside(w_, pl, uw, up_w)),
            x[n, c, tirx.floordiv(h - pt, uh), tirx.floordiv(w_ - pl, uw)],
            tirx.const(a["zx"], x_dtype),
        ),
        name="Xp" + tag,
    )
    rc, rh, rw = te.reduce_axis((0, group_channels), "rc"), te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    acc = te.compute(
        shape,
        lambda n, o, y, x_: te.sum(
            (xp[n, (o // per_group) * group_channels + rc, y * sh + rh * dh, x_ * sw + rw * dw].astype("int32") - a["zx"])
            * w[o, rc, rh, rw].astype("int32"),
            axis=[rc, rh, rw],
        ),
        name="acc" + tag,
    )
    y = te.compute(
        shape,
        lambda n, o, i, j: epilogue_te(acc[n, o, i, j], bias[o], mult[o], shift[o], a),
        name="Y" + tag,
    )
    return [w, bias, mult, shift], y


def reference(p: KernelParams, inputs) -> np.ndarray:
    (x,) = inputs
    a = p.attrs
    w, bias, mult, shift = p.consts
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = a["strides"], a["padding"], a["dilation"]
    n, o, oh, ow = out_shape(a, x.shape, w.shape)
    groups, cg = a["groups"], w.shape[1]
    (uh, uw), up = a["upsample"], np.zeros((*x.shape[:2], *upsampled(a, *x.shape[2:])), np.int64)
    up[:, :, ::uh, ::uw] = x.astype(np.int64) - a["zx"]
    xp = np.pad(up, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    acc = np.zeros((n, o, oh, ow), np.int64)
    per_group = o // groups
    for g in range(groups):
        xg = xp[:, g * cg : (g + 1) * cg]
        wg = w[g * per_group : (g + 1) * per_group].astype(np.int64)
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                tap = xg[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
                acc[:, g * per_group : (g + 1) * per_group] += np.einsum("nchw,oc->nohw", tap, wg[:, :, i, j])
    col = (slice(None), None, None)
    return epilogue_np(acc, bias[col], mult[col], shift[col], a)


def geometry(p: KernelParams, inputs) -> Geometry:
    ((x_shape, _),) = inputs
    return conv_geometry(p.attrs, x_shape, p.consts[0].shape)


def conv_geometry(a: dict, x_shape, w_shape) -> Geometry:
    """The geometry of a convolution of these attributes and shapes (npu.conv2d_csr's too)."""
    n, o, oh, ow = out_shape(a, x_shape, w_shape)
    return Geometry(
        "conv2d",
        n,
        x_shape[1],
        *upsampled(a, *x_shape[2:]),
        o,
        oh,
        ow,
        tuple(w_shape[2:]),
        tuple(a["strides"]),
        tuple(a["dilation"]),
        tuple(a["padding"]),
        a["groups"],
    )


def schedule(func: tirx.PrimFunc, tiles: Tiles) -> tirx.PrimFunc:
    """SRAM tiles: padded input rows (with halo, 8-bit, padded with zx), weight and parameter tile,
    int32 accumulator and output tile, all in SRAM; the inner tile loop is double-buffered, the
    outer one runs in parallel on the host, and the innermost output-column loops vectorize (each
    unless `tiles` turns it off)."""
    sch = s_tir.Schedule(func)
    y, acc, xp = sch.get_sblock("Y"), sch.get_sblock("acc"), sch.get_sblock("Xp")
    _, o, h, _ = sch.get_loops(y)
    oo, oi = sch.split(o, [None, tiles.channels])
    ho, hi = sch.split(h, [None, tiles.rows])
    n = sch.get_loops(y)[0]
    outer, inner = (oo, ho) if tiles.order == "weights" else (ho, oo)
    sch.reorder(n, outer, inner, oi, hi)
    y_out, stationary = stage_matrix_tiles(sch, y, acc, outer, inner, tiles.order == "weights")
    sch.set_scope(xp, 0, SRAM_SCOPE)
    sch.compute_at(xp, inner if tiles.order == "weights" else outer)
    loads = {"Xp"} if tiles.order == "weights" else {sch.get(b).name_hint for b in stationary}
    (_, gc, kh, kw), (*_, ow) = (func.params[i].shape for i in (1, -1))
    extents = {"o": tiles.channels, "y": tiles.rows, "x": ow, "rc": gc, "rh": kh, "rw": kw}
    if tiles.vectorize:
        _vectorize_accumulation(sch, acc, {k: int(v) for k, v in extents.items()})
    return finish_tile_loops(sch, tiles, y, y_out, outer, inner, loads, tile_loops=3)


def _vectorize_accumulation(sch, acc, extents: dict[str, int]) -> None:
    """Output columns innermost and vectorized: the accumulation runs as int32 SIMD lanes on the host.

    compute_at generated the accumulator's tile loops in block-iterator order, leaving out unit
    extents; `extents` (o, y, x, rc, rh, rw) tells which of them exist."""
    present = [name for name, extent in extents.items() if extent > 1]
    loops = sch.get_loops(acc)[3:]  # after n, the outer and the inner tile loop
    if "x" in present and len(loops) == len(present):
        by_name = dict(zip(present, loops))
        reductions = [by_name[r] for r in ("rc", "rh", "rw") if r in by_name]
        if reductions:
            sch.reorder(*reductions, by_name["x"])
        vectorize(sch, by_name["x"])


def examples(rng):
    def conv(name, c, o, hw, k, stride=1, pads=(0, 0, 0, 0), dilation=1, group=1, activation=None):
        return quantized_operator(
            name,
            "Conv",
            [random_activation(rng, (1, c, *hw)), random_weight(rng, (o, c // group, k, k)), Constant(rng.normal(0, 0.3, o))],
            rng,
            out_dtype=str(rng.choice(["int8", "uint8"])),
            activation=activation,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=list(pads),
            dilations=[dilation, dilation],
            group=group,
        )

    k, stride = int(rng.choice([1, 3, 5])), int(rng.integers(1, 3))
    return [
        conv("3x3_stride2_pad1_relu6", 3, 5, (7, 9), 3, stride=2, pads=(1, 1, 1, 1), activation="relu6"),
        conv("depthwise_3x3_uneven_pads_relu", 7, 7, (6, 5), 3, pads=(2, 1, 0, 2), group=7, activation="relu"),
        conv("grouped_3x3_dilated", 6, 9, (9, 7), 3, pads=(2, 2, 2, 2), dilation=2, group=3),
        conv("1x1_on_1x1", 5, 4, (1, 1), 1),
        conv(
            f"random_{k}x{k}_stride{stride}",
            int(rng.integers(1, 12)),
            int(rng.integers(1, 20)),
            tuple(int(d) for d in rng.integers(k, k + 9, 2)),
            k,
            stride,
            tuple(int(p) for p in rng.integers(0, k, 4)),
            activation=rng.choice([None, "relu", "relu6"]),
        ),
    ]


KERNEL = NpuKernel(
    name="npu.conv2d",
    anchors=("relax.nn.conv2d",),
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    tensors=tensors,
    reference=reference,
    geometry=geometry,
    schedule=schedule,
    examples=examples,
    limits=(
        "NCHW data, OIHW int8 weights, symmetric (weight zero point 0), per-tensor or per-output-channel scales",
        "activations per tensor; a depthwise conv also takes per-channel input scales with one zero point",
        "output quantized per tensor",
        "at most 65 793 taps (input channels per group x kernel height x width) per output: the int32 accumulator",
        "rescale factors (input x weight scale / output scale) within the fixed-point range",
    ),
)
