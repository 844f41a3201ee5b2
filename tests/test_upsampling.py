"""Upsampling as DBNet/FPN heads do it, end to end: an FP32 model with ConvTranspose (bias Add and
BatchNorm after it, as Paddle exports it) and nearest and bilinear Resize, quantized by NNCF, lands
on npu.conv2d_transpose and npu.resize and validates against OpenVINO. And npu.resize against ONNX's
reference evaluator: nearest equal on every element, bilinear equal except at half-step ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_npu
from tvm_npu.conformance import examples, prepare
from tvm_npu.onnx_builder import Constant, quantized_operator, random_activation
from tvm_npu.registry import kernel
from tvm_npu.validate import exact_reference_outputs, validate


def make_upsampling_head(path: Path) -> Path:
    """x -> Conv -> BN -> ReLU -> ConvTranspose(2x2, stride 2) -> Add -> BN -> ReLU -> Resize nearest 2x
    (asymmetric, floor: PP-OCR's FPN) -> Conv 1x1 -> Resize bilinear 2x (half_pixel) -> Conv 1x1."""
    rng = np.random.default_rng(3)
    inits = {}

    def const(name, array):
        inits[name] = numpy_helper.from_array(np.asarray(array, np.float32), name)
        return name

    def norm(x, channels, name):
        stats = [
            rng.uniform(0.5, 1.5, channels),
            rng.normal(0, 0.1, channels),
            rng.normal(0, 0.1, channels),
            rng.uniform(0.5, 1.5, channels),
        ]
        return helper.make_node("BatchNormalization", [x, *(const(f"{name}_{i}", v) for i, v in enumerate(stats))], [name])

    nodes = [
        helper.make_node("Conv", ["x", const("w1", rng.normal(0, 0.3, (6, 4, 3, 3)))], ["c1"], pads=[1, 1, 1, 1]),
        norm("c1", 6, "n1"),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node(
            "ConvTranspose", ["r1", const("wt", rng.normal(0, 0.3, (6, 5, 2, 2)))], ["t"], kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Add", ["t", const("bt", rng.normal(0, 0.1, (1, 5, 1, 1)))], ["tb"]),
        norm("tb", 5, "n2"),
        helper.make_node("Relu", ["n2"], ["r2"]),
        helper.make_node(
            "Resize",
            ["r2", "", const("up", [1, 1, 2, 2])],
            ["near"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        helper.make_node("Conv", ["near", const("w2", rng.normal(0, 0.3, (3, 5, 1, 1)))], ["c2"]),
        helper.make_node("Resize", ["c2", "", "up"], ["smooth"], mode="linear", coordinate_transformation_mode="half_pixel"),
        helper.make_node("Conv", ["smooth", const("w3", rng.normal(0, 0.3, (2, 3, 1, 1)))], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "upsampling_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 48, 48])],
        list(inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def upsampling_package(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upsampling")
    result = tvm_npu.compile(make_upsampling_head(folder / "head.onnx"), output=folder / "head.tar", target="npu/micro")
    return result.package_path, result.metadata.extra["operators"]


def test_conv_transpose_and_resize_land_on_the_npu(upsampling_package):
    _, operators = upsampling_package
    npu = [row["kernel"] for row in operators if row["runs_on"] == "npu"]
    assert npu.count("npu.conv2d_transpose") == 1 and npu.count("npu.resize") == 2, operators
    cpu = {row["ops"][0] for row in operators if row["runs_on"] == "cpu"} - {"relax.quantize", "relax.dequantize"}
    assert not cpu & {"relax.nn.conv2d_transpose", "relax.image.resize2d"}, cpu


def test_upsampling_head_validates_against_openvino(upsampling_package):
    package, _ = upsampling_package
    x = {"x": np.random.default_rng(4).standard_normal((1, 4, 6, 6)).astype(np.float32)}
    report = validate(tvm_npu.load(package), x)
    assert report.passed, report.to_dict()


def _against_onnx_reference(example_name: str):
    """(ours, the reference evaluator's output, its real value in output steps before rounding)."""
    resize = kernel("npu.resize")
    (example,) = [e for e in examples(resize, 0) if e.name == example_name]
    case = prepare(resize, example)
    (ours,) = [case.expected]  # the kernel's reference: bit-exact with its PrimFunc (conformance)
    spec = _exact(example.model, example.inputs)["y"]
    real = _exact(_with_output(example.model, "result"), example.inputs)["result"]
    scale = next(numpy_helper.to_array(i) for i in example.model.graph.initializer if i.name == "y_scale")
    return ours, spec, real.astype(np.float64) / float(scale)


def _exact(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    (outputs,) = exact_reference_outputs(model.SerializeToString(), [inputs])
    return outputs


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    probed.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return probed


@pytest.mark.parametrize(
    "name", ["nearest_2x_asymmetric_floor_copy", "nearest_3x_half_pixel_round_prefer_ceil", "nearest_down_align_corners"]
)
def test_nearest_resize_equals_onnx_reference(name):
    ours, spec, _ = _against_onnx_reference(name)
    np.testing.assert_array_equal(ours, spec)


@pytest.mark.parametrize("name", ["bilinear_2x_half_pixel", "bilinear_align_corners_1.5x"])
def test_bilinear_resize_differs_from_onnx_reference_only_at_ties(name):
    ours, spec, steps = _against_onnx_reference(name)
    differ = ours != spec
    assert np.all(np.abs(ours.astype(np.int64) - spec) <= 1)
    at_tie = np.abs(np.abs(steps - np.floor(steps)) - 0.5) < 1e-4
    assert np.all(at_tie[differ]), f"{np.count_nonzero(differ & ~at_tie)} elements differ away from a tie"
    assert differ.sum() <= at_tie.sum()


def test_unsupported_resize_mode_runs_on_the_cpu_with_its_reason(tmp_path):
    """A cubic Resize between QuantizeLinear/DequantizeLinear compiles, runs on the CPU, and the offload
    report names the mode."""
    example = quantized_operator(
        "cubic",
        "Resize",
        [random_activation(np.random.default_rng(0), (1, 2, 3, 4)), Constant(np.zeros(0)), Constant(np.array([1, 1, 2, 2]))],
        np.random.default_rng(0),
        mode="cubic",
    )
    onnx.save(example.model, tmp_path / "cubic.onnx")
    result = tvm_npu.compile(tmp_path / "cubic.onnx", output=tmp_path / "cubic.tar", target="npu/micro")
    (row,) = [row for row in result.metadata.extra["operators"] if row["ops"] == ["relax.image.resize2d"]]
    assert row["runs_on"] == "cpu" and row["reason"] == "attribute: Resize mode cubic (the NPU resizes nearest and linear)"
    out = tvm_npu.load(result.package_path).run(example.inputs)
    assert out["y"].shape == (1, 2, 6, 8)
