"""passes.requantize_value_preserving: a value-preserving op on a dequantized tensor gets requantized onto its grid."""

from __future__ import annotations

import numpy as np
from onnx import helper

from pass_models import FLOAT, UINT8, imported, onnx_model, ops, run
from tvm_npu.passes import requantize_value_preserving


def _max_pool_model():
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"]),
        helper.make_node("MaxPool", ["f"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    return onnx_model(
        nodes, {"x": (UINT8, [1, 3, 4, 4])}, {"y": (FLOAT, [1, 3, 2, 2])}, {"s": np.float32(0.05), "z": np.uint8(100)}
    )


def test_max_pool_of_dequantized_gets_exact_requantization(tmp_path):
    mod = imported(_max_pool_model(), tmp_path)
    assert ops(mod) == ["relax.dequantize", "relax.nn.max_pool2d"]
    rewritten = requantize_value_preserving(mod)
    assert ops(rewritten) == ["relax.dequantize", "relax.nn.max_pool2d", "relax.quantize", "relax.dequantize"]
    x = {"x": np.random.default_rng(0).integers(0, 256, (1, 3, 4, 4)).astype(np.uint8)}
    np.testing.assert_array_equal(run(rewritten, x)[0], run(mod, x)[0])


def test_concat_of_differently_quantized_inputs_stays(tmp_path):
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "sa", "z"], ["fa"]),
        helper.make_node("DequantizeLinear", ["b", "sb", "z"], ["fb"]),
        helper.make_node("Concat", ["fa", "fb"], ["y"], axis=1),
    ]
    model = onnx_model(
        nodes,
        {"a": (UINT8, [1, 2, 3]), "b": (UINT8, [1, 2, 3])},
        {"y": (FLOAT, [1, 4, 3])},
        {"sa": np.float32(0.05), "sb": np.float32(0.07), "z": np.uint8(0)},
    )
    mod = imported(model, tmp_path)
    assert ops(requantize_value_preserving(mod)) == ops(mod)


def test_a_shuffle_is_requantized_once_after_its_last_reshape(tmp_path):
    """DepthToSpace imports as reshape -> permute_dims -> reshape: one requantization, so npu.move copies it in one pass."""
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"]),
        helper.make_node("DepthToSpace", ["f"], ["y"], blocksize=2, mode="CRD"),
    ]
    model = onnx_model(
        nodes, {"x": (UINT8, [1, 8, 2, 3])}, {"y": (FLOAT, [1, 2, 4, 6])}, {"s": np.float32(0.05), "z": np.uint8(100)}
    )
    mod = imported(model, tmp_path)
    assert ops(mod) == ["relax.dequantize", "relax.reshape", "relax.permute_dims", "relax.reshape"]
    rewritten = requantize_value_preserving(mod)
    assert ops(rewritten) == ops(mod) + ["relax.quantize", "relax.dequantize"]
    x = {"x": np.random.default_rng(0).integers(0, 256, (1, 8, 2, 3)).astype(np.uint8)}
    np.testing.assert_array_equal(run(rewritten, x)[0], run(mod, x)[0])
