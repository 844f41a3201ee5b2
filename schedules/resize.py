"""npu.resize: ONNX Resize (nearest and bilinear) of a quantized NCHW tensor, integer-only inside.

What the QDQ graph means is Q(Resize(DQ(X))). Both modes read source pixels through per-axis index
tables the compiler computes once (a gather: DMA on an NPU):

nearest   Y = T[X[n, c, IY[i], IX[j]] - qmin]      or the plain copy X[...] when input and output share
          one quantization. IY, IX are the source rows/columns ONNX's reference evaluator picks (it
          resizes an index ramp at compile time, so every coordinate mode and nearest_mode rounds as
          the specification's evaluator does); T[q] = Q(DQ(q)) in float32, as npu.lut's tables. So the
          kernel equals the reference evaluator on every input: a picked value is requantized exactly
          as the QDQ graph does it.
bilinear  the source coordinate of output row i is a rational number c = (a i + b) / d (the ONNX
          coordinate formula with scale out/in); clamped to [0, in - 1], its floor Y0 and weight
          WY = (c - Y0) * DY are integers with DY the common denominator (likewise columns), so

              A = sum over the 4 neighbours of (X - zx) * (DY - WY or WY) * (DX - WX or WX)    exact int32
              Y = clamp((A * M) >> S (round half up) + zy)      M / 2^S = sx / (sy * DY * DX)

          A is the exact value of Resize(DQ(X)) in units of sx / (DY DX); the one rounding is the
          requantization, as in every NPU kernel here. The reference evaluator computes the same sum
          in floating point, so the two agree except where the exact value lies on (within the
          multiplier's 2^-31 relative error of) a half-step tie, which QuantizeLinear's float input
          decides either way: there they differ by one step (tests/test_resize.py checks exactly that).

Refused (CPU, with the reason): cubic, tf_crop_and_resize, half_pixel_symmetric, non-NCHW layouts;
bilinear whose DY * DX * 255 overflows int32.

Untiled: its input tile (whole input planes per channel tile) is not one the planner's geometry
describes exactly, and the lowered footprint must be the planned one.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx
import tvm
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tvm import te
from tvm.relax.dpl import is_const, is_op, wildcard

from tvm_npu.fixed_point import multiplier, requantization_table, requantize_np, requantize_te, scale_problem
from tvm_npu.onnx_builder import CALIBRATION_OPSET, Constant, quantized_operator, random_activation
from tvm_npu.registry import Composite, KernelParams, NpuKernel, const_value, dequantized_tensor, per_tensor_problem

MODES = ("nearest_neighbor", "linear")
COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nearest")
ACCUMULATOR_MAX = 2**31 - 1


def patterns():
    dq_x = dequantized_tensor()
    anchor = is_op("relax.image.resize2d")(dq_x, wildcard())
    root = is_op("relax.quantize")(anchor, is_const(), is_const())
    return [(root, {"x": dq_x, "anchor": anchor, "root": root})]


def _sizes(resize) -> tuple[tuple[int, int], tuple[int, int]]:
    """((in_h, in_w), (out_h, out_w))."""
    (*_, in_h, in_w), (*_, out_h, out_w) = (list(e.ty.shape) for e in (resize.args[0], resize))
    return (int(in_h), int(in_w)), (int(out_h), int(out_w))


def check(ann) -> str | None:
    x, resize, root = ann["x"], ann["anchor"], ann["root"]
    problem = per_tensor_problem(x, root)
    if problem:
        return problem
    if isinstance(x.args[0], tvm.ir.expr.Constant):
        return "attribute: a constant operand"
    a = resize.attrs
    if a.layout != "NCHW":
        return f"attribute: layout {a.layout} (the NPU resizes NCHW)"
    if a.method not in MODES:
        return f"attribute: Resize mode {a.method} (the NPU resizes nearest and linear)"
    if a.coordinate_transformation_mode not in COORDINATE_MODES:
        return f"attribute: Resize coordinate_transformation_mode {a.coordinate_transformation_mode}"
    sx, sy = (float(const_value(e.args[1])) for e in (x, root))
    if a.method == "nearest_neighbor":
        return scale_problem(sx) or scale_problem(sy)
    (in_h, in_w), (out_h, out_w) = _sizes(resize)
    (*_, dy), (*_, dx) = (_linear_axis(a.coordinate_transformation_mode, i, o) for i, o in ((in_h, out_h), (in_w, out_w)))
    if 255 * dy * dx > ACCUMULATOR_MAX:
        return f"shape: bilinear weights over {dy} x {dx} steps overflow the int32 accumulator"
    return scale_problem(sx / (sy * dy * dx))


def _coordinate(mode: str, i: int, size_in: int, size_out: int) -> Fraction:
    """ONNX Resize's source coordinate of output index i, with scale out/in, exactly."""
    scale = Fraction(size_out, size_in)
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and size_out > 1):
        return (i + Fraction(1, 2)) / scale - Fraction(1, 2)
    if mode == "pytorch_half_pixel":
        return Fraction(0)
    if mode == "align_corners":
        return Fraction(0) if size_out == 1 else Fraction(i * (size_in - 1), size_out - 1)
    if mode == "asymmetric":
        return i / scale
    return (i + Fraction(1, 2)) / scale  # tf_half_pixel_for_nearest


def _linear_axis(mode: str, size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per output index the two source indices (the second clamped to the edge, where its weight is 0)
    and the second one's weight in 1/denominator units; and the denominator."""
    coords = [min(max(_coordinate(mode, i, size_in, size_out), Fraction(0)), Fraction(size_in - 1)) for i in range(size_out)]
    denominator = math.lcm(*(c.denominator for c in coords))
    first = np.array([math.floor(c) for c in coords], np.int32)
    weight = np.array([int((c - math.floor(c)) * denominator) for c in coords], np.int32)
    return first, np.minimum(first + 1, size_in - 1).astype(np.int32), weight, denominator


def _nearest_axis(mode: str, rounding: str, size_in: int, size_out: int) -> np.ndarray:
    """The source index ONNX's reference evaluator picks per output index: it resizes the ramp 0..in-1."""
    attrs = {"mode": "nearest", "coordinate_transformation_mode": mode, "nearest_mode": rounding}
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)],
        "ramp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, size_in])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 1, size_out], np.int64), "sizes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", CALIBRATION_OPSET)])
    (ramp,) = ReferenceEvaluator(model).run(None, {"x": np.arange(size_in, dtype=np.float32).reshape(1, 1, -1)})
    return ramp.reshape(-1).astype(np.int32)


def params(comp: Composite) -> KernelParams:
    resize = comp.call("relax.image.resize2d")
    dq = comp.value(resize.args[0])
    sx, zx = comp.activation_input(dq)
    sy, zy, dtype, lo, hi = comp.output()
    a = resize.attrs
    mode = str(a.coordinate_transformation_mode)
    in_dtype = str(dq.args[0].ty.dtype)
    attrs = {
        "method": str(a.method),
        "out_hw": _sizes(resize)[1],
        "zx": zx,
        "zy": zy,
        "lo": lo,
        "hi": hi,
        "in_dtype": in_dtype,
        "out_dtype": dtype,
    }
    if a.method == "nearest_neighbor":
        rows, cols = (_nearest_axis(mode, str(a.rounding_method), i, o) for i, o in zip(*_sizes(resize)))
        attrs["copy"] = (sx, zx, in_dtype) == (sy, zy, dtype)
        lookup = [] if attrs["copy"] else [requantization_table(lambda v: v, sx, zx, sy, zy, in_dtype, dtype)]
        return KernelParams(attrs, [rows, cols, *lookup])
    (*rows, dy), (*cols, dx) = (_linear_axis(mode, i, o) for i, o in zip(*_sizes(resize)))
    mult, shift = multiplier(sx / (sy * dy * dx))
    attrs.update(dy=dy, dx=dx, mult=int(mult), shift=int(shift))
    return KernelParams(attrs, [*rows, *cols])


def compute(p: KernelParams, inputs):
    ((x_shape, x_dtype),) = inputs
    a = p.attrs
    n, c = x_shape[:2]
    x = te.placeholder(x_shape, x_dtype, "X")
    out_shape = (n, c, *a["out_hw"])
    if a["method"] == "nearest_neighbor":
        rows, cols = te.placeholder((a["out_hw"][0],), "int32", "IY"), te.placeholder((a["out_hw"][1],), "int32", "IX")
        lookup = [] if a["copy"] else [te.placeholder((256,), a["out_dtype"], "T")]
        qmin = int(np.iinfo(x_dtype).min)

        def pick(b, ch, i, j):
            value = x[b, ch, rows[i], cols[j]]
            return value if a["copy"] else lookup[0][value.astype("int32") - qmin]

        y = te.compute(out_shape, pick, name="Y")
        return te.create_prim_func([x, rows, cols, *lookup, y])
    y0, y1, wy = (te.placeholder((a["out_hw"][0],), "int32", name) for name in ("Y0", "Y1", "WY"))
    x0, x1, wx = (te.placeholder((a["out_hw"][1],), "int32", name) for name in ("X0", "X1", "WX"))

    def blend(b, ch, i, j):
        def along_row(row):
            tap0, tap1 = (x[b, ch, row, col].astype("int32") - a["zx"] for col in (x0[j], x1[j]))
            return tap0 * (a["dx"] - wx[j]) + tap1 * wx[j]

        total = along_row(y0[i]) * (a["dy"] - wy[i]) + along_row(y1[i]) * wy[i]
        return requantize_te(total, a["mult"], a["shift"], a["zy"], a["lo"], a["hi"], a["out_dtype"])

    y = te.compute(out_shape, blend, name="Y")
    return te.create_prim_func([x, y0, y1, wy, x0, x1, wx, y])


def reference(p: KernelParams, inputs) -> np.ndarray:
    (x,) = inputs
    a = p.attrs
    if a["method"] == "nearest_neighbor":
        rows, cols, *lookup = p.consts
        picked = x[:, :, rows][:, :, :, cols]
        return picked if a["copy"] else lookup[0][picked.astype(np.int64) - int(np.iinfo(x.dtype).min)]
    y0, y1, wy, x0, x1, wx = (v.astype(np.int64) for v in p.consts)
    d = x.astype(np.int64) - a["zx"]

    def along_row(rows):
        plane = d[:, :, rows]
        return plane[..., x0] * (a["dx"] - wx) + plane[..., x1] * wx

    col = (slice(None), None)
    total = along_row(y0) * (a["dy"] - wy)[col] + along_row(y1) * wy[col]
    return requantize_np(total, a["mult"], a["shift"], a["zy"], a["lo"], a["hi"], a["out_dtype"])


def examples(rng):
    def resize(name, shape, scales, mode, shared=False, **attributes):
        x = random_activation(rng, shape)
        output = (x.scale, x.zero_point) if shared else None
        return quantized_operator(
            name,
            "Resize",
            [x, Constant(np.zeros(0)), Constant(np.array(scales))],
            rng,
            out_dtype=x.dtype if shared else str(rng.choice(["int8", "uint8"])),
            output_quantization=output,
            mode=mode,
            **attributes,
        )

    factor = int(rng.integers(2, 5))
    return [
        # the FPN upsampling of PP-OCR's detector and YOLOv8: on one grid, a pure copy
        resize(
            "nearest_2x_asymmetric_floor_copy",
            (1, 5, 3, 4),
            [1, 1, 2, 2],
            "nearest",
            shared=True,
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        resize(
            "nearest_3x_half_pixel_round_prefer_ceil",
            (1, 3, 4, 5),
            [1, 1, 3, 3],
            "nearest",
            coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_ceil",
        ),
        resize(
            "nearest_down_align_corners",
            (1, 2, 8, 6),
            [1, 1, 0.5, 1.5],
            "nearest",
            coordinate_transformation_mode="align_corners",
            nearest_mode="round_prefer_floor",
        ),
        resize("bilinear_2x_half_pixel", (1, 7, 5, 6), [1, 1, 2, 2], "linear", coordinate_transformation_mode="half_pixel"),
        resize(
            "bilinear_align_corners_1.5x",
            (1, 3, 4, 6),
            [1, 1, 1.5, 1.5],
            "linear",
            coordinate_transformation_mode="align_corners",
        ),
        resize(
            f"bilinear_{factor}x_pytorch_half_pixel",
            (2, 1, 3, 4),
            [1, 1, factor, factor],
            "linear",
            coordinate_transformation_mode=str(rng.choice(["pytorch_half_pixel", "asymmetric"])),
        ),
    ]


KERNEL = NpuKernel(
    name="npu.resize",
    anchors=("relax.image.resize2d",),
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    reference=reference,
    examples=examples,
    limits=(
        "NCHW; nearest (any nearest_mode) and linear; coordinate modes half_pixel, pytorch_half_pixel, "
        "align_corners, asymmetric, tf_half_pixel_for_nearest (not cubic, tf_crop_and_resize, half_pixel_symmetric)",
        "the scale TVM imports: output size / input size",
        "input and output per tensor; nearest equals ONNX's reference evaluator on every input, linear to the "
        "step except at exact half-step ties (one step there)",
        "linear: 255 x the weight denominators within int32; rescale factor within the fixed-point range",
        "not SRAM-tiled (a gather through index tables: the planner's row bands cannot describe its input tile)",
    ),
)
