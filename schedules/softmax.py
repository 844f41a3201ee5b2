"""npu.softmax: Softmax of a quantized tensor along one axis, integer-only inside (the exponential as
a lookup table, as Vela runs TFLite's int8 softmax).

    m  = max over the axis of X                     (the row's largest input integer)
    E  = T[m - X],  T[d] = round(exp(-sx * d) * 2^16)      d in 0..255: one 256-entry int32 table
    S  = sum over the axis of E                     int32 (up to 32 767 elements per row)
    Y  = clamp(floor((2 E R + S 2^16) / (2 S 2^16)) + zy)  R = round(2^16 / sy): E / S / sy, round half up

Subtracting the row maximum is exact in integers (softmax is shift invariant), so the table covers
every input; E / S carries the table's 2^-16 rounding, so Y is within one step of Q(Softmax(DQ(X))).
Untiled: a row's normalization needs the whole row.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx
from tvm.relax.dpl import is_const, is_op

from tvm_npu.fixed_point import scale_problem
from tvm_npu.onnx_builder import quantized_operator, random_activation
from tvm_npu.registry import Composite, KernelParams, NpuKernel, const_value, dequantized_tensor, per_tensor_problem

FRACTION_BITS = 16  # of the exponential table and of the reciprocal output scale
MAX_ROW = (2**31 - 1) >> FRACTION_BITS  # elements per row whose table values sum within int32


def patterns():
    x = dequantized_tensor()
    anchor = is_op("relax.nn.softmax")(x)
    root = is_op("relax.quantize")(anchor, is_const(), is_const())
    return [(root, {"x": x, "anchor": anchor, "root": root})]


def check(ann) -> str | None:
    x, anchor = ann["x"], ann["anchor"]
    problem = per_tensor_problem(x, ann["root"])
    if problem:
        return problem
    row = int(x.ty.shape[int(anchor.attrs.axis)])
    if row > MAX_ROW:
        return f"shape: {row} elements per row overflow the int32 sum of exponentials"
    sy = float(const_value(ann["root"].args[1]))
    return scale_problem(sy) or (None if 2**FRACTION_BITS / sy < 2**31 else f"scale: output scale {sy:g} too small")


def params(comp: Composite) -> KernelParams:
    softmax = comp.call("relax.nn.softmax")
    dq = comp.value(softmax.args[0])
    sx, _ = comp.activation_input(dq)
    sy, zy, dtype, lo, hi = comp.output()
    rank = len(softmax.ty.shape)
    table = np.round(np.exp(-sx * np.arange(256, dtype=np.float64)) * 2**FRACTION_BITS).astype(np.int32)
    return KernelParams(
        {
            "axis": int(softmax.attrs.axis) % rank,
            "zy": zy,
            "lo": lo,
            "hi": hi,
            "out_dtype": dtype,
            "reciprocal": int(round(2**FRACTION_BITS / sy)),
        },
        [table],
    )


def compute(p: KernelParams, inputs):
    ((shape, dtype),) = inputs
    a, axis = p.attrs, p.attrs["axis"]
    x = te.placeholder(shape, dtype, "X")
    exp_table = te.placeholder((256,), "int32", "T")

    def along(index, k):
        return (*index[:axis], k, *index[axis + 1 :])

    row = shape[axis]
    reduced = (*shape[:axis], 1, *shape[axis + 1 :])
    k = te.reduce_axis((0, row), "k")
    peak = te.compute(reduced, lambda *i: te.max(x[along(i, k)].astype("int32"), axis=k), name="peak")

    def exp(i):
        return exp_table[peak[along(i, 0)] - x[i].astype("int32")]

    j = te.reduce_axis((0, row), "j")
    total = te.compute(reduced, lambda *i: te.sum(exp(along(i, j)), axis=j), name="total")

    def normalized(*i):
        s = total[along(i, 0)].astype("int64")
        numerator = 2 * exp(i).astype("int64") * a["reciprocal"] + (s << FRACTION_BITS)
        q = tirx.floordiv(numerator, 2 * (s << FRACTION_BITS)) + a["zy"]
        return tirx.max(tirx.min(q, tirx.const(a["hi"], "int64")), tirx.const(a["lo"], "int64")).astype(a["out_dtype"])

    y = te.compute(shape, normalized, name="Y")
    return te.create_prim_func([x, exp_table, y])


def reference(p: KernelParams, inputs) -> np.ndarray:
    (x,) = inputs
    a = p.attrs
    x = x.astype(np.int64)
    exp = p.consts[0].astype(np.int64)[x.max(axis=a["axis"], keepdims=True) - x]
    s = exp.sum(axis=a["axis"], keepdims=True)
    q = (2 * exp * a["reciprocal"] + (s << FRACTION_BITS)) // (2 * (s << FRACTION_BITS)) + a["zy"]
    return np.clip(q, a["lo"], a["hi"]).astype(a["out_dtype"])


def examples(rng):
    def softmax(name, shape, axis, scale=None):
        x = random_activation(rng, shape)
        if scale is not None:
            x = type(x)(x.shape, x.dtype, scale, x.zero_point)
        return quantized_operator(name, "Softmax", [x], rng, out_dtype=str(rng.choice(["int8", "uint8"])), axis=axis)

    rank = int(rng.integers(1, 5))
    return [
        softmax("attention_rows", (1, 8, 10, 10), -1),  # SVTR's attention probabilities: [1, heads, T, T]
        softmax("classes_sharp", (1, 37), 1, scale=0.2),  # large input steps: most of the table is ~0
        softmax("channels", (1, 6, 3, 5), 1),
        softmax(f"random_rank{rank}", tuple(int(d) for d in rng.integers(1, 9, rank)), int(rng.integers(0, rank))),
    ]


KERNEL = NpuKernel(
    name="npu.softmax",
    anchors=("relax.nn.softmax",),
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    reference=reference,
    examples=examples,
    limits=(
        "any axis, input and output per tensor; at most 32 767 elements per row",
        "within one step of the QDQ graph (the exponential table's 2^-16 rounding)",
        "not SRAM-tiled",
    ),
)
