"""Stage: build. A Relax module becomes a host-executable TVM Relax executable.

Entry point: `build(mod, config, host)`; `pass_context()` is how anything NPU is compiled. The NPU
lowering stages hand this stage a module whose NPU operators are already `call_tir`s to SRAM-tiled PrimFuncs; what remains is
lowered by TVM's CPU pipeline (the CPU fallback) and compiled through LLVM. The CPU fallback's PrimFuncs get
real schedules between legalization and code generation: `ParallelVectorize` (both cores, SIMD lanes) instead
of TVM's single-threaded scalar loops. dlight's CPU rules are not used: measured here, its Reduction rule made
a 1000-class softmax 2.5 ms of CPU time instead of 5 us and a fused 1x1 convolution no faster, so a reduction
over one axis keeps TVM's default lowering.
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic  # its __init__ omits dataflow_lower_passes
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

from .errors import EXIT_INTERNAL_ERROR, NpuError, first_line
from .target import NpuConfig

VECTOR_LANES = 16  # elements per SIMD step of the innermost spatial loop (int8..fp32 fill 128..512-bit registers)


def build(mod: tvm.IRModule, config: NpuConfig, host: dict | None = None) -> relax.Executable:
    """`host`: the CPU to build for (`tvm_npu.host.host_target`; default the portable ISA level)."""
    target = config.tvm_target(host)
    try:
        with pass_context():
            return tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target))
    except Exception as err:  # noqa: BLE001 - a TVM failure here is ours to report, not the user's
        raise NpuError(
            f"TVM failed to build the model for {target.attrs['model']}: {first_line(err)} "
            "(a tvm_npu bug: rerun with --debug and report it)",
            EXIT_INTERNAL_ERROR,
        ) from err


def cpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's default CPU pipeline with CPU schedules applied to the fused CPU-fallback PrimFuncs."""
    schedules = dlight.ApplyDefaultSchedule(ParallelVectorize())

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(
                cpu_generic.library_dispatch_passes(target)
                + cpu_generic.legalize_passes(target)
                + [schedules]
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
            )(mod)

    return pipeline


class ParallelVectorize(CPUScheduleRule):
    """CPU PrimFuncs of spatial blocks and reductions over several axes (convolutions, pools), block by block:
    the spatial loops outermost and fused, in parallel; the innermost spatial loop, in steps of `VECTOR_LANES`
    elements, innermost and as SIMD lanes, also under a reduction (a convolution accumulates a row of outputs
    per tap, as the NPU conv2d does). A function with a reduction over one axis (a sum, softmax, matmul) keeps
    TVM's default lowering: spreading its spatial loops would leave the reduction scalar and strided."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tvm.tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        # Counted as written: dlight's normalization folds unit axes, and a 1x1 convolution's kernel axes with them.
        axes = {sch.get(block).name_hint: _reduction_axes(sch, block) for block in sch.get_child_blocks(sch.get_sblock("root"))}
        infos = normalize_prim_func(sch)
        if infos is None or 1 in axes.values():
            return None
        for info in infos:
            block, kinds = info.block_rv, info.dom_kind()
            loops = sch.get_loops(block)
            spatial = [loop for loop, kind in zip(loops, kinds) if kind == "S"]
            reduction = [loop for loop, kind in zip(loops, kinds) if kind == "R"]
            if len(spatial) + len(reduction) != len(loops) or not spatial:
                continue  # opaque iterators, or nothing to share out
            *outer, last = spatial
            extent = sch.get(last).extent
            lanes = None
            if isinstance(extent, tvm.tirx.IntImm) and int(extent) % VECTOR_LANES == 0:
                last, lanes = sch.split(last, [None, VECTOR_LANES])
            elif isinstance(extent, tvm.tirx.IntImm) and 1 < int(extent) < VECTOR_LANES * 4 and outer:
                lanes, last = last, None  # a short row (13 columns) is one vector of its own width
            spread = [*outer, *([last] if last is not None else [])]
            sch.reorder(*spread, *reduction, *([lanes] if lanes is not None else []))
            sch.parallel(sch.fuse(*spread))
            if lanes is not None:
                sch.vectorize(lanes)
        return sch


def _reduction_axes(sch: s_tir.Schedule, block) -> int:
    """How many reduction axes a block has (a convolution three, also with a 1x1 kernel; a sum, softmax or
    matmul one)."""
    return sum(axis.iter_type == tvm.tirx.IterVar.CommReduce for axis in sch.get(block).iter_vars)


def pass_context() -> tvm.transform.PassContext:
    """How everything NPU is compiled (the model, a tuning candidate, a conformance kernel): StorageRewrite
    would merge the SRAM tile buffers of mixed dtypes into one allocation and misalign them (an
    InternalError in 0.27), so each tile buffer stays its own allocation."""
    return tvm.transform.PassContext(config={"tirx.disable_storage_rewrite": True})
