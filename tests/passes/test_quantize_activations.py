"""passes.quantize_activations: after NNCF, activation functions read quantized inputs, reusing NNCF's
quantization where it has one; a SiLU's gate stays inside its unit and a constant operand stays float."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from pass_models import FLOAT, onnx_model, reference
from tvm_npu.passes import quantize_activations

SHAPE = [1, 3, 4, 4]


def _qdq(name, source, scale, zero_point):
    return [
        helper.make_node("QuantizeLinear", [source, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
        helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"]),
    ]


def _models():
    """NNCF's output for x -> Conv -> HardSwish -> {Conv, Mul by a constant}; x * Sigmoid(x) -> output:
    HardSwish's input in float, its output quantized for the Conv only; the float model it came from."""
    rng = np.random.default_rng(0)
    constants = {"w": rng.normal(0, 0.5, (3, 3, 1, 1)).astype(np.float32), "half": np.float32(0.5)}
    body = [
        helper.make_node("HardSwish", ["c"], ["h"]),
        helper.make_node("Mul", ["h", "half"], ["scaled"]),  # a constant operand: no two-activation Mul
        helper.make_node("Sigmoid", ["scaled"], ["gate"]),
        helper.make_node("Mul", ["scaled", "gate"], ["y"]),
    ]  # SiLU: the gate stays float inside it
    float_model = onnx_model(
        [helper.make_node("Conv", ["x", "w"], ["c"])] + body, {"x": (FLOAT, SHAPE)}, {"y": (FLOAT, SHAPE)}, constants
    )
    quantization = {"x_s": np.float32(0.02), "x_z": np.uint8(128), "h_s": np.float32(0.03), "h_z": np.uint8(10)}
    qdq_nodes = _qdq("x", "x", 0.02, 128) + [helper.make_node("Conv", ["x_dq", "w"], ["c"])] + body[:1] + _qdq("h", "h", 0.03, 10)
    qdq_nodes += [helper.make_node("Mul", ["h", "half"], ["scaled"])] + body[2:]
    qdq = onnx_model(
        qdq_nodes, {"x": (FLOAT, SHAPE)}, {"y": (FLOAT, SHAPE)}, {**constants, **quantization}, opset=19
    )  # the reference evaluator runs DequantizeLinear from opset 19 on
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
    plain = onnx_model(
        list(qdq.graph.node)[:3],
        {"x": (FLOAT, SHAPE)},
        {"c": (FLOAT, SHAPE)},
        opset=19,
        constants={i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer if i.name in ("w", "x_s", "x_z")},
    )
    assert quantize_activations(plain, float_model, samples) == plain


def _with_output(model, name):
    return onnx_model(
        list(model.graph.node),
        {"x": (FLOAT, SHAPE)},
        {"y": (FLOAT, SHAPE), name: (FLOAT, SHAPE)},
        {i.name: numpy_helper.to_array(i) for i in model.graph.initializer},
    )


def test_attention_scores_softmax_and_weighted_sum_are_quantized_but_not_a_weighted_matmul():
    """NNCF's attention: Q quantized, K^T, V and the scores in float, the Softmax output quantized;
    a MatMul by a (dequantized int8) weight keeps its float output for the bias add."""
    rng = np.random.default_rng(1)
    tokens, width = 5, 4
    w = rng.normal(0, 0.5, (width, width)).astype(np.float32)
    constants = {
        "w": w,
        "wq": np.round(w / 0.01).astype(np.int8),
        "w_s": np.float32(0.01),
        "w_z": np.int8(0),
        "q_s": np.float32(0.02),
        "q_z": np.uint8(128),
        "p_s": np.float32(1 / 255),
        "p_z": np.uint8(0),
    }
    attention = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q_dq", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
    ]
    weighted = [
        helper.make_node("DequantizeLinear", ["wq", "w_s", "w_z"], ["w_dq"]),
        helper.make_node("MatMul", ["y", "w_dq"], ["out"]),
    ]
    shape = [1, tokens, width]
    inputs = {"q": (FLOAT, shape), "k": (FLOAT, shape), "v": (FLOAT, shape)}
    qdq = onnx_model(
        _qdq("q", "q", 0.02, 128)
        + attention
        + _qdq("p", "p", 1 / 255, 0)
        + [helper.make_node("MatMul", ["p_dq", "v"], ["y"])]
        + weighted,
        inputs,
        {"out": (FLOAT, shape)},
        constants,
        opset=19,
    )
    float_model = onnx_model(
        [helper.make_node("Identity", ["q"], ["q_dq"])]
        + attention
        + [helper.make_node("MatMul", ["p", "v"], ["y"]), helper.make_node("MatMul", ["y", "w"], ["out"])],
        inputs,
        {"out": (FLOAT, shape)},
        {"w": w},
    )
    samples = [{name: rng.normal(0, 1, shape).astype(np.float32) for name in inputs} for _ in range(4)]
    rewritten = quantize_activations(qdq, float_model, samples)
    producers = {out: node for node in rewritten.graph.node for out in node.output}
    first, second, last = (n for n in rewritten.graph.node if n.op_type == "MatMul")
    softmax = next(n for n in rewritten.graph.node if n.op_type == "Softmax")
    for operand in [*first.input, *second.input, softmax.input[0]]:
        assert producers[operand].op_type == "DequantizeLinear", operand  # all int8 into the NPU kernels
    assert producers[producers[second.input[0]].input[0]].input[1] == "p_s"  # NNCF's Softmax output, reused
    assert producers["y"].op_type == "DequantizeLinear"  # the weighted sum ends quantized
    assert producers["out"] is last and producers[last.input[1]].input[0] == "wq"  # the weighted MatMul untouched
    for sample in samples:
        np.testing.assert_allclose(reference(rewritten, sample)[0], reference(float_model, sample)[0], atol=0.15)
