"""Stage: lower. Each NPU composite becomes a `call_tir` to its kernel's integer PrimFunc
(a cascaded producer -> consumer pair, `tvm_npu.cascade`, becomes one call to one PrimFunc).

Entry point: `lower(mod, layers, sram_bytes) -> (mod, layers)`, the layers with their proven footprints.
Each layer's plan carries its kernel's integer parameters (int8 weights, fixed-point multipliers, zero
points; read by `plan` out of the composite's bound constants); those become constant operands of the
call, and the composite functions disappear. `lower_layer` and `lower_cascade` lower one layer (or one
fused pair) and prove its SRAM footprint: the tuner and the conformance harness call them too.
"""

from __future__ import annotations

from dataclasses import replace

import tvm
from tvm import relax

from . import cascade, progress
from .errors import EXIT_INTERNAL_ERROR, NpuError
from .plan import LayerPlan
from .registry import KernelParams, NpuKernel, TensorSpec, kernel
from .sram import SramProof, prove_footprint
from .tiling import Tiles


def lower(mod: tvm.IRModule, layers: list[LayerPlan], sram_bytes: int | None = None) -> tuple[tvm.IRModule, list[LayerPlan]]:
    """`layers` (tvm_npu.plan.plan, tvm_npu.cascade.cascade) schedule each planned kernel in SRAM tiles and
    keep CPU-placed layers as plain Relax; every tiled kernel's SRAM footprint is proven on its lowered TIR
    and comes back as the layer's `sram_proven`."""
    with progress.bar(len(layers), "lower") as layers_done:
        mutator = _LowerComposites(mod, {p.function: p for p in layers}, sram_bytes, layers_done)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and not (func.attrs and "Composite" in func.attrs):
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
    lowered = relax.transform.DeadCodeElimination(["main"])(mutator.builder_.finalize())
    return lowered, [
        replace(layer, sram_proven=mutator.proven[layer.function]) if layer.function in mutator.proven else layer
        for layer in layers
    ]


def lower_layer(
    npu_kernel: NpuKernel,
    params: KernelParams,
    inputs: list[TensorSpec],
    tiles: Tiles | None,
    planned: int | None = None,
    sram_bytes: int | None = None,
    symbol: str = "main",
) -> tuple[tvm.tirx.PrimFunc, SramProof | None]:
    """One layer's PrimFunc: the kernel's compute, scheduled in `tiles` (None: the default schedule,
    not tiled) with its SRAM footprint proven against `planned` bytes (`check_footprint`)."""
    prim = npu_kernel.primfunc(symbol, params, inputs)
    if tiles is None:
        return prim, None
    prim = npu_kernel.schedule(prim, tiles)
    return prim, check_footprint(prim, planned, sram_bytes, npu_kernel.name)


def lower_cascade(
    producer: LayerPlan, consumer: LayerPlan, rows: int, planned: int, sram_bytes: int | None = None, symbol: str = "main"
) -> tuple[tvm.tirx.PrimFunc, SramProof]:
    """A fused pair's PrimFunc (`cascade.primfunc`) in bands of `rows`, its SRAM footprint proven as a layer's."""
    prim = cascade.primfunc(producer, consumer, rows).with_attr("global_symbol", symbol).with_attr("op_pattern", 8)
    return prim, check_footprint(prim, planned, sram_bytes, f"cascade {producer.kernel} -> {consumer.kernel}")


def check_footprint(prim: tvm.tirx.PrimFunc, planned: int, sram_bytes: int | None, what: str) -> SramProof:
    """Reads the SRAM footprint back from the lowered TIR: it must be the plan's, exactly (the model costs
    what the kernel does), and within the SRAM. A proof that finds no SRAM buffer is an error too."""
    proof = prove_footprint(prim)
    if proof.total != planned or proof.total == 0 or (sram_bytes and proof.total > sram_bytes):
        raise NpuError(
            f"{what}: the lowered TIR allocates {proof.total} B of SRAM {dict(proof.buffers)}, the plan "
            f"promised {planned} B for an SRAM of {sram_bytes} B (a tvm_npu bug: report it)",
            EXIT_INTERNAL_ERROR,
        )
    return proof


@relax.expr_functor.mutator
class _LowerComposites(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, plans: dict[str, LayerPlan], sram_bytes: int | None, layers_done):
        super().__init__(mod)
        self.layers_done = layers_done  # the progress bar
        self.source = mod
        self.count = 0
        self.plans = plans
        self.sram_bytes = sram_bytes
        self.proven: dict[str, int] = {}  # SRAM bytes per layer function

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, relax.GlobalVar):
            return call
        func = self.source[call.op]
        if not (isinstance(func, relax.Function) and func.attrs and "Composite" in func.attrs):
            return call
        layer = self.plans[call.op.name_hint]
        self.layers_done.update()
        if layer.placement == "cpu":
            # No tiling fits and --allow-cpu-fallback: the layer's own Relax ops run on the CPU.
            plain = func.without_attr("Composite").without_attr("Primitive")
            return relax.Call(self.builder_.add_func(plain, f"cpu_{call.op.name_hint}"), call.args)
        fused = layer.cascade
        if fused is not None and fused.produces(layer):
            return call  # computed inside its consumer's cascade; the unused call is dead code
        symbol = f"{layer.kernel.replace('.', '_')}_{self.count}"
        self.count += 1
        try:
            if fused is not None:
                # The producer's call is bound to the consumer's input: the cascade takes the producer's inputs.
                args = list(self.lookup_binding(call.args[0]).args)
                consts = list(fused.producer.params.consts) + list(layer.params.consts)
                prim, proof = lower_cascade(fused.producer, layer, fused.rows, fused.sram_planned, self.sram_bytes, symbol)
                self.proven[fused.producer.function] = self.proven[layer.function] = proof.total
            else:
                args, consts = list(call.args), list(layer.params.consts)
                prim, proof = lower_layer(
                    kernel(layer.kernel), layer.params, layer.inputs, layer.tiles, layer.sram_planned, self.sram_bytes, symbol
                )
                if proof is not None:
                    self.proven[layer.function] = proof.total
        except NpuError as err:
            names = " + ".join(each.name for each in ((fused.producer, layer) if fused is not None else (layer,)))
            raise NpuError(f"layer {names}: {err}", err.exit_code) from err
        # Scheduled for the NPU (SRAM tiles): build's CPU schedule rules leave it as it is.
        gv = self.builder_.add_func(prim.with_attr("tirx.is_scheduled", True), symbol)
        return relax.call_tir(gv, args + [relax.const(c, str(c.dtype)) for c in consts], out_ty=call.ty)
