"""passes.split_as_slices: a Split of an int8 tensor (YOLOv8's C2f) runs as one npu.move copy per part,
bit-exact (a copy moves the integers unchanged)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import tvm_npu


def test_split_parts_land_on_npu_move_as_exact_copies(tmp_path):
    inits = [
        numpy_helper.from_array(np.float32(0.05), "s"),
        numpy_helper.from_array(np.int8(3), "z"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "parts"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["real"]),
        helper.make_node("Split", ["real", "parts"], ["a", "b"], axis=1),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["qa"]),
        helper.make_node("QuantizeLinear", ["b", "s", "z"], ["qb"]),
    ]
    graph = helper.make_graph(
        nodes,
        "split",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 5, 3, 4])],
        [helper.make_tensor_value_info(n, TensorProto.INT8, [1, c, 3, 4]) for n, c in (("qa", 2), ("qb", 3))],
        inits,
    )
    path = tmp_path / "split.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = tvm_npu.compile(path, output=tmp_path / "split.tar", target="npu/micro")
    operators = result.metadata.extra["operators"]
    assert [row["kernel"] for row in operators if row["runs_on"] == "npu"] == ["npu.move", "npu.move"], operators
    assert not any("relax.split" in row["ops"] for row in operators)
    x = np.random.default_rng(0).integers(-128, 128, (1, 5, 3, 4), dtype=np.int8)
    out = tvm_npu.load(result.package_path).run({"x": x})
    np.testing.assert_array_equal(out["qa"], x[:, :2])
    np.testing.assert_array_equal(out["qb"], x[:, 2:])
