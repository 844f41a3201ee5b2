"""BatchNormalization and per-channel constant Mul/Add after a Conv (or an ungrouped ConvTranspose)
fold into it (ONNX).

NNCF's ONNX backend folds neither, and an affine left after a conv splits the NPU layer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .common import copy_model, per_channel


def fold_channel_affines(model: onnx.ModelProto) -> onnx.ModelProto:
    """A Conv (or ungrouped ConvTranspose) followed by a per-output-channel affine map becomes one
    with scaled weights and bias: BatchNormalization (inference), or Mul / Add by a per-channel or
    scalar constant (the scale layers of Caffe2-converted models such as DenseNet; the bias Add
    Paddle exports after a ConvTranspose). Chains fold one by one."""
    model = copy_model(model)
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    folds = 0
    while (found := _next_channel_affine(graph, inits)) is not None:
        conv, node, factor, shift = found
        weight = numpy_helper.to_array(inits[conv.input[1]])
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
        w_name, b_name = (f"{conv.name or conv.output[0]}_folded{folds}_{kind}" for kind in ("w", "b"))
        folds += 1
        out_axis = _OUTPUT_CHANNEL_AXIS[conv.op_type]
        for name, array in (
            (w_name, weight.astype(np.float64) * factor.reshape(-1, *[1] * (weight.ndim - 1 - out_axis))),
            (b_name, bias * factor + shift),
        ):
            inits[name] = numpy_helper.from_array(array.astype(weight.dtype), name)
            graph.initializer.append(inits[name])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = node.output[0]
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used or init.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


# The weight axis of a layer's output channels: Conv weights are OIHW, ConvTranspose weights IOHW.
_OUTPUT_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1}


def _next_channel_affine(graph: onnx.GraphProto, inits: dict) -> tuple | None:
    """(conv, affine node, per-channel factor, per-channel shift) of the first foldable pair."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        conv = producers.get(_data_input(node, inits))
        if (
            conv is None
            or conv.op_type not in _OUTPUT_CHANNEL_AXIS
            or len(consumers.get(conv.output[0], [])) != 1
            or conv.input[1] not in inits
            or len(consumers.get(conv.input[1], [])) != 1
            or len([o for o in node.output if o]) != 1
        ):
            continue
        if conv.op_type == "ConvTranspose" and any(a.name == "group" and a.i != 1 for a in conv.attribute):
            continue  # a grouped ConvTranspose's weight axis 1 holds only one group's output channels
        weight = inits[conv.input[1]]
        affine = _channel_affine(node, inits, weight.dims[_OUTPUT_CHANNEL_AXIS[conv.op_type]], len(weight.dims))
        if affine is not None:
            return conv, node, *affine
    return None


def _data_input(node: onnx.NodeProto, inits: dict) -> str | None:
    """The tensor an affine node transforms: BatchNorm's input, or a Mul/Add's non-constant operand."""
    if node.op_type == "BatchNormalization":
        return node.input[0]
    if node.op_type in ("Mul", "Add") and len(node.input) == 2:
        variable = [name for name in node.input if name not in inits]
        return variable[0] if len(variable) == 1 else None
    return None


def _channel_affine(node: onnx.NodeProto, inits: dict, channels: int, rank: int):
    """(factor, shift) per output channel when `node` is one, else None."""
    if node.op_type == "BatchNormalization":
        if not all(n in inits for n in node.input[1:5]):
            return None
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in node.input[1:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + eps)
        return factor, beta - mean * factor
    (constant_name,) = [name for name in node.input if name in inits]
    constant = per_channel(numpy_helper.to_array(inits[constant_name]).astype(np.float64), channels, rank)
    if constant is None:
        return None
    return (constant, np.zeros(channels)) if node.op_type == "Mul" else (np.ones(channels), constant)
