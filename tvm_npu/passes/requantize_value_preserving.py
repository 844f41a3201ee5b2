"""Value-preserving operators on a dequantized tensor are requantized onto its grid (relax); a quantize
of a dequantize onto the very same grid is the integer tensor itself."""

from __future__ import annotations

import tvm
from tvm import relax

from ..registry import op_name
from .common import per_tensor_dequantize, relax_pass


# Operators that only move or select values: their output holds exactly the dequantized input
# values, so re-quantizing it with the input's own parameters is exact. That gives the operators
# after them (a conv after a max pool or a flatten) the dequantize input their NPU pattern needs.
# A concat so re-quantized runs on the NPU as a pure copy (npu.concat); differently quantized
# inputs have no exact common grid, so only the model's own QuantizeLinear gives npu.concat one.
_VALUE_PRESERVING = {
    "relax.nn.max_pool2d", "relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
    "relax.flatten", "relax.concat", "relax.split", "relax.strided_slice",
}


@relax.expr_functor.mutator
class _RequantizeValuePreserving(relax.PyExprMutator):
    """`op(dequantize(x, s, z))` -> `dequantize(quantize(op(...), s, z), s, z)` for value-preserving ops."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) == "relax.quantize":
            return self._identity_requantize(call)
        if op_name(call) not in _VALUE_PRESERVING:
            return call
        operands = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else [call.args[0]]
        sources = [self.lookup_binding(a) if isinstance(a, relax.Var) else a for a in operands]
        if not sources or not all(per_tensor_dequantize(s) for s in sources):
            return call
        params = {(float(s.args[1].value.numpy()), int(s.args[2].value.numpy()), str(s.args[0].ty.dtype)) for s in sources}
        if len(params) != 1:  # a concat of differently quantized inputs has no exact common grid
            return call
        if not isinstance(call.ty, relax.TensorType):
            return call
        dq = sources[0]
        out = self.builder_.emit(call, "preserved")
        q = self.builder_.emit(relax.op.quantize(out, dq.args[1], dq.args[2], axis=int(dq.attrs.axis),
                                                 out_dtype=str(dq.args[0].ty.dtype)), "requantized")
        return relax.op.dequantize(q, dq.args[1], dq.args[2], axis=int(dq.attrs.axis), out_dtype="float32")


    def _identity_requantize(self, call):
        """`quantize(dequantize(q, s, z), s, z)` -> `q`: exact, and a model that quantizes right after a moved
        tensor (as a TFLite reshape's output is) would otherwise keep this pair on the CPU after the rewrite above."""
        source = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
        if source is None or not per_tensor_dequantize(source):
            return call
        if not all(isinstance(a, tvm.ir.expr.Constant) and a.value.numpy().size == 1 for a in call.args[1:3]):
            return call
        same = (float(call.args[1].value.numpy()) == float(source.args[1].value.numpy())
                and int(call.args[2].value.numpy()) == int(source.args[2].value.numpy())
                and str(call.attrs.out_dtype) == str(source.args[0].ty.dtype))
        return source.args[0] if same else call


requantize_value_preserving = relax_pass(_RequantizeValuePreserving, "RequantizeValuePreserving")
