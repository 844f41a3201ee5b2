"""passes.fold_constants: constant subgraphs become initializers; quantization nodes stay."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from pass_models import FLOAT, INT8, onnx_model, reference
from test_int8_end_to_end import LIGHT
from tvm_npu.passes import fold_constants


def test_constant_subgraph_becomes_one_initializer_with_the_same_outputs():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("Mul", ["wt", "k"], ["wk"]),
        helper.make_node("MatMul", ["x", "wk"], ["y"]),
    ]
    model = onnx_model(
        nodes,
        {"x": (FLOAT, [2, 3])},
        {"y": (FLOAT, [2, 4])},
        {"w": rng.normal(size=(4, 3)).astype(np.float32), "k": np.float32(0.5)},
    )
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["MatMul"]
    assert [i.name for i in folded.graph.initializer] == ["wk"]
    x = rng.normal(size=(2, 3)).astype(np.float32)
    np.testing.assert_array_equal(reference(folded, {"x": x})[0], reference(model, {"x": x})[0])


def test_weight_dequantize_is_not_folded():
    """The NPU patterns read int8 weights through their DequantizeLinear."""
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]), helper.make_node("MatMul", ["x", "wf"], ["y"])]
    model = onnx_model(
        nodes,
        {"x": (FLOAT, [1, 3])},
        {"y": (FLOAT, [1, 2])},
        {"w": np.arange(6, dtype=np.int8).reshape(3, 2), "s": np.float32(0.1), "z": np.int8(0)},
    )
    assert [n.op_type for n in fold_constants(model).graph.node] == ["DequantizeLinear", "MatMul"]
    assert INT8 == fold_constants(model).graph.initializer[0].data_type


def test_constant_of_shape_weights_become_initializers():
    model = onnx.load(LIGHT / "light_squeezenet.onnx")
    folded = fold_constants(model)
    assert "ConstantOfShape" not in {n.op_type for n in folded.graph.node}
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    assert conv.input[1] in {i.name for i in folded.graph.initializer}
    assert [i.name for i in folded.graph.input] == ["data_0"]
