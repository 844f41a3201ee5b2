"""npu.elementwise: add or multiply two quantized tensors of the same shape with different
scales, with a fused ReLU / ReLU6 / Clip, integer-only inside.

    add: Y = clamp(((A - za) * Ma + (B - zb) * Mb) >> S (round half up) + zy)   both inputs
         rescaled onto one shift, so neither loses precision to the other's scale
    mul: Y = clamp(((A - za) * (B - zb) * M) >> S (round half up) + zy)

Tiled along the first dimension longer than 1: per tile, both input tiles and the output tile
in SRAM, double-buffered (`tvm_npu.sram.stream_tiles`).
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import te, tirx
from tvm.relax.dpl import is_const, is_op

from tvm_npu.fixed_point import multiplier, requantize_np, requantize_te, scale_problem
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
    if [int(d) for d in dq_a.ty.shape] != [int(d) for d in dq_b.ty.shape]:
        return "shape: broadcasting operands of different shapes"
    sa, sb, sy = (float(const_value(e.args[1])) for e in (dq_a, dq_b, ann["root"]))
    return scale_problem(_scales(sa, sb, sy, _OPS[anchor.op.name]))


def params(comp: Composite) -> KernelParams:
    (anchor,) = [v for v in comp.bindings.values() if op_name(v) in _OPS]
    op = _OPS[op_name(anchor)]
    (sa, za), (sb, zb) = (comp.activation_input(comp.value(a)) for a in anchor.args)
    sy, zy, dtype, lo, hi = comp.output()
    reals = _scales(sa, sb, sy, op)
    _, shift = multiplier(reals.max())  # one shift for both inputs: the larger scale sets it
    mults = np.round(reals * 2.0 ** int(shift)).astype(np.int64)
    return KernelParams(attrs={
        "op": op, "za": za, "zb": zb, "zy": zy, "lo": lo, "hi": hi, "out_dtype": dtype,
        "mults": tuple(int(m) for m in mults), "shift": int(shift),
    })


def _value(a, b, attrs, cast):
    da, db = cast(a) - attrs["za"], cast(b) - attrs["zb"]
    if attrs["op"] == "add":
        return da * attrs["mults"][0] + db * attrs["mults"][1]
    return da * db * attrs["mults"][0]


def compute(p: KernelParams, inputs):
    (shape, a_dtype), (_, b_dtype) = inputs
    attrs = p.attrs
    a, b = te.placeholder(shape, a_dtype, "A"), te.placeholder(shape, b_dtype, "B")
    y = te.compute(
        shape,
        lambda *i: requantize_te(_value(a[i], b[i], attrs, lambda v: v.astype("int64")), 1, attrs["shift"],
                                 attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"]),
        name="Y",
    )
    return te.create_prim_func([a, b, y])


def reference(p: KernelParams, inputs) -> np.ndarray:
    a, b = inputs
    attrs = p.attrs
    value = _value(a, b, attrs, lambda v: v.astype(np.int64))
    return requantize_np(value, 1, attrs["shift"], attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"])


def examples(rng):
    def binary(name, op_type, shape, activation=None):
        return quantized_operator(name, op_type, [random_activation(rng, shape), random_activation(rng, shape)], rng,
                                  out_dtype=str(rng.choice(["int8", "uint8"])), activation=activation)

    rank = int(rng.integers(1, 5))
    return [
        binary("add_odd_channels_relu", "Add", (1, 7, 5, 3), "relu"),
        binary("mul_relu6", "Mul", (1, 3, 4, 5), "relu6"),
        binary("add_one_element", "Add", (1,)),
        binary(f"random_rank{rank}", str(rng.choice(["Add", "Mul"])), tuple(int(d) for d in rng.integers(1, 9, rank))),
        binary("residual_sum_relu", "Sum", (1, 6, 9, 7), "relu"),  # ResNet's residual adds are ONNX Sum
    ]


def row_axis(shape) -> int:
    """The dimension tiles split: the first one longer than 1 (all later ones are inside the tile)."""
    return next((i for i, d in enumerate(shape) if d > 1), 0)


def stream_geometry(kind: str, shape, label: str, operands: int = 1, table_bytes: int = 0) -> Geometry | None:
    """An elementwise layer as the planner sees it: rows of `row_axis(shape)` by the rest."""
    if not shape:
        return None
    axis = row_axis(shape)
    rows, width = shape[axis], math.prod(shape[axis + 1:])
    return Geometry(kind, math.prod(shape[:axis]), 1, rows, width, 1, rows, width,
                    operands=operands, table_bytes=table_bytes, label=label)


def geometry(p: KernelParams, inputs) -> Geometry | None:
    (shape, _), _ = inputs
    return stream_geometry("elementwise", shape, f"{p.attrs['op']} 2x {'x'.join(map(str, shape))}", operands=2)


def schedule(func: tirx.PrimFunc, tiles: Tiles) -> tirx.PrimFunc:
    return stream_tiles(func, tiles, row_axis([int(d) for d in func.params[-1].shape]))


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
        'Add (or a two-input Sum) and Mul of two activations of the same shape (no broadcasting, no constant operand)',
        'activations and output per tensor',
        "rescale factors (input scale / output scale; for Mul, product of input scales / output scale) "
        "within the fixed-point range",
    ),
    geometry=geometry,
    schedule=schedule,
)
