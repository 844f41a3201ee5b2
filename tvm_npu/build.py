"""Stage: build. A Relax module becomes a host-executable TVM Relax executable.

Entry point: `build(mod, config)`; `pass_context()` is how anything NPU is compiled. The NPU
lowering stages hand this stage a module whose NPU operators are already `call_tir`s to SRAM-tiled PrimFuncs; what remains is
lowered by TVM's CPU pipeline (the CPU fallback) and compiled through LLVM.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .errors import EXIT_INTERNAL_ERROR, NpuError, first_line
from .target import NpuConfig


def build(mod: tvm.IRModule, config: NpuConfig, host: dict | None = None) -> relax.Executable:
    """`host`: the CPU to build for (`tvm_npu.host.host_target`; default the portable ISA level)."""
    target = config.tvm_target(host)
    try:
        with pass_context():
            return tvm.compile(mod, target=target)
    except Exception as err:  # noqa: BLE001 - a TVM failure here is ours to report, not the user's
        raise NpuError(
            f"TVM failed to build the model for {target.attrs['model']}: {first_line(err)} "
            "(a tvm_npu bug: rerun with --debug and report it)",
            EXIT_INTERNAL_ERROR,
        ) from err


def pass_context() -> tvm.transform.PassContext:
    """How everything NPU is compiled (the model, a tuning candidate, a conformance kernel): StorageRewrite
    would merge the SRAM tile buffers of mixed dtypes into one allocation and misalign them (an
    InternalError in 0.27), so each tile buffer stays its own allocation."""
    return tvm.transform.PassContext(config={"tirx.disable_storage_rewrite": True})
