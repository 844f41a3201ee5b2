"""passes.quantize_activations: after NNCF, activation functions read quantized inputs, reusing NNCF's
quantization where it has one; a SiLU's gate stays inside its unit and a constant operand stays float."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from pass_models import FLOAT, onnx_model, reference
from tvm_npu.passes import quantize_activations

SHAPE = [1, 3, 4, 4]


def _qdq(name, source, scale, zero_point):
    return [helper.make_node("QuantizeLinear", [source, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])]


def _models():
    """NNCF's output for x -> Conv -> HardSwish -> {Conv, Mul by a constant}; x * Sigmoid(x) -> output:
    HardSwish's input in float, its output quantized for the Conv only; the float model it came from."""
    rng = np.random.default_rng(0)
    constants = {"w": rng.normal(0, 0.5, (3, 3, 1, 1)).astype(np.float32), "half": np.float32(0.5)}
    body = [helper.make_node("HardSwish", ["c"], ["h"]),
            helper.make_node("Mul", ["h", "half"], ["scaled"]),  # a constant operand: no two-activation Mul
            helper.make_node("Sigmoid", ["scaled"], ["gate"]),
            helper.make_node("Mul", ["scaled", "gate"], ["y"])]  # SiLU: the gate stays float inside it
    float_model = onnx_model([helper.make_node("Conv", ["x", "w"], ["c"])] + body,
                             {"x": (FLOAT, SHAPE)}, {"y": (FLOAT, SHAPE)}, constants)
    quantization = {"x_s": np.float32(0.02), "x_z": np.uint8(128), "h_s": np.float32(0.03), "h_z": np.uint8(10)}
    qdq_nodes = _qdq("x", "x", 0.02, 128) + [helper.make_node("Conv", ["x_dq", "w"], ["c"])] + body[:1] + _qdq("h", "h", 0.03, 10)
    qdq_nodes += [helper.make_node("Mul", ["h", "half"], ["scaled"])] + body[2:]
    qdq = onnx_model(qdq_nodes, {"x": (FLOAT, SHAPE)}, {"y": (FLOAT, SHAPE)}, {**constants, **quantization},
                     opset=19)  # the reference evaluator runs DequantizeLinear from opset 19 on
    samples = [{"x": rng.normal(0, 1, SHAPE).astype(np.float32)} for _ in range(4)]
    return qdq, float_model, samples


def test_activation_inputs_and_outputs_are_quantized_and_nncf_scales_reused():
    qdq, float_model, samples = _models()
    rewritten = quantize_activations(qdq, float_model, samples)
    producers = {out: node for node in rewritten.graph.node for out in node.output}
    consumers = {}
    for node in rewritten.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def quantized_input(node, index=0):
        dq = producers[node.input[index]]
        assert dq.op_type == "DequantizeLinear", (node.op_type, node.input[index])
        return producers[dq.input[0]]

    hard_swish = next(n for n in rewritten.graph.node if n.op_type == "HardSwish")
    assert quantized_input(hard_swish).input[0] == "c_npu_float"  # the conv now ends in a QuantizeLinear
    scaled = next(n for n in rewritten.graph.node if "half" in n.input)
    assert quantized_input(scaled).input[1] == "h_s"  # NNCF's quantization of h, reused
    assert scaled.input[1] == "half"  # the constant operand untouched
    silu = next(n for n in rewritten.graph.node if n.op_type == "Mul" and "half" not in n.input)
    gate = next(n for n in rewritten.graph.node if n.op_type == "Sigmoid")
    assert gate.output[0] in silu.input and quantized_input(gate).op_type == "QuantizeLinear"  # x read quantized, gate float
    assert producers["y"].op_type == "DequantizeLinear"  # the graph output keeps its name, quantized
    scale_of_c = next(i for i in rewritten.graph.initializer if i.name == "c_npu_scale")
    c = np.concatenate([reference(_with_output(float_model, "c"), s)[1].ravel() for s in samples])
    assert np.isclose(float(numpy_helper.to_array(scale_of_c)) * 255, max(c.max(), 0) - min(c.min(), 0), rtol=1e-5)
    for sample in samples:  # the quantized model still computes the function, within a few steps
        np.testing.assert_allclose(reference(rewritten, sample)[0], reference(float_model, sample)[0], atol=0.1)


def test_a_model_without_activation_functions_is_unchanged():
    qdq, float_model, samples = _models()
    plain = onnx_model(list(qdq.graph.node)[:3], {"x": (FLOAT, SHAPE)}, {"c": (FLOAT, SHAPE)}, opset=19, constants=
                       {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer if i.name in ("w", "x_s", "x_z")})
    assert quantize_activations(plain, float_model, samples) == plain


def _with_output(model, name):
    return onnx_model(list(model.graph.node), {"x": (FLOAT, SHAPE)}, {"y": (FLOAT, SHAPE), name: (FLOAT, SHAPE)},
                      {i.name: numpy_helper.to_array(i) for i in model.graph.initializer})
