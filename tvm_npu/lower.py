"""Stage: lower. Each NPU composite becomes a `call_tir` to its kernel's integer PrimFunc.

Entry point: `lower(mod) -> mod`. The kernel reads its integer parameters (int8 weights,
fixed-point multipliers, zero points) out of the composite's bound constants; those
become constant operands of the call, and the composite functions disappear.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .registry import Composite, kernel


def lower(mod: tvm.IRModule) -> tvm.IRModule:
    mutator = _LowerComposites(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and not (func.attrs and "Composite" in func.attrs):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return relax.transform.DeadCodeElimination(["main"])(mutator.builder_.finalize())


@relax.expr_functor.mutator
class _LowerComposites(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.source = mod
        self.count = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, relax.GlobalVar):
            return call
        func = self.source[call.op]
        if not (isinstance(func, relax.Function) and func.attrs and "Composite" in func.attrs):
            return call
        npu_kernel = kernel(str(func.attrs["Composite"]))
        params = npu_kernel.params(Composite(func))
        inputs = [(tuple(int(d) for d in a.ty.shape), str(a.ty.dtype)) for a in call.args]
        symbol = f"{npu_kernel.name.replace('.', '_')}_{self.count}"
        self.count += 1
        gv = self.builder_.add_func(npu_kernel.primfunc(symbol, params, inputs), symbol)
        consts = [relax.const(c, str(c.dtype)) for c in params.consts]
        return relax.call_tir(gv, list(call.args) + consts, out_ty=call.ty)
