"""npu.channel_affine: a per-channel affine map (inference BatchNorm, Mul/Add by per-channel constants)
of a quantized tensor, with a fused ReLU / ReLU6 / Clip, integer-only inside.

    y = x * a_c + b_c   on x = sx_c * (X - zx_c)      (partition folds the chain into one multiply-add)
    Y = clamp((X * M_c + B_c) >> S_c (round half up) + zy)
        M_c / 2^S_c ~= sx_c * a_c / sy,   B_c = round(b_c / sy * 2^S_c) - zx_c * M_c

A BatchNorm that follows a concat cannot fold into a convolution (DenseNet); NNCF leaves the concat
in float, and partition reads a concat of differently quantized tensors as one tensor quantized per
channel, so the input scale and zero point may be per channel too.

Tiled like elementwise (`schedules/elementwise.py`), with the per-channel M, B, S resident in SRAM.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx
from tvm.relax.dpl import is_const, is_op

from tvm_npu.fixed_point import MAX_SHIFT, multiplier, requantize_np, requantize_te, scale_problem
from tvm_npu.onnx_builder import Constant, quantized_operator, random_activation
from tvm_npu.tiling import Geometry, Tiles
from tvm_npu.registry import (
    Composite,
    KernelParams,
    NpuKernel,
    const_value,
    dequantized_tensor,
    pattern_activation,
    per_tensor_problem,
)
from tvm_npu.schedules.elementwise import row_axis, stream_geometry
from tvm_npu.sram import stream_tiles

PARAM_NAMES = ("M", "B", "S")  # per channel, int64 each
_BIAS_LIMIT = 2**62  # |x * M + B| + the rounding term stays inside int64


def patterns():
    x = dequantized_tensor()
    scaled = is_op("relax.multiply")(x, is_const())
    shifted = is_op("relax.add")(scaled, is_const())
    root = is_op("relax.quantize")(pattern_activation(shifted), is_const(), is_const())
    return [(root, {"x": x, "anchor": scaled, "shifted": shifted, "root": root})]


def _per_channel(values: np.ndarray, channels: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, np.float64).reshape(-1), (channels,))


def integers(sx, zx, factor, shift, sy: float) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, str | None]:
    """(M, B, S) per channel (int64), or why the affine has no fixed-point form."""
    real = np.asarray(sx, np.float64) * factor / sy
    nonzero = real[real != 0]
    problem = scale_problem(np.abs(nonzero)) if nonzero.size else None
    if problem:
        return None, problem
    mult, shifts = multiplier(np.abs(real))  # a zero factor: M = 0 (shift 23, harmless)
    mult = np.where(real < 0, -mult, mult)
    bias = np.round(shift / sy * np.exp2(shifts.astype(np.float64)))
    if np.any(np.abs(bias) >= _BIAS_LIMIT) or np.any(shifts > MAX_SHIFT):
        return None, f"scale: offset {float(np.abs(shift / sy).max()):.3g} output steps is outside the fixed-point range"
    bias = bias.astype(np.int64) - np.asarray(zx, np.int64) * mult
    return (mult.astype(np.int64), bias, shifts.astype(np.int64)), None


def check(ann) -> str | None:
    x, root = ann["x"], ann["root"]
    problem = per_tensor_problem(root)
    if problem:
        return problem
    if isinstance(x.args[0], tvm.ir.expr.Constant):
        return "attribute: a constant operand"
    shape = [int(d) for d in x.ty.shape]
    if len(shape) < 2:
        return "shape: no channel axis (rank < 2)"
    dtype = str(x.args[0].ty.dtype)
    if dtype not in ("int8", "uint8"):
        return f"dtype: {dtype} activations (the NPU takes int8/uint8)"
    channels = shape[1]
    sx, zx = const_value(x.args[1]), const_value(x.args[2])
    if {sx.size, zx.size} - {1, channels} or (sx.size > 1 or zx.size > 1) and int(x.attrs.axis) % len(shape) != 1:
        return "attribute: input quantized per channel along another axis than the channels"
    factor, shift = (const_value(_constant_operand(ann[name])) for name in ("anchor", "shifted"))
    if {factor.size, shift.size} - {1, channels}:
        return "shape: constants that are not per channel"
    if factor.size == shift.size == 1:  # a HardSigmoid's clip(alpha x + beta) is npu.lut's
        return "attribute: a scalar affine map (partition writes per-channel ones; npu.lut tabulates scalar ones)"
    _, problem = integers(
        _per_channel(sx, channels),
        _per_channel(zx, channels),
        _per_channel(factor, channels),
        _per_channel(shift, channels),
        float(const_value(root.args[1])),
    )
    return problem


def _constant_operand(call):
    """The constant side of a multiply/add (dpl matches the commutative ops either way round)."""
    return next(a for a in call.args if isinstance(a, tvm.ir.expr.Constant))


def params(comp: Composite) -> KernelParams:
    dq, scaled, shifted = comp.call("relax.dequantize"), comp.call("relax.multiply"), comp.call("relax.add")
    channels = int(dq.ty.shape[1])
    sx, zx = (_per_channel(v, channels) for v in comp.quant(dq))
    sy, zy, dtype, lo, hi = comp.output()
    factor, shift = (_per_channel(comp.const(_constant_operand(call)), channels) for call in (scaled, shifted))
    (mult, bias, shift), _ = integers(sx, zx.astype(np.int64), factor, shift, sy)
    return KernelParams({"zy": zy, "lo": lo, "hi": hi, "out_dtype": dtype}, [mult, bias, shift])


def compute(p: KernelParams, inputs):
    ((shape, dtype),) = inputs
    attrs = p.attrs
    x = te.placeholder(shape, dtype, "X")
    mult, bias, shift = (te.placeholder((shape[1],), "int64", name) for name in PARAM_NAMES)
    y = te.compute(
        shape,
        lambda *i: requantize_te(
            x[i].astype("int64") * mult[i[1]] + bias[i[1]],
            tirx.const(1, "int64"),
            shift[i[1]],
            attrs["zy"],
            attrs["lo"],
            attrs["hi"],
            attrs["out_dtype"],
        ),
        name="Y",
    )
    return te.create_prim_func([x, mult, bias, shift, y])


def reference(p: KernelParams, inputs) -> np.ndarray:
    (x,) = inputs
    per_channel = [1, -1] + [1] * (x.ndim - 2)
    mult, bias, shift = (c.reshape(per_channel) for c in p.consts)
    attrs = p.attrs
    return requantize_np(x.astype(np.int64) * mult + bias, 1, shift, attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"])


def examples(rng):
    def affine(name, op_type, shape, constants, activation=None):
        return quantized_operator(
            name,
            op_type,
            [random_activation(rng, shape), *map(Constant, constants)],
            rng,
            out_dtype=str(rng.choice(["int8", "uint8"])),
            activation=activation,
        )

    def batch_norm(name, shape, activation=None):
        channels = shape[1]
        gamma = rng.uniform(0.5, 1.5, channels) * rng.choice([-1, 1], channels)  # a negative scale flips the channel
        stats = [gamma, rng.normal(0, 0.2, channels), rng.normal(0, 0.2, channels), rng.uniform(0.5, 2, channels)]
        return affine(name, "BatchNormalization", shape, [v.astype(np.float32) for v in stats], activation)

    def per_channel(shape, low, high):
        values = rng.uniform(low, high, shape[1]).astype(np.float32)
        return values.reshape([-1] + [1] * (len(shape) - 2))  # (C, 1, 1): broadcasts over N, C, H, W

    rank = int(rng.integers(2, 5))
    random_shape = tuple(int(d) for d in rng.integers(2, 9, rank))
    return [
        batch_norm("batchnorm_relu_odd_channels", (1, 7, 5, 3), "relu"),
        affine("mul_per_channel", "Mul", (1, 5, 6, 4), [per_channel((1, 5, 6, 4), -2, 2)]),
        affine("add_per_channel_relu6", "Add", (1, 6, 3, 7), [per_channel((1, 6, 3, 7), -1, 1)], "relu6"),
        batch_norm(f"batchnorm_random_rank{rank}", random_shape),
    ]


def geometry(p: KernelParams, inputs) -> Geometry | None:
    ((shape, _),) = inputs
    return stream_geometry(
        "elementwise", shape, f"affine {'x'.join(map(str, shape))}", table_bytes=sum(c.nbytes for c in p.consts)
    )


def schedule(func: tirx.PrimFunc, tiles: Tiles) -> tirx.PrimFunc:
    return stream_tiles(func, tiles, row_axis([int(d) for d in func.params[-1].shape]), stationary=frozenset(PARAM_NAMES))


KERNEL = NpuKernel(
    name="npu.channel_affine",
    anchors=("relax.nn.batch_norm",),
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    reference=reference,
    examples=examples,
    limits=(
        (
            "inference BatchNormalization, Mul and Add by per-channel (or scalar, after one of those) constants, "
            "on channel axis 1 of a rank-2+ tensor, folded into one multiply-add"
        ),
        "input per tensor or per channel (a concat of differently quantized tensors), output per tensor",
        "rescale factors (input scale x factor / output scale) within the fixed-point range",
    ),
    geometry=geometry,
    schedule=schedule,
)
