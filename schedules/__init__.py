"""NPU kernels, one file per kernel family; installed as `tvm_npu.schedules`.

Each kernel file will register, in one place, the pattern it matches, its integer
compute, its default SRAM-tiled schedule, its tunable knobs with their SRAM footprint,
and a NumPy reference. No kernel exists yet: every operator currently runs through
TVM's default CPU lowering.
"""
