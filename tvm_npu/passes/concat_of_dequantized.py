"""A float concat of dequantized tensors becomes one per-channel dequantize of an integer concat (relax)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..registry import op_name
from .common import DataflowGraph, dequantize_along, relax_pass


@relax.expr_functor.mutator
class _ConcatOfDequantized(relax.PyExprMutator):
    """`concat([dequantize(a, sa, za), dequantize(b, sb, zb)], axis)` -> `dequantize(concat([a, b]), [sa.., sb..],
    [za.., zb..], axis)`: the same float values, per channel along the concat axis, exactly.

    NNCF leaves DenseNet's concats of differently quantized layers in float, before a BatchNorm;
    so read, the BatchNorm's input is an integer tensor (npu.channel_affine). A concat a QuantizeLinear
    follows is left to npu.concat, which requantizes onto the output grid.
    """

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        graph = DataflowGraph(mod["main"])
        self.quantized = {
            graph.values[var]
            for var in graph.values
            if any(op_name(graph.values[user]) == "relax.quantize" for user in graph.users.get(var, []))
        }

    def visit_call_(self, call):
        quantized = any(call.same_as(v) for v in self.quantized)
        call = super().visit_call_(call)
        if op_name(call) != "relax.concat" or quantized or not isinstance(call.args[0], relax.Tuple):
            return call
        axis = int(call.attrs.axis) % len(call.ty.shape)
        sources = [self.lookup_binding(f) if isinstance(f, relax.Var) else f for f in call.args[0].fields]
        if not all(dequantize_along(s, axis) for s in sources):
            return call
        dtypes = {str(s.args[0].ty.dtype) for s in sources}
        dtype = dtypes.pop() if len(dtypes) == 1 else "int8"
        parts, scales, zero_points = [], [], []
        for source in sources:
            part, zero_point = source.args[0], source.args[2].value.numpy().astype(np.int64).reshape(-1)
            if str(part.ty.dtype) != dtype:  # uint8 among int8 parts: v - 128 with zero point z - 128, exactly
                part = self.builder_.emit(
                    relax.op.astype(relax.op.subtract(relax.op.astype(part, "int16"), relax.const(128, "int16")), "int8"),
                    "signed",
                )
                zero_point = zero_point - 128
            channels = int(part.ty.shape[axis])
            parts.append(part)
            scales.append(np.broadcast_to(source.args[1].value.numpy().reshape(-1), (channels,)))
            zero_points.append(np.broadcast_to(zero_point, (channels,)))
        integers = self.builder_.emit(relax.op.concat(parts, axis), "concatenated")
        return relax.op.dequantize(
            integers,
            relax.const(np.concatenate(scales), "float32"),
            relax.const(np.concatenate(zero_points).astype(dtype), dtype),
            axis=axis,
            out_dtype="float32",
        )


concat_of_dequantized = relax_pass(_ConcatOfDequantized, "ConcatOfDequantized")
