"""Shape computations become constants at the fixed input shapes (ONNX).

Exporters compute reshape targets, expand shapes and resize sizes from the input's shape at run time
(Shape -> Gather -> Concat -> Reshape, Shape -> Range -> Expand, ...). With every input shape fixed,
ONNX's shape inference (with data propagation) knows the shape each Shape/Size node reads; those nodes
become initializers, and `fold_constants` evaluates what they fed (ONNX's reference evaluator) until
nothing more folds. TVM's importer then sees constant shapes and every output of known rank.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .common import copy_model
from .fold_constants import fold_constants

SHAPE_READERS = ("Shape", "Size")


def fold_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (its inputs of fixed shape) with every Shape/Size of a statically shaped tensor folded away."""
    while True:
        shapes = static_shapes(model)
        known = [node for node in model.graph.node if node.op_type in SHAPE_READERS and node.input[0] in shapes]
        if not known:
            return model
        model = copy_model(model)
        for node in known:
            model.graph.initializer.append(numpy_helper.from_array(_read_shape(node, shapes[node.input[0]]), node.output[0]))
            model.graph.node.remove(node)
        model = fold_constants(model)


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape that ONNX's shape inference (with data propagation) fixes completely.

    Only inferred shapes count: shapes the exporter declared for intermediate tensors and outputs may hold
    its own trace's sizes, so they are dropped first."""
    bare = copy_model(model)
    del bare.graph.value_info[:]
    for output in bare.graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(bare, data_prop=True)
    graph = inferred.graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def _read_shape(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    """What a Shape (with its opset-15 start/end) or Size node returns for an input of `shape`."""
    if node.op_type == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
    attributes = {a.name: a.i for a in node.attribute}
    rank = len(shape)
    start, end = attributes.get("start", 0), attributes.get("end", rank)
    start, end = (min(max(i + rank if i < 0 else i, 0), rank) for i in (start, end))
    return np.array(shape[start:end], np.int64)
