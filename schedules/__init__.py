"""NPU kernels, one file per kernel family; installed as `tvm_npu.schedules`.

Each module defines `KERNEL = NpuKernel(...)` (see tvm_npu.registry): the pattern it
offloads, why it refuses a match, its integer parameters, its TE compute and a NumPy
integer reference. `tvm_npu.registry.kernels()` finds them all; nothing else lists them.
SRAM-tiled schedules and tunable knobs are the next stage's addition to these files.
"""
