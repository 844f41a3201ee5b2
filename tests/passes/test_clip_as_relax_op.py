"""passes.clip_as_relax_op: the importer's opaque maximum/minimum pair of an ONNX Clip becomes `R.clip`."""

from __future__ import annotations

import numpy as np
from onnx import helper

from pass_models import FLOAT, imported, onnx_model, ops, run
from tvm_npu.passes import clip_as_relax_op


def test_constant_bound_clip_becomes_one_clip(tmp_path):
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])]
    model = onnx_model(
        nodes, {"x": (FLOAT, [1, 3, 4, 4])}, {"y": (FLOAT, [1, 3, 4, 4])}, {"lo": np.float32(-1.5), "hi": np.float32(2.0)}
    )
    mod = imported(model, tmp_path)
    assert "relax.clip" not in ops(mod) and "relax.call_tir" in ops(mod)
    rewritten = clip_as_relax_op(mod)
    assert ops(rewritten) == ["relax.clip"]
    x = {"x": np.random.default_rng(0).normal(0, 2, (1, 3, 4, 4)).astype(np.float32)}
    np.testing.assert_array_equal(run(rewritten, x)[0], run(mod, x)[0])


def test_clip_with_a_variable_bound_stays(tmp_path):
    nodes = [helper.make_node("Clip", ["x", "lo", ""], ["y"])]
    model = onnx_model(nodes, {"x": (FLOAT, [1, 3]), "lo": (FLOAT, [])}, {"y": (FLOAT, [1, 3])}, {})
    mod = imported(model, tmp_path)
    assert "relax.clip" not in ops(clip_as_relax_op(mod))
