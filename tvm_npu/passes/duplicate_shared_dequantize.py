"""Every consumer of an activation dequantize gets its own copy (relax)."""

from __future__ import annotations

import tvm
from tvm import relax

from ..registry import op_name
from .common import relax_pass


@relax.expr_functor.mutator
class _DuplicateSharedDequantize(relax.PyExprMutator):
    """Every consumer gets its own activation dequantize.

    A dequantize shared by a conv and a residual add would otherwise make the conv's composite
    also return the dequantized tensor (a tuple-output composite no kernel can implement).
    """

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) == "relax.dequantize":
            return call
        args = [self._own_copy(a) for a in call.args]
        if all(a.same_as(b) for a, b in zip(args, call.args)):
            return call
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def _own_copy(self, arg):
        if isinstance(arg, relax.Tuple):
            return relax.Tuple([self._own_copy(f) for f in arg.fields])
        bound = self.lookup_binding(arg) if isinstance(arg, relax.Var) else None
        if op_name(bound) == "relax.dequantize" and not isinstance(bound.args[0], tvm.ir.expr.Constant):
            return self.builder_.emit(relax.Call(bound.op, bound.args, bound.attrs), "dequantized")
        return arg


duplicate_shared_dequantize = relax_pass(_DuplicateSharedDequantize, "DuplicateSharedDequantize")
