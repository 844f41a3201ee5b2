"""passes.pad_as_relax_op: the importer's opaque TOPI pad of a constant-mode ONNX Pad becomes `R.nn.pad`."""

from __future__ import annotations

import numpy as np
from onnx import helper

from pass_models import FLOAT, imported, onnx_model, ops, run
from tvm_npu.passes import pad_as_relax_op


def _pad_model(mode: str):
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["y"], mode=mode)]
    return onnx_model(
        nodes,
        {"x": (FLOAT, [1, 2, 3, 4])},
        {"y": (FLOAT, [1, 2, 6, 5])},
        {"pads": np.array([0, 0, 1, 0, 0, 0, 2, 1], np.int64), "value": np.float32(0.75)},
    )


def test_constant_pad_becomes_relax_pad_with_its_widths_and_value(tmp_path):
    mod = imported(_pad_model("constant"), tmp_path)
    assert ops(mod) == ["relax.call_tir"]
    rewritten = pad_as_relax_op(mod)
    assert ops(rewritten) == ["relax.nn.pad"]
    x = {"x": np.random.default_rng(0).normal(0, 2, (1, 2, 3, 4)).astype(np.float32)}
    np.testing.assert_array_equal(run(rewritten, x)[0], run(mod, x)[0])


def test_edge_pad_stays(tmp_path):
    mod = imported(_pad_model("edge"), tmp_path)
    assert ops(pad_as_relax_op(mod)) == ops(mod)
