"""passes.canonical_activations: an activation function spelled as several operators becomes its one
canonical form, found by its values whatever the spelling; near misses stay as they are."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from test_activation_fusion import CHANNELS, PATTERNS, SIZE, _Builder
from tvm_npu.passes import canonical_activations


def _evaluate(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "name, opset, expected",
    [
        ("hardswish_decomposed_opset13", 13, ["Conv", "HardSigmoid", "Mul", "Conv", "Sigmoid"]),
        ("hardswish_decomposed_opset17", 17, ["Conv", "HardSwish", "Conv", "Sigmoid"]),
        ("silu", 17, ["Conv", "Sigmoid", "Mul", "Conv", "Sigmoid"]),
    ],
)
def test_canonical_activations_rewrites_spellings_to_the_same_function(name, opset, expected):
    model = _Builder().model(PATTERNS[name][0], opset)
    canonical = canonical_activations(model)
    assert [n.op_type for n in canonical.graph.node] == expected
    x = np.random.default_rng(0).normal(0, 2, (1, CHANNELS, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(_evaluate(canonical, x), _evaluate(model, x), rtol=1e-5, atol=1e-5)


def _spelled_gelu_tanh(g, x):
    """PyTorch's GELU(approximate='tanh') below opset 20: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    cube = g.node("Pow", [x, g.const("three", 3.0)], "cube")
    inner = g.node("Add", [x, g.node("Mul", [cube, g.const("c", 0.044715)], "cubic")], "inner")
    tanh = g.node("Tanh", [g.node("Mul", [g.const("k", np.sqrt(2 / np.pi)), inner], "scaled")], "tanh")
    half_x = g.node("Mul", [x, g.const("half", 0.5)], "half_x")
    return g.node("Mul", [half_x, g.node("Add", [g.const("one", 1.0), tanh], "one_plus")], "gelu")


def _spelled_hard_sigmoid_then_mish(g, x):
    """Clip(0.4 + 0.25 x, 0, 1), then Mish spelled x * Tanh(Softplus(x)): two functions in a row."""
    unit = g.node(
        "Clip",
        [
            g.node("Add", [g.const("beta", 0.4), g.node("Mul", [x, g.const("alpha", 0.25)], "scaled")], "shifted"),
            g.const("lo", 0.0),
            g.const("hi", 1.0),
        ],
        "hard_sigmoid",
    )
    return g.node("Mul", [g.node("Tanh", [g.node("Softplus", [unit], "softplus")], "tanh"), unit], "mish")


def _spelled_leaky_relu(g, x):
    return g.node("Max", [x, g.node("Mul", [g.const("slope", 0.125), x], "scaled")], "leaky")


@pytest.mark.parametrize(
    "pattern, opset, expected",
    [
        (_spelled_gelu_tanh, 20, ["Conv", "Gelu", "Conv", "Sigmoid"]),
        (
            _spelled_gelu_tanh,
            17,
            ["Conv", "Pow", "Mul", "Add", "Mul", "Tanh", "Mul", "Add", "Mul", "Conv", "Sigmoid"],
        ),  # no op yet
        (_spelled_hard_sigmoid_then_mish, 18, ["Conv", "HardSigmoid", "Mish", "Conv", "Sigmoid"]),
        (_spelled_leaky_relu, 13, ["Conv", "LeakyRelu", "Conv", "Sigmoid"]),
    ],
    ids=["gelu_tanh", "gelu_tanh_before_opset20", "hard_sigmoid_then_mish", "leaky_relu_as_max"],
)
def test_canonical_activations_finds_functions_by_their_values(pattern, opset, expected):
    model = _Builder().model(pattern, opset)
    canonical = canonical_activations(model)
    assert [n.op_type for n in canonical.graph.node] == expected
    x = np.random.default_rng(1).normal(0, 2, (1, CHANNELS, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(_evaluate(canonical, x), _evaluate(model, x), rtol=1e-4, atol=1e-5)


def test_canonical_activations_leaves_lookalikes_alone():
    """x * Clip(Relu(x) + 3, 0, 5) / 6 is no HardSwish, nor a per-channel scale after one a function."""

    def lookalike(g, x):
        other = g.node("Relu", [x], "other")
        clip = g.node(
            "Clip", [g.node("Add", [other, g.const("three", 3.0)], "plus3"), g.const("zero", 0.0), g.const("five", 5.0)], "clip"
        )
        return g.node("Div", [g.node("Mul", [x, clip], "times"), g.const("divisor", 6.0)], "not_hard_swish")

    model = _Builder().model(lookalike, 17)
    assert [n.op_type for n in canonical_activations(model).graph.node] == [n.op_type for n in model.graph.node]
