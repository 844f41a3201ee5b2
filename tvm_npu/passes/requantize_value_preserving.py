"""Value-preserving operators on a dequantized tensor are requantized onto its grid (relax); a quantize
of a dequantize onto the very same grid is the integer tensor itself."""

from __future__ import annotations

import tvm
from tvm import relax

from ..registry import op_name
from .common import DataflowGraph, per_tensor_dequantize, relax_pass


# Operators that only move or select values: their output holds exactly the dequantized input
# values, so re-quantizing it with the input's own parameters is exact. That gives the operators
# after them (a conv after a max pool or a flatten) the dequantize input their NPU pattern needs
# (a constant pad of 0 adds the zero point: also exact). A concat so re-quantized runs on the NPU as a
# pure copy (npu.concat); differently quantized inputs have no exact common grid, so only the model's
# own QuantizeLinear gives npu.concat one.
_VALUE_PRESERVING = {
    "relax.nn.max_pool2d",
    "relax.reshape",
    "relax.permute_dims",
    "relax.squeeze",
    "relax.expand_dims",
    "relax.flatten",
    "relax.concat",
    "relax.split",
    "relax.strided_slice",
    "relax.nn.pad",
}


@relax.expr_functor.mutator
class _RequantizeValuePreserving(relax.PyExprMutator):
    """`op(dequantize(x, s, z))` -> `dequantize(quantize(op(...), s, z), s, z)` for value-preserving ops.

    A shuffle (reshape -> permute_dims -> reshape: how TVM imports DepthToSpace, SpaceToDepth and channel
    shuffles) is requantized once, after its last reshape, so that npu.move copies it in one pass."""

    def __init__(self, mod):
        super().__init__(mod)
        self.interior = _shuffle_interiors(DataflowGraph(mod["main"]))
        self.binding_var = None

    def visit_var_binding_(self, binding):
        self.binding_var = binding.var
        super().visit_var_binding_(binding)

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) == "relax.quantize":
            return self._identity_requantize(call)
        if op_name(call) not in _VALUE_PRESERVING or self.binding_var in self.interior:
            return call
        if op_name(call) == "relax.nn.pad" and (call.attrs.pad_mode != "constant" or float(call.attrs.pad_value) != 0):
            return call  # 0 is on every grid (the zero point); another value need not be
        operands = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else [call.args[0]]
        sources = [self._source(a) for a in operands]
        if not sources or not all(per_tensor_dequantize(s) for s in sources):
            return call
        params = {(float(s.args[1].value.numpy()), int(s.args[2].value.numpy()), str(s.args[0].ty.dtype)) for s in sources}
        if len(params) != 1:  # a concat of differently quantized inputs has no exact common grid
            return call
        if not isinstance(call.ty, relax.TensorType):
            return call
        dq = sources[0]
        out = self.builder_.emit(call, "preserved")
        q = self.builder_.emit(
            relax.op.quantize(out, dq.args[1], dq.args[2], axis=int(dq.attrs.axis), out_dtype=str(dq.args[0].ty.dtype)),
            "requantized",
        )
        return relax.op.dequantize(q, dq.args[1], dq.args[2], axis=int(dq.attrs.axis), out_dtype="float32")

    def _identity_requantize(self, call):
        """`quantize(dequantize(q, s, z), s, z)` -> `q`: exact, and a model that quantizes right after a moved
        tensor (as a TFLite reshape's output is) would otherwise keep this pair on the CPU after the rewrite above."""
        source = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
        if source is None or not per_tensor_dequantize(source):
            return call
        if not all(isinstance(a, tvm.ir.expr.Constant) and a.value.numpy().size == 1 for a in call.args[1:3]):
            return call
        same = (
            float(call.args[1].value.numpy()) == float(source.args[1].value.numpy())
            and int(call.args[2].value.numpy()) == int(source.args[2].value.numpy())
            and str(call.attrs.out_dtype) == str(source.args[0].ty.dtype)
        )
        return source.args[0] if same else call

    def _source(self, arg):
        """What `arg` is bound to, through a shuffle's interior (left in float: a reshape or permute_dims
        that was not requantized is one, see the class)."""
        value = self.lookup_binding(arg) if isinstance(arg, relax.Var) else arg
        while op_name(value) in ("relax.reshape", "relax.permute_dims") and isinstance(value.args[0], relax.Var):
            value = self.lookup_binding(value.args[0])
        return value


def _shuffle_interiors(graph: DataflowGraph) -> set:
    """The first reshape and the permute_dims of every reshape -> permute_dims -> reshape chain whose
    links have one user each."""
    interior = set()
    for var, value in graph.values.items():
        if op_name(value) != "relax.permute_dims" or not isinstance(value.args[0], relax.Var):
            continue
        before, users = value.args[0], graph.users.get(var, [])
        if (
            op_name(graph.values.get(before)) == "relax.reshape"
            and len(graph.users.get(before, [])) == 1
            and len(users) == 1
            and op_name(graph.values[users[0]]) == "relax.reshape"
        ):
            interior |= {before, var}
    return interior


requantize_value_preserving = relax_pass(_RequantizeValuePreserving, "RequantizeValuePreserving")
