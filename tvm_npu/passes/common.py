"""What several rewrites share: running a mutator over `main`, the dataflow graph of `main`, how a
dequantize reads its tensor, and per-channel constants."""

from __future__ import annotations

import numpy as np
import onnx
import tvm
from tvm import relax

from ..registry import op_name

QDQ_OPS = ("relax.quantize", "relax.dequantize")


def rewrite_main(mod: tvm.IRModule, mutator_class) -> tvm.IRModule:
    """`main` rewritten by a `relax.PyExprMutator` class, then rid of the bindings it orphaned."""
    mutator = mutator_class(mod)
    gv = mod.get_global_var("main")
    mutator.builder_.update_func(gv, mutator.visit_expr(mod["main"]))
    return relax.transform.DeadCodeElimination(["main"])(mutator.builder_.finalize())


def relax_pass(mutator_class, name: str) -> tvm.ir.transform.Pass:
    """A TVM module pass that runs `mutator_class` over `main` (opt level 0: it always runs)."""

    def transform(mod: tvm.IRModule, _context) -> tvm.IRModule:
        return rewrite_main(mod, mutator_class)

    return tvm.ir.transform.module_pass(transform, opt_level=0, name=name)


def per_tensor_dequantize(expr) -> bool:
    return (
        op_name(expr) == "relax.dequantize"
        and all(isinstance(a, tvm.ir.expr.Constant) for a in expr.args[1:3])
        and expr.args[1].value.numpy().size == 1
    )


def dequantize_along(expr, axis: int) -> bool:
    """An activation dequantize with constant parameters per tensor or per channel along `axis`."""
    if op_name(expr) != "relax.dequantize" or isinstance(expr.args[0], tvm.ir.expr.Constant):
        return False
    if not all(isinstance(a, tvm.ir.expr.Constant) for a in expr.args[1:3]) or str(expr.args[0].ty.dtype) not in ("int8", "uint8"):
        return False
    rank = len(expr.args[0].ty.shape)
    return all(a.value.numpy().size == 1 for a in expr.args[1:3]) or int(expr.attrs.axis) % rank == axis


def per_channel(constant: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """`constant` as one value per channel of a rank-`rank` NCHW tensor, if it broadcasts that way."""
    if constant.ndim > rank:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(constant.reshape(-1), (channels,)).astype(np.float64)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


class DataflowGraph:
    """Producers and consumers of `main`'s bindings, to say which side of a float op lacks QDQ."""

    _ACTIVATIONS = ("relax.nn.relu", "relax.clip")

    def __init__(self, main: relax.Function):
        self.values = {b.var: b.value for block in main.body.blocks for b in block.bindings}
        self.users: dict = {}
        self.constant = set()  # computed from constants only: a weight's dequantize and permute_dims
        for var, value in self.values.items():  # bindings come in dataflow order
            operands = self._operands(value)
            for arg in operands:
                self.users.setdefault(arg, []).append(var)
            if all(arg in self.constant for arg in operands):
                self.constant.add(var)

    @staticmethod
    def _operands(value) -> list:
        if not isinstance(value, relax.Call):
            return []
        flat = []
        for arg in value.args:
            flat.extend(arg.fields if isinstance(arg, relax.Tuple) else [arg])
        return [a for a in flat if isinstance(a, relax.Var)]

    def float_inputs(self, value) -> list[str]:
        """Ops producing float tensor operands that are not DequantizeLinear outputs."""
        ops = [op_name(self.values[a]) for a in self._operands(value) if a in self.values and a not in self.constant]
        return [op or "a call" for op in ops if op != "relax.dequantize"]

    def float_outputs(self, var) -> list[str]:
        """Ops consuming the result in float, after the activations a kernel fuses."""
        found = []
        for user in self.users.get(var, []):
            op = op_name(self.values[user])
            if op in self._ACTIVATIONS:
                found.extend(self.float_outputs(user))
            elif op != "relax.quantize":
                found.append(op or "the output")
        return found or (["the graph output"] if not self.users.get(var) else [])
