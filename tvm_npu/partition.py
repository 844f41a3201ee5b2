"""Stage: partition. Quantized operator groups become NPU composites; the rest stays on the CPU.

Entry point: `partition(mod) -> (mod, report)`. It first runs the Relax rewrites (`passes.RELAX_PASSES`),
which put what the importer leaves opaque or scattered into the forms the kernels' patterns match,
then lets every registered kernel's patterns claim their operator groups.
The report lists every operator of `main` with where it runs and, for the CPU ones, why.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax

from .passes import run_relax_passes
from .passes.common import QDQ_OPS, DataflowGraph
from .registry import Composite, kernels, op_name


def partition(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[dict]]:
    mod = run_relax_passes(mod)
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


def _report(mod: tvm.IRModule, rejections: dict[str, str]) -> list[dict]:
    anchors = {op: k.name for k in kernels() for op in k.anchors}
    graph = DataflowGraph(mod["main"])
    rows = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value, name = binding.value, binding.var.name
            if not isinstance(value, relax.Call):
                continue
            if isinstance(value.op, relax.GlobalVar):
                func = mod[value.op]
                if func.attrs and "Composite" in func.attrs:
                    calls = list(Composite(func).bindings.values())
                    kernel = str(func.attrs["Composite"])
                    rows.append(
                        {
                            "name": name,
                            "ops": [op_name(v) for v in calls if op_name(v)],
                            "runs_on": "npu",
                            "kernel": kernel,
                            "reason": "",
                            "onnx_name": Composite(func).onnx_name() or "",
                            "macs": sum(map(conv_gemm_macs, calls)),
                        }
                    )
                    continue
                op = value.op.name
            elif isinstance(value.op, tvm.ir.Op):
                op = value.op.name
            else:
                op = str(value.op)
            reason = _cpu_reason(op, binding.var, value, anchors, rejections, graph)
            rows.append(
                {"name": name, "ops": [op], "runs_on": "cpu", "kernel": "", "reason": reason, "macs": conv_gemm_macs(value)}
            )
    return rows


def conv_gemm_macs(call) -> int:
    """Multiply-accumulates of a convolution, transposed convolution or matrix product (Gemm and MatMul
    import as `R.matmul`), from its static shapes; 0 for any other call. These are the MACs the NPU
    share counts, wherever they run."""
    op = op_name(call)
    if op not in _CONVOLUTIONS and op not in _TRANSPOSED_CONVOLUTIONS and op != "relax.matmul":
        return 0
    data, weight, out = (_shape(e) for e in (call.args[0], call.args[1], call))
    if op == "relax.matmul":  # each output element sums over the shared (last) axis of the left operand
        return math.prod(out) * data[-1]
    layout = str(call.attrs.kernel_layout)
    if op in _CONVOLUTIONS:  # each output element sums input channels per group x kernel taps
        return math.prod(out) * math.prod(weight) // weight[layout.index("O")]
    return math.prod(data) * math.prod(weight) // weight[layout.index("I")]  # each input element scatters


_CONVOLUTIONS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d")
_TRANSPOSED_CONVOLUTIONS = ("relax.nn.conv1d_transpose", "relax.nn.conv2d_transpose", "relax.nn.conv3d_transpose")


def _shape(expr) -> list[int]:
    return [int(d) for d in expr.ty.shape]


def _cpu_reason(op: str, var, value, anchors: dict[str, str], rejections: dict[str, str], graph: DataflowGraph) -> str:
    if var.name in rejections:
        return rejections[var.name]
    if var in graph.constant:  # a weight's dequantize, a bias reshape: FoldConstant computes it at compile time
        return "constant: computed at compile time"
    if op in QDQ_OPS:
        return "quantization boundary between NPU integers and CPU floats"
    if op == "relax.concat" and str(value.ty.dtype) in ("int8", "uint8"):  # written by passes.concat_of_dequantized
        return (
            "unsupported op: no NPU kernel copies differently quantized tensors together unchanged "
            "(the next layer reads them per channel)"
        )
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
