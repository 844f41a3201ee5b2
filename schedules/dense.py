"""npu.dense: quantized MatMul / Gemm ([N, K] x int8 weights -> [N, O]) with bias and fused
ReLU / ReLU6 / Clip, integer-only inside; weights are held as [O, K] (Gemm transB form).

    acc[n,o] = sum_k (X[n,k] - zx) * W[o,k]
    Y = clamp(((acc << k) + B[o]) * M[o] >> S[o] (round half up) + zy)
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx
from tvm.relax.dpl import is_const, is_op

from tvm_npu.fixed_point import (
    BIAS_FRACTION_BITS,
    arithmetic_attrs,
    epilogue_consts,
    epilogue_np,
    epilogue_te,
    scale_problem,
)
from tvm_npu.onnx_builder import Constant, quantized_operator, random_activation, random_weight
from tvm_npu.tiling import Geometry, Tiles
from tvm_npu.registry import (
    Composite,
    KernelParams,
    NpuKernel,
    accumulator_overflows,
    const_value,
    dequantized_constant,
    dequantized_tensor,
    pattern_activation,
    per_tensor_problem,
)
from tvm_npu.sram import SRAM_SCOPE, finish_tile_loops, stage_matrix_tiles


def patterns():
    dq_x = dequantized_tensor()
    dq_w = dequantized_constant()
    perm = is_op("relax.permute_dims")(dq_w)
    matmul = is_op("relax.matmul")(dq_x, dq_w | perm)
    bias = is_const() | dequantized_constant()
    root = is_op("relax.quantize")(pattern_activation(matmul | is_op("relax.add")(matmul, bias)), is_const(), is_const())
    return [(root, {"x": dq_x, "w": dq_w, "perm": perm, "anchor": matmul, "root": root})]


def check(ann) -> str | None:
    dq_w, dq_x = ann["w"], ann["x"]
    problem = per_tensor_problem(dq_x, ann["root"])
    if problem:
        return problem
    shape = [int(d) for d in dq_x.ty.shape]
    if len(shape) < 2 or any(d != 1 for d in shape[:-2]):
        return f"shape: input {shape} (the NPU dense takes [N, K], or [1, ..., 1, N, K] as transformers' tokens)"
    w = const_value(dq_w.args[0])
    if w.dtype != np.int8 or w.ndim != 2:
        return f"dtype: {w.dtype} rank-{w.ndim} weights (the NPU takes 2-D int8)"
    if np.any(const_value(dq_w.args[2]) != 0):
        return "attribute: asymmetric weights (non-zero weight zero point)"
    w_scale = const_value(dq_w.args[1])
    out_axis = 0 if "perm" in ann else 1  # Gemm transB=1 holds [O, K]; MatMul holds [K, O]
    if w_scale.size > 1 and int(dq_w.attrs.axis) % 2 != out_axis:
        return "attribute: weight scales not per output channel"
    if accumulator_overflows(w.shape[1 - out_axis]):
        return "shape: reduction too long for the int32 accumulator"
    real = float(const_value(dq_x.args[1])) * w_scale.astype(np.float64) / float(const_value(ann["root"].args[1]))
    return scale_problem(real, BIAS_FRACTION_BITS)


def params(comp: Composite) -> KernelParams:
    matmul = comp.call("relax.matmul")
    dq_x = comp.value(matmul.args[0])
    permuted = comp.calls("relax.permute_dims")
    dq_w = comp.value(permuted[0].args[0]) if permuted else comp.value(matmul.args[1])
    sx, zx = comp.activation_input(dq_x)
    sy, zy, dtype, lo, hi = comp.output()
    w = comp.const(dq_w.args[0]).astype(np.int8)
    if not comp.calls("relax.permute_dims"):
        w = np.ascontiguousarray(w.T)
    out_channels = w.shape[0]
    acc_scale = sx * np.broadcast_to(comp.quant(dq_w)[0].reshape(-1), (out_channels,))
    adds = comp.calls("relax.add")
    bias = np.broadcast_to(comp.const(adds[0].args[1]).reshape(-1), (out_channels,)) if adds else np.zeros(out_channels)
    return KernelParams(
        # `lead`: unit dimensions before [N, K] (a transformer's [1, tokens, width]), kept in the output
        attrs={"zx": zx, "zy": zy, "lo": lo, "hi": hi, "out_dtype": dtype, "lead": len(dq_x.ty.shape) - 2, **arithmetic_attrs()},
        consts=[w, *epilogue_consts(bias, acc_scale, sy)],
    )


def compute(p: KernelParams, inputs):
    ((x_shape, x_dtype),) = inputs
    a = p.attrs
    out_channels, depth = p.consts[0].shape
    x = te.placeholder(x_shape, x_dtype, "X")
    w = te.placeholder((out_channels, depth), "int8", "W")
    bias, mult, shift = (te.placeholder((out_channels,), "int64", n) for n in ("B", "M", "S"))
    k = te.reduce_axis((0, depth), "k")
    unit = (0,) * a["lead"]
    acc = te.compute(
        (x_shape[-2], out_channels),
        lambda n, o: te.sum((x[(*unit, n, k)].astype("int32") - a["zx"]) * w[o, k].astype("int32"), axis=k),
        name="acc",
    )
    y = te.compute(
        (*x_shape[:-1], out_channels),
        lambda *i: epilogue_te(acc[i[-2], i[-1]], bias[i[-1]], mult[i[-1]], shift[i[-1]], a),
        name="Y",
    )
    return te.create_prim_func([x, w, bias, mult, shift, y])


def reference(p: KernelParams, inputs) -> np.ndarray:
    (x,) = inputs
    a = p.attrs
    w, bias, mult, shift = p.consts
    acc = (x.astype(np.int64) - a["zx"]) @ w.astype(np.int64).T  # broadcasts over the unit dimensions
    return epilogue_np(acc, bias, mult, shift, a)


def geometry(p: KernelParams, inputs) -> Geometry:
    """Dense as the planner sees it: a 1x1 convolution over the N rows of X (K in, O out channels)."""
    ((x_shape, _),) = inputs
    return dense_geometry(x_shape, p.consts[0].shape)


def dense_geometry(x_shape, w_shape) -> Geometry:
    """The geometry of X [N, K] (or [1, ..., 1, N, K]) times weights [O, K] (npu.dense_csr's too)."""
    out_channels, depth = w_shape
    return Geometry("dense", 1, depth, x_shape[-2], 1, out_channels, x_shape[-2], 1)


def schedule(func: tirx.PrimFunc, tiles: Tiles) -> tirx.PrimFunc:
    """SRAM tiles of X rows, weight rows (+ parameters), int32 accumulator and output; the inner
    tile loop double-buffered, the outer one parallel, the output vectorized for the host (`tiles`' knobs)."""
    sch = s_tir.Schedule(func)
    y, acc = sch.get_sblock("Y"), sch.get_sblock("acc")
    *units, n, o = sch.get_loops(y)
    no, ni = sch.split(n, [None, tiles.rows])
    oo, oi = sch.split(o, [None, tiles.channels])
    outer, inner = (oo, no) if tiles.order == "weights" else (no, oo)
    sch.reorder(outer, inner, ni, oi)
    y_out, stationary = stage_matrix_tiles(sch, y, acc, outer, inner, tiles.order == "weights")
    x_s = sch.cache_read(acc, 0, SRAM_SCOPE)
    sch.compute_at(x_s, inner if tiles.order == "weights" else outer)
    loads = {sch.get(x_s).name_hint} if tiles.order == "weights" else {sch.get(b).name_hint for b in stationary}
    return finish_tile_loops(sch, tiles, y, y_out, outer, inner, loads, tile_loops=2 + len(units))


def examples(rng):
    def dense(name, n, k, o, gemm=True, activation=None):
        """`n` rows, or a tuple of leading dimensions (a transformer's [1, tokens])."""
        x = random_activation(rng, (*np.atleast_1d(n), k))
        out_dtype = str(rng.choice(["int8", "uint8"]))
        if gemm:  # Gemm holds weights as [O, K] (transB) with a bias
            return quantized_operator(
                name,
                "Gemm",
                [x, random_weight(rng, (o, k)), Constant(rng.normal(0, 0.3, o))],
                rng,
                out_dtype=out_dtype,
                activation=activation,
                transB=1,
            )
        return quantized_operator(
            name, "MatMul", [x, random_weight(rng, (k, o), axis=1)], rng, out_dtype=out_dtype, activation=activation
        )

    return [
        dense("gemm_relu", 3, 37, 13, activation="relu"),
        dense("matmul_1x1", 1, 1, 1, gemm=False),
        dense("long_reduction_relu6", 2, 513, 7, activation="relu6"),
        dense("random_matmul", int(rng.integers(1, 5)), int(rng.integers(1, 300)), int(rng.integers(1, 40)), gemm=False),
        dense("tokens_matmul_relu", (1, 11), 24, 17, gemm=False, activation="relu"),  # SVTR's MLP: [1, tokens, width]
    ]


KERNEL = NpuKernel(
    name="npu.dense",
    anchors=("relax.matmul",),
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    reference=reference,
    geometry=geometry,
    schedule=schedule,
    examples=examples,
    limits=(
        "input [N, K] or [1, ..., 1, N, K]; weights a 2-D int8 constant, symmetric, per-tensor or per-output-channel scales",
        "activations and output per tensor",
        "at most 65 793 products per output (K): the int32 accumulator",
        "rescale factors (input x weight scale / output scale) within the fixed-point range",
    ),
)
