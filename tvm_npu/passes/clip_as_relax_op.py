"""ONNX Clip with constant bounds becomes `R.clip` (relax)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from ..registry import op_name
from .common import relax_pass


@relax.expr_functor.mutator
class _ClipAsRelaxOp(relax.PyExprMutator):
    """ONNX Clip with constant bounds -> `R.clip`, the form the fused-activation patterns match.

    TVM 0.27's importer emits Clip as `call_tir(maximum, (x, lo))` then `call_tir(minimum, (.., hi))`
    (TE, bounds sanitized by `where(isnan(b), +-inf, b)`): opaque to dpl patterns, so a conv+ReLU6
    would stay in float on the CPU. With constant bounds both calls fold into one clip.
    """

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.source = mod

    def visit_call_(self, call):
        call = super().visit_call_(call)
        side = self._clip_side(call)
        if side is None:
            return call
        x, bound = call.args[1].fields
        value = self._constant_bound(bound)
        if value is None:
            return call
        lo, hi = -np.inf, np.inf
        inner = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if op_name(inner) == "relax.clip":  # max then min (or min then max): one clip
            x, lo, hi = inner.args[0], float(inner.args[1].value), float(inner.args[2].value)
        lo, hi = (max(lo, value), hi) if side == "max" else (lo, min(hi, value))
        return relax.op.clip(x, lo, hi)

    def _clip_side(self, call) -> str | None:
        """ "max" / "min" for a call_tir of an elementwise maximum/minimum with a scalar second operand."""
        if op_name(call) != "relax.call_tir" or not isinstance(call.args[0], relax.GlobalVar):
            return None
        args = call.args[1]
        if not (isinstance(args, relax.Tuple) and len(args.fields) == 2 and len(args.fields[1].ty.shape) == 0):
            return None
        prim = self.source[call.args[0]] if call.args[0] in self.source.get_global_vars() else None
        if not isinstance(prim, tirx.PrimFunc) or str(args.fields[0].ty.dtype) not in ("float32", "float16"):
            return None
        node = prim.body  # TE's single elementwise block: descend to its store
        while not isinstance(node, tirx.BufferStore) and (hasattr(node, "block") or hasattr(node, "body")):
            node = node.block if hasattr(node, "block") else node.body
        if not isinstance(node, tirx.BufferStore):
            return None
        return {tirx.Max: "max", tirx.Min: "min"}.get(type(node.value))

    def _constant_bound(self, bound) -> float | None:
        """The bound's value: a constant, possibly behind the importer's NaN sanitizing `where`."""
        value = self.lookup_binding(bound) if isinstance(bound, relax.Var) else bound
        if op_name(value) == "relax.where":
            value = value.args[2]
        if not isinstance(value, tvm.ir.expr.Constant):
            return None
        number = float(value.value.numpy())
        return None if np.isnan(number) else number


clip_as_relax_op = relax_pass(_ClipAsRelaxOp, "ClipAsRelaxOp")
