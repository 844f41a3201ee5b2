"""npu.matmul: MatMul of two quantized activations (attention's Q x K^T and P x V), integer-only inside.

    acc[..., i, j] = sum_k (A[..., i, k] - za) * (B[..., k, j] - zb)      int8 x int8 -> int32
    Y = clamp((acc * M) >> S (round half up) + zy)                         M / 2^S = sa * sb / sy

npu.dense takes a constant (weight) operand; this kernel the case where both come from the network.
Untiled (the MAC count is the model's, the traffic that of streaming both operands once).
"""

from __future__ import annotations

import numpy as np
from tvm import te
from tvm.relax.dpl import is_const, is_op, wildcard

from tvm_npu.fixed_point import multiplier, requantize_np, requantize_te, scale_problem
from tvm_npu.onnx_builder import quantized_operator, random_activation
from tvm_npu.registry import Composite, KernelParams, NpuKernel, const_value, pattern_activation, per_tensor_problem

ACCUMULATOR_MAX = 2**31 - 1


def patterns():
    # Integers that are not constants: a constant operand is a weight, npu.dense's (whose reason for
    # refusing one this kernel must not overwrite in the offload report).
    dq_a, dq_b = (is_op("relax.dequantize")(wildcard() & ~is_const(), is_const(), is_const()) for _ in range(2))
    anchor = is_op("relax.matmul")(dq_a, dq_b)
    root = is_op("relax.quantize")(pattern_activation(anchor), is_const(), is_const())
    return [(root, {"a": dq_a, "b": dq_b, "anchor": anchor, "root": root})]


def check(ann) -> str | None:
    dq_a, dq_b = ann["a"], ann["b"]
    problem = per_tensor_problem(dq_a, dq_b, ann["root"])
    if problem:
        return problem
    a, b = ([int(d) for d in dq.ty.shape] for dq in (dq_a, dq_b))
    if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2]:
        return f"shape: {a} x {b} (the NPU multiplies operands of one rank >= 2 with equal batch dimensions)"
    if a[-1] * 255 * 255 > ACCUMULATOR_MAX:
        return f"shape: {a[-1]} products per output overflow the int32 accumulator"
    sa, sb, sy = (float(const_value(e.args[1])) for e in (dq_a, dq_b, ann["root"]))
    return scale_problem(sa * sb / sy)


def params(comp: Composite) -> KernelParams:
    matmul = comp.call("relax.matmul")
    (sa, za), (sb, zb) = (comp.activation_input(comp.value(x)) for x in matmul.args)
    sy, zy, dtype, lo, hi = comp.output()
    mult, shift = multiplier(sa * sb / sy)
    return KernelParams(
        {"za": za, "zb": zb, "zy": zy, "lo": lo, "hi": hi, "out_dtype": dtype, "mult": int(mult), "shift": int(shift)}
    )


def compute(p: KernelParams, inputs):
    (a_shape, a_dtype), (b_shape, b_dtype) = inputs
    attrs = p.attrs
    a, b = te.placeholder(a_shape, a_dtype, "A"), te.placeholder(b_shape, b_dtype, "B")
    k = te.reduce_axis((0, a_shape[-1]), "k")
    acc = te.compute(
        (*a_shape[:-1], b_shape[-1]),
        lambda *i: te.sum(
            (a[(*i[:-1], k)].astype("int32") - attrs["za"]) * (b[(*i[:-2], k, i[-1])].astype("int32") - attrs["zb"]), axis=k
        ),
        name="acc",
    )
    y = te.compute(
        acc.shape,
        lambda *i: requantize_te(
            acc[i], attrs["mult"], attrs["shift"], attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"]
        ),
        name="Y",
    )
    return te.create_prim_func([a, b, y])


def reference(p: KernelParams, inputs) -> np.ndarray:
    a, b = inputs
    attrs = p.attrs
    acc = np.matmul(a.astype(np.int64) - attrs["za"], b.astype(np.int64) - attrs["zb"])
    return requantize_np(acc, attrs["mult"], attrs["shift"], attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"])


def examples(rng):
    def matmul(name, a_shape, b_shape, activation=None):
        return quantized_operator(
            name,
            "MatMul",
            [random_activation(rng, a_shape), random_activation(rng, b_shape)],
            rng,
            out_dtype=str(rng.choice(["int8", "uint8"])),
            activation=activation,
        )

    heads, tokens, width = int(rng.integers(1, 5)), int(rng.integers(1, 12)), int(rng.integers(1, 20))
    return [
        matmul("attention_scores_8_heads", (1, 8, 10, 7), (1, 8, 7, 10)),  # SVTR's Q x K^T: [1, heads, T, d]
        matmul("attention_values_relu", (2, 9, 9), (2, 9, 5), activation="relu"),
        matmul("plain_2d", (3, 33), (33, 1)),
        matmul(f"random_{heads}_heads", (1, heads, tokens, width), (1, heads, width, int(rng.integers(1, 12)))),
    ]


KERNEL = NpuKernel(
    name="npu.matmul",
    anchors=("relax.matmul",),
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    reference=reference,
    examples=examples,
    limits=(
        "MatMul of two activations of one rank (>= 2) with equal batch dimensions (no broadcasting)",
        "activations and output per tensor; at most 33 025 products per output (the int32 accumulator)",
        "rescale factor (product of input scales / output scale) within the fixed-point range",
        "not SRAM-tiled",
    ),
)
