"""passes.concat_of_dequantized: a float concat of differently dequantized tensors becomes one
per-channel dequantize of the integer concat, with the same float values."""

from __future__ import annotations

import numpy as np
from onnx import helper

from pass_models import FLOAT, INT8, UINT8, imported, onnx_model, ops, run
from tvm_npu.passes import concat_of_dequantized


def _concat_model(then_quantized: bool):
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
        helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
        helper.make_node("Concat", ["fa", "fb"], ["c"], axis=1),
    ]
    if then_quantized:
        nodes.append(helper.make_node("QuantizeLinear", ["c", "sa", "za"], ["y"]))
    else:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    return onnx_model(
        nodes,
        {"a": (UINT8, [1, 3, 2, 2]), "b": (INT8, [1, 2, 2, 2])},
        {"y": (UINT8 if then_quantized else FLOAT, [1, 5, 2, 2])},
        {"sa": np.float32(0.05), "za": np.uint8(130), "sb": np.float32(0.02), "zb": np.int8(-9)},
    )


def test_concat_reads_integers_through_one_per_channel_dequantize(tmp_path):
    mod = imported(_concat_model(then_quantized=False), tmp_path)
    rewritten = concat_of_dequantized(mod)
    assert ops(rewritten).count("relax.dequantize") == 1
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 256, (1, 3, 2, 2)).astype(np.uint8), "b": rng.integers(-128, 128, (1, 2, 2, 2)).astype(np.int8)}
    np.testing.assert_array_equal(run(rewritten, feeds)[0], run(mod, feeds)[0])


def test_concat_a_quantize_follows_is_left_to_npu_concat(tmp_path):
    mod = imported(_concat_model(then_quantized=True), tmp_path)
    assert ops(concat_of_dequantized(mod)) == ops(mod)
