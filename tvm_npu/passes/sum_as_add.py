"""ONNX Sum becomes pairwise `R.add` (relax)."""

from __future__ import annotations

from tvm import relax

from ..registry import op_name
from .common import relax_pass


@relax.expr_functor.mutator
class _SumAsAdd(relax.PyExprMutator):
    """ONNX Sum -> pairwise `R.add`, the form npu.elementwise matches (ResNet's residual adds are Sums).

    TVM 0.27's importer emits Sum(a, b, ...) as `sum(stack([broadcast_to(a, S), ...]), axis=0)`;
    `R.add` broadcasts the same way, and for two inputs a + b is that sum exactly.
    """

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) != "relax.sum" or [int(a) for a in call.attrs.axis or []] != [0] or call.attrs.keepdims:
            return call
        stacked = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
        if op_name(stacked) != "relax.stack" or int(stacked.attrs.axis) != 0 or not isinstance(stacked.args[0], relax.Tuple):
            return call
        operands = []
        for field in stacked.args[0].fields:
            source = self.lookup_binding(field) if isinstance(field, relax.Var) else None
            operands.append(source.args[0] if op_name(source) == "relax.broadcast_to" else field)
        total = operands[0]
        for operand in operands[1:-1]:
            total = self.builder_.emit(relax.op.add(total, operand), "partial_sum")
        return relax.op.add(total, operands[-1]) if len(operands) > 1 else call


sum_as_add = relax_pass(_SumAsAdd, "SumAsAdd")
