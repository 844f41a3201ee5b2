"""Stage: lower. Each NPU composite becomes a `call_tir` to its kernel's integer PrimFunc
(a cascaded producer -> consumer pair, `tvm_npu.cascade`, becomes one call to one PrimFunc).

Entry point: `lower(mod) -> mod`. The kernel reads its integer parameters (int8 weights,
fixed-point multipliers, zero points) out of the composite's bound constants; those
become constant operands of the call, and the composite functions disappear.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .cascade import primfunc as cascade_primfunc
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
        fused = None if layer is None else layer.cascade
        if fused is not None and fused.producer is layer:
            return call  # computed inside its consumer's cascade; the unused call is dead code
        args, consts = list(call.args), list(params.consts)
        symbol = f"{npu_kernel.name.replace('.', '_')}_{self.count}"
        self.count += 1
        if fused is not None:
            # The producer's call is bound to the consumer's input: the cascade takes the producer's inputs.
            producer_call = self.lookup_binding(call.args[0])
            producer_func = self.source[producer_call.op]
            producer_params = kernel(str(producer_func.attrs["Composite"])).params(Composite(producer_func))
            args = list(producer_call.args)
            consts = list(producer_params.consts) + consts
            x = args[0].ty
            prim = cascade_primfunc(fused, (producer_params, params), (tuple(int(d) for d in x.shape), str(x.dtype)))
            prim = prim.with_attr("global_symbol", symbol).with_attr("op_pattern", 8)
            self._prove(prim, [fused.producer, layer], fused.sram_planned)
        else:
            inputs = [(tuple(int(d) for d in a.ty.shape), str(a.ty.dtype)) for a in call.args]
            prim = npu_kernel.primfunc(symbol, params, inputs)
            if layer is not None and layer.tiles is not None:
                prim = npu_kernel.schedule(prim, layer.tiles)
                self._prove(prim, [layer], layer.sram_planned)
        gv = self.builder_.add_func(prim, symbol)
        return relax.call_tir(gv, args + [relax.const(c, str(c.dtype)) for c in consts], out_ty=call.ty)

    def _prove(self, prim, layers, planned: int) -> None:
        """Reads the SRAM footprint back from the lowered TIR: it must be within the plan and the SRAM."""
        proven = prove_footprint(prim).total
        for layer in layers:
            layer.sram_proven = proven
        if proven > planned or (self.sram_bytes and proven > self.sram_bytes):
            names = " + ".join(layer.name for layer in layers)
            raise NpuError(
                f"layer {names}: the lowered TIR allocates {proven} B of SRAM, the plan "
                f"promised {planned} B for an SRAM of {self.sram_bytes} B (a tvm_npu bug: report it)",
                EXIT_INTERNAL_ERROR,
            )
