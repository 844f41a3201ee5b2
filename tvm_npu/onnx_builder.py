"""One-operator QDQ ONNX models: the examples each NPU kernel declares for the conformance harness.

A model reads integer graph inputs through DequantizeLinear, runs one ONNX operator (int8 weights
behind their own DequantizeLinear, float bias, an optional fused ReLU / ReLU6) and ends in a
QuantizeLinear whose integer result is the graph output. Partitioning turns it into exactly one NPU
composite whose inputs are the graph inputs, and OpenVINO runs the very same file.

The output quantization is calibrated on the example's own inputs (float min/max of the operator's
result through onnx's reference evaluator), so the outputs span their integer range instead of
saturating, as a quantizer would make them.

Part of the kernel-contribution API (CONTRIBUTING.md): what a kernel's `examples` are written with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

OPSET = 17
# onnx's reference evaluator implements DequantizeLinear from opset 19 on (same semantics for int8).
CALIBRATION_OPSET = 21


@dataclass(frozen=True)
class Activation:
    """An integer graph input read through a per-tensor DequantizeLinear."""

    shape: tuple[int, ...]
    dtype: str = "int8"
    scale: float = 0.05
    zero_point: int = 0
    values: np.ndarray | None = None  # default: uniform over the dtype's whole range


@dataclass(frozen=True)
class Weight:
    """int8 constant behind a DequantizeLinear: per tensor (a float scale) or per `axis` (an array)."""

    values: np.ndarray
    scale: np.ndarray | float
    axis: int = 0


@dataclass(frozen=True)
class Constant:
    """A constant operand: float (a bias, a Clip bound) or, with `dtype`, a shape-like operand (int64)."""

    values: np.ndarray | float
    dtype: str = "float32"


@dataclass
class Example:
    """One conformance case: a one-operator QDQ model and the integer inputs it runs on."""

    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    # Set when OpenVINO is known to compute this model differently from the ONNX specification: the
    # harness then compares with the exact reference (validate.exact_reference_outputs) and checks that
    # OpenVINO still deviates.
    openvino_deviation: str | None = None

    @property
    def shape(self) -> str:
        """The inputs as `1x3x7x9 uint8 + 1x3x7x9 int8`: what a failure message names."""
        return " + ".join(f"{'x'.join(map(str, x.shape))} {x.dtype}" for x in self.inputs.values())

    @property
    def op_types(self) -> list[str]:
        """The operator, then the activation fused after it (if any)."""
        return [n.op_type for n in self.model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]

    @property
    def output_dtype(self) -> str:
        (output,) = self.model.graph.output
        return np.dtype(helper.tensor_dtype_to_np_dtype(output.type.tensor_type.elem_type)).name


def random_activation(rng: np.random.Generator, shape, dtype: str | None = None, **fields) -> Activation:
    """An activation with a random dtype (unless given), scale and a non-zero zero point."""
    dtype = dtype or str(rng.choice(["int8", "uint8"]))
    zero_point = int(rng.integers(100, 156)) if dtype == "uint8" else int(rng.choice([-1, 1]) * rng.integers(1, 28))
    return Activation(tuple(int(d) for d in shape), dtype, float(rng.uniform(0.01, 0.08)), zero_point, **fields)


def random_weight(rng: np.random.Generator, shape, axis: int = 0, per_channel: bool = True) -> Weight:
    """Symmetric int8 weights (as every QDQ quantizer writes them), scaled per output channel along `axis`."""
    values = rng.integers(-127, 128, shape).astype(np.int8)
    scale = rng.uniform(0.002, 0.02, shape[axis]) if per_channel else float(rng.uniform(0.002, 0.02))
    return Weight(values, scale, axis)


def integers(rng: np.random.Generator, shape, dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def quantized_operator(
    name: str,
    op_type: str,
    operands: Sequence[Activation | Weight | Constant | Sequence],
    rng: np.random.Generator,
    *,
    out_dtype: str = "int8",
    activation: str | None = None,
    opset: int = OPSET,
    gated: bool = False,
    output_quantization: tuple[float, int] | None = None,
    **attributes,
) -> Example:
    """`QuantizeLinear(activation(op_type(operands...)))` over dequantized integer inputs.

    An operand that is a list becomes several ONNX inputs of a variadic operator (Concat).
    `activation` is None, "relu" or "relu6" (a Clip to [0, 6]); `attributes` are the ONNX node's;
    `opset` is raised for operators newer than OPSET (Mish: 18, Gelu: 20); `gated` multiplies the first
    operand by the operator's result (SiLU is `x * Sigmoid(x)`).
    `output_quantization` (scale, zero point) replaces the calibrated one (e.g. the input's, for a copy).
    """
    nodes, inits, graph_inputs, values = [], [], [], {}

    def constant(array, label):
        inits.append(numpy_helper.from_array(np.asarray(array), label))
        return label

    def operand(item, label):
        if isinstance(item, Activation):
            data = item.values if item.values is not None else integers(rng, item.shape, item.dtype)
            values[label] = np.ascontiguousarray(data.astype(item.dtype).reshape(item.shape))
            graph_inputs.append(
                helper.make_tensor_value_info(label, helper.np_dtype_to_tensor_dtype(np.dtype(item.dtype)), list(item.shape))
            )
            zero = constant(np.array(item.zero_point, item.dtype), f"{label}_zero_point")
            nodes.append(
                helper.make_node(
                    "DequantizeLinear", [label, constant(np.float32(item.scale), f"{label}_scale"), zero], [f"{label}_real"]
                )
            )
            return f"{label}_real"
        if isinstance(item, Weight):
            scale = np.asarray(item.scale, np.float32)
            nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [constant(item.values.astype(np.int8), f"{label}_int8"), constant(scale, f"{label}_scale")],
                    [f"{label}_real"],
                    axis=item.axis,
                )
            )
            return f"{label}_real"
        return constant(np.asarray(item.values, item.dtype), label)

    names = []
    for index, item in enumerate(operands):
        if isinstance(item, (list, tuple)):
            names += [operand(part, f"x{index}_{j}") for j, part in enumerate(item)]
        else:
            names.append(operand(item, f"x{index}"))
    nodes.append(helper.make_node(op_type, names, ["result"], **attributes))
    real = "result"
    if gated:
        nodes.append(helper.make_node("Mul", [names[0], real], ["gated"]))
        real = "gated"
    if activation == "relu":
        nodes.append(helper.make_node("Relu", [real], ["activated"]))
        real = "activated"
    elif activation == "relu6":
        nodes.append(
            helper.make_node("Clip", [real, constant(np.float32(0), "zero"), constant(np.float32(6), "six")], ["activated"])
        )
        real = "activated"
    elif activation is not None:
        raise ValueError(f"activation must be None, 'relu' or 'relu6', not {activation!r}")
    scale, zero_point = output_quantization or _calibrate(nodes, graph_inputs, inits, real, values, out_dtype)
    nodes.append(
        helper.make_node(
            "QuantizeLinear",
            [real, constant(np.float32(scale), "y_scale"), constant(np.array(zero_point, out_dtype), "y_zero_point")],
            ["y"],
        )
    )
    output = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype)), None)
    graph = helper.make_graph(nodes, name, graph_inputs, [output], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    onnx.checker.check_model(model, full_check=True)
    return Example(name, model, values)


def pruned(example: Example, rng: np.random.Generator) -> Example:
    """`example` with its int8 weights (the `*_int8` initializers) mostly zero, as a sparse-weight kernel
    sees them: a random sparsity in [0.5, 1], and the first output channel (axis 0) all zero."""
    model = onnx.ModelProto()
    model.CopyFrom(example.model)
    sparsity = float(rng.choice([0.5, 0.9, 1.0]))
    for init in model.graph.initializer:
        if init.name.endswith("_int8"):
            values = numpy_helper.to_array(init).copy()
            values[rng.random(values.shape) < sparsity] = 0
            values[:1] = 0
            init.CopyFrom(numpy_helper.from_array(values, init.name))
    return Example(f"{example.name}_{round(sparsity * 100)}pct_zeros", model, example.inputs, example.openvino_deviation)


def saturating_conv(rng: np.random.Generator, channels: int = 16, size: int = 12) -> Example:
    """A QDQ 3x3 convolution that CPUs without VNNI get wrong: uint8 activations near 255 and full-range
    int8 weights of one sign per output channel pair up into int16 sums beyond 32767 (vpmaddubsw
    saturates them), while the exact answer is well inside the output's range."""
    x = rng.integers(240, 256, (1, channels, size, size)).astype(np.uint8)
    w = (rng.choice([-1, 1], (channels, 1, 1, 1)) * rng.integers(100, 128, (channels, channels, 3, 3))).astype(np.int8)
    return quantized_operator(
        "saturating_conv",
        "Conv",
        [
            Activation(x.shape, "uint8", 0.02, 0, values=x),
            Weight(w, np.full(channels, 0.01, np.float32)),
            Constant(np.zeros(channels)),
        ],
        rng,
        pads=[1, 1, 1, 1],
    )


def _calibrate(nodes, graph_inputs, inits, real: str, values: dict, out_dtype: str) -> tuple[float, int]:
    """Scale and zero point covering the real result on these inputs (and 0, as quantizers keep it exact)."""
    output = helper.make_tensor_value_info(real, onnx.TensorProto.FLOAT, None)
    probe = helper.make_graph(nodes, "calibrate", graph_inputs, [output], inits)
    evaluator = ReferenceEvaluator(helper.make_model(probe, opset_imports=[helper.make_opsetid("", CALIBRATION_OPSET)]))
    (result,) = evaluator.run(None, values)
    lo, hi = min(0.0, float(result.min())), max(0.0, float(result.max()))
    scale = (hi - lo) / 255 if hi > lo else 1.0
    info = np.iinfo(out_dtype)
    return scale, int(np.clip(np.round(info.min - lo / scale), info.min, info.max))
