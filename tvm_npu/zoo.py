"""The models the project knows: onnx's bundled "light" models and the default model.

The nine light models are real architectures shipped inside the onnx wheel, so tests
and examples never download anything. Their weights are constant (`ConstantOfShape`),
which makes every output nearly uniform; `randomize_weights` gives them seeded random
weights so that comparisons between runtimes actually mean something.

Part of the kernel-contribution API (CONTRIBUTING.md): the models a kernel is checked in.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIGHT_MODELS = (
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
)

_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
_LIGHT_DIR = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_model_path(name: str) -> pathlib.Path:
    """Path of the light model `name` inside the installed onnx wheel."""
    if name not in LIGHT_MODELS:
        raise ValueError(f"unknown light model {name!r}; expected one of: {', '.join(LIGHT_MODELS)}")
    return _LIGHT_DIR / f"light_{name}.onnx"


def light_reference(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, expected outputs) of onnx's backend test for the light model `name`.

    Only the outputs are shipped; onnx's test runner regenerates the inputs with
    `generate_dummy_data(..., random=False)`, reproduced here exactly.
    """
    path = light_model_path(name)
    graph = onnx.load(path).graph
    initialized = {t.name for t in graph.initializer}
    inputs = {}
    for value in graph.input:
        if value.name not in initialized:
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim)
            n = np.prod(shape)
            inputs[value.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    outputs = {
        value.name: numpy_helper.to_array(onnx.load_tensor(path.with_name(f"{path.stem}_output_{i}.pb")))
        for i, value in enumerate(graph.output)
    }
    return inputs, outputs


# The role a constant plays, by (consumer op, input index). A random BN does not
# normalize, so any systematic gain compounds over 100+ layers: the draws below keep
# E[gain^2] ~ 1 per layer (He weights, E[scale^2] ~ 1, E[1/variance] ~ 1).
_ROLES = {
    ("Conv", 1): "weight",
    ("Gemm", 1): "weight",
    ("MatMul", 1): "weight",
    ("Conv", 2): "shift",
    ("Gemm", 2): "shift",
    ("BatchNormalization", 1): "scale",
    ("BatchNormalization", 2): "shift",
    ("BatchNormalization", 3): "shift",  # mean
    ("BatchNormalization", 4): "variance",
    ("Add", 0): "shift",
    ("Add", 1): "shift",
    ("Sub", 1): "shift",
    ("Mul", 0): "scale",
    ("Mul", 1): "scale",
}

# Scale factor of a BN that ends a residual branch beside an identity shortcut: each
# `x + branch(x)` would otherwise double the mean square (ResNet-50 logits reach ~100,
# ShuffleNet's ~1000). Trained ResNets keep these small too (cf. zero-gamma init).
_RESIDUAL_GAIN = 0.2


def _fan_in(node: onnx.NodeProto, shape: tuple[int, ...]) -> int:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return shape[1] if trans_b else shape[0]
    if node.op_type == "MatMul":
        return shape[-2]
    return math.prod(shape[1:])


def _random_weight(role: str, node: onnx.NodeProto, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if role == "weight":
        return rng.standard_normal(shape, np.float32) * np.float32(math.sqrt(2.0 / _fan_in(node, shape)))
    if role == "shift":
        return rng.standard_normal(shape, np.float32) * np.float32(0.1)
    low, high = (0.4, 1.5) if role == "scale" else (0.5, 1.75)  # variance: positive
    return rng.uniform(low, high, shape).astype(np.float32)


def _reshaped(shape: tuple[int, ...], target: np.ndarray) -> tuple[int, ...]:
    dims = [shape[i] if d == 0 else int(d) for i, d in enumerate(target)]  # 0 copies a dim (allowzero=0)
    if -1 in dims:
        dims[dims.index(-1)] = math.prod(shape) // -math.prod(dims)
    return tuple(dims)


def _find_role(name, shape, consumers, constants):
    """(role, consumer, shape as the consumer sees it) of the tensor `name`, or None.

    Follows Unsqueeze/Reshape: DenseNet unsqueezes its Scale parameters, Inception-v1
    reshapes its classifier weight.
    """
    uses = consumers.get(name, [])
    if len(uses) != 1:
        return None
    node, index = uses[0]
    if node.op_type == "Unsqueeze" and index == 0:
        return _find_role(node.output[0], shape, consumers, constants)
    if node.op_type == "Reshape" and index == 0 and node.input[1] in constants:
        return _find_role(node.output[0], _reshaped(shape, constants[node.input[1]]), consumers, constants)
    role = _ROLES.get((node.op_type, index))
    return (role, node, shape) if role else None


def _residual_gains(graph: onnx.GraphProto, consumers) -> dict[str, float]:
    """Factor on the scale of each BN (by output name) that feeds a residual sum.

    Beside an identity shortcut a BN gets `_RESIDUAL_GAIN`; when every operand is a BN
    (projection shortcut) each gets 1/sqrt(n), so the sum keeps its inputs' scale.
    """
    producers = {out: node for node in graph.node for out in node.output}
    gains = {}
    for node in graph.node:
        if node.op_type not in ("Add", "Sum") or len(node.input) < 2 or not all(x in producers for x in node.input):
            continue
        bns = [x for x in node.input if producers[x].op_type == "BatchNormalization" and len(consumers[x]) == 1]
        gain = _RESIDUAL_GAIN if len(bns) < len(node.input) else 1 / math.sqrt(len(bns))
        gains.update((x, gain) for x in bns)
    return gains


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of `model` whose constant weights are seeded random initializers.

    Float initializers and `ConstantOfShape` outputs used as a conv/gemm weight or
    bias, a BatchNormalization parameter or an Add/Mul operand are replaced by random
    tensors of the same shape and dtype (He-initialized weights, small shifts, BN scale
    and variance around 1); the replaced `ConstantOfShape` nodes and the shape vectors
    only they used are removed. Constants with any other use are left as they are.
    Deterministic for a given seed.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    rng = np.random.default_rng(seed)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == TensorProto.INT64}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))

    # (name, shape, dtype, ConstantOfShape node or None), in graph order.
    candidates = [
        (t.name, tuple(t.dims), helper.tensor_dtype_to_np_dtype(t.data_type), None)
        for t in graph.initializer
        if t.data_type in _FLOAT_TYPES
    ]
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in constants:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            data_type = value.data_type if value is not None else TensorProto.FLOAT
            if data_type in _FLOAT_TYPES:
                shape = tuple(map(int, constants[node.input[0]]))
                candidates.append((node.output[0], shape, helper.tensor_dtype_to_np_dtype(data_type), node))

    gains = _residual_gains(graph, consumers)
    randomized = {}
    removed = []  # ConstantOfShape nodes whose output became an initializer
    for name, shape, dtype, producer in candidates:
        found = _find_role(name, shape, consumers, constants)
        if found is None:
            continue
        role, node, view_shape = found
        array = _random_weight(role, node, view_shape, rng)
        if role == "scale" and node.op_type == "BatchNormalization":
            array *= np.float32(gains.get(node.output[0], 1.0))
        randomized[name] = numpy_helper.from_array(array.astype(dtype, copy=False).reshape(shape), name)
        if producer is not None:
            removed.append(producer)

    removed_ids = {id(node) for node in removed}
    dead = {node.input[0] for node in removed if all(id(user) in removed_ids for user, _ in consumers[node.input[0]])}
    kept_nodes = [node for node in graph.node if id(node) not in removed_ids]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    initializers = [randomized.pop(t.name, t) for t in graph.initializer if t.name not in dead]
    new = list(randomized.values())  # the former ConstantOfShape outputs
    del graph.initializer[:]
    graph.initializer.extend(initializers + new)
    inputs = [value for value in graph.input if value.name not in dead]
    if model.ir_version < 4:  # IR 3 requires every initializer to be a graph input too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in new]
    del graph.input[:]
    graph.input.extend(inputs)
    return model


def default_model_path() -> pathlib.Path:
    """The bundled default model (package data, written by scripts/make_default_model.py)."""
    return pathlib.Path(__file__).parent / "data" / "default_model.onnx"


class _GraphMaker:
    """Builds an FP32 ONNX graph node by node; weights start as zeros for `randomize_weights`."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def const(self, name, array):
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def op(self, op_type, name, *inputs, **attrs):
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def conv(self, name, x, cin, cout, k, stride=1, group=1, bias=False):
        inputs = [x, self.const(f"{name}.weight", np.zeros((cout, cin // group, k, k)))]
        if bias:
            inputs.append(self.const(f"{name}.bias", np.zeros(cout)))
        return self.op("Conv", name, *inputs, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group)

    def conv_bn(self, name, bn, x, cin, cout, k, stride=1, group=1):
        y = self.conv(name, x, cin, cout, k, stride, group)
        params = [self.const(f"{bn}.{p}", np.zeros(cout)) for p in ("scale", "bias", "mean", "var")]
        return self.op("BatchNormalization", bn, y, *params)

    def relu6(self, name, x):
        return self.op("Clip", name, x, self.const(f"{name}.min", 0.0), self.const(f"{name}.max", 6.0))

    def model(self, name, input_shape, output_name, output_shape, seed):
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, output_shape)],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7, producer_name="tvm_npu.zoo")
        return randomize_weights(model, seed)


def make_default_model(seed: int = 0) -> onnx.ModelProto:
    """A small FP32 MobileNet/ResNet-style classifier: input [1,3,64,64] -> 10 softmax probs.

    It covers what the INT8 NPU path must handle: strided, depthwise, pointwise and
    biased convs, BatchNormalization, Relu, ReLU6 (Clip), a residual Add, MaxPool,
    GlobalAveragePool, Flatten, Gemm and Softmax. Weights come from `randomize_weights`.
    """
    g = _GraphMaker()
    x = g.op("Relu", "stem.relu", g.conv_bn("stem.conv", "stem.bn", "input", 3, 16, 3, stride=2))  # 16x32x32
    x = g.conv_bn("dw.conv", "dw.bn", x, 16, 16, 3, group=16)
    x = g.relu6("dw.relu6", x)
    x = g.op("Relu", "pw.relu", g.conv_bn("pw.conv", "pw.bn", x, 16, 32, 1))  # 32x32x32
    y = g.op("Relu", "block1.relu1", g.conv_bn("block1.conv1", "block1.bn1", x, 32, 32, 3))
    y = g.op("Add", "block1.add", g.conv_bn("block1.conv2", "block1.bn2", y, 32, 32, 3), x)
    x = g.op("Relu", "block1.relu", y)
    x = g.op("MaxPool", "pool", x, kernel_shape=[2, 2], strides=[2, 2])  # 32x16x16
    x = g.op("Relu", "expand.relu", g.conv("expand.conv", x, 32, 64, 1, bias=True))  # 64x16x16
    x = g.op("Flatten", "flatten", g.op("GlobalAveragePool", "gap", x))
    x = g.op("Gemm", "fc", x, g.const("fc.weight", np.zeros((10, 64))), g.const("fc.bias", np.zeros(10)), transB=1)
    g.op("Softmax", "probs", x, axis=1)
    return g.model("tvm_npu_default", [1, 3, 64, 64], "probs", [1, 10], seed)


# MobileNetV1's body at width 0.5: (output channels, stride) of each depthwise-separable block.
_MOBILENET_BLOCKS = (
    (32, 1),
    (64, 2),
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (256, 1),
    (256, 1),
    (256, 1),
    (256, 1),
    (512, 2),
    (512, 1),
)


def make_mobilenet_model(seed: int = 0, size: int = 128, classes: int = 100) -> onnx.ModelProto:
    """A MobileNetV1-style FP32 classifier (width 0.5): input [1,3,size,size] -> `classes` logits.

    A strided 3x3 conv stem, 13 depthwise 3x3 + pointwise 1x1 blocks with ReLU6, global
    average pool and Gemm; biased convs and no BatchNormalization (as if BN were folded).
    Seeded weights from `randomize_weights`; nothing is downloaded.
    """
    g = _GraphMaker()
    x = g.relu6("stem.relu6", g.conv("stem.conv", "input", 3, 16, 3, stride=2, bias=True))
    channels = 16
    for i, (out, stride) in enumerate(_MOBILENET_BLOCKS, 1):
        x = g.relu6(f"block{i}.dw.relu6", g.conv(f"block{i}.dw", x, channels, channels, 3, stride, channels, bias=True))
        x = g.relu6(f"block{i}.pw.relu6", g.conv(f"block{i}.pw", x, channels, out, 1, bias=True))
        channels = out
    x = g.op("Flatten", "flatten", g.op("GlobalAveragePool", "gap", x))
    g.op(
        "Gemm", "logits", x, g.const("fc.weight", np.zeros((classes, channels))), g.const("fc.bias", np.zeros(classes)), transB=1
    )
    return g.model("tvm_npu_mobilenet", [1, 3, size, size], "logits", [1, classes], seed)
