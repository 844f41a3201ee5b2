"""ONNX rewrite after NNCF: QuantizeLinear/DequantizeLinear pairs on the inputs and outputs of
activation functions, Softmax, elementwise Mul/Add and MatMul of two activations, so the NPU can run them.

NNCF treats HardSwish, Sigmoid, SiLU and friends as activations fused into the producing conv
(`conv -> hswish -> Q`) and leaves two-activation multiplies (squeeze-excite's gate) unquantized,
which is right for a CPU that fuses them but leaves an integer NPU without int8 at the conv's
output: the conv and the function both stay in float on the host. Each tensor below gets a
per-tensor quantization, reusing NNCF's where it quantized the tensor for another consumer:

- the input and output of each activation function (`ACTIVATIONS`, and `x * gate(x)` for the
  gates in `GATES`: SiLU, HardSwish as older opsets write it), the gate itself left in float;
- both inputs and the output of a Mul/Add of two activations (squeeze-excite, residual adds);
- the input and output of each Softmax, and the activation inputs and the output of each MatMul of two
  activations (attention's scores Q x K^T and P x V: NNCF quantizes one operand at most, so the
  scores, the Softmax and the weighted sum all stay in float on the host).

New scales are calibrated on the float model over the same samples as NNCF (min/max, asymmetric
uint8, 0 exactly representable). The conv then ends in a QuantizeLinear (`npu.conv2d`), the
function runs as a table (`npu.lut`), the gate multiply on `npu.elementwise`, attention on
`npu.matmul` and `npu.softmax`, and OpenVINO
validates the very same QDQ model.

Entry point: `quantize_activations(qdq, float_model, samples) -> qdq`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .common import copy_model

ACTIVATIONS = ("HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Mish", "LeakyRelu", "Gelu")
GATES = ("Sigmoid", "HardSigmoid")  # x * gate(x): SiLU, HardSwish below opset 14
_BINARY = ("Mul", "Add")
_UNARY = (*ACTIVATIONS, "Softmax")  # input and output quantized


def quantize_activations(
    qdq: onnx.ModelProto, float_model: onnx.ModelProto, samples: Sequence[dict[str, np.ndarray]]
) -> onnx.ModelProto:
    model = copy_model(qdq)
    graph = model.graph
    wanted = list(dict.fromkeys(_tensors_to_quantize(graph)))
    quantized = _quantize_consumers(graph)
    missing = [name for name in wanted if name not in quantized]
    ranges = _ranges(float_model, missing, samples)
    for name in wanted:
        if name in quantized:
            _read_through(graph, name, quantized[name])
        else:
            _insert_pair(graph, name, *ranges[name])
    return model


def _tensors_to_quantize(graph: onnx.GraphProto) -> list[str]:
    """Inputs and outputs of the graph's activation units, in graph order."""
    inits = {init.name for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}

    def activation(name: str) -> bool:
        return name not in inits and name not in dequantized and (name in producers or _is_graph_input(graph, name))

    def weight(name: str) -> bool:  # a constant, or NNCF's dequantized int8 constant
        return name in inits or (name in dequantized and producers[name].input[0] in inits)

    gates = set()  # the outputs of gates: float inside their x * gate(x) unit
    for node in graph.node:
        if node.op_type == "Mul" and len(node.input) == 2:
            for x, other in (node.input, node.input[::-1]):
                gate = producers.get(other)
                if gate is not None and gate.op_type in GATES and gate.input[0] == x:
                    gates.add(other)
    found = []
    for node in graph.node:
        if node.output[0] in gates:
            continue
        if node.op_type in _UNARY and _table_function(node):
            found += [node.input[0], node.output[0]]
        elif node.op_type == "MatMul" and not any(weight(name) for name in node.input):
            found += [*node.input, node.output[0]]  # activation() below drops an operand NNCF quantized
        elif node.op_type in _BINARY and len(node.input) == 2 and all(activation(name) for name in node.input):
            found += [name for name in node.input if name not in gates] + [node.output[0]]
    return [name for name in found if activation(name)]


def _table_function(node: onnx.NodeProto) -> bool:
    """Whether npu.lut has the function's table (GELU: only its tanh approximation)."""
    if node.op_type != "Gelu":
        return True
    return any(a.name == "approximate" and a.s == b"tanh" for a in node.attribute)


def _is_graph_input(graph: onnx.GraphProto, name: str) -> bool:
    return any(i.name == name for i in graph.input)


def _quantize_consumers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Per-tensor QuantizeLinear nodes by the float tensor they quantize (NNCF's, for other consumers)."""
    inits = {init.name: init for init in graph.initializer}
    found = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits and _size(inits[node.input[1]]) == 1:
            found.setdefault(node.input[0], node)
    return found


def _size(init: onnx.TensorProto) -> int:
    return int(np.prod(init.dims)) if init.dims else 1


def _read_through(graph: onnx.GraphProto, name: str, quantize: onnx.NodeProto) -> None:
    """Every float consumer of `name` reads it through `quantize` and a new DequantizeLinear instead."""
    dequantized = f"{name}_npu_dequantized"
    if not any(name in node.input for node in graph.node if node.op_type != "QuantizeLinear"):
        return  # every consumer quantizes it already
    dq = helper.make_node(
        "DequantizeLinear", [quantize.output[0], *quantize.input[1:3]], [dequantized], name=f"{name}_npu_dequantize"
    )
    _redirect(graph, name, dequantized, skip={"QuantizeLinear"})
    graph.node.insert(list(graph.node).index(quantize) + 1, dq)


def _insert_pair(graph: onnx.GraphProto, name: str, scale: float, zero_point: int) -> None:
    """QuantizeLinear -> DequantizeLinear on `name`: the dequantized tensor takes its name (so a graph
    output ends quantized too) and its producer writes `name`_npu_float; a graph input is read through the pair."""
    prefix = f"{name}_npu"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}_scale"),
            numpy_helper.from_array(np.array(zero_point, np.uint8), f"{prefix}_zero_point"),
        ]
    )
    producer = next((i for i, node in enumerate(graph.node) if name in node.output), None)
    if producer is None:
        source, result = name, f"{prefix}_dequantized"
        _redirect(graph, name, result, skip=set())
    else:
        source, result = f"{prefix}_float", name
        outputs = graph.node[producer].output
        outputs[list(outputs).index(name)] = source
    quantize = helper.make_node(
        "QuantizeLinear", [source, f"{prefix}_scale", f"{prefix}_zero_point"], [f"{prefix}_quantized"], name=f"{prefix}_quantize"
    )
    dequantize = helper.make_node(
        "DequantizeLinear",
        [f"{prefix}_quantized", f"{prefix}_scale", f"{prefix}_zero_point"],
        [result],
        name=f"{prefix}_dequantize",
    )
    at = -1 if producer is None else producer
    graph.node.insert(at + 1, quantize)
    graph.node.insert(at + 2, dequantize)


def _redirect(graph: onnx.GraphProto, name: str, new: str, skip: set[str]) -> None:
    for node in graph.node:
        if node.op_type in skip:
            continue
        for i, operand in enumerate(node.input):
            if operand == name:
                node.input[i] = new


def _ranges(float_model: onnx.ModelProto, names: list[str], samples) -> dict[str, tuple[float, int]]:
    """(scale, uint8 zero point) per tensor from its float min/max over `samples` (OpenVINO on the float model)."""
    if not names:
        return {}
    from ..validate import openvino_outputs  # OpenVINO loads slowly: only when there is something to calibrate

    probe = onnx.ModelProto()
    probe.CopyFrom(float_model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in known)
    runs = openvino_outputs(probe.SerializeToString(), samples, "CPU")
    found = {}
    for name in names:
        lo = min(0.0, min(float(run[name].min()) for run in runs))
        hi = max(0.0, max(float(run[name].max()) for run in runs))
        scale = (hi - lo) / 255 if hi > lo else 1.0
        found[name] = (scale, int(np.clip(np.round(-lo / scale), 0, 255)))
    return found
