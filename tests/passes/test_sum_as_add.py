"""passes.sum_as_add: ONNX Sum (imported as sum(stack(broadcast_to ...))) becomes pairwise `R.add`."""

from __future__ import annotations

import numpy as np
from onnx import helper

from pass_models import FLOAT, imported, onnx_model, ops, run
from tvm_npu.passes import sum_as_add


def test_three_way_sum_becomes_two_adds_with_the_same_result(tmp_path):
    nodes = [helper.make_node("Sum", ["a", "b", "c"], ["y"])]
    shapes = {"a": [1, 3, 4, 4], "b": [1, 3, 4, 4], "c": [1, 3, 1, 1]}  # c broadcasts, as Sum allows
    model = onnx_model(nodes, {n: (FLOAT, s) for n, s in shapes.items()}, {"y": (FLOAT, [1, 3, 4, 4])}, {})
    mod = imported(model, tmp_path)
    assert "relax.sum" in ops(mod)
    rewritten = sum_as_add(mod)
    assert ops(rewritten) == ["relax.add", "relax.add"]
    rng = np.random.default_rng(0)
    feeds = {n: rng.integers(-50, 50, s).astype(np.float32) for n, s in shapes.items()}  # exact in float
    np.testing.assert_array_equal(run(rewritten, feeds)[0], run(mod, feeds)[0])
