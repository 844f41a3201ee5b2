"""npu.concat: concatenation of quantized tensors along any axis, integer-only inside.

Each input lands in its slice of the output either as a plain copy (its quantization already
is the output's: a DMA on an NPU) or requantized onto the output grid:

    Y[slice i] = X_i                                               same scale, zero point, dtype
    Y[slice i] = clamp((X_i - z_i) * M_i >> S_i (round half up) + zy)    otherwise

Equal-scale concats reach this kernel through partition's value-preserving rewrite (which
gives them the shared quantization as output quantize); differently quantized inputs need the
model's own QuantizeLinear after the concat to say which grid the output is on.

Tiled along the dimension after the axis (before it when the axis is the last): each output
tile holds the whole concatenated axis, so every input streams its own part of the tile into
SRAM (input indices are clamped into range, which keeps each input's SRAM tile exactly its
slice; `if_then_else` picks the right one).
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import te, tirx
from tvm.relax.dpl import is_const, is_op, is_tuple

from tvm_npu.fixed_point import multiplier, requantize_np, requantize_te, scale_problem
from tvm_npu.onnx_builder import Activation, quantized_operator, random_activation
from tvm_npu.tiling import Geometry, Tiles
from tvm_npu.registry import (
    Composite,
    KernelParams,
    NpuKernel,
    const_value,
    dequantized_tensor,
    per_tensor_problem,
)
from tvm_npu.sram import stream_tiles

# dpl tuples have a fixed arity, so there is one pattern per input count. Inception concatenates
# 4 branches; DenseNet-style blocks concatenate more, up to this many.
MAX_INPUTS = 32


def patterns():
    found = []
    for count in range(2, MAX_INPUTS + 1):
        dqs = [dequantized_tensor() for _ in range(count)]
        anchor = is_op("relax.concat")(is_tuple(dqs))
        root = is_op("relax.quantize")(anchor, is_const(), is_const())
        found.append((root, {"anchor": anchor, "root": root, **{f"x{i}": dq for i, dq in enumerate(dqs)}}))
    return found


def check(ann) -> str | None:
    dqs = [ann[f"x{i}"] for i in range(len(ann) - 2)]
    problem = per_tensor_problem(*dqs, ann["root"])
    if problem:
        return problem
    if any(isinstance(dq.args[0], tvm.ir.expr.Constant) for dq in dqs):
        return "attribute: a constant operand (the NPU concatenates activations)"
    sy = float(const_value(ann["root"].args[1]))
    return scale_problem(np.array([float(const_value(dq.args[1])) / sy for dq in dqs]))


def params(comp: Composite) -> KernelParams:
    concat = comp.call("relax.concat")
    sy, zy, dtype, lo, hi = comp.output()
    sources = []
    for field in concat.args[0].fields:
        dq = comp.value(field)
        sx, zx = comp.activation_input(dq)
        copy = sx == sy and zx == zy and str(dq.args[0].ty.dtype) == dtype
        mult, shift = multiplier(sx / sy)
        sources.append((copy, zx, int(mult), int(shift)))
    rank = len(concat.ty.shape)
    return KernelParams(
        attrs={"axis": int(concat.attrs.axis) % rank, "zy": zy, "lo": lo, "hi": hi, "out_dtype": dtype, "sources": tuple(sources)}
    )


def _converted(value, source, attrs, requantize):
    copy, zx, mult, shift = source
    if copy:
        return value
    return requantize(value.astype("int64") - zx, mult, shift, attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"])


def compute(p: KernelParams, inputs):
    a = p.attrs
    axis = a["axis"]
    xs = [te.placeholder(shape, dtype, f"X{i}") for i, (shape, dtype) in enumerate(inputs)]
    offsets = np.cumsum([0] + [shape[axis] for shape, _ in inputs])
    shape = list(inputs[0][0])
    shape[axis] = int(offsets[-1])

    def element(*index):
        # Walk the inputs from the last: each one owns output indices from its offset on.
        value = None
        for i in reversed(range(len(xs))):
            local = list(index)
            local[axis] = tirx.min(tirx.max(index[axis] - int(offsets[i]), 0), inputs[i][0][axis] - 1)
            this = _converted(xs[i][tuple(local)], a["sources"][i], a, requantize_te)
            value = this if value is None else tirx.if_then_else(index[axis] < int(offsets[i + 1]), this, value)
        return value

    y = te.compute(tuple(shape), element, name="Y")
    return te.create_prim_func([*xs, y]).with_attr("npu_concat_axis", axis)


def reference(p: KernelParams, inputs) -> np.ndarray:
    a = p.attrs
    parts = [_converted(x, s, a, requantize_np) for x, s in zip(inputs, a["sources"])]
    return np.concatenate([part.astype(a["out_dtype"]) for part in parts], axis=a["axis"])


def examples(rng):
    def concat(name, shapes, axis, shared=False):
        """Inputs each on their own grid, or (`shared`) all on one: the pure-copy path."""
        first = random_activation(rng, shapes[0])
        inputs = [
            Activation(tuple(s), first.dtype, first.scale, first.zero_point) if shared else random_activation(rng, s)
            for s in shapes
        ]
        return quantized_operator(name, "Concat", [inputs], rng, out_dtype=str(rng.choice(["int8", "uint8"])), axis=axis)

    rank = int(rng.integers(1, 5))
    axis = int(rng.integers(0, rank))
    base = [int(d) for d in rng.integers(1, 6, rank)]
    return [
        concat("channels_three_grids", [(1, 3, 4, 5), (1, 1, 4, 5), (1, 6, 4, 5)], axis=1),
        concat("channels_shared_grid", [(1, 2, 3, 3), (1, 5, 3, 3)], axis=1, shared=True),
        concat("last_axis_five_inputs", [(1, 2, 3, w) for w in (1, 2, 3, 4, 5)], axis=3),
        concat(
            f"random_rank{rank}_axis{axis}",
            [[*base[:axis], int(rng.integers(1, 6)), *base[axis + 1 :]] for _ in range(int(rng.integers(2, 5)))],
            axis=axis,
        ),
    ]


def _row_axis(axis: int, rank: int) -> int | None:
    """The dimension concat tiles split: the one after the axis, or before it when it is the last."""
    return axis + 1 if axis + 1 < rank else axis - 1 if rank > 1 else None


def geometry(p: KernelParams, inputs) -> Geometry | None:
    axis = p.attrs["axis"]
    shape = list(inputs[0][0])
    shape[axis] = sum(s[axis] for s, _ in inputs)
    rows_at = _row_axis(axis, len(shape))
    if rows_at is None:
        return None
    lead = min(axis, rows_at)
    rows, width = shape[rows_at], math.prod(shape[lead:]) // shape[rows_at]
    label = f"concat {len(inputs)} on axis {axis} -> {'x'.join(map(str, shape))}"
    return Geometry("concat", math.prod(shape[:lead]), 1, rows, width, 1, rows, width, label=label)


def schedule(func: tirx.PrimFunc, tiles: Tiles) -> tirx.PrimFunc:
    axis = func.attrs["npu_concat_axis"]
    rank = len(func.params[-1].shape)
    rows_at = _row_axis(int(axis), rank)
    return stream_tiles(func, tiles, rows_at, inside=int(axis) if rows_at > int(axis) else None)


KERNEL = NpuKernel(
    name="npu.concat",
    anchors=("relax.concat",),
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    reference=reference,
    examples=examples,
    limits=(
        "2 to 32 activation inputs (no constant operand), any axis",
        "activations and output per tensor; inputs on other grids than the output are requantized (else copied)",
        "rescale factors (input scale / output scale) within the fixed-point range",
    ),
    geometry=geometry,
    schedule=schedule,
)
