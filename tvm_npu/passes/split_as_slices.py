"""Each part `split(x)[i]` becomes `strided_slice(x)` (relax).

A split yields a tuple, which no single QuantizeLinear re-quantizes; its parts as slices are
value-preserving ops of one tensor each, so requantize_value_preserving re-quantizes each with
the input's own parameters and each part runs on the NPU as an int8 copy (npu.move), as YOLOv8's
C2f blocks need. The split goes once no part reads it.
"""

from __future__ import annotations

from tvm import relax

from ..registry import op_name
from .common import relax_pass


@relax.expr_functor.mutator
class _SplitAsSlices(relax.PyExprMutator):
    def visit_tuple_getitem_(self, op):
        op = super().visit_tuple_getitem_(op)
        split = self.lookup_binding(op.tuple_value) if isinstance(op.tuple_value, relax.Var) else None
        if op_name(split) != "relax.split" or not isinstance(split.ty, relax.TupleType):
            return op
        x = split.args[0]
        axis = int(split.attrs.axis) % len(x.ty.shape)
        extents = [int(part.shape[axis]) for part in split.ty.fields]
        start = sum(extents[: op.index])
        return relax.op.strided_slice(x, [axis], [start], [start + extents[op.index]], [1])  # strides: the importer's form


split_as_slices = relax_pass(_SplitAsSlices, "SplitAsSlices")
