"""ONNX Pad (constant mode) becomes `R.nn.pad` (relax)."""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from ..registry import op_name
from .common import relax_pass


@relax.expr_functor.mutator
class _PadAsRelaxOp(relax.PyExprMutator):
    """A constant-mode Pad -> `R.nn.pad`, the form npu.move's pattern matches.

    TVM 0.27's importer emits it as `call_tir` of TOPI's pad (one block `PadInput`:
    `if_then_else(inside, A[i - before], value)`): opaque to dpl patterns, so a Pad between two NPU
    kernels would dequantize to float on the CPU and back. The widths before each axis are the offsets
    of the load, those after what is left of the output shape; the value is the else branch.
    """

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.source = mod

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) != "relax.call_tir" or not isinstance(call.args[0], relax.GlobalVar):
            return call
        prim = self.source[call.args[0]] if call.args[0] in self.source.get_global_vars() else None
        args = call.args[1]
        if not isinstance(prim, tirx.PrimFunc) or not (isinstance(args, relax.Tuple) and len(args.fields) == 1):
            return call
        found = _pad_store(prim)
        x = args.fields[0]
        if found is None or not isinstance(x.ty, relax.TensorType) or not isinstance(call.ty, relax.TensorType):
            return call
        before, value = found
        shape_in, shape_out = ([int(d) for d in t.ty.shape] for t in (x, call))
        widths = []
        for b, n_in, n_out in zip(before, shape_in, shape_out):
            widths += [b, n_out - n_in - b]
        if len(before) != len(shape_in) or min(widths) < 0:
            return call
        return relax.op.nn.pad(x, widths, "constant", value)


def _pad_store(prim: tirx.PrimFunc) -> tuple[list[int], float] | None:
    """(widths before each axis, pad value) of TOPI's constant pad, or None for any other PrimFunc."""
    node = prim.body
    while not isinstance(node, tirx.BufferStore) and (hasattr(node, "block") or hasattr(node, "body")):
        if hasattr(node, "block") and node.block.name_hint not in ("root", "PadInput"):
            return None
        node = node.block if hasattr(node, "block") else node.body
    if not isinstance(node, tirx.BufferStore) or node.buffer.name != "PadInput":
        return None
    value = node.value
    if not (isinstance(value, tvm.ir.expr.Call) and str(value.op.name).endswith("if_then_else")):
        return None
    load, fill = value.args[1], value.args[2]
    indices = getattr(load, "indices", None)  # a buffer load (its class is not exported by tirx in 0.27)
    if indices is None or not isinstance(fill, tirx.FloatImm):
        return None
    before = []
    for index in indices:
        if isinstance(index, tirx.Var):
            before.append(0)
        elif isinstance(index, tirx.Sub) and isinstance(index.a, tirx.Var) and isinstance(index.b, tirx.IntImm):
            before.append(int(index.b.value))
        else:
            return None
    return before, float(fill.value)


pad_as_relax_op = relax_pass(_PadAsRelaxOp, "PadAsRelaxOp")
