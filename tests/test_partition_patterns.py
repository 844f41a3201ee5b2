"""QDQ structures real quantized models have that one-operator examples do not: ResNet-50's residual
add is an ONNX Sum reading a DequantizeLinear shared with the next conv (NNCF), and DenseNet's
BatchNorm + Mul + Add + ReLU follows a concat NNCF leaves in float. Each lands on its NPU kernel,
bit-exact against the kernel's reference on the integer tensors the model computes, and agrees with
OpenVINO on the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_npu
from tvm_npu.frontend import import_onnx, load_onnx
from tvm_npu.partition import partition
from tvm_npu.registry import Composite, kernel
from tvm_npu.validate import validate


class _Graph:
    """A QDQ graph under construction: integer inputs, int8 weights, per-tensor QuantizeLinear."""

    def __init__(self, rng):
        self.rng, self.nodes, self.inits = rng, [], []

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op_type, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def dq(self, x, scale, zero_point, dtype="uint8"):
        return self.node(
            "DequantizeLinear",
            [x, self.const(f"{x}_s", np.float32(scale)), self.const(f"{x}_z", np.array(zero_point, dtype))],
            f"{x}_dq",
        )

    def q(self, x, scale, zero_point, dtype="uint8"):
        return self.node(
            "QuantizeLinear",
            [x, self.const(f"{x}_qs", np.float32(scale)), self.const(f"{x}_qz", np.array(zero_point, dtype))],
            f"{x}_q",
        )

    def conv(self, x, channels, name):
        w = self.dq(
            self.const(f"{name}_w", self.rng.integers(-127, 128, (channels, channels, 3, 3)).astype(np.int8)), 0.01, 0, "int8"
        )
        return self.node(
            "Conv", [x, w, self.const(f"{name}_b", self.rng.normal(0, 0.2, channels).astype(np.float32))], name, pads=[1, 1, 1, 1]
        )

    def save(self, path: Path, inputs, outputs) -> Path:
        graph = helper.make_graph(self.nodes, path.stem, inputs, outputs, self.inits)
        model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, path)
        return path


def _uint8(name, shape, dtype=TensorProto.UINT8):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def make_residual_sum_model(path: Path) -> Path:
    """NNCF's ResNet block tail: conv1 -> Q -> DQ (shared by conv2 and the Sum); conv2 -> Q -> DQ;
    Sum -> ReLU -> Q. The integer conv outputs are extra graph outputs, to check the Sum exactly."""
    g, shape = _Graph(np.random.default_rng(1)), (1, 6, 9, 7)
    q1 = g.q(g.conv(g.dq("x", 0.02, 128), 6, "conv1"), 0.05, 128)
    shared = g.dq(q1, 0.05, 128)
    q2 = g.q(g.conv(shared, 6, "conv2"), 0.07, 120)
    total = g.node("Sum", [shared, g.dq(q2, 0.07, 120)], "sum")
    g.q(g.node("Relu", [total], "relu"), 0.06, 0)
    return g.save(path, [_uint8("x", shape)], [_uint8(name, shape) for name in ("relu_q", q1, q2)])


def make_concat_affine_model(path: Path) -> Path:
    """DenseNet's dense block: Concat(Concat(a, b), c) in float (differently quantized parts), each concat
    followed by BatchNorm -> Mul -> Add (per-channel constants) -> ReLU -> Q. `c` is int8 among uint8 parts
    (DenseNet's first block: a uint8 max pool beside int8 convolutions)."""
    g = _Graph(np.random.default_rng(2))
    parts = {"a": (3, 0.03, 5), "b": (4, 0.05, 0), "c": (2, 0.02, -17)}
    inner = g.node("Concat", [g.dq("a", *parts["a"][1:]), g.dq("b", *parts["b"][1:])], "inner", axis=1)
    outer = g.node("Concat", [inner, g.dq("c", *parts["c"][1:], "int8")], "outer", axis=1)
    for x, channels, scale in ((inner, 7, 0.04), (outer, 9, 0.05)):
        rng = g.rng
        stats = [
            rng.uniform(0.5, 1.5, channels),
            rng.normal(0, 0.2, channels),
            rng.normal(0, 0.2, channels),
            rng.uniform(0.5, 2, channels),
        ]
        norm = g.node(
            "BatchNormalization", [x, *(g.const(f"{x}_bn{i}", v.astype(np.float32)) for i, v in enumerate(stats))], f"{x}_bn"
        )
        gain = rng.uniform(0.5, 1.5, (channels, 1, 1)).astype(np.float32)
        scaled = g.node("Mul", [norm, g.const(f"{x}_mul_k", gain)], f"{x}_mul")
        offset = rng.normal(0, 0.2, (channels, 1, 1)).astype(np.float32)
        shifted = g.node("Add", [scaled, g.const(f"{x}_add_k", offset)], f"{x}_add")
        g.q(g.node("Relu", [shifted], f"{x}_relu"), scale, 0)
    inputs = [
        _uint8(name, (1, channels, 5, 6), TensorProto.INT8 if name == "c" else TensorProto.UINT8)
        for name, (channels, _, _) in parts.items()
    ]
    return g.save(path, inputs, [_uint8(f"{x}_relu_q", (1, c, 5, 6)) for x, c in ((inner, 7), (outer, 9))])


def _composites(path: Path, name: str) -> dict[str, object]:
    """KernelParams of every `name` composite, by the ONNX node its output quantize holds."""
    mod, _ = partition(import_onnx(load_onnx(path)).mod)
    found = {}
    for func in mod.functions.values():
        if func.attrs and "Composite" in func.attrs and str(func.attrs["Composite"]) == name:
            comp = Composite(func)
            found[comp.onnx_name()] = kernel(name).params(comp)
    return found


def _assert_validates(package: Path, inputs: dict, reference_isa: str | None):
    """`tvmc validate`'s verdict against OpenVINO CPU on the same file (on the int8 path `reference_isa` picks)."""
    report = validate(tvm_npu.load(package), [inputs], device="CPU", reference_isa=reference_isa)
    assert report.passed, str(report)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("patterns")

    def build(make):
        path = make(folder / f"{make.__name__}.onnx")
        result = tvm_npu.compile(path, output=folder / f"{make.__name__}.tar", target="npu/micro")
        return path, result.package_path, result.metadata.extra["operators"]

    return {"sum": build(make_residual_sum_model), "affine": build(make_concat_affine_model)}


def test_residual_sum_lands_on_elementwise_bit_exact(compiled, reference_isa):
    path, package, operators = compiled["sum"]
    assert [row["kernel"] for row in operators if row["runs_on"] == "npu"] == ["npu.conv2d", "npu.conv2d", "npu.elementwise"]
    assert all(row["ops"][0] in ("relax.quantize", "relax.dequantize") for row in operators if row["runs_on"] == "cpu")
    (params,) = _composites(path, "npu.elementwise").values()
    x = {"x": np.random.default_rng(5).integers(0, 256, (1, 6, 9, 7), dtype=np.uint8)}
    out = tvm_npu.load(package).run(x)
    expected = kernel("npu.elementwise").reference(params, [out["conv1_q"], out["conv2_q"]])
    np.testing.assert_array_equal(out["relu_q"], expected)
    _assert_validates(package, x, reference_isa)


def test_concat_batchnorm_lands_on_channel_affine_bit_exact(compiled, reference_isa):
    path, package, operators = compiled["affine"]
    assert [row["kernel"] for row in operators if row["runs_on"] == "npu"] == ["npu.channel_affine"] * 2
    concats = [row for row in operators if row["ops"] == ["relax.concat"]]
    assert len(concats) == 2 and all(row["reason"].startswith("unsupported op") for row in concats)  # int8 copies
    params = _composites(path, "npu.channel_affine")
    rng = np.random.default_rng(6)
    x = {name: rng.integers(0, 256, (1, c, 5, 6), dtype=np.uint8) for name, c in (("a", 3), ("b", 4))}
    x["c"] = rng.integers(-128, 128, (1, 2, 5, 6), dtype=np.int8)
    out = tvm_npu.load(package).run(x)
    affine = kernel("npu.channel_affine")
    inner = np.concatenate([x["a"], x["b"]], axis=1)
    np.testing.assert_array_equal(out["inner_relu_q"], affine.reference(params["inner_add"], [inner]))
    outer = np.concatenate([(inner.astype(np.int16) - 128).astype(np.int8), x["c"]], axis=1)  # int8 throughout
    np.testing.assert_array_equal(out["outer_relu_q"], affine.reference(params["outer_add"], [outer]))
    _assert_validates(package, x, reference_isa)
