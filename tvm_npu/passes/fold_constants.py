"""Constant subgraphs become initializers (ONNX)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from .common import copy_model

_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
_KEPT = _NONDETERMINISTIC | {"QuantizeLinear", "DequantizeLinear"}


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluates every node whose inputs are all constant into an initializer, except quantization nodes:
    a DequantizeLinear of an int8 weight is what the NPU patterns read.

    Graph inputs that have an initializer count as constants: their value is what the model
    was exported with, and a compiled model cannot take them as inputs anyway.
    """
    model = copy_model(model)
    model.ir_version = max(model.ir_version, 4)  # IR 4+: initializers need not be graph inputs
    graph = model.graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    kept_inputs = [i for i in graph.input if i.name not in values]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    opsets = list(model.opset_import)
    kept_nodes = []
    for node in graph.node:
        operands = [name for name in node.input if name]
        if (
            node.op_type in _KEPT
            or not all(name in values for name in operands)
            or node.attribute
            and any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute)
        ):
            kept_nodes.append(node)
            continue
        single = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                "fold",
                [
                    onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(values[n].dtype), values[n].shape)
                    for n in dict.fromkeys(operands)
                ],
                [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n],
            ),
            opset_imports=opsets,
        )
        results = ReferenceEvaluator(single).run(None, {n: values[n] for n in dict.fromkeys(operands)})
        values.update(zip([n for n in node.output if n], (np.asarray(r) for r in results)))
    used = {name for node in kept_nodes for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in values.items() if name in used)
    kept_info = [v for v in graph.value_info if v.name not in values]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return model
