"""Chains of per-channel constant affines on a dequantized tensor become one multiply-add (relax)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..registry import op_name
from .common import dequantize_along, per_channel, relax_pass


@relax.expr_functor.mutator
class _ChannelAffineChain(relax.PyExprMutator):
    """A chain of per-channel constant affines on a dequantized tensor (inference BatchNorm, Mul and Add by
    a constant per channel or scalar) -> one `x * a + b` with per-channel a, b: npu.channel_affine's form.

    DenseNet's BatchNorm after a concat cannot fold into a conv (passes.fold_channel_affines);
    its Caffe2 export follows it with a per-channel Mul and Add.
    """

    def visit_tuple_getitem_(self, op):
        op = super().visit_tuple_getitem_(op)
        norm = self.lookup_binding(op.tuple_value) if isinstance(op.tuple_value, relax.Var) else None
        if op.index != 0 or op_name(norm) != "relax.nn.batch_norm" or norm.attrs.training:
            return op
        if int(norm.attrs.axis) % len(norm.args[0].ty.shape) != 1:
            return op
        if not all(isinstance(a, tvm.ir.expr.Constant) for a in norm.args[1:5]):
            return op
        gamma, beta, mean, var = (a.value.numpy().astype(np.float64) for a in norm.args[1:5])
        factor = gamma / np.sqrt(var + float(norm.attrs.epsilon))
        folded = self._fold(norm.args[0], factor, beta - mean * factor)
        return op if folded is None else folded

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) not in ("relax.multiply", "relax.add") or len(call.ty.shape or []) < 2:
            return call
        data, constant = call.args
        if isinstance(data, tvm.ir.expr.Constant):
            data, constant = constant, data
        if not isinstance(constant, tvm.ir.expr.Constant) or isinstance(data, tvm.ir.expr.Constant):
            return call
        if list(map(int, data.ty.shape)) != list(map(int, call.ty.shape)):
            return call  # the constant broadcasts the data: not an affine map of it
        channels, rank = int(call.ty.shape[1]), len(call.ty.shape)
        values = per_channel(constant.value.numpy().astype(np.float64), channels, rank)
        if values is None:
            return call
        # A scalar alone starts no chain: HardSigmoid's and HardSwish's scalars are npu.lut's pattern.
        start = constant.value.numpy().size > 1
        factor, shift = (values, np.zeros(channels)) if op_name(call) == "relax.multiply" else (np.ones(channels), values)
        folded = self._fold(data, factor, shift, start)
        return call if folded is None else folded

    def _fold(self, data, factor: np.ndarray, shift: np.ndarray, start: bool = True):
        """`data * factor + shift`, composed with the affine `data` already is; None unless it reads a
        dequantize (directly only when `start`)."""
        if str(data.ty.dtype) != "float32":
            return None
        source = self.lookup_binding(data) if isinstance(data, relax.Var) else None
        inner = _channel_affine(source, self) if op_name(source) == "relax.add" else None
        if inner is None and not start:
            return None
        if inner is not None:
            data, (factor0, shift0) = inner[0], inner[1:]
            factor, shift = factor0 * factor, shift0 * factor + shift
            source = self.lookup_binding(data)
        if not dequantize_along(source, 1):
            return None
        shape = [-1] + [1] * (len(data.ty.shape) - 2)  # per channel, broadcasting over N, C, H, W
        scaled = self.builder_.emit(relax.op.multiply(data, relax.const(factor.reshape(shape).astype(np.float32))), "scaled")
        return relax.op.add(scaled, relax.const(shift.reshape(shape).astype(np.float32)))


def _channel_affine(add, mutator) -> tuple | None:
    """(data, factor, shift) of an `add(multiply(data, a), b)` whose data is a variable (as _fold writes it)."""
    scaled = mutator.lookup_binding(add.args[0]) if isinstance(add.args[0], relax.Var) else None
    if op_name(scaled) != "relax.multiply" or not isinstance(add.args[1], tvm.ir.expr.Constant):
        return None
    data, factor = scaled.args
    if not isinstance(data, relax.Var) or not isinstance(factor, tvm.ir.expr.Constant):
        return None
    channels = int(add.ty.shape[1])
    return (
        data,
        np.broadcast_to(factor.value.numpy().astype(np.float64).reshape(-1), (channels,)),
        np.broadcast_to(add.args[1].value.numpy().astype(np.float64).reshape(-1), (channels,)),
    )


channel_affine_chain = relax_pass(_ChannelAffineChain, "ChannelAffineChain")
