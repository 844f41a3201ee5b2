"""npu.move: data movement without arithmetic on a quantized tensor (Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Slice; DepthToSpace, SpaceToDepth and channel shuffles, which TVM's importer
writes as reshape -> permute_dims -> reshape with no quantization in between) and constant Pad, as a DMA
copy of the integers.

Partition re-quantizes the output of a value-preserving op with its input's own parameters
(exact), so `Q(op(DQ(X)))` is the integers moved: the tensor stays int8 between NPU kernels instead of
being dequantized to float on the CPU and quantized again. Where the model's own QuantizeLinear puts
the output on another grid, each moved integer goes through the exact requantization table:

    Y = op(X)                 same scale, zero point and dtype (a copy)
    Y = T[op(X) - qmin]       T[q] = Q(DQ(q)) in the QDQ graph's float32 (npu.lut's tables)
    Y = P                     where a Pad writes its value v: P = Q(v) (the zero point for v = 0)

Untiled: a transpose's input tile is not a band of rows; an NPU DMA engine moves such layers by strides.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx, topi
from tvm.relax.dpl import is_const, is_op, wildcard

from tvm_npu.fixed_point import requantization_table, scale_problem
from tvm_npu.onnx_builder import Constant, quantized_operator, random_activation
from tvm_npu.registry import Composite, KernelParams, NpuKernel, const_value, dequantized_tensor, op_name, per_tensor_problem

# Relax op -> how the kernel moves it, and its operands after the tensor (matched as wildcards).
_MOVES = {
    "relax.reshape": ("reshape", 1),
    "relax.flatten": ("reshape", 0),
    "relax.squeeze": ("reshape", 0),
    "relax.expand_dims": ("reshape", 0),
    "relax.permute_dims": ("transpose", 0),
    "relax.strided_slice": ("slice", 4),
    "relax.nn.pad": ("pad", 0),
}


def patterns():
    found = []
    for op, (_, operands) in _MOVES.items():
        x = dequantized_tensor()
        anchor = is_op(op)(x, *(wildcard() for _ in range(operands)))
        root = is_op("relax.quantize")(anchor, is_const(), is_const())
        found.append((root, {"x": x, "anchor": anchor, "root": root}))
    x = dequantized_tensor()  # a shuffle: reshape -> permute_dims -> reshape (DepthToSpace, SpaceToDepth)
    anchor = is_op("relax.permute_dims")(is_op("relax.reshape")(x, wildcard()))
    root = is_op("relax.quantize")(is_op("relax.reshape")(anchor, wildcard()), is_const(), is_const())
    found.append((root, {"x": x, "anchor": anchor, "root": root}))
    return found


def _slices(call) -> tuple[slice, ...] | None:
    """The strided_slice as one Python slice per axis (numpy's clamping is ONNX Slice's), or None if
    its bounds are not constants."""

    def values(expr):
        fields = expr.fields if isinstance(expr, tvm.relax.Tuple) else expr.values
        found = [getattr(f, "value", f) for f in fields]
        return [int(v) for v in found] if all(isinstance(v, (int, tvm.tirx.IntImm)) for v in found) else None

    axes, begin, end, strides = (values(a) for a in call.args[1:5]) if len(call.args) == 5 else (None,) * 4
    if None in (axes, begin, end, strides):
        return None
    rank = len(call.args[0].ty.shape)
    slices = [slice(None)] * rank
    for axis, b, e, s in zip(axes, begin, end, strides):
        slices[axis % rank] = slice(b, e, s)
    return tuple(slices)


def check(ann) -> str | None:
    x, anchor = ann["x"], ann["anchor"]
    problem = per_tensor_problem(x, ann["root"])
    if problem:
        return problem
    if isinstance(x.args[0], tvm.ir.expr.Constant):
        return "attribute: a constant operand"
    if any(not isinstance(e.ty, tvm.relax.TensorType) or e.ty.shape is None for e in (anchor, ann["root"])):
        return "shape: unknown output shape"
    if op_name(anchor) == "relax.nn.pad" and anchor.attrs.pad_mode != "constant":
        return f"attribute: {anchor.attrs.pad_mode} padding (the NPU pads with a constant)"
    if op_name(anchor) == "relax.strided_slice":
        slices = _slices(anchor)
        shape = [int(d) for d in x.ty.shape]
        if slices is None or list(np.empty(shape, np.int8)[slices].shape) != [int(d) for d in anchor.ty.shape]:
            return "attribute: slice bounds that are not constants"
    sx, sy = (float(const_value(e.args[1])) for e in (x, ann["root"]))
    return scale_problem(sx) or scale_problem(sy)


def params(comp: Composite) -> KernelParams:
    dq = comp.call("relax.dequantize")
    moves = [v for v in comp.bindings.values() if op_name(v) in _MOVES]
    sx, zx = comp.activation_input(dq)
    sy, zy, dtype, _, _ = comp.output()
    in_dtype = str(dq.args[0].ty.dtype)
    shuffle = len(moves) == 3
    anchor = moves[1] if shuffle else moves[0]
    move = "shuffle" if shuffle else _MOVES[op_name(anchor)][0]
    attrs = {"move": move, "out_shape": _shape(moves[-1]), "out_dtype": dtype, "copy": (sx, zx, in_dtype) == (sy, zy, dtype)}
    if move in ("transpose", "shuffle"):
        axes = anchor.attrs.axes
        attrs["axes"] = tuple(int(a) for a in axes) if axes is not None else tuple(reversed(range(len(anchor.ty.shape))))
    if shuffle:
        attrs["shuffled_shape"] = _shape(moves[0])  # the reshape before the transpose
    if move == "pad":
        widths = [int(w) for w in anchor.attrs.pad_width]
        attrs["before"] = tuple(widths[0::2])
        out = np.iinfo(dtype)  # Q(v) as QuantizeLinear computes it: float32, half to even
        value = np.round(np.float32(anchor.attrs.pad_value) / np.float32(sy)) + zy
        attrs["fill"] = int(np.clip(value, out.min, out.max))
    if move == "slice":
        attrs["slices"] = tuple((s.start, s.stop, s.step) for s in _slices(anchor))
    lookup = [] if attrs["copy"] else [requantization_table(lambda v: v, sx, zx, sy, zy, in_dtype, dtype)]
    return KernelParams(attrs, lookup)


def _shape(call) -> tuple[int, ...]:
    return tuple(int(d) for d in call.ty.shape)


def _slice_starts(attrs: dict, shape) -> list[tuple[int, int]]:
    """(first index, step) per axis, as numpy resolves the slice on `shape`."""
    return [slice(*s).indices(int(d))[::2] for s, d in zip(attrs["slices"], shape)]


def compute(p: KernelParams, inputs):
    ((shape, dtype),) = inputs
    a = p.attrs
    x = te.placeholder(shape, dtype, "X")
    if a["move"] == "reshape":
        moved = topi.reshape(x, a["out_shape"])
    elif a["move"] == "transpose":
        moved = topi.transpose(x, a["axes"])
    elif a["move"] == "shuffle":
        moved = topi.reshape(topi.transpose(topi.reshape(x, a["shuffled_shape"]), a["axes"]), a["out_shape"])
    elif a["move"] == "slice":
        starts = _slice_starts(a, shape)
        moved = te.compute(
            a["out_shape"], lambda *i: x[tuple(first + step * j for (first, step), j in zip(starts, i))], name="moved"
        )
    else:  # pad: the input's integers where they land, the fill outside (below, not through a table)
        moved = te.compute(a["out_shape"], lambda *i: x[tuple(j - b for j, b in zip(i, a["before"]))], name="moved")
    if a["copy"]:
        y = te.compute(a["out_shape"], lambda *i: _filled(a, shape, i, moved[i]), name="Y")
        return te.create_prim_func([x, y])
    lookup, qmin = te.placeholder((256,), a["out_dtype"], "T"), int(np.iinfo(dtype).min)
    y = te.compute(a["out_shape"], lambda *i: _filled(a, shape, i, lookup[moved[i].astype("int32") - qmin]), name="Y")
    return te.create_prim_func([x, lookup, y])


def _filled(a: dict, shape, index, value):
    """`value`, or a Pad's fill outside the input."""
    if a["move"] != "pad":
        return value
    inside = tirx.all(*(tirx.all(j >= b, j < b + int(n)) for j, b, n in zip(index, a["before"], shape)))
    return tirx.if_then_else(inside, value, tirx.const(a["fill"], a["out_dtype"]))


def reference(p: KernelParams, inputs) -> np.ndarray:
    (x,) = inputs
    a = p.attrs
    if a["move"] == "reshape":
        moved = x.reshape(a["out_shape"])
    elif a["move"] == "transpose":
        moved = x.transpose(a["axes"])
    elif a["move"] == "shuffle":
        moved = x.reshape(a["shuffled_shape"]).transpose(a["axes"]).reshape(a["out_shape"])
    elif a["move"] == "slice":
        moved = x[tuple(slice(*s) for s in a["slices"])]
    else:
        moved = x
    moved = moved if a["copy"] else p.consts[0][moved.astype(np.int64) - int(np.iinfo(x.dtype).min)]
    if a["move"] != "pad":
        return moved
    after = [n - b - m for n, b, m in zip(a["out_shape"], a["before"], x.shape)]
    return np.pad(moved, list(zip(a["before"], after)), constant_values=a["fill"])


def examples(rng):
    def move(name, op_type, shape, *operands, shared=True, **attributes):
        x = random_activation(rng, shape)
        out_dtype = x.dtype if shared else str(rng.choice(["int8", "uint8"]))
        return quantized_operator(
            name,
            op_type,
            [x, *operands],
            rng,
            out_dtype=out_dtype,
            output_quantization=(x.scale, x.zero_point) if shared else None,
            **attributes,
        )

    def int64(values):  # shape-like operands: the importer reads them as constants (Constant is float32)
        return Constant(np.array(values), "int64")

    return [
        move("reshape_to_sequence", "Reshape", (1, 6, 2, 5), int64([1, 6, 10])),
        move("flatten", "Flatten", (2, 3, 2, 2), axis=1),
        move("transpose_to_tokens_requantized", "Transpose", (1, 5, 3, 4), shared=False, perm=[0, 2, 3, 1]),
        move("squeeze", "Squeeze", (1, 7, 1, 3), int64([2])),
        move("unsqueeze", "Unsqueeze", (3, 5), int64([1])),
        move("slice_strided", "Slice", (1, 6, 9, 7), int64([1, 1]), int64([8, 100]), int64([2, 3]), int64([2, 3])),
        move(
            "slice_negative_step_requantized", "Slice", (2, 8, 5), int64([-2]), int64([0]), int64([1]), int64([-3]), shared=False
        ),
        move("depth_to_space_dcr", "DepthToSpace", (1, 12, 3, 5), blocksize=2, mode="DCR"),
        move("depth_to_space_crd_requantized", "DepthToSpace", (1, 18, 2, 3), shared=False, blocksize=3, mode="CRD"),
        move("space_to_depth", "SpaceToDepth", (1, 3, 4, 6), blocksize=2),
        move("pad_zero", "Pad", (1, 3, 5, 4), int64([0, 0, 1, 2, 0, 0, 2, 1])),
        move(
            "pad_value_requantized",
            "Pad",
            (1, 5, 3, 3),
            int64([0, 1, 0, 3, 0, 0, 1, 0]),
            Constant(np.array(float(rng.uniform(-1, 1)), np.float32), "float32"),
            shared=False,
        ),
    ]


KERNEL = NpuKernel(
    name="npu.move",
    anchors=tuple(_MOVES),
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    reference=reference,
    examples=examples,
    limits=(
        "Reshape, Flatten, Squeeze, Unsqueeze, Transpose and Slice (constant bounds, any steps) of an activation",
        "DepthToSpace (DCR, CRD), SpaceToDepth and channel shuffles: reshape -> transpose -> reshape in one copy",
        "Pad in constant mode (any constant value, quantized on the output's grid); not reflect or edge",
        "input and output per tensor; a copy when both share one quantization, else an exact requantization table",
        "not SRAM-tiled: a strided DMA copy",
    ),
)
