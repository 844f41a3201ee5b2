"""passes.duplicate_shared_dequantize: every consumer of an activation dequantize gets its own."""

from __future__ import annotations

import numpy as np
from onnx import helper

from pass_models import FLOAT, UINT8, imported, onnx_model, ops, run
from tvm_npu.passes import duplicate_shared_dequantize


def test_dequantize_shared_by_two_consumers_is_duplicated(tmp_path):
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"]),
        helper.make_node("Relu", ["f"], ["r"]),
        helper.make_node("Add", ["f", "r"], ["y"]),
    ]
    model = onnx_model(
        nodes, {"x": (UINT8, [1, 2, 3, 3])}, {"y": (FLOAT, [1, 2, 3, 3])}, {"s": np.float32(0.04), "z": np.uint8(90)}
    )
    mod = imported(model, tmp_path)
    assert ops(mod).count("relax.dequantize") == 1
    rewritten = duplicate_shared_dequantize(mod)
    assert ops(rewritten).count("relax.dequantize") == 2
    x = {"x": np.random.default_rng(0).integers(0, 256, (1, 2, 3, 3)).astype(np.uint8)}
    np.testing.assert_array_equal(run(rewritten, x)[0], run(mod, x)[0])
