"""Stage: quantize. An FP32 ONNX model becomes a QDQ INT8 ONNX model; a QDQ model passes through.

Entry point: `quantize(model, inputs, calibration, seed)`. The graph is first made
quantizable (constant subgraphs folded to initializers; BatchNormalization and per-channel
constant Mul/Add folded into the preceding Conv: NNCF's ONNX backend folds neither), then NNCF, OpenVINO's own
post-training quantizer, calibrates it. The result is ONNX, so the package embeds exactly
the model the reference runtime runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from .errors import NpuError, first_line
from .frontend import TensorSpec
from .runtime import make_inputs, read_npz

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
RANDOM_SAMPLES = 16
MAX_SAMPLES = 300  # NNCF's default subset size: more samples add time, not accuracy
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def quantize(
    model: onnx.ModelProto,
    inputs: Sequence[TensorSpec],
    calibration: list[dict[str, np.ndarray]] | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """The QDQ model: `model` itself when already quantized, else NNCF post-training quantization."""
    if is_quantized(model):
        return model
    if calibration is None:
        print(
            f"warning: no --calibration-data given: calibrating on {RANDOM_SAMPLES} seeded random inputs; "
            "the INT8 model's accuracy is unknown"
        )
        calibration = [make_inputs(list(inputs), "random", seed + i) for i in range(RANDOM_SAMPLES)]
    model = fold_channel_affines(fold_constants(_with_min_opset(model)))
    return _nncf_quantize(model, calibration[:MAX_SAMPLES])


def load_calibration(path: str | Path, inputs: Sequence[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Samples from an .npz with one array per input whose first axis counts samples."""
    arrays = read_npz(path)
    names = [spec.name for spec in inputs]
    if sorted(arrays) != sorted(names):
        raise NpuError(f"--calibration-data {path} holds arrays {sorted(arrays)}; it needs exactly one per input: {names}")
    counts = {len(a) if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise NpuError(f"--calibration-data {path}: every array needs the same number (at least 1) of samples along its first axis")
    samples = [{} for _ in range(counts.pop())]
    for spec in inputs:
        array = arrays[spec.name]
        if array.shape[1:] == spec.shape:
            per_sample = list(array)
        elif spec.shape[0] == 1 and array.shape[1:] == spec.shape[1:]:
            per_sample = [row[None] for row in array]
        else:
            raise NpuError(
                f"--calibration-data {path}: {spec.name!r} has shape {list(array.shape)}; "
                f"expected [samples, {', '.join(map(str, spec.shape))}] or [samples, {', '.join(map(str, spec.shape[1:]))}]"
            )
        for sample, value in zip(samples, per_sample):
            sample[spec.name] = np.ascontiguousarray(value, dtype=spec.dtype)
    return samples


def _with_min_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as err:  # noqa: BLE001 - the converter raises assorted errors per operator
        raise NpuError(f"cannot upgrade the model from opset {opset} to {MIN_OPSET} for quantization "
                       f"({first_line(err)}); export it with opset {MIN_OPSET} or newer") from None


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluates every node whose inputs are all constant into an initializer.

    Graph inputs that have an initializer count as constants: their value is what the model
    was exported with, and a compiled model cannot take them as inputs anyway.
    """
    model = _copy(model)
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
        if node.op_type in _NONDETERMINISTIC or not all(name in values for name in operands) or node.attribute and any(
            a.type == onnx.AttributeProto.GRAPH for a in node.attribute
        ):
            kept_nodes.append(node)
            continue
        single = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node], "fold",
                [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(values[n].dtype), values[n].shape)
                 for n in dict.fromkeys(operands)],
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


def fold_channel_affines(model: onnx.ModelProto) -> onnx.ModelProto:
    """A Conv (or ungrouped ConvTranspose) followed by a per-output-channel affine map becomes one
    with scaled weights and bias: BatchNormalization (inference), or Mul / Add by a per-channel or
    scalar constant (the scale layers of Caffe2-converted models such as DenseNet; the bias Add
    Paddle exports after a ConvTranspose). Chains fold one by one."""
    model = _copy(model)
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
        if (conv is None or conv.op_type not in _OUTPUT_CHANNEL_AXIS or len(consumers.get(conv.output[0], [])) != 1
                or conv.input[1] not in inits or len(consumers.get(conv.input[1], [])) != 1
                or len([o for o in node.output if o]) != 1):
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


def per_channel(constant: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """`constant` as one value per channel of a rank-`rank` NCHW tensor, if it broadcasts that way."""
    if constant.ndim > rank:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(constant.reshape(-1), (channels,)).astype(np.float64)


def _nncf_quantize(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    import nncf  # a slow import, needed only here
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    nncf.set_log_level(logging.ERROR)
    try:
        # NNCF shows its own progress bars ("Statistics collection", "Applying Fast Bias correction").
        return nncf.quantize(
            model,
            nncf.Dataset(samples),
            subset_size=len(samples),
            # OpenVINO's CPU preset quantizes depthwise-conv inputs per channel; an integer NPU
            # needs one scale per activation tensor, since channels are summed in one accumulator.
            advanced_parameters=AdvancedQuantizationParameters(
                activations_quantization_params=QuantizationParameters(per_channel=False)
            ),
        )
    except Exception as err:  # noqa: BLE001 - NNCF raises many kinds on models it cannot handle
        raise NpuError(f"NNCF could not quantize the model ({first_line(err)}); "
                       "quantize it yourself to QDQ ONNX, or compile with --no-quantize") from None


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
