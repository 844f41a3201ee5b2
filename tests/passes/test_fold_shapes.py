"""passes.fold_shapes: at fixed input shapes, shape computations (Shape, Size, Gather, Concat, Range,
ConstantOfShape, Expand's shape, ...) fold to constants, exactly, and TVM's importer then accepts them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from pass_models import FLOAT, INT8, onnx_model, reference
from tvm_npu.frontend import import_onnx, load_onnx
from tvm_npu.passes import fold_shapes

DYNAMIC = ["batch", 6, "height", "width"]


def _i64(*values):
    return np.array(values, np.int64)


def _exporter_style_model() -> onnx.ModelProto:
    """Dynamic-shape export idioms: a reshape target from Shape -> Gather -> Concat (CRNN heads), a grid
    from Shape -> Range -> Expand (YOLO heads), ConstantOfShape, Size, and Shape with start/end (opset 15)."""
    n = helper.make_node
    nodes = [
        n("Relu", ["x"], ["relu"]),
        n("Shape", ["relu"], ["shape"]),
        n("Slice", ["shape", "axis0", "one1"], ["batch"]),
        n("Concat", ["batch", "minus_one", "three"], ["target"], axis=0),  # [N, -1, 3]
        n("Reshape", ["x", "target"], ["flat"]),
        n("Shape", ["x"], ["hw"], start=2),  # [H, W]
        n("Gather", ["hw", "one"], ["width"], axis=0),
        n("Range", ["zero", "width", "one"], ["columns"]),
        n("Cast", ["columns"], ["columns_f"], to=onnx.TensorProto.FLOAT),
        n("Expand", ["columns_f", "hw"], ["grid"]),  # [H, W]: the column index at every pixel
        n("ConstantOfShape", ["hw"], ["ones"], value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [1.0])),
        n("Size", ["x"], ["size"]),
        n("Cast", ["size"], ["size_f"], to=onnx.TensorProto.FLOAT),
        n("Add", ["grid", "ones"], ["grid1"]),
        n("Div", ["grid1", "size_f"], ["scaled"]),
        n("Add", ["x", "scaled"], ["y"]),
    ]
    constants = {
        "zero": np.int64(0),
        "one": np.int64(1),
        "axis0": _i64(0),
        "one1": _i64(1),
        "minus_one": _i64(-1),
        "three": _i64(3),
    }
    return onnx_model(
        nodes, {"x": (FLOAT, DYNAMIC)}, {"y": (FLOAT, DYNAMIC), "flat": (FLOAT, ["batch", "r", 3])}, constants, opset=17
    )


def _fixed(model: onnx.ModelProto, shape) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for dim, size in zip(fixed.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = size
    return fixed


def test_shape_subgraphs_fold_to_constants_with_the_same_outputs():
    model = _exporter_style_model()
    shape = (2, 6, 4, 5)
    folded = fold_shapes(_fixed(model, shape))
    remaining = [node.op_type for node in folded.graph.node]
    assert remaining == ["Relu", "Reshape", "Add"], remaining  # every shape computation is now an initializer
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for ours, theirs in zip(reference(folded, {"x": x}), reference(model, {"x": x}), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_model_without_shape_reads_is_returned_as_is():
    model = onnx_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (FLOAT, [1, 2])}, {"y": (FLOAT, [1, 2])}, {})
    assert fold_shapes(model) is model


def test_shape_of_a_value_dependent_tensor_stays():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Shape", ["nz"], ["y"])]
    model = onnx_model(nodes, {"x": (INT8, [2, 3])}, {"y": (onnx.TensorProto.INT64, [2])}, {})
    assert [n.op_type for n in fold_shapes(model).graph.node] == ["NonZero", "Shape"]


def test_dynamic_export_imports_into_tvm_at_fixed_input_shapes(tmp_path):
    """The load stage fixes the input shape and folds; TVM's importer gets static shapes throughout. (Real
    exports whose shape subgraphs TVM's importer refuses unfolded are in tests/test_real_models.py.)"""
    path = tmp_path / "dynamic.onnx"
    onnx.save(_exporter_style_model(), path)
    imported = import_onnx(load_onnx(path, {"x": (1, 6, 3, 4)}))
    assert [(o.name, o.shape) for o in imported.outputs] == [("y", (1, 6, 3, 4)), ("flat", (1, 24, 3))]
