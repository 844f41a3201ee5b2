"""Stage: lower. Each NPU composite becomes a `call_tir` to its kernel's integer PrimFunc.

Entry point: `lower(mod) -> mod`. The kernel reads its integer parameters (int8 weights,
fixed-point multipliers, zero points) out of the composite's bound constants; those
become constant operands of the call, and the composite functions disappear.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .errors import EXIT_INTERNAL_ERROR, NpuError
from .registry import Composite, kernel
from .sram import prove_footprint


def lower(mod: tvm.IRModule, plans=None, sram_bytes: int | None = None) -> tvm.IRModule:
    """`plans` (tvm_npu.plan.plan) schedule each planned kernel in SRAM tiles and keep CPU-placed
    layers as plain Relax; every tiled kernel's SRAM footprint is proven on its lowered TIR."""
    mutator = _LowerComposites(mod, {p.function: p for p in plans or []}, sram_bytes)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and not (func.attrs and "Composite" in func.attrs):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return relax.transform.DeadCodeElimination(["main"])(mutator.builder_.finalize())


@relax.expr_functor.mutator
class _LowerComposites(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, plans=None, sram_bytes=None):
        super().__init__(mod)
        self.source = mod
        self.count = 0
        self.plans = plans or {}
        self.sram_bytes = sram_bytes

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, relax.GlobalVar):
            return call
        func = self.source[call.op]
        if not (isinstance(func, relax.Function) and func.attrs and "Composite" in func.attrs):
            return call
        layer = self.plans.get(call.op.name_hint)
        if layer is not None and layer.placement == "cpu":
            # No tiling fits and --allow-cpu-fallback: the layer's own Relax ops run on the CPU.
            plain = func.without_attr("Composite").without_attr("Primitive")
            return relax.Call(self.builder_.add_func(plain, f"cpu_{call.op.name_hint}"), call.args)
        npu_kernel = kernel(str(func.attrs["Composite"]))
        params = npu_kernel.params(Composite(func))
        if layer is not None and layer.kernel != npu_kernel.name:  # a variant the planner chose (CSR weights)
            npu_kernel = kernel(layer.kernel)
            params = npu_kernel.params(params)
        inputs = [(tuple(int(d) for d in a.ty.shape), str(a.ty.dtype)) for a in call.args]
        symbol = f"{npu_kernel.name.replace('.', '_')}_{self.count}"
        self.count += 1
        prim = npu_kernel.primfunc(symbol, params, inputs)
        if layer is not None and layer.tiles is not None:
            prim = npu_kernel.schedule(prim, layer.tiles)
            layer.sram_proven = prove_footprint(prim).total
            if layer.sram_proven > layer.sram_planned or (self.sram_bytes and layer.sram_proven > self.sram_bytes):
                raise NpuError(
                    f"layer {layer.name}: the lowered TIR allocates {layer.sram_proven} B of SRAM, the plan "
                    f"promised {layer.sram_planned} B for an SRAM of {self.sram_bytes} B (a tvm_npu bug: report it)",
                    EXIT_INTERNAL_ERROR,
                )
        gv = self.builder_.add_func(prim, symbol)
        consts = [relax.const(c, str(c.dtype)) for c in params.consts]
        return relax.call_tir(gv, list(call.args) + consts, out_ty=call.ty)
