"""npu.elementwise: add or multiply two quantized tensors with different scales, either one
broadcast onto the other as ONNX broadcasts (squeeze-excite's (N,C,H,W) x (N,C,1,1), a
per-channel scale held as a tensor), with a fused ReLU / ReLU6 / Clip, integer-only inside.

    add: Y = clamp(((A - za) * Ma + (B - zb) * Mb) >> S (round half up) + zy)   both inputs
         rescaled onto one shift, so neither loses precision to the other's scale
    mul: Y = clamp(((A - za) * (B - zb) * M) >> S (round half up) + zy)

A TFLite model's ADD and MUL compute as TFLite's reference kernels do, bit for bit: ADD rescales each input
((A - za) << 20) by its own Q31 multiplier, sums and rescales the sum (three MultiplyByQuantizedMultiplier
roundings); MUL rescales the product once.

Tiled along the output's first dimension longer than 1: per tile, the full-size input tiles and
the output tile in SRAM, double-buffered (`tvm_npu.sram.stream_tiles`); a broadcast operand is
staged whole once per layer and stays resident, as a lookup table does.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import te, tirx
from tvm.relax.dpl import is_const, is_op

from tvm_npu.fixed_point import (
    TFLITE,
    arithmetic_attrs,
    multiplier,
    requantize_np,
    requantize_te,
    scale_problem,
    tflite_multiplier,
    tflite_requantize_np,
    tflite_requantize_te,
)
from tvm_npu.onnx_builder import quantized_operator, random_activation
from tvm_npu.tiling import Geometry, Tiles
from tvm_npu.registry import (
    Composite,
    KernelParams,
    NpuKernel,
    const_value,
    dequantized_tensor,
    op_name,
    pattern_activation,
    per_tensor_problem,
)
from tvm_npu.sram import stream_tiles

_OPS = {"relax.add": "add", "relax.multiply": "mul"}


def patterns():
    found = []
    for op in _OPS:
        dq_a = dequantized_tensor()
        dq_b = dequantized_tensor()
        anchor = is_op(op)(dq_a, dq_b)
        root = is_op("relax.quantize")(pattern_activation(anchor), is_const(), is_const())
        found.append((root, {"a": dq_a, "b": dq_b, "anchor": anchor, "root": root}))
    return found


def _scales(sa: float, sb: float, sy: float, op: str) -> np.ndarray:
    return np.array([sa / sy, sb / sy]) if op == "add" else np.array([sa * sb / sy])


def check(ann) -> str | None:
    dq_a, dq_b, anchor = ann["a"], ann["b"], ann["anchor"]
    problem = per_tensor_problem(dq_a, dq_b, ann["root"])
    if problem:
        return problem
    if any(isinstance(dq.args[0], tvm.ir.expr.Constant) for dq in (dq_a, dq_b)):
        return "attribute: a constant operand (the NPU adds/multiplies two activations)"
    shapes = [tuple(int(d) for d in dq.ty.shape) for dq in (dq_a, dq_b)]
    if _broadcast_shape(*shapes) is None:
        return f"shape: operands {list(shapes[0])} and {list(shapes[1])} do not broadcast"
    sa, sb, sy = (float(const_value(e.args[1])) for e in (dq_a, dq_b, ann["root"]))
    return scale_problem(_scales(sa, sb, sy, _OPS[anchor.op.name]))


def _broadcast_shape(a: tuple, b: tuple) -> tuple | None:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(a, b))
    except ValueError:
        return None


def _broadcast_index(shape: tuple, out_shape: tuple, index: tuple) -> tuple:
    """The element of an operand of `shape` that output element `index` reads (ONNX broadcasting)."""
    lead = len(out_shape) - len(shape)
    return tuple(0 if d == 1 else i for d, i in zip(shape, index[lead:]))


def params(comp: Composite) -> KernelParams:
    (anchor,) = [v for v in comp.bindings.values() if op_name(v) in _OPS]
    op = _OPS[op_name(anchor)]
    (sa, za), (sb, zb) = (comp.activation_input(comp.value(a)) for a in anchor.args)
    sy, zy, dtype, lo, hi = comp.output()
    attrs = {"op": op, "za": za, "zb": zb, "zy": zy, "lo": lo, "hi": hi, "out_dtype": dtype, **arithmetic_attrs()}
    if attrs.get("arithmetic") == TFLITE:
        twice_max = 2.0 * max(sa, sb)
        reals = [sa / twice_max, sb / twice_max, twice_max / ((1 << _TFLITE_ADD_SHIFT) * sy)] if op == "add" else [sa * sb / sy]
        mults, exponents = tflite_multiplier(np.array(reals))
        return KernelParams(attrs={**attrs, "mults": tuple(int(m) for m in mults), "exponents": tuple(int(e) for e in exponents)})
    reals = _scales(sa, sb, sy, op)
    _, shift = multiplier(reals.max())  # one shift for both inputs: the larger scale sets it
    mults = np.round(reals * 2.0 ** int(shift)).astype(np.int64)
    return KernelParams(attrs={**attrs, "mults": tuple(int(m) for m in mults), "shift": int(shift)})


_TFLITE_ADD_SHIFT = 20  # TFLite's left shift of int8 ADD inputs before rescaling
_INT32 = (-(1 << 31), (1 << 31) - 1)


def _tflite_value(a, b, attrs, cast, requantize):
    """TFLite's ADD / MUL (module doc) up to the output rescale; `requantize` is the TE or NumPy MBQM."""
    da, db = cast(a) - attrs["za"], cast(b) - attrs["zb"]
    if attrs["op"] == "mul":
        return da * db
    m, e = attrs["mults"], attrs["exponents"]
    return requantize(da * (1 << _TFLITE_ADD_SHIFT), m[0], e[0], 0, *_INT32, "int64") + requantize(
        db * (1 << _TFLITE_ADD_SHIFT), m[1], e[1], 0, *_INT32, "int64"
    )


def _tflite_output(value, attrs, requantize):
    return requantize(
        value, attrs["mults"][-1], attrs["exponents"][-1], attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"]
    )


def _value(a, b, attrs, cast):
    da, db = cast(a) - attrs["za"], cast(b) - attrs["zb"]
    if attrs["op"] == "add":
        return da * attrs["mults"][0] + db * attrs["mults"][1]
    return da * db * attrs["mults"][0]


def compute(p: KernelParams, inputs):
    (a_shape, a_dtype), (b_shape, b_dtype) = inputs
    attrs = p.attrs
    shape = _broadcast_shape(a_shape, b_shape)
    a, b = te.placeholder(a_shape, a_dtype, "A"), te.placeholder(b_shape, b_dtype, "B")
    if attrs.get("arithmetic") == TFLITE:
        y = te.compute(
            shape,
            lambda *i: _tflite_output(
                _tflite_value(
                    a[_broadcast_index(a_shape, shape, i)],
                    b[_broadcast_index(b_shape, shape, i)],
                    attrs,
                    lambda v: v.astype("int64"),
                    tflite_requantize_te,
                ),
                attrs,
                tflite_requantize_te,
            ),
            name="Y",
        )
        return te.create_prim_func([a, b, y])
    y = te.compute(
        shape,
        lambda *i: requantize_te(
            _value(
                a[_broadcast_index(a_shape, shape, i)], b[_broadcast_index(b_shape, shape, i)], attrs, lambda v: v.astype("int64")
            ),
            1,
            attrs["shift"],
            attrs["zy"],
            attrs["lo"],
            attrs["hi"],
            attrs["out_dtype"],
        ),
        name="Y",
    )
    return te.create_prim_func([a, b, y])


def reference(p: KernelParams, inputs) -> np.ndarray:
    a, b = inputs
    attrs = p.attrs
    if attrs.get("arithmetic") == TFLITE:
        value = _tflite_value(a, b, attrs, lambda v: v.astype(np.int64), tflite_requantize_np)
        return _tflite_output(value, attrs, tflite_requantize_np)
    value = _value(a, b, attrs, lambda v: v.astype(np.int64))
    return requantize_np(value, 1, attrs["shift"], attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"])


def examples(rng):
    def binary(name, op_type, shape, activation=None, b_shape=None):
        return quantized_operator(
            name,
            op_type,
            [random_activation(rng, shape), random_activation(rng, b_shape or shape)],
            rng,
            out_dtype=str(rng.choice(["int8", "uint8"])),
            activation=activation,
        )

    rank = int(rng.integers(1, 5))
    return [
        binary("add_odd_channels_relu", "Add", (1, 7, 5, 3), "relu"),
        binary("mul_relu6", "Mul", (1, 3, 4, 5), "relu6"),
        binary("add_one_element", "Add", (1,)),
        binary(f"random_rank{rank}", str(rng.choice(["Add", "Mul"])), tuple(int(d) for d in rng.integers(1, 9, rank))),
        binary("residual_sum_relu", "Sum", (1, 6, 9, 7), "relu"),  # ResNet's residual adds are ONNX Sum
        binary("squeeze_excite_mul", "Mul", (1, 7, 5, 3), b_shape=(1, 7, 1, 1)),  # MobileNetV3's SE gate
        binary("channel_scale_first_add_relu", "Add", (1, 5, 1, 1), "relu", b_shape=(1, 5, 6, 9)),
        binary("lower_rank_channel_mul", "Mul", (1, 3, 4, 6), b_shape=(3, 1, 1)),
        binary("row_broadcast_mul_relu6", "Mul", (2, 5, 7), "relu6", b_shape=(1, 1, 7)),
    ]


def row_axis(shape) -> int:
    """The dimension tiles split: the first one longer than 1 (all later ones are inside the tile)."""
    return next((i for i, d in enumerate(shape) if d > 1), 0)


def stream_geometry(kind: str, shape, label: str, operands: int = 1, table_bytes: int = 0) -> Geometry | None:
    """An elementwise layer as the planner sees it: rows of `row_axis(shape)` by the rest."""
    if not shape:
        return None
    axis = row_axis(shape)
    rows, width = shape[axis], math.prod(shape[axis + 1 :])
    return Geometry(
        kind, math.prod(shape[:axis]), 1, rows, width, 1, rows, width, operands=operands, table_bytes=table_bytes, label=label
    )


def geometry(p: KernelParams, inputs) -> Geometry | None:
    (a_shape, _), (b_shape, _) = inputs
    shape = _broadcast_shape(a_shape, b_shape)
    # A broadcast operand (squeeze-excite's gate: one value per channel) is staged whole, once per layer,
    # like a lookup table: its tiles would be a few bytes each; the full-size operands stream in tiles.
    resident = sum(math.prod(s) for s, _ in inputs if tuple(s) != shape)
    return stream_geometry(
        "elementwise",
        shape,
        f"{p.attrs['op']} {'x'.join(map(str, a_shape))} and {'x'.join(map(str, b_shape))}",
        operands=sum(tuple(s) == shape for s, _ in inputs),
        table_bytes=resident,
    )


def schedule(func: tirx.PrimFunc, tiles: Tiles) -> tirx.PrimFunc:
    a, b, y = func.params  # TVM 0.27 TIR: the parameters are the buffers
    shape = [int(d) for d in y.shape]
    resident = frozenset(x.name for x in (a, b) if [int(d) for d in x.shape] != shape)
    return stream_tiles(func, tiles, row_axis(shape), stationary=resident)


KERNEL = NpuKernel(
    name="npu.elementwise",
    anchors=tuple(_OPS),
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    reference=reference,
    examples=examples,
    limits=(
        "Add (or a two-input Sum) and Mul of two activations (no constant operand); ONNX broadcasting of either operand",
        "a broadcast operand stays resident in SRAM whole",
        "activations and output per tensor",
        "rescale factors (input scale / output scale; for Mul, product of input scales / output scale) "
        "within the fixed-point range",
    ),
    geometry=geometry,
    schedule=schedule,
)
