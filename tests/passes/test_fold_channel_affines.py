"""passes.fold_channel_affines: BatchNormalization and per-channel Mul/Add after a Conv fold into it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from pass_models import FLOAT, onnx_model, reference
from test_int8_end_to_end import make_small_cnn
from tvm_npu.passes import fold_channel_affines, fold_constants


def test_folding_keeps_outputs_and_removes_batch_norm(tmp_path):
    model = onnx.load(make_small_cnn(tmp_path / "cnn.onnx"))
    folded = fold_channel_affines(fold_constants(model))
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(reference(folded, {"x": x})[0], reference(model, {"x": x})[0], rtol=1e-4, atol=1e-6)


def test_per_channel_mul_and_add_after_conv_fold_into_it():
    """Caffe2-style scale layers (Conv -> Mul -> Add by per-channel constants, as in DenseNet)."""
    rng = np.random.default_rng(1)
    consts = {
        "w": rng.normal(0, 0.3, (6, 3, 3, 3)),
        "scale": rng.uniform(0.5, 1.5, (6, 1, 1)),
        "shift": rng.normal(0, 0.1, (1, 6, 1, 1)),
        "gain": np.array(0.7),
        "mask": rng.uniform(0, 1, (1, 1, 8, 8)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "scale"], ["m"]),
        helper.make_node("Add", ["shift", "m"], ["a"]),
        helper.make_node("Mul", ["a", "gain"], ["g"]),
        helper.make_node("Mul", ["g", "mask"], ["y"]),
    ]  # per-pixel, not per-channel: stays
    model = onnx_model(
        nodes,
        {"x": (FLOAT, [1, 3, 8, 8])},
        {"y": (FLOAT, [1, 6, 8, 8])},
        {k: v.astype(np.float32) for k, v in consts.items()},
        opset=13,
    )
    folded = fold_channel_affines(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Mul"]
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(reference(folded, {"x": x})[0], reference(model, {"x": x})[0], rtol=1e-4, atol=1e-6)


def test_bias_add_and_batch_norm_after_conv_transpose_fold_into_it():
    """DBNet's head (Paddle export): ConvTranspose -> Add(bias) -> BatchNormalization; IOHW weights
    scale along axis 1. A grouped ConvTranspose keeps its affine."""
    rng = np.random.default_rng(2)
    consts = {
        "w": rng.normal(0, 0.3, (4, 6, 2, 2)),
        "b": rng.normal(0, 0.1, (1, 6, 1, 1)),
        "gamma": rng.uniform(0.5, 1.5, 6),
        "beta": rng.normal(0, 0.1, 6),
        "mean": rng.normal(0, 0.1, 6),
        "var": rng.uniform(0.5, 1.5, 6),
        "wg": rng.normal(0, 0.3, (6, 1, 2, 2)),
        "s": rng.uniform(0.5, 1.5, (6, 1, 1)),
    }
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["t"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Add", ["t", "b"], ["a"]),
        helper.make_node("BatchNormalization", ["a", "gamma", "beta", "mean", "var"], ["n"]),
        helper.make_node("ConvTranspose", ["n", "wg"], ["g"], kernel_shape=[2, 2], strides=[2, 2], group=6),
        helper.make_node("Mul", ["g", "s"], ["y"]),
    ]
    # opset 15: onnx.reference's BatchNormalization of opsets 9-14 computes batch statistics
    model = onnx_model(
        nodes,
        {"x": (FLOAT, [1, 4, 5, 5])},
        {"y": (FLOAT, [1, 6, 20, 20])},
        {k: v.astype(np.float32) for k, v in consts.items()},
        opset=15,
    )
    folded = fold_channel_affines(model)
    assert [n.op_type for n in folded.graph.node] == ["ConvTranspose", "ConvTranspose", "Mul"]
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(reference(folded, {"x": x})[0], reference(model, {"x": x})[0], rtol=1e-4, atol=1e-5)
