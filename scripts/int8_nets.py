"""Seeded INT8 TFLite networks at the sizes Ethos-U benchmarks use, for scripts/compare_vela.py: Vela and
`tvmc compile` read the same file.

Full-width MobileNetV1 and MobileNetV2-style nets at 128x128, a ResNet-style net at 96x96, a depthwise-heavy
and a dense-heavy one (scripts/make_tflite_models.py's TensorFlow-converted networks are smaller: width
0.25-0.35 at 64-96 pixels). Integer weights are drawn directly (per-channel int8, int32 biases, one
activation scale for every tensor: the values do not matter to cycle counts), so no float model or
calibration is involved. Written with the flatbuffers bindings Vela ships (`ethosu.vela.tflite`), so writing
needs ethos-u-vela and nothing else.

    python scripts/int8_nets.py OUT_DIR     # writes NAME.tflite for every network
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import flatbuffers
import numpy as np

ACT_SCALE, ACT_ZERO = 0.05, -8  # every activation tensor (the values do not matter to cycle counts)
RELU6 = "relu6"


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]  # NHWC (or [1, C] after a reshape)


@dataclass
class Layer:
    op: str  # conv | dwconv | add | avgpool | reshape | fc
    inputs: list[str]
    output: str
    weights: np.ndarray | None = None  # conv [O,KH,KW,I], dwconv [1,KH,KW,C], fc [O,I]; int8
    bias: np.ndarray | None = None  # int32
    w_scale: np.ndarray | None = None  # per output channel
    stride: int = 1
    act: str | None = None


@dataclass
class Net:
    """A network built layer by layer with seeded weights; `tflite()` writes it."""

    name: str
    input_shape: tuple[int, int, int, int]
    seed: int = 0
    layers: list[Layer] = field(default_factory=list)
    tensors: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)
        self.tensors["input"] = Tensor("input", self.input_shape)

    def _new(self, shape) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = Tensor(name, tuple(int(s) for s in shape))
        return name

    def _weights(self, shape, fan_in: int, channels: int):
        w = self.rng.integers(-127, 128, shape, dtype=np.int8)
        scale = (self.rng.uniform(0.5, 1.5, channels) * 2.0 / (127 * np.sqrt(fan_in)) * 6).astype(np.float32)
        bias = self.rng.integers(-1000, 1000, channels).astype(np.int32)
        return w, scale, bias

    def conv(self, x: str, out: int, k: int = 3, stride: int = 1, act: str | None = RELU6) -> str:
        n, h, w, c = self.tensors[x].shape
        wts, scale, bias = self._weights((out, k, k, c), k * k * c, out)
        y = self._new((n, -(-h // stride), -(-w // stride), out))
        self.layers.append(Layer("conv", [x], y, wts, bias, scale, stride, act))
        return y

    def dwconv(self, x: str, k: int = 3, stride: int = 1, act: str | None = RELU6) -> str:
        n, h, w, c = self.tensors[x].shape
        wts, scale, bias = self._weights((1, k, k, c), k * k, c)
        y = self._new((n, -(-h // stride), -(-w // stride), c))
        self.layers.append(Layer("dwconv", [x], y, wts, bias, scale, stride, act))
        return y

    def add(self, a: str, b: str) -> str:
        y = self._new(self.tensors[a].shape)
        self.layers.append(Layer("add", [a, b], y))
        return y

    def avgpool(self, x: str) -> str:
        n, _, _, c = self.tensors[x].shape
        y = self._new((n, 1, 1, c))
        self.layers.append(Layer("avgpool", [x], y))
        return y

    def flatten(self, x: str) -> str:
        shape = self.tensors[x].shape
        y = self._new((shape[0], int(np.prod(shape[1:]))))
        self.layers.append(Layer("reshape", [x], y))
        return y

    def fc(self, x: str, out: int, act: str | None = None) -> str:
        n, c = self.tensors[x].shape
        wts, scale, bias = self._weights((out, c), c, out)
        y = self._new((n, out))
        self.layers.append(Layer("fc", [x], y, wts, bias, scale, act=act))
        return y

    @property
    def output(self) -> str:
        return self.layers[-1].output

    # ---- TFLite (NHWC, flatbuffer through Vela's bindings) ----
    def tflite(self) -> bytes:
        from ethosu.vela.tflite import (
            AddOptions, Buffer, Conv2DOptions, DepthwiseConv2DOptions, FullyConnectedOptions, Model, Operator,
            OperatorCode, Pool2DOptions, QuantizationParameters, ReshapeOptions, SubGraph, Tensor as TflTensor,
        )
        from ethosu.vela.tflite.ActivationFunctionType import ActivationFunctionType
        from ethosu.vela.tflite.BuiltinOperator import BuiltinOperator
        from ethosu.vela.tflite.BuiltinOptions import BuiltinOptions
        from ethosu.vela.tflite.Padding import Padding
        from ethosu.vela.tflite.TensorType import TensorType

        b = flatbuffers.Builder(1 << 20)
        buffers: list[bytes] = [b""]  # buffer 0: empty, by convention
        tensors: list[tuple] = []  # (name, shape, type, buffer, scales, zeros, axis)
        index: dict[str, int] = {}

        def tensor(name, shape, ttype, data=None, scales=(ACT_SCALE,), zeros=(ACT_ZERO,), axis=0):
            buf = 0
            if data is not None:
                buffers.append(np.ascontiguousarray(data).tobytes())
                buf = len(buffers) - 1
            tensors.append((name, shape, ttype, buf, np.asarray(scales, np.float32), np.asarray(zeros, np.int64), axis))
            index[name] = len(tensors) - 1
            return index[name]

        for t in self.tensors.values():
            tensor(t.name, t.shape, TensorType.INT8)
        ops, codes = [], []  # (opcode index, inputs, outputs, options type, options builder)
        act = {None: ActivationFunctionType.NONE, RELU6: ActivationFunctionType.RELU6}
        opcode = {"conv": BuiltinOperator.CONV_2D, "dwconv": BuiltinOperator.DEPTHWISE_CONV_2D,
                  "add": BuiltinOperator.ADD, "avgpool": BuiltinOperator.AVERAGE_POOL_2D,
                  "reshape": BuiltinOperator.RESHAPE, "fc": BuiltinOperator.FULLY_CONNECTED}
        for i, layer in enumerate(self.layers):
            if opcode[layer.op] not in codes:
                codes.append(opcode[layer.op])
            inputs = [index[x] for x in layer.inputs]
            if layer.weights is not None:
                axis = 3 if layer.op == "dwconv" else 0
                inputs.append(tensor(f"w{i}", layer.weights.shape, TensorType.INT8, layer.weights,
                                     layer.w_scale, np.zeros(len(layer.w_scale)), axis))
                inputs.append(tensor(f"b{i}", (len(layer.bias),), TensorType.INT32, layer.bias,
                                     ACT_SCALE * layer.w_scale, np.zeros(len(layer.w_scale)), 0))
            if layer.op == "reshape":
                shape = np.array(self.tensors[layer.output].shape, np.int32)
                inputs.append(tensor(f"shape{i}", (len(shape),), TensorType.INT32, shape, (), ()))
            ops.append((codes.index(opcode[layer.op]), inputs, [index[layer.output]], layer))

        def vector(items, start):
            start(b, len(items))
            for item in reversed(items):
                b.PrependUOffsetTRelative(item)
            return b.EndVector()

        def options(layer):
            if layer.op in ("conv", "dwconv"):
                m = Conv2DOptions if layer.op == "conv" else DepthwiseConv2DOptions
                prefix = "Conv2DOptions" if layer.op == "conv" else "DepthwiseConv2DOptions"
                getattr(m, f"{prefix}Start")(b)
                getattr(m, f"{prefix}AddPadding")(b, Padding.SAME)
                getattr(m, f"{prefix}AddStrideW")(b, layer.stride)
                getattr(m, f"{prefix}AddStrideH")(b, layer.stride)
                getattr(m, f"{prefix}AddFusedActivationFunction")(b, act[layer.act])
                getattr(m, f"{prefix}AddDilationWFactor")(b, 1)
                getattr(m, f"{prefix}AddDilationHFactor")(b, 1)
                if layer.op == "dwconv":
                    m.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
                kind = BuiltinOptions.Conv2DOptions if layer.op == "conv" else BuiltinOptions.DepthwiseConv2DOptions
                return kind, getattr(m, f"{prefix}End")(b)
            if layer.op == "fc":
                FullyConnectedOptions.FullyConnectedOptionsStart(b)
                FullyConnectedOptions.FullyConnectedOptionsAddFusedActivationFunction(b, act[layer.act])
                return BuiltinOptions.FullyConnectedOptions, FullyConnectedOptions.FullyConnectedOptionsEnd(b)
            if layer.op == "add":
                AddOptions.AddOptionsStart(b)
                return BuiltinOptions.AddOptions, AddOptions.AddOptionsEnd(b)
            if layer.op == "avgpool":
                _, h, w, _ = self.tensors[layer.inputs[0]].shape
                Pool2DOptions.Pool2DOptionsStart(b)
                Pool2DOptions.Pool2DOptionsAddPadding(b, Padding.VALID)
                Pool2DOptions.Pool2DOptionsAddStrideW(b, 1)
                Pool2DOptions.Pool2DOptionsAddStrideH(b, 1)
                Pool2DOptions.Pool2DOptionsAddFilterWidth(b, w)
                Pool2DOptions.Pool2DOptionsAddFilterHeight(b, h)
                return BuiltinOptions.Pool2DOptions, Pool2DOptions.Pool2DOptionsEnd(b)
            shape = b.CreateNumpyVector(np.array(self.tensors[layer.output].shape, np.int32))
            ReshapeOptions.ReshapeOptionsStart(b)
            ReshapeOptions.ReshapeOptionsAddNewShape(b, shape)
            return BuiltinOptions.ReshapeOptions, ReshapeOptions.ReshapeOptionsEnd(b)

        op_offsets = []
        for code, inputs, outputs, layer in ops:
            kind, opts = options(layer)
            ins, outs = b.CreateNumpyVector(np.array(inputs, np.int32)), b.CreateNumpyVector(np.array(outputs, np.int32))
            Operator.OperatorStart(b)
            Operator.OperatorAddOpcodeIndex(b, code)
            Operator.OperatorAddInputs(b, ins)
            Operator.OperatorAddOutputs(b, outs)
            Operator.OperatorAddBuiltinOptionsType(b, kind)
            Operator.OperatorAddBuiltinOptions(b, opts)
            op_offsets.append(Operator.OperatorEnd(b))
        tensor_offsets = []
        for name, shape, ttype, buf, scales, zeros, axis in tensors:
            quant = None
            if len(scales):
                sc, zp = b.CreateNumpyVector(scales), b.CreateNumpyVector(zeros)
                QuantizationParameters.QuantizationParametersStart(b)
                QuantizationParameters.QuantizationParametersAddScale(b, sc)
                QuantizationParameters.QuantizationParametersAddZeroPoint(b, zp)
                QuantizationParameters.QuantizationParametersAddQuantizedDimension(b, axis)
                quant = QuantizationParameters.QuantizationParametersEnd(b)
            name_off, shape_off = b.CreateString(name), b.CreateNumpyVector(np.array(shape, np.int32))
            TflTensor.TensorStart(b)
            TflTensor.TensorAddShape(b, shape_off)
            TflTensor.TensorAddType(b, ttype)
            TflTensor.TensorAddBuffer(b, buf)
            TflTensor.TensorAddName(b, name_off)
            if quant is not None:
                TflTensor.TensorAddQuantization(b, quant)
            tensor_offsets.append(TflTensor.TensorEnd(b))
        t_vec = vector(tensor_offsets, SubGraph.SubGraphStartTensorsVector)
        o_vec = vector(op_offsets, SubGraph.SubGraphStartOperatorsVector)
        g_in = b.CreateNumpyVector(np.array([index["input"]], np.int32))
        g_out = b.CreateNumpyVector(np.array([index[self.output]], np.int32))
        g_name = b.CreateString(self.name)
        SubGraph.SubGraphStart(b)
        SubGraph.SubGraphAddTensors(b, t_vec)
        SubGraph.SubGraphAddInputs(b, g_in)
        SubGraph.SubGraphAddOutputs(b, g_out)
        SubGraph.SubGraphAddOperators(b, o_vec)
        SubGraph.SubGraphAddName(b, g_name)
        subgraph = SubGraph.SubGraphEnd(b)
        code_offsets = []
        for code in codes:
            OperatorCode.OperatorCodeStart(b)
            OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            OperatorCode.OperatorCodeAddBuiltinCode(b, code)
            OperatorCode.OperatorCodeAddVersion(b, 1)
            code_offsets.append(OperatorCode.OperatorCodeEnd(b))
        buffer_offsets = []
        for data in buffers:
            vec = b.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
            Buffer.BufferStart(b)
            if vec is not None:
                Buffer.BufferAddData(b, vec)
            buffer_offsets.append(Buffer.BufferEnd(b))
        c_vec = vector(code_offsets, Model.ModelStartOperatorCodesVector)
        s_vec = vector([subgraph], Model.ModelStartSubgraphsVector)
        b_vec = vector(buffer_offsets, Model.ModelStartBuffersVector)
        desc = b.CreateString("tvm_npu scripts/int8_nets.py")
        Model.ModelStart(b)
        Model.ModelAddVersion(b, 3)
        Model.ModelAddOperatorCodes(b, c_vec)
        Model.ModelAddSubgraphs(b, s_vec)
        Model.ModelAddDescription(b, desc)
        Model.ModelAddBuffers(b, b_vec)
        b.Finish(Model.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def mobilenet_v1(size: int = 128) -> Net:
    net = Net("mobilenet_v1", (1, size, size, 3), seed=1)
    x = net.conv("input", 32, 3, 2)
    for out, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                        (1024, 2), (1024, 1)):
        x = net.conv(net.dwconv(x, 3, stride), out, 1)
    return _head(net, x, 1000)


def mobilenet_v2(size: int = 128) -> Net:
    net = Net("mobilenet_v2", (1, size, size, 3), seed=2)
    x = net.conv("input", 32, 3, 2)
    x = net.conv(net.dwconv(x, 3, 1), 16, 1, act=None)
    channels = 16
    for expand, out, repeats, stride in ((6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 2, 1), (6, 160, 2, 2)):
        for r in range(repeats):
            y = net.conv(x, channels * expand, 1)
            y = net.dwconv(y, 3, stride if r == 0 else 1)
            y = net.conv(y, out, 1, act=None)
            x = net.add(x, y) if r > 0 else y
            channels = out
    x = net.conv(x, 640, 1)
    return _head(net, x, 1000)


def resnet(size: int = 96) -> Net:
    net = Net("resnet", (1, size, size, 3), seed=3)
    x = net.conv("input", 32, 3, 2)
    channels = 32
    for out, stride in ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2)):
        y = net.conv(net.conv(x, out, 3, stride), out, 3, act=None)
        shortcut = x if (stride, out) == (1, channels) else net.conv(x, out, 1, stride, act=None)
        x, channels = net.add(y, shortcut), out
    return _head(net, x, 100)


def depthwise_heavy(size: int = 96) -> Net:
    net = Net("depthwise_heavy", (1, size, size, 16), seed=4)
    x = net.conv("input", 64, 3, 2)
    for stride in (1, 1, 2, 1, 1, 2, 1, 1):
        x = net.dwconv(net.dwconv(x, 5, stride), 3, 1)
    x = net.conv(x, 128, 1)
    return _head(net, x, 10)


def dense_heavy() -> Net:
    net = Net("dense_heavy", (1, 8, 8, 16), seed=5)
    x = net.conv("input", 32, 3, 1)
    x = net.flatten(x)
    for width in (1024, 1024, 512, 512):
        x = net.fc(x, width, act=RELU6)
    net.fc(x, 10)
    return net


def _head(net: Net, x: str, classes: int) -> Net:
    net.fc(net.flatten(net.avgpool(x)), classes)
    return net


NETWORKS = {f.__name__: f for f in (mobilenet_v1, mobilenet_v2, resnet, depthwise_heavy, dense_heavy)}


def write(net: Net, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{net.name}.tflite"
    path.write_bytes(net.tflite())
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/int8_nets.py OUT_DIR")
    for build in NETWORKS.values():
        print(write(build(), Path(sys.argv[1])))
