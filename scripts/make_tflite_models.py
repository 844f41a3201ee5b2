"""INT8 TFLite test networks with seeded weights, from two independent producers.

Each network is described once (the builder functions below) and drawn with the same seeded float weights by
both producers, so their files differ only in how each producer quantizes and writes them:

- `writer`: this script's own flatbuffer writer (the `tflite` package's generated schema code). It calibrates
  the float network in numpy on seeded inputs and writes per-channel symmetric int8 weights, asymmetric int8
  activations, int32 biases and fused ReLU/ReLU6 in the operators' options, as TFLite's quantization spec says.
  Needs only numpy and `tflite`, so tests make its files on the fly.
- `tf`: TensorFlow's converter (tensorflow-cpu 2.21.0, full-integer post-training quantization with int8
  input and output). TensorFlow is ~600 MB, so it lives in its own cached virtual environment
  (`$XDG_CACHE_HOME/tvm_npu/tflite-producers`, created by `--setup`) and is never a dependency of tvm_npu;
  its files are committed under tests/data/tflite/ so that nothing else needs it.

    python scripts/make_tflite_models.py                       # writer files into the cache, print paths
    python scripts/make_tflite_models.py --setup --producer tf # create the TensorFlow venv, then convert
    python scripts/make_tflite_models.py --producer tf --out tests/data/tflite   # refresh the committed files
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tvm_npu"
MODELS_CACHE = CACHE / "tflite_models"
TF_VENV = CACHE / "tflite-producers"
TF_PINS = ["tensorflow-cpu==2.21.0"]
COMMITTED = Path(__file__).resolve().parent.parent / "tests" / "data" / "tflite"
CALIBRATION_SAMPLES = 16
SEED = 0
PRODUCERS = ("writer", "tf")


# ---------------------------------------------------------------------------------------------------------------
# The networks, written against a builder with conv / dwconv / add / global_pool / fc (NHWC, SAME padding).


def tiny(b, x):
    """The fast tests' network: every operator kind of the others at 16x16."""
    x = b.conv(x, 8, 3, 1, "relu6")
    y = b.dwconv(x, 3, 1, "relu")
    x = b.add(x, b.conv(y, 8, 1, 1, None), "relu")
    x = b.dwconv(x, 3, 2, "relu6")
    x = b.conv(x, 16, 1, 1, "relu")
    return b.fc(b.global_pool(x), 4, None)


def mobilenet_v1(b, x):
    """MobileNetV1 at width 0.25: a stride-2 stem, then depthwise-separable pairs."""
    x = b.conv(x, 8, 3, 2, "relu6")
    for cout, stride in [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1), (256, 2), (256, 1)]:
        x = b.dwconv(x, 3, stride, "relu6")
        x = b.conv(x, cout, 1, 1, "relu6")
    return b.fc(b.global_pool(x), 10, None)


def mobilenet_v2(b, x):
    """MobileNetV2 at width 0.35: inverted residuals (expand 6, linear projection, residual adds)."""
    x = b.conv(x, 16, 3, 2, "relu6")
    cin = 16
    for expand, cout, repeats, stride in [(1, 8, 1, 1), (6, 8, 2, 2), (6, 16, 3, 2), (6, 24, 2, 2), (6, 32, 2, 1)]:
        for i in range(repeats):
            s = stride if i == 0 else 1
            y = b.conv(x, cin * expand, 1, 1, "relu6") if expand != 1 else x
            y = b.dwconv(y, 3, s, "relu6")
            y = b.conv(y, cout, 1, 1, None)
            x = b.add(x, y, None) if s == 1 and cin == cout else y
            cin = cout
    x = b.conv(x, 128, 1, 1, "relu6")
    return b.fc(b.global_pool(x), 10, None)


def resnet(b, x):
    """A ResNet-style network: 3x3 basic blocks, 1x1 stride-2 projections, ReLU after each residual add."""
    x = b.conv(x, 16, 3, 1, "relu")
    cin = 16
    for cout, stride in [(16, 1), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)]:
        y = b.conv(x, cout, 3, stride, "relu")
        y = b.conv(y, cout, 3, 1, None)
        shortcut = x if stride == 1 and cin == cout else b.conv(x, cout, 1, stride, None)
        x = b.add(shortcut, y, "relu")
        cin = cout
    return b.fc(b.global_pool(x), 10, None)


def depthwise_heavy(b, x):
    """Mostly depthwise work: 3x3 and 5x5 depthwise layers on 32-48 channels, few pointwise ones."""
    x = b.conv(x, 32, 3, 1, "relu6")
    for k, stride in [(3, 1), (5, 1), (3, 2), (5, 1), (3, 1)]:
        x = b.dwconv(x, k, stride, "relu6")
    x = b.conv(x, 48, 1, 1, "relu6")
    for k, stride in [(5, 2), (3, 1), (5, 1)]:
        x = b.dwconv(x, k, stride, "relu6")
    return b.fc(b.global_pool(x), 10, None)


def dense_heavy(b, x):
    """Mostly fully-connected work: a small conv stem, then a stack of wide dense layers."""
    x = b.conv(x, 8, 3, 2, "relu")
    x = b.conv(x, 8, 3, 2, "relu")
    x = b.flatten(x)
    for width in [256, 256, 128]:
        x = b.fc(x, width, "relu")
    return b.fc(x, 10, None)


# name: (network, NHWC input shape)
NETWORKS = {
    "tiny": (tiny, (1, 16, 16, 3)),
    "mobilenet_v1": (mobilenet_v1, (1, 96, 96, 3)),
    "mobilenet_v2": (mobilenet_v2, (1, 96, 96, 3)),
    "resnet": (resnet, (1, 64, 64, 3)),
    "depthwise_heavy": (depthwise_heavy, (1, 64, 64, 3)),
    "dense_heavy": (dense_heavy, (1, 32, 32, 1)),
}


class Weights:
    """Seeded float weights drawn in call order, so every producer gets the same numbers for the same network."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def kernel(self, shape, fan_in):
        # He-scaled so activations keep their magnitude through depth (calibrated ranges stay meaningful).
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def bias(self, n):
        return (self.rng.standard_normal(n) * 0.1).astype(np.float32)


def calibration_inputs(shape):
    """Seeded inputs in [-1, 1) that both producers calibrate on (and tests run)."""
    rng = np.random.default_rng(SEED + 1)
    return [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(CALIBRATION_SAMPLES)]


# ---------------------------------------------------------------------------------------------------------------
# Float reference in numpy (the writer's calibration), batch of samples on axis 0.


def _same_pad(size, k, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def _windows(x, k, stride):
    n, h, w, c = x.shape
    oh, top, bottom = _same_pad(h, k, stride)
    ow, left, right = _same_pad(w, k, stride)
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # n, H, W, c, k, k
    return win[:, ::stride, ::stride][:, :oh, :ow]


def _act(x, act):
    if act == "relu":
        return np.maximum(x, 0)
    if act == "relu6":
        return np.clip(x, 0, 6)
    return x


class FloatBuilder:
    """Runs the network in float64 and records each layer for the writer."""

    def __init__(self, weights):
        self.w = weights
        self.layers = []  # (kind, inputs, output, params)

    def _emit(self, kind, inputs, value, **params):
        self.layers.append((kind, inputs, len(self.values), params))
        self.values.append(value)
        return len(self.values) - 1

    def run(self, network, samples):
        self.values = [np.stack([s[0] for s in samples]).astype(np.float64)]
        return network(self, 0)

    def conv(self, x, cout, k, stride, act):
        cin = self.values[x].shape[-1]
        kernel, bias = self.w.kernel((k, k, cin, cout), k * k * cin), self.w.bias(cout)
        out = np.einsum("nhwcij,ijco->nhwo", _windows(self.values[x], k, stride), kernel) + bias
        return self._emit("conv", [x], _act(out, act), kernel=kernel, bias=bias, stride=stride, act=act)

    def dwconv(self, x, k, stride, act):
        c = self.values[x].shape[-1]
        kernel, bias = self.w.kernel((k, k, c), k * k), self.w.bias(c)
        out = np.einsum("nhwcij,ijc->nhwc", _windows(self.values[x], k, stride), kernel) + bias
        return self._emit("dwconv", [x], _act(out, act), kernel=kernel, bias=bias, stride=stride, act=act)

    def add(self, x, y, act):
        return self._emit("add", [x, y], _act(self.values[x] + self.values[y], act), act=act)

    def global_pool(self, x):
        return self._emit("global_pool", [x], self.values[x].mean(axis=(1, 2)))

    def flatten(self, x):
        v = self.values[x]
        return self._emit("flatten", [x], v.reshape(v.shape[0], -1))

    def fc(self, x, n, act):
        cin = self.values[x].shape[-1]
        kernel, bias = self.w.kernel((cin, n), cin), self.w.bias(n)
        return self._emit("fc", [x], _act(self.values[x] @ kernel + bias, act), kernel=kernel, bias=bias, act=act)


# ---------------------------------------------------------------------------------------------------------------
# Producer 1: the flatbuffer writer.


def _activation_qparams(values):
    """TFLite's asymmetric int8 activation parameters for the calibrated range (which must hold zero)."""
    lo, hi = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    scale = max(hi - lo, 1e-6) / 255.0
    zero_point = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return np.array([scale], np.float32), np.array([zero_point], np.int64)


def _per_channel(kernel, axis):
    """Symmetric int8 per-channel weights (TFLite's spec: zero point 0, range [-127, 127])."""
    reduce = tuple(i for i in range(kernel.ndim) if i != axis)
    scale = np.maximum(np.abs(kernel).max(axis=reduce), 1e-8) / 127.0
    shape = [1] * kernel.ndim
    shape[axis] = -1
    q = np.clip(np.round(kernel / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


class _FlatModel:
    """Accumulates tensors, buffers, operators and operator codes, then serializes them with `tflite`'s schema."""

    def __init__(self):
        self.tensors = []  # (name, shape, type, buffer, scale, zero_point, quantized_dimension)
        self.buffers = [b""]  # buffer 0: the empty buffer every activation tensor points at
        self.ops = []  # (opcode index, inputs, outputs, options type, options builder)
        self.opcodes = []  # (builtin code, version)

    def tensor(self, name, shape, ttype, data=None, scale=None, zero_point=None, axis=0):
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            buffer = len(self.buffers) - 1
        self.tensors.append((name, list(shape), ttype, buffer, scale, zero_point, axis))
        return len(self.tensors) - 1

    def op(self, code, version, inputs, outputs, options_type, options):
        if (code, version) not in self.opcodes:
            self.opcodes.append((code, version))
        self.ops.append((self.opcodes.index((code, version)), inputs, outputs, options_type, options))

    def conv(self, inputs, outputs, stride, act, depthwise=False):
        """CONV_2D (OHWI weights) or DEPTHWISE_CONV_2D (1HWC, multiplier 1), SAME padding; `act` is TFLite's
        ActivationFunctionType."""
        import tflite
        from tflite.BuiltinOperator import BuiltinOperator as Op
        from tflite.BuiltinOptions import BuiltinOptions as Opt
        from tflite.Padding import Padding

        prefix = "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions"

        def options(b):
            getattr(tflite, f"{prefix}Start")(b)
            getattr(tflite, f"{prefix}AddPadding")(b, Padding.SAME)
            getattr(tflite, f"{prefix}AddStrideW")(b, stride)
            getattr(tflite, f"{prefix}AddStrideH")(b, stride)
            if depthwise:
                tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
            getattr(tflite, f"{prefix}AddFusedActivationFunction")(b, act)
            getattr(tflite, f"{prefix}AddDilationWFactor")(b, 1)
            getattr(tflite, f"{prefix}AddDilationHFactor")(b, 1)
            return getattr(tflite, f"{prefix}End")(b)

        self.op(Op.DEPTHWISE_CONV_2D if depthwise else Op.CONV_2D, 3, inputs, outputs, getattr(Opt, prefix), options)

    def fully_connected(self, inputs, outputs, act):
        import tflite
        from tflite.BuiltinOperator import BuiltinOperator as Op
        from tflite.BuiltinOptions import BuiltinOptions as Opt

        def options(b):
            tflite.FullyConnectedOptionsStart(b)
            tflite.FullyConnectedOptionsAddFusedActivationFunction(b, act)
            return tflite.FullyConnectedOptionsEnd(b)

        self.op(Op.FULLY_CONNECTED, 5, inputs, outputs, Opt.FullyConnectedOptions, options)

    def add(self, inputs, outputs, act):
        import tflite
        from tflite.BuiltinOperator import BuiltinOperator as Op
        from tflite.BuiltinOptions import BuiltinOptions as Opt

        def options(b):
            tflite.AddOptionsStart(b)
            tflite.AddOptionsAddFusedActivationFunction(b, act)
            return tflite.AddOptionsEnd(b)

        self.op(Op.ADD, 2, inputs, outputs, Opt.AddOptions, options)

    def global_average_pool(self, inputs, outputs, h, w):
        """AVERAGE_POOL_2D with one VALID window over the whole h x w plane."""
        import tflite
        from tflite.BuiltinOperator import BuiltinOperator as Op
        from tflite.BuiltinOptions import BuiltinOptions as Opt
        from tflite.Padding import Padding

        def options(b):
            tflite.Pool2DOptionsStart(b)
            tflite.Pool2DOptionsAddPadding(b, Padding.VALID)
            tflite.Pool2DOptionsAddStrideW(b, 1)
            tflite.Pool2DOptionsAddStrideH(b, 1)
            tflite.Pool2DOptionsAddFilterWidth(b, w)
            tflite.Pool2DOptionsAddFilterHeight(b, h)
            return tflite.Pool2DOptionsEnd(b)

        self.op(Op.AVERAGE_POOL_2D, 2, inputs, outputs, Opt.Pool2DOptions, options)

    def serialize(self, inputs, outputs, description):
        import flatbuffers
        import tflite

        b = flatbuffers.Builder(1 << 16)

        def vector(start, items, prepend):
            start(b, len(items))
            for item in reversed(items):
                prepend(item)
            return b.EndVector()

        def ints(start, values):
            return vector(start, [int(v) for v in values], b.PrependInt32)

        buffers = []
        for data in self.buffers:
            data_vec = b.CreateByteVector(data) if data else None
            tflite.BufferStart(b)
            if data_vec is not None:
                tflite.BufferAddData(b, data_vec)
            buffers.append(tflite.BufferEnd(b))
        tensors = []
        for name, shape, ttype, buffer, scale, zero_point, axis in self.tensors:
            name_off = b.CreateString(name)
            shape_off = ints(tflite.TensorStartShapeVector, shape)
            quant = None
            if scale is not None:
                scale_off = vector(tflite.QuantizationParametersStartScaleVector, [float(s) for s in scale], b.PrependFloat32)
                zp_off = vector(tflite.QuantizationParametersStartZeroPointVector, [int(z) for z in zero_point], b.PrependInt64)
                tflite.QuantizationParametersStart(b)
                tflite.QuantizationParametersAddScale(b, scale_off)
                tflite.QuantizationParametersAddZeroPoint(b, zp_off)
                tflite.QuantizationParametersAddQuantizedDimension(b, axis)
                quant = tflite.QuantizationParametersEnd(b)
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shape_off)
            tflite.TensorAddType(b, ttype)
            tflite.TensorAddBuffer(b, buffer)
            tflite.TensorAddName(b, name_off)
            if quant is not None:
                tflite.TensorAddQuantization(b, quant)
            tensors.append(tflite.TensorEnd(b))
        operators = []
        for opcode, op_inputs, op_outputs, options_type, options in self.ops:
            in_off = ints(tflite.OperatorStartInputsVector, op_inputs)
            out_off = ints(tflite.OperatorStartOutputsVector, op_outputs)
            options_off = options(b)
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, opcode)
            tflite.OperatorAddInputs(b, in_off)
            tflite.OperatorAddOutputs(b, out_off)
            tflite.OperatorAddBuiltinOptionsType(b, options_type)
            tflite.OperatorAddBuiltinOptions(b, options_off)
            operators.append(tflite.OperatorEnd(b))
        tensors_off = vector(tflite.SubGraphStartTensorsVector, tensors, b.PrependUOffsetTRelative)
        ops_off = vector(tflite.SubGraphStartOperatorsVector, operators, b.PrependUOffsetTRelative)
        in_off = ints(tflite.SubGraphStartInputsVector, inputs)
        out_off = ints(tflite.SubGraphStartOutputsVector, outputs)
        name_off = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensors_off)
        tflite.SubGraphAddInputs(b, in_off)
        tflite.SubGraphAddOutputs(b, out_off)
        tflite.SubGraphAddOperators(b, ops_off)
        tflite.SubGraphAddName(b, name_off)
        subgraph = tflite.SubGraphEnd(b)
        codes = []
        for code, version in self.opcodes:
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddVersion(b, version)
            codes.append(tflite.OperatorCodeEnd(b))
        codes_off = vector(tflite.ModelStartOperatorCodesVector, codes, b.PrependUOffsetTRelative)
        subgraphs_off = vector(tflite.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
        buffers_off = vector(tflite.ModelStartBuffersVector, buffers, b.PrependUOffsetTRelative)
        desc_off = b.CreateString(description)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, codes_off)
        tflite.ModelAddSubgraphs(b, subgraphs_off)
        tflite.ModelAddDescription(b, desc_off)
        tflite.ModelAddBuffers(b, buffers_off)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def write_tflite(name, quantized=True, replace_ops=None) -> bytes:
    """The writer's INT8 TFLite file for NETWORKS[name]; `quantized=False` writes the float32 network instead, and
    `replace_ops` ({"ADD": "SQUARED_DIFFERENCE"}) swaps operator codes: both make bad inputs for the tests."""
    from tflite.ActivationFunctionType import ActivationFunctionType as Act
    from tflite.BuiltinOperator import BuiltinOperator as Op
    from tflite.TensorType import TensorType as T

    network, shape = NETWORKS[name]
    fb = FloatBuilder(Weights(SEED))
    fb.run(network, calibration_inputs(shape))
    acts = {None: Act.NONE, "relu": Act.RELU, "relu6": Act.RELU6}
    m = _FlatModel()
    act_type = T.INT8 if quantized else T.FLOAT32
    qparams = [_activation_qparams(v) if quantized else (None, None) for v in fb.values]
    ids = [m.tensor("input", shape, act_type, scale=qparams[0][0], zero_point=qparams[0][1])]

    def activation(index):
        scale, zp = qparams[index]
        return m.tensor(f"t{index}", (1, *fb.values[index].shape[1:]), act_type, scale=scale, zero_point=zp)

    def weights(kernel, axis):
        """The kernel (float, in TFLite's layout) as a tensor, and its per-channel scales (None in float)."""
        if not quantized:
            return m.tensor(f"w{len(m.tensors)}", kernel.shape, T.FLOAT32, kernel.astype(np.float32)), None
        q, w_scale = _per_channel(kernel, axis)
        zeros = np.zeros(len(w_scale), np.int64)
        return m.tensor(f"w{len(m.tensors)}", q.shape, T.INT8, q, w_scale, zeros, axis), w_scale

    def bias(index, b, w_scale):
        if not quantized:
            return m.tensor(f"b{len(m.tensors)}", b.shape, T.FLOAT32, b.astype(np.float32))
        scale = (qparams[index][0][0] * w_scale.astype(np.float64)).astype(np.float32)
        q = np.round(b / scale).astype(np.int32)
        return m.tensor(f"b{len(m.tensors)}", q.shape, T.INT32, q, scale, np.zeros(len(scale), np.int64), 0)

    for kind, inputs, out, p in fb.layers:
        x = ids[inputs[0]]
        if kind == "conv":
            w, s = weights(p["kernel"].transpose(3, 0, 1, 2), 0)  # TFLite conv weights are OHWI
            ins = [x, w, bias(inputs[0], p["bias"], s)]
            ids.append(activation(out))
            m.conv(ins, [ids[-1]], p["stride"], acts[p["act"]])
        elif kind == "dwconv":
            w, s = weights(p["kernel"][None], 3)  # TFLite depthwise weights are 1HWC
            ins = [x, w, bias(inputs[0], p["bias"], s)]
            ids.append(activation(out))
            m.conv(ins, [ids[-1]], p["stride"], acts[p["act"]], depthwise=True)
        elif kind == "add":
            ids.append(activation(out))
            m.add([x, ids[inputs[1]]], [ids[-1]], acts[p["act"]])
        elif kind == "global_pool":
            # TFLite's int8 average pool keeps its input's quantization; the pool is 4-D, a reshape drops H, W.
            n, h, w, c = fb.values[inputs[0]].shape
            scale, zp = qparams[inputs[0]]
            pooled = m.tensor(f"t{out}_pool", (1, 1, 1, c), act_type, scale=scale, zero_point=zp)
            m.global_average_pool([x], [pooled], h, w)
            qparams[out] = (scale, zp)
            ids.append(_reshape(m, pooled, out, (1, c), act_type, scale, zp))
        elif kind == "flatten":
            scale, zp = qparams[inputs[0]]
            qparams[out] = (scale, zp)  # a reshape keeps its input's quantization
            ids.append(_reshape(m, x, out, (1, fb.values[out].shape[1]), act_type, scale, zp))
        elif kind == "fc":
            w, s = weights(p["kernel"].T, 0)  # TFLite FC weights are [out, in]; per-channel scales
            ins = [x, w, bias(inputs[0], p["bias"], s)]
            ids.append(activation(out))
            m.fully_connected(ins, [ids[-1]], acts[p["act"]])
    for old, new in (replace_ops or {}).items():
        m.opcodes = [(getattr(Op, new) if code == getattr(Op, old) else code, version) for code, version in m.opcodes]
    return m.serialize([ids[0]], [ids[-1]], f"tvm_npu scripts/make_tflite_models.py writer: {name}")


def _reshape(m, x, out, shape, act_type, scale, zp):
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator as Op
    from tflite.BuiltinOptions import BuiltinOptions as Opt
    from tflite.TensorType import TensorType as T

    new_shape = m.tensor(f"t{out}_shape", (len(shape),), T.INT32, np.array(shape, np.int32))
    result = m.tensor(f"t{out}", shape, act_type, scale=scale, zero_point=zp)

    def options(b):
        b.StartVector(4, len(shape), 4)
        for d in reversed(shape):
            b.PrependInt32(d)
        dims = b.EndVector()
        tflite.ReshapeOptionsStart(b)
        tflite.ReshapeOptionsAddNewShape(b, dims)
        return tflite.ReshapeOptionsEnd(b)

    m.op(Op.RESHAPE, 1, [x, new_shape], [result], Opt.ReshapeOptions, options)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Producer 2: TensorFlow's converter (run inside the TensorFlow venv).


class TFBuilder:
    def __init__(self, tf, weights):
        self.tf, self.w = tf, weights

    def _bias_act(self, x, bias, act):
        x = x + bias
        if act == "relu":
            return self.tf.nn.relu(x)
        if act == "relu6":
            return self.tf.nn.relu6(x)
        return x

    def conv(self, x, cout, k, stride, act):
        cin = x.shape[-1]
        kernel, bias = self.w.kernel((k, k, cin, cout), k * k * cin), self.w.bias(cout)
        return self._bias_act(self.tf.nn.conv2d(x, kernel, stride, "SAME"), bias, act)

    def dwconv(self, x, k, stride, act):
        c = x.shape[-1]
        kernel, bias = self.w.kernel((k, k, c), k * k), self.w.bias(c)
        y = self.tf.nn.depthwise_conv2d(x, kernel[..., None], [1, stride, stride, 1], "SAME")
        return self._bias_act(y, bias, act)

    def add(self, x, y, act):
        return self._bias_act(x + y, 0.0, act)

    def global_pool(self, x):
        return self.tf.reduce_mean(x, axis=[1, 2])

    def flatten(self, x):
        return self.tf.reshape(x, [1, -1])

    def fc(self, x, n, act):
        cin = x.shape[-1]
        kernel, bias = self.w.kernel((cin, n), cin), self.w.bias(n)
        return self._bias_act(self.tf.matmul(x, kernel), bias, act)


def convert_tf(name) -> bytes:
    """TensorFlow's full-integer INT8 TFLite file for NETWORKS[name]."""
    import tensorflow as tf

    network, shape = NETWORKS[name]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    def forward(x):
        return network(TFBuilder(tf, Weights(SEED)), x)

    def representative():
        for sample in calibration_inputs(shape):
            yield [sample]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


# ---------------------------------------------------------------------------------------------------------------


def path(name, producer="writer") -> Path:
    """Where `make(name, producer)` puts the file (committed files for `tf`, the cache for `writer`)."""
    return (COMMITTED if producer == "tf" else MODELS_CACHE / producer) / f"{name}.tflite"


def make(name, producer="writer", out: Path | None = None) -> Path:
    """The network's file from the producer, written once (atomically) and reused."""
    target = (out / f"{name}.tflite") if out is not None else path(name, producer)
    if not target.exists():
        data = write_tflite(name) if producer == "writer" else convert_tf(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".partial{os.getpid()}")
        partial.write_bytes(data)
        partial.replace(target)
    return target


def setup_tf_venv() -> Path:
    python = TF_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TF_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TF_PINS], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--producer", choices=PRODUCERS, default="writer")
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--out", type=Path, help="folder for the files (default: the cache, or tests/data/tflite/ for tf)")
    parser.add_argument("--force", action="store_true", help="rewrite files that exist")
    parser.add_argument("--setup", action="store_true", help="create the TensorFlow venv first (tf producer)")
    args = parser.parse_args()
    if args.producer == "tf":
        try:
            import tensorflow  # noqa: F401 - only to see whether this interpreter has it
        except ImportError:
            python = setup_tf_venv() if args.setup else TF_VENV / "bin" / "python"
            if not python.exists():
                sys.exit(f"make_tflite_models: TensorFlow is not installed; rerun with --setup to create {TF_VENV}")
            argv = [a for a in sys.argv[1:] if a != "--setup"]
            sys.exit(subprocess.run([str(python), __file__, *argv]).returncode)
    for name in args.networks:
        target = (args.out / f"{name}.tflite") if args.out else path(name, args.producer)
        if args.force:
            target.unlink(missing_ok=True)
        made = make(name, args.producer, args.out)
        print(f"{args.producer:<7} {name:<16} {made.stat().st_size:>8} B  {made}")


if __name__ == "__main__":
    main()
