"""Relax rewrite before partitioning: each part `split(x)[i]` -> `strided_slice(x)`.

A split yields a tuple, which no single QuantizeLinear re-quantizes; its parts as slices are
value-preserving ops of one tensor each, so partition re-quantizes each with the input's own
parameters and each part runs on the NPU as an int8 copy (npu.move), as YOLOv8's C2f blocks need.

Entry point: `split_as_slices(mod) -> mod`.
"""

from __future__ import annotations

import tvm
from tvm import relax

from ..registry import op_name


def split_as_slices(mod: tvm.IRModule) -> tvm.IRModule:
    mutator = _SplitAsSlices(mod)
    gv = mod.get_global_var("main")
    mutator.builder_.update_func(gv, mutator.visit_expr(mod["main"]))
    return relax.transform.DeadCodeElimination(["main"])(mutator.builder_.finalize())


@relax.expr_functor.mutator
class _SplitAsSlices(relax.PyExprMutator):
    """Each `split(x)[i]` becomes its slice of x; the split goes once no part reads it (DCE)."""

    def visit_tuple_getitem_(self, op):
        op = super().visit_tuple_getitem_(op)
        split = self.lookup_binding(op.tuple_value) if isinstance(op.tuple_value, relax.Var) else None
        if op_name(split) != "relax.split" or not isinstance(split.ty, relax.TupleType):
            return op
        x = split.args[0]
        axis = int(split.attrs.axis) % len(x.ty.shape)
        extents = [int(part.shape[axis]) for part in split.ty.fields]
        start = sum(extents[:op.index])
        return relax.op.strided_slice(x, [axis], [start], [start + extents[op.index]], [1])  # strides: the importer's form
