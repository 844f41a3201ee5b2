"""Seeded INT8 TFLite networks at the sizes Ethos-U benchmarks use, for scripts/compare_vela.py: Vela and
`tvmc compile` read the same file.

Full-width MobileNetV1 and MobileNetV2-style nets at 128x128, a ResNet-style net at 96x96, a depthwise-heavy
and a dense-heavy one (scripts/make_tflite_models.py's TensorFlow-converted networks are smaller: width
0.25-0.35 at 64-96 pixels). Integer weights are drawn directly (per-channel int8, int32 biases, one
activation scale for every tensor: the values do not matter to cycle counts), so no float model or
calibration is involved. Serialized by scripts/make_tflite_models.py's flatbuffer writer (the `tflite` package).

    python scripts/int8_nets.py OUT_DIR     # writes NAME.tflite for every network
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

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

    def tflite(self) -> bytes:
        """The network as a TFLite flatbuffer, serialized by make_tflite_models.py's writer (`_FlatModel`)."""
        from make_tflite_models import _FlatModel, _reshape
        from tflite.ActivationFunctionType import ActivationFunctionType as Act
        from tflite.TensorType import TensorType as T

        m = _FlatModel()
        act = {None: Act.NONE, RELU6: Act.RELU6}
        ids = {"input": m.tensor("input", self.input_shape, T.INT8, scale=[ACT_SCALE], zero_point=[ACT_ZERO])}
        for i, layer in enumerate(self.layers):
            x = ids[layer.inputs[0]]
            if layer.op == "reshape":
                shape = self.tensors[layer.output].shape
                ids[layer.output] = _reshape(m, x, layer.output[1:], shape, T.INT8, [ACT_SCALE], [ACT_ZERO])
                continue
            y = ids[layer.output] = m.tensor(
                layer.output, self.tensors[layer.output].shape, T.INT8, scale=[ACT_SCALE], zero_point=[ACT_ZERO]
            )
            inputs = [x] + [ids[name] for name in layer.inputs[1:]]
            if layer.weights is not None:
                zeros = np.zeros(len(layer.w_scale), np.int64)
                inputs.append(
                    m.tensor(
                        f"w{i}",
                        layer.weights.shape,
                        T.INT8,
                        layer.weights,
                        layer.w_scale,
                        zeros,
                        3 if layer.op == "dwconv" else 0,
                    )
                )
                inputs.append(m.tensor(f"b{i}", layer.bias.shape, T.INT32, layer.bias, ACT_SCALE * layer.w_scale, zeros, 0))
            if layer.op in ("conv", "dwconv"):
                m.conv(inputs, [y], layer.stride, act[layer.act], depthwise=layer.op == "dwconv")
            elif layer.op == "fc":
                m.fully_connected(inputs, [y], act[layer.act])
            elif layer.op == "add":
                m.add(inputs, [y], Act.NONE)
            else:  # a global average pool: one window over the whole plane
                _, h, w, _ = self.tensors[layer.inputs[0]].shape
                m.global_average_pool(inputs, [y], h, w)
        return m.serialize([ids["input"]], [ids[self.output]], f"tvm_npu scripts/int8_nets.py: {self.name}")


def mobilenet_v1(size: int = 128) -> Net:
    net = Net("mobilenet_v1", (1, size, size, 3), seed=1)
    x = net.conv("input", 32, 3, 2)
    for out, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (1024, 2), (1024, 1)):
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
