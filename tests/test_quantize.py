"""The quantize stage: graph folding keeps the model's function; QDQ models pass through; calibration files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from tvm_npu import NpuError
from tvm_npu.frontend import TensorSpec
from tvm_npu.quantize import fold_channel_affines, fold_constants, is_quantized, load_calibration, quantize

from test_int8_end_to_end import LIGHT, make_small_cnn


def _run(model, x):
    return ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x})[0]


def test_folding_keeps_outputs_and_removes_batch_norm(tmp_path):
    model = onnx.load(make_small_cnn(tmp_path / "cnn.onnx"))
    folded = fold_channel_affines(fold_constants(model))
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-4, atol=1e-6)


def test_per_channel_mul_and_add_after_conv_fold_into_it():
    """Caffe2-style scale layers (Conv -> Mul -> Add by per-channel constants, as in DenseNet)."""
    rng = np.random.default_rng(1)
    consts = {"w": rng.normal(0, 0.3, (6, 3, 3, 3)), "scale": rng.uniform(0.5, 1.5, (6, 1, 1)),
              "shift": rng.normal(0, 0.1, (1, 6, 1, 1)), "gain": np.array(0.7), "mask": rng.uniform(0, 1, (1, 1, 8, 8))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "scale"], ["m"]),
             helper.make_node("Add", ["shift", "m"], ["a"]),
             helper.make_node("Mul", ["a", "gain"], ["g"]),
             helper.make_node("Mul", ["g", "mask"], ["y"])]  # per-pixel, not per-channel: stays
    graph = helper.make_graph(nodes, "scaled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    folded = fold_channel_affines(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Mul"]
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-4, atol=1e-6)


def test_bias_add_and_batch_norm_after_conv_transpose_fold_into_it():
    """DBNet's head (Paddle export): ConvTranspose -> Add(bias) -> BatchNormalization; IOHW weights
    scale along axis 1. A grouped ConvTranspose keeps its affine."""
    rng = np.random.default_rng(2)
    consts = {"w": rng.normal(0, 0.3, (4, 6, 2, 2)), "b": rng.normal(0, 0.1, (1, 6, 1, 1)),
              "gamma": rng.uniform(0.5, 1.5, 6), "beta": rng.normal(0, 0.1, 6), "mean": rng.normal(0, 0.1, 6),
              "var": rng.uniform(0.5, 1.5, 6), "wg": rng.normal(0, 0.3, (6, 1, 2, 2)), "s": rng.uniform(0.5, 1.5, (6, 1, 1))}
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Add", ["t", "b"], ["a"]),
             helper.make_node("BatchNormalization", ["a", "gamma", "beta", "mean", "var"], ["n"]),
             helper.make_node("ConvTranspose", ["n", "wg"], ["g"], kernel_shape=[2, 2], strides=[2, 2], group=6),
             helper.make_node("Mul", ["g", "s"], ["y"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 20, 20])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    # opset 15: onnx.reference's BatchNormalization of opsets 9-14 computes batch statistics
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    folded = fold_channel_affines(model)
    assert [n.op_type for n in folded.graph.node] == ["ConvTranspose", "ConvTranspose", "Mul"]
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-4, atol=1e-5)


def test_constant_of_shape_weights_become_initializers():
    model = onnx.load(LIGHT / "light_squeezenet.onnx")
    folded = fold_constants(model)
    assert "ConstantOfShape" not in {n.op_type for n in folded.graph.node}
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    assert conv.input[1] in {i.name for i in folded.graph.initializer}
    assert [i.name for i in folded.graph.input] == ["data_0"]


def test_qdq_model_passes_through_unchanged(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                               helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert is_quantized(model)
    assert quantize(model, [TensorSpec("x", (1, 4), "float32")]) is model


def test_quantize_with_calibration_data_is_deterministic(tmp_path):
    model = onnx.load(make_small_cnn(tmp_path / "cnn.onnx"))
    spec = [TensorSpec("x", (1, 3, 32, 32), "float32")]
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32))
    samples = load_calibration(tmp_path / "cal.npz", spec)
    assert len(samples) == 8 and samples[0]["x"].shape == (1, 3, 32, 32)
    first, second = quantize(model, spec, samples), quantize(model, spec, samples)
    assert is_quantized(first) and first.SerializeToString() == second.SerializeToString()


@pytest.mark.parametrize("arrays, fragment", [
    ({"x": np.zeros((4, 3, 16, 16), np.float32)}, "expected [samples, 1, 3, 32, 32]"),
])
def test_bad_calibration_data_names_the_problem(tmp_path, arrays, fragment):
    np.savez(tmp_path / "cal.npz", **arrays)
    with pytest.raises(NpuError, match="calibration-data") as err:
        load_calibration(tmp_path / "cal.npz", [TensorSpec("x", (1, 3, 32, 32), "float32")])
    assert fragment in str(err.value)
