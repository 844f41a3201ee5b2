"""Shape-(1,) quantization scales and zero points become scalars (relax)."""

from __future__ import annotations

import tvm
from tvm import relax

from ..registry import op_name
from .common import QDQ_OPS, relax_pass


@relax.expr_functor.mutator
class _ScalarQuantizationParameters(relax.PyExprMutator):
    """Shape-(1,) scales and zero points (onnxruntime writes them) become the scalars they mean,
    so every kernel sees one form of per-tensor quantization."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) not in QDQ_OPS or not all(_is_size_one_array(a) for a in call.args[1:3]):
            return call
        scalars = [relax.const(a.value.numpy().reshape(()), str(a.ty.dtype)) for a in call.args[1:3]]
        return relax.Call(call.op, [call.args[0], *scalars], call.attrs, call.ty_args, call.span)  # span: ONNX name


def _is_size_one_array(expr) -> bool:
    return isinstance(expr, tvm.ir.expr.Constant) and expr.value.numpy().shape == (1,)


scalar_quantization_parameters = relax_pass(_ScalarQuantizationParameters, "ScalarQuantizationParameters")
