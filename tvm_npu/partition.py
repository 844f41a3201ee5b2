"""Stage: partition. Quantized operator groups become NPU composites; the rest stays on the CPU.

Entry point: `partition(mod) -> (mod, report)`. It first normalizes what the importer leaves
opaque (ONNX Clip becomes `R.clip`, ONNX Sum becomes `R.add`), gives a concat of differently quantized
tensors that no QuantizeLinear follows a per-channel dequantize, folds chains of per-channel constant
affines (BatchNormalization, Mul, Add) after a dequantize into one multiply-add, then runs on the module otherwise as imported:
FoldConstant would turn the int8 weight dequantizes into float constants, so it runs later.
The report lists every operator of `main` with where it runs and, for the CPU ones, why.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from .passes.split_as_slices import split_as_slices
from .quantize import per_channel
from .registry import Composite, kernels, op_name

# Operators that only move or select values: their output holds exactly the dequantized input
# values, so re-quantizing it with the input's own parameters is exact. That gives the operators
# after them (a conv after a max pool or a flatten) the dequantize input their NPU pattern needs.
# A concat so re-quantized runs on the NPU as a pure copy (npu.concat); differently quantized
# inputs have no exact common grid, so only the model's own QuantizeLinear gives npu.concat one.
_VALUE_PRESERVING = {
    "relax.nn.max_pool2d", "relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
    "relax.flatten", "relax.concat", "relax.split", "relax.strided_slice",
}
_QDQ = ("relax.quantize", "relax.dequantize")


def partition(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[dict]]:
    mod = _update_main(mod, _ScalarQuantizationParameters)
    mod = _update_main(mod, _ClipAsRelaxOp)
    mod = _update_main(mod, _SumAsAdd)
    mod = split_as_slices(mod)
    mod = _requantize_value_preserving(mod)
    mod = _update_main(mod, _ConcatOfDequantized)
    mod = _update_main(mod, _ChannelAffineChain)
    mod = _update_main(mod, _DuplicateSharedDequantize)
    rejections: dict[str, str] = {}
    patterns = [
        relax.transform.FusionPattern(k.name, pattern, annotations, _recording_check(k, rejections))
        for k in kernels()
        for pattern, annotations in k.patterns()
    ]
    mod = relax.transform.FuseOpsByPattern(patterns, bind_constants=True, annotate_codegen=False)(mod)
    return mod, _report(mod, rejections)


def _recording_check(kernel, rejections: dict[str, str]):
    """The kernel's check as FuseOpsByPattern wants it, remembering why each anchor was refused."""

    def check(ctx: relax.transform.PatternCheckContext) -> bool:
        reason = kernel.check(ctx.annotated_expr)
        if reason:
            anchor = ctx.annotated_expr["anchor"]
            var = ctx.value_to_bound_var.get(anchor)
            if var is not None:
                rejections[var.name] = reason
        return reason is None

    return check


def _update_main(mod: tvm.IRModule, mutator_class) -> tvm.IRModule:
    mutator = mutator_class(mod)
    gv = mod.get_global_var("main")
    mutator.builder_.update_func(gv, mutator.visit_expr(mod["main"]))
    return relax.transform.DeadCodeElimination(["main"])(mutator.builder_.finalize())


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
        """"max" / "min" for a call_tir of an elementwise maximum/minimum with a scalar second operand."""
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


@relax.expr_functor.mutator
class _SumAsAdd(relax.PyExprMutator):
    """ONNX Sum -> pairwise `R.add`, the form npu.elementwise matches (ResNet's residual adds are Sums).

    TVM 0.27's importer emits Sum(a, b, ...) as `sum(stack([broadcast_to(a, S), ...]), axis=0)`;
    `R.add` broadcasts the same way, and for two inputs a + b is that sum exactly.
    """

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) != "relax.sum" or [int(a) for a in call.attrs.axis or []] != [0] or call.attrs.keepdims:
            return call
        stacked = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
        if op_name(stacked) != "relax.stack" or int(stacked.attrs.axis) != 0 or not isinstance(stacked.args[0], relax.Tuple):
            return call
        operands = []
        for field in stacked.args[0].fields:
            source = self.lookup_binding(field) if isinstance(field, relax.Var) else None
            operands.append(source.args[0] if op_name(source) == "relax.broadcast_to" else field)
        total = operands[0]
        for operand in operands[1:-1]:
            total = self.builder_.emit(relax.op.add(total, operand), "partial_sum")
        return relax.op.add(total, operands[-1]) if len(operands) > 1 else call


@relax.expr_functor.mutator
class _ScalarQuantizationParameters(relax.PyExprMutator):
    """Shape-(1,) scales and zero points (onnxruntime writes them) become the scalars they mean,
    so every kernel sees one form of per-tensor quantization."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) not in _QDQ or not all(_is_size_one_array(a) for a in call.args[1:3]):
            return call
        scalars = [relax.const(a.value.numpy().reshape(()), str(a.ty.dtype)) for a in call.args[1:3]]
        return relax.Call(call.op, [call.args[0], *scalars], call.attrs, call.ty_args, call.span)  # span: ONNX name


def _is_size_one_array(expr) -> bool:
    return isinstance(expr, tvm.ir.expr.Constant) and expr.value.numpy().shape == (1,)


def _per_tensor_dequantize(expr):
    return (
        op_name(expr) == "relax.dequantize"
        and all(isinstance(a, tvm.ir.expr.Constant) for a in expr.args[1:3])
        and expr.args[1].value.numpy().size == 1
    )


@relax.expr_functor.mutator
class _RequantizeValuePreserving(relax.PyExprMutator):
    """`op(dequantize(x, s, z))` -> `dequantize(quantize(op(...), s, z), s, z)` for value-preserving ops."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) not in _VALUE_PRESERVING:
            return call
        operands = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else [call.args[0]]
        sources = [self.lookup_binding(a) if isinstance(a, relax.Var) else a for a in operands]
        if not sources or not all(_per_tensor_dequantize(s) for s in sources):
            return call
        params = {(float(s.args[1].value.numpy()), int(s.args[2].value.numpy()), str(s.args[0].ty.dtype)) for s in sources}
        if len(params) != 1:  # a concat of differently quantized inputs has no exact common grid
            return call
        if not isinstance(call.ty, relax.TensorType):
            return call
        dq = sources[0]
        out = self.builder_.emit(call, "preserved")
        q = self.builder_.emit(relax.op.quantize(out, dq.args[1], dq.args[2], axis=int(dq.attrs.axis),
                                                 out_dtype=str(dq.args[0].ty.dtype)), "requantized")
        return relax.op.dequantize(q, dq.args[1], dq.args[2], axis=int(dq.attrs.axis), out_dtype="float32")


def _requantize_value_preserving(mod: tvm.IRModule) -> tvm.IRModule:
    return _update_main(mod, _RequantizeValuePreserving)


@relax.expr_functor.mutator
class _ConcatOfDequantized(relax.PyExprMutator):
    """`concat([dequantize(a, sa, za), dequantize(b, sb, zb)], axis)` -> `dequantize(concat([a, b]), [sa.., sb..],
    [za.., zb..], axis)`: the same float values, per channel along the concat axis, exactly.

    NNCF leaves DenseNet's concats of differently quantized layers in float, before a BatchNorm;
    so read, the BatchNorm's input is an integer tensor (npu.channel_affine). A concat a QuantizeLinear
    follows is left to npu.concat, which requantizes onto the output grid.
    """

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        graph = _Graph(mod["main"])
        self.quantized = {graph.values[var] for var in graph.values
                          if any(op_name(graph.values[user]) == "relax.quantize" for user in graph.users.get(var, []))}

    def visit_call_(self, call):
        quantized = any(call.same_as(v) for v in self.quantized)
        call = super().visit_call_(call)
        if op_name(call) != "relax.concat" or quantized or not isinstance(call.args[0], relax.Tuple):
            return call
        axis = int(call.attrs.axis) % len(call.ty.shape)
        sources = [self.lookup_binding(f) if isinstance(f, relax.Var) else f for f in call.args[0].fields]
        if not all(_dequantize_along(s, axis) for s in sources):
            return call
        dtypes = {str(s.args[0].ty.dtype) for s in sources}
        dtype = dtypes.pop() if len(dtypes) == 1 else "int8"
        parts, scales, zero_points = [], [], []
        for source in sources:
            part, zero_point = source.args[0], source.args[2].value.numpy().astype(np.int64).reshape(-1)
            if str(part.ty.dtype) != dtype:  # uint8 among int8 parts: v - 128 with zero point z - 128, exactly
                part = self.builder_.emit(relax.op.astype(relax.op.subtract(
                    relax.op.astype(part, "int16"), relax.const(128, "int16")), "int8"), "signed")
                zero_point = zero_point - 128
            channels = int(part.ty.shape[axis])
            parts.append(part)
            scales.append(np.broadcast_to(source.args[1].value.numpy().reshape(-1), (channels,)))
            zero_points.append(np.broadcast_to(zero_point, (channels,)))
        integers = self.builder_.emit(relax.op.concat(parts, axis), "concatenated")
        return relax.op.dequantize(integers, relax.const(np.concatenate(scales), "float32"),
                                   relax.const(np.concatenate(zero_points).astype(dtype), dtype), axis=axis, out_dtype="float32")


def _dequantize_along(expr, axis: int) -> bool:
    """An activation dequantize with constant parameters per tensor or per channel along `axis`."""
    if op_name(expr) != "relax.dequantize" or isinstance(expr.args[0], tvm.ir.expr.Constant):
        return False
    if not all(isinstance(a, tvm.ir.expr.Constant) for a in expr.args[1:3]) or str(expr.args[0].ty.dtype) not in ("int8", "uint8"):
        return False
    rank = len(expr.args[0].ty.shape)
    return all(a.value.numpy().size == 1 for a in expr.args[1:3]) or int(expr.attrs.axis) % rank == axis


@relax.expr_functor.mutator
class _ChannelAffineChain(relax.PyExprMutator):
    """A chain of per-channel constant affines on a dequantized tensor (inference BatchNorm, Mul and Add by
    a constant per channel or scalar) -> one `x * a + b` with per-channel a, b: npu.channel_affine's form.

    DenseNet's BatchNorm after a concat cannot fold into a conv (quantize.fold_channel_affines);
    its Caffe2 export follows it with a per-channel Mul and Add.
    """

    def visit_tuple_getitem_(self, op):
        op = super().visit_tuple_getitem_(op)
        norm = self.lookup_binding(op.tuple_value) if isinstance(op.tuple_value, relax.Var) else None
        if op.index != 0 or op_name(norm) != "relax.nn.batch_norm" or norm.attrs.training:
            return op
        if int(norm.attrs.axis) % len(norm.args[0].ty.shape) != 1:
            return op
        if not all(isinstance(a, tvm.ir.expr.Constant) for a in norm.args[1:5]):
            return op
        gamma, beta, mean, var = (a.value.numpy().astype(np.float64) for a in norm.args[1:5])
        factor = gamma / np.sqrt(var + float(norm.attrs.epsilon))
        folded = self._fold(norm.args[0], factor, beta - mean * factor)
        return op if folded is None else folded

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) not in ("relax.multiply", "relax.add") or len(call.ty.shape or []) < 2:
            return call
        data, constant = call.args
        if isinstance(data, tvm.ir.expr.Constant):
            data, constant = constant, data
        if not isinstance(constant, tvm.ir.expr.Constant) or isinstance(data, tvm.ir.expr.Constant):
            return call
        if list(map(int, data.ty.shape)) != list(map(int, call.ty.shape)):
            return call  # the constant broadcasts the data: not an affine map of it
        channels, rank = int(call.ty.shape[1]), len(call.ty.shape)
        values = per_channel(constant.value.numpy().astype(np.float64), channels, rank)
        if values is None:
            return call
        # A scalar alone starts no chain: HardSigmoid's and HardSwish's scalars are npu.lut's pattern.
        start = constant.value.numpy().size > 1
        factor, shift = (values, np.zeros(channels)) if op_name(call) == "relax.multiply" else (np.ones(channels), values)
        folded = self._fold(data, factor, shift, start)
        return call if folded is None else folded

    def _fold(self, data, factor: np.ndarray, shift: np.ndarray, start: bool = True):
        """`data * factor + shift`, composed with the affine `data` already is; None unless it reads a
        dequantize (directly only when `start`)."""
        if str(data.ty.dtype) != "float32":
            return None
        source = self.lookup_binding(data) if isinstance(data, relax.Var) else None
        inner = _channel_affine(source, self) if op_name(source) == "relax.add" else None
        if inner is None and not start:
            return None
        if inner is not None:
            data, (factor0, shift0) = inner[0], inner[1:]
            factor, shift = factor0 * factor, shift0 * factor + shift
            source = self.lookup_binding(data)
        if not _dequantize_along(source, 1):
            return None
        shape = [-1] + [1] * (len(data.ty.shape) - 2)  # per channel, broadcasting over N, C, H, W
        scaled = self.builder_.emit(relax.op.multiply(data, relax.const(factor.reshape(shape).astype(np.float32))), "scaled")
        return relax.op.add(scaled, relax.const(shift.reshape(shape).astype(np.float32)))


def _channel_affine(add, mutator) -> tuple | None:
    """(data, factor, shift) of an `add(multiply(data, a), b)` whose data is a variable (as _fold writes it)."""
    scaled = mutator.lookup_binding(add.args[0]) if isinstance(add.args[0], relax.Var) else None
    if op_name(scaled) != "relax.multiply" or not isinstance(add.args[1], tvm.ir.expr.Constant):
        return None
    data, factor = scaled.args
    if not isinstance(data, relax.Var) or not isinstance(factor, tvm.ir.expr.Constant):
        return None
    channels = int(add.ty.shape[1])
    return (data, np.broadcast_to(factor.value.numpy().astype(np.float64).reshape(-1), (channels,)),
            np.broadcast_to(add.args[1].value.numpy().astype(np.float64).reshape(-1), (channels,)))


@relax.expr_functor.mutator
class _DuplicateSharedDequantize(relax.PyExprMutator):
    """Every consumer gets its own activation dequantize.

    A dequantize shared by a conv and a residual add would otherwise make the conv's composite
    also return the dequantized tensor (a tuple-output composite no kernel can implement).
    """

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) == "relax.dequantize":
            return call
        args = [self._own_copy(a) for a in call.args]
        if all(a.same_as(b) for a, b in zip(args, call.args)):
            return call
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def _own_copy(self, arg):
        if isinstance(arg, relax.Tuple):
            return relax.Tuple([self._own_copy(f) for f in arg.fields])
        bound = self.lookup_binding(arg) if isinstance(arg, relax.Var) else None
        if op_name(bound) == "relax.dequantize" and not isinstance(bound.args[0], tvm.ir.expr.Constant):
            return self.builder_.emit(relax.Call(bound.op, bound.args, bound.attrs), "dequantized")
        return arg


def _report(mod: tvm.IRModule, rejections: dict[str, str]) -> list[dict]:
    anchors = {op: k.name for k in kernels() for op in k.anchors}
    graph = _Graph(mod["main"])
    rows = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value, name = binding.value, binding.var.name
            if not isinstance(value, relax.Call):
                continue
            if isinstance(value.op, relax.GlobalVar):
                func = mod[value.op]
                if func.attrs and "Composite" in func.attrs:
                    ops = [op_name(v) for v in Composite(func).bindings.values() if op_name(v)]
                    kernel = str(func.attrs["Composite"])
                    rows.append({"name": name, "ops": ops, "runs_on": "npu", "kernel": kernel, "reason": "",
                                 "onnx_name": Composite(func).onnx_name() or ""})
                    continue
                op = value.op.name
            elif isinstance(value.op, tvm.ir.Op):
                op = value.op.name
            else:
                op = str(value.op)
            reason = _cpu_reason(op, binding.var, value, anchors, rejections, graph)
            rows.append({"name": name, "ops": [op], "runs_on": "cpu", "kernel": "", "reason": reason})
    return rows


class _Graph:
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


def _cpu_reason(op: str, var, value, anchors: dict[str, str], rejections: dict[str, str], graph: _Graph) -> str:
    if var.name in rejections:
        return rejections[var.name]
    if var in graph.constant:  # a weight's dequantize, a bias reshape: FoldConstant computes it at compile time
        return "constant: computed at compile time"
    if op in _QDQ:
        return "quantization boundary between NPU integers and CPU floats"
    if op == "relax.concat" and str(value.ty.dtype) in ("int8", "uint8"):  # written by _ConcatOfDequantized
        return "unsupported op: no NPU kernel copies differently quantized tensors together unchanged (the next layer reads them per channel)"
    if op in anchors:
        inputs, outputs = graph.float_inputs(value), graph.float_outputs(var)
        # NNCF quantizes neither side of an op it fuses with its neighbours (conv + HardSwish,
        # Add + Sigmoid): naming the float neighbour says where the model lacks a QDQ pair.
        if inputs:
            return f"quantization: float input from {inputs[0]} (no DequantizeLinear; {anchors[op]} takes int8)"
        if outputs:
            return f"quantization: float output into {outputs[0]} (no QuantizeLinear; {anchors[op]} gives int8)"
        return f"dtype: runs in float ({anchors[op]} needs DequantizeLinear inputs and a QuantizeLinear output)"
    return f"unsupported op: no NPU kernel for {op}"
