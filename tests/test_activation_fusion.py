"""Activation functions and squeeze-excite on real-graph spellings reach the NPU.

Each tiny FP32 model puts one pattern between two convolutions, spelled as exporters write it
(ONNX HardSwish or Paddle2ONNX's `x * Clip(x + 3, 0, 6) / 6`, SiLU as `x * Sigmoid(x)`, MobileNetV3's
squeeze-excite gate multiply). Compiled as a user would (NNCF quantization included), every
convolution and the pattern itself must run on NPU kernels (the offload report), and the package
must agree with OpenVINO on the same QDQ model (`tvm_npu.validate`). The two rewrites that make
this possible have their own tests in tests/passes/ (canonical_activations, quantize_activations).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_npu
from tvm_npu import conformance
from tvm_npu.registry import kernel
from tvm_npu.runtime import load, make_inputs
from tvm_npu.validate import exact_reference_outputs, validate

CHANNELS, SIZE = 4, 6


class _Builder:
    """An FP32 graph x -> conv -> pattern -> conv -> Sigmoid -> y, nodes named by their output (the
    model ends in a function: NNCF leaves a conv that ends a model in float, on the CPU)."""

    def __init__(self, seed: int = 0):
        self.rng, self.nodes, self.inits = np.random.default_rng(seed), [], []

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op_type, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x, name, out=CHANNELS, kernel=3):
        w = self.const(f"{name}_w", self.rng.normal(0, 0.4, (out, CHANNELS, kernel, kernel)))
        b = self.const(f"{name}_b", self.rng.normal(0, 0.3, out))
        return self.node("Conv", [x, w, b], name, pads=[kernel // 2] * 4)

    def model(self, pattern, opset: int) -> onnx.ModelProto:
        y = self.node("Sigmoid", [self.conv(pattern(self, self.conv("x", "conv_in")), "conv_out", kernel=1)], "y")
        shape = [1, CHANNELS, SIZE, SIZE]
        graph = helper.make_graph(
            self.nodes,
            "pattern",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, shape)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        onnx.checker.check_model(model, full_check=True)
        return model


def _paddle_hard_swish(g, x):
    """Paddle2ONNX's HardSwish: x * Clip(x + 3, 0, 6) / 6."""
    clip = g.node("Clip", [g.node("Add", [x, g.const("three", 3.0)], "plus3"), g.const("zero", 0.0), g.const("six", 6.0)], "clip")
    return g.node("Div", [g.node("Mul", [x, clip], "times"), g.const("divisor", 6.0)], "hard_swish")


def _silu(g, x):
    return g.node("Mul", [x, g.node("Sigmoid", [x], "sigmoid")], "silu")


def _squeeze_excite(g, x):
    """MobileNetV3: GlobalAveragePool -> conv -> ReLU -> conv -> HardSigmoid gates x channel-wise."""
    pooled = g.node("GlobalAveragePool", [x], "pool")
    squeezed = g.node("Relu", [g.conv(pooled, "se_reduce", kernel=1)], "se_relu")
    gate = g.node("HardSigmoid", [g.conv(squeezed, "se_expand", kernel=1)], "se_gate", alpha=0.2, beta=0.5)
    return g.node("Mul", [x, gate], "excited")


def _op(op_type, **attrs):
    return lambda g, x: g.node(op_type, [x], op_type.lower(), **attrs)


# name: (pattern, opset, the NPU kernels that must run it besides the convolutions)
PATTERNS = {
    "hardswish_op": (_op("HardSwish"), 17, ["npu.lut"]),
    "hardswish_decomposed_opset13": (_paddle_hard_swish, 13, ["npu.lut"]),
    "hardswish_decomposed_opset17": (_paddle_hard_swish, 17, ["npu.lut"]),
    "hardsigmoid_op": (_op("HardSigmoid", alpha=0.2, beta=0.5), 17, ["npu.lut"]),
    "sigmoid_op": (_op("Sigmoid"), 17, ["npu.lut"]),
    "silu": (_silu, 17, ["npu.lut"]),
    "tanh_op": (_op("Tanh"), 17, ["npu.lut"]),
    "leakyrelu_op": (_op("LeakyRelu", alpha=0.1), 17, ["npu.lut"]),
    "mish_op": (_op("Mish"), 18, ["npu.lut"]),
    "gelu_tanh_op": (_op("Gelu", approximate="tanh"), 20, ["npu.lut"]),
    # the pool, the gate's table and the broadcast multiply
    "squeeze_excite": (_squeeze_excite, 17, ["npu.pool", "npu.lut", "npu.elementwise"]),
}


def make_pattern_model(name: str, path: Path) -> Path:
    pattern, opset, _ = PATTERNS[name]
    onnx.save(_Builder().model(pattern, opset), path)
    return path


@pytest.fixture(scope="session")
def compiled_patterns(tmp_path_factory):
    """name -> (package, its operator rows), compiled once per session on first use."""
    folder, built = tmp_path_factory.mktemp("activation_fusion"), {}

    def get(name: str):
        if name not in built:
            package = folder / f"{name}.tar"
            result = tvm_npu.compile(make_pattern_model(name, folder / f"{name}.onnx"), output=package, target="npu/micro")
            built[name] = package, result.metadata.extra["operators"]
        return built[name]

    return get


@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_runs_on_the_npu_and_matches_openvino(name, compiled_patterns):
    package, operators = compiled_patterns(name)
    on_cpu = [row for row in operators if row["runs_on"] == "cpu"]
    assert all(row["ops"][0] in ("relax.quantize", "relax.dequantize") for row in on_cpu), on_cpu  # graph edges only
    kernels = sorted(row["kernel"] for row in operators if row["runs_on"] == "npu")
    convs = sum(n.op_type == "Conv" for n in _Builder().model(*PATTERNS[name][:2]).graph.node)
    expected = sorted(["npu.conv2d"] * convs + PATTERNS[name][2] + ["npu.lut"])  # the model's final Sigmoid
    assert kernels == expected, operators
    model = load(package)
    report = validate(model, [make_inputs(model.inputs, "random", seed) for seed in (1, 2)], device="CPU")
    assert report.passed, str(report)


def test_broadcast_elementwise_is_exact_against_onnx_reference():
    """npu.elementwise's broadcast examples (squeeze-excite, per-channel, lower-rank operands), integer for
    integer against onnx's reference evaluator on the same QDQ model: the fixed-point rescale rounds as
    QuantizeLinear does on every example."""
    npu_kernel = kernel("npu.elementwise")
    broadcast = [e for e in conformance.examples(npu_kernel, 0) if len({x.shape for x in e.inputs.values()}) > 1]
    assert len(broadcast) >= 4
    for example in broadcast:
        case = conformance.prepare(npu_kernel, example)
        ours = npu_kernel.reference(case.params, list(example.inputs.values()))
        (spec,) = exact_reference_outputs(example.model.SerializeToString(), [example.inputs])[0].values()
        np.testing.assert_array_equal(ours, spec, err_msg=example.name)
