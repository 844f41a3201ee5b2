"""The build stage's CPU schedules for CPU-fallback operators (`tvm_npu.build.ParallelVectorize`)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from tvm_npu.build import ParallelVectorize, cpu_pipeline
from tvm_npu.host import host_target


def _conv_module():
    @tvm.script.ir_module
    class Module:
        @R.function
        def main(
            x: R.Tensor((1, 8, 12, 32), "float32"),
            w: R.Tensor((16, 8, 3, 3), "float32"),
            short: R.Tensor((1, 8, 5, 13), "float32"),
        ):
            with R.dataflow():
                y = R.nn.relu(R.nn.conv2d(x, w, padding=(1, 1)))  # rows of 32: two 16-lane vectors
                z = R.sum(y, axis=[3])
                s = R.nn.conv2d(short, w, padding=(1, 1))  # rows of 13: one 13-lane vector
                R.output(y, z, s)
            return (y, z, s)

    return Module


def _loops(func) -> list[str]:
    kinds = []

    def visit(stmt):
        if isinstance(stmt, tvm.tirx.For):
            kinds.append(stmt.kind)
        for attr in ("body", "block", "then_case", "else_case"):
            child = getattr(stmt, attr, None)
            if isinstance(child, tvm.tirx.Stmt):
                visit(child)
        for child in getattr(stmt, "seq", []):
            visit(child)

    visit(func.body)
    return kinds


def test_cpu_fallback_gets_parallel_vector_schedules_with_unchanged_results():
    target = tvm.target.Target(host_target())
    with target:
        legal = tvm.transform.Sequential(relax.backend.cpu_generic.legalize_passes(target))(_conv_module())
    funcs = {gv.name_hint: f for gv, f in legal.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    convs = [f for name, f in funcs.items() if "conv2d" in name]
    assert len(convs) == 2
    for conv in convs:
        kinds = _loops(ParallelVectorize().apply(conv, target, False).mod["main"])
        assert tvm.tirx.ForKind.PARALLEL in kinds and tvm.tirx.ForKind.VECTORIZED in kinds
    one_axis = next(f for name, f in funcs.items() if "sum" in name)
    assert ParallelVectorize().apply(one_axis, target, False) is None  # keeps TVM's default lowering

    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape, np.float32) for shape in ((1, 8, 12, 32), (16, 8, 3, 3), (1, 8, 5, 13))]
    results = []
    for pipeline in (cpu_pipeline(target), "default"):
        vm = relax.VirtualMachine(tvm.compile(_conv_module(), target=target, relax_pipeline=pipeline), tvm.cpu())
        results.append([t.numpy() for t in vm["main"](*map(tvm.runtime.tensor, inputs))])
    for ours, default in zip(*results):
        np.testing.assert_array_equal(ours, default)  # same sums in the same order per output
