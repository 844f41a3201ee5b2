"""INT8 on a model trained on real data: accuracy after `tvmc compile --quantize`, and the
same network quantized by onnxruntime's quantizer (ReLU folded into Q, int32 bias)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest

import tvm_npu

from conftest import run_tvmc, script_module


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The trained FP32 model, its calibration images (training split) and the held-out split."""
    train_digits = script_module("train_digits")
    model, (train_x, _, test_x, test_y) = train_digits.train(seed=0)
    folder = tmp_path_factory.mktemp("digits")
    onnx.save(train_digits.to_onnx(model), folder / "digits_cnn.onnx")
    np.savez(folder / "calibration.npz", image=train_x[:200])
    fp32_accuracy = float(np.mean(model.forward(test_x)[0].argmax(1) == test_y))
    return folder, test_x, test_y, fp32_accuracy


def _accuracy(package: Path, images: np.ndarray, labels: np.ndarray) -> float:
    compiled = tvm_npu.load(package)
    predictions = [compiled.run({"image": image[None]})["logits"].argmax() for image in images]
    return float(np.mean(np.array(predictions) == labels))


def test_digits_int8_accuracy_within_one_point_of_fp32(digits):
    folder, test_x, test_y, fp32_accuracy = digits
    package = folder / "digits_int8.tar"
    result = run_tvmc(
        "compile",
        folder / "digits_cnn.onnx",
        "--quantize",
        "--calibration-data",
        folder / "calibration.npz",
        "--save-quantized",
        folder / "digits_qdq.onnx",
        "-o",
        package,
    )
    assert result.returncode == 0, result.stderr
    assert "accuracy is unknown" not in result.stdout  # real calibration data, no warning
    operators = tvm_npu.load(package).metadata.extra["operators"]
    assert sum(row["kernel"] == "npu.conv2d" for row in operators) == 2
    int8_accuracy = _accuracy(package, test_x, test_y)
    print(f"digits: FP32 {fp32_accuracy:.2%}, INT8 {int8_accuracy:.2%} on {len(test_y)} held-out images")
    assert fp32_accuracy > 0.95
    assert int8_accuracy >= fp32_accuracy - 0.01
    np.savez(folder / "validation.npz", image=test_x[:1])
    validation = run_tvmc("validate", package, "--inputs", folder / "validation.npz", "--per-layer")
    assert validation.returncode == 0, validation.stdout + validation.stderr
    print(validation.stdout)


def test_onnxruntime_quantized_model_matches_openvino_in_steps(digits, tmp_path):
    """onnxruntime's QDQ style: asymmetric int8 activations with ReLU folded into Q, int32 bias."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    folder, test_x, _, _ = digits

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.samples = iter({"image": x[None]} for x in np.load(folder / "calibration.npz")["image"][:100])

        def get_next(self):
            return next(self.samples, None)

    qdq = tmp_path / "digits_ort_qdq.onnx"
    quantization.quantize_static(
        str(folder / "digits_cnn.onnx"),
        str(qdq),
        Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        per_channel=True,
        activation_type=quantization.QuantType.QInt8,
        weight_type=quantization.QuantType.QInt8,
    )
    model = onnx.load(qdq)
    int32_constants = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32}
    assert any(n.op_type == "DequantizeLinear" and n.input[0] in int32_constants for n in model.graph.node)
    package = tmp_path / "digits_ort.tar"
    tvm_npu.compile(qdq, output=package, target="npu/micro")
    compiled = tvm_npu.load(package)
    assert sum(row["kernel"] == "npu.conv2d" for row in compiled.metadata.extra["operators"]) == 2

    (dq_logits,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "logits"]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    step = float(inits[dq_logits.input[1]])
    core = ov.Core()
    reference = core.compile_model(core.read_model(str(qdq)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    steps = np.concatenate(
        [
            np.abs(compiled.run({"image": x[None]})["logits"] - reference({"image": x[None]})[0]).ravel() / step
            for x in test_x[:100]
        ]
    )
    steps = np.round(steps)
    print(f"onnxruntime-quantized digits: steps histogram {dict(zip(*np.unique(steps, return_counts=True)))}")
    assert np.mean(steps <= 2) >= 0.999


def test_shape_one_quantization_parameters_are_per_tensor(tmp_path):
    """onnxruntime may write per-tensor scales as shape-(1,) arrays; a max pool between such QDQ
    pairs must still partition (regression: float() of a (1,) array raised)."""
    from onnx import TensorProto, helper, numpy_helper

    params = {"s": np.array([0.05], np.float32), "z": np.array([3], np.int8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("MaxPool", ["xd"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"]),
        helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    tvm_npu.compile(path, output=tmp_path / "pool.tar")
    compiled = tvm_npu.load(tmp_path / "pool.tar")
    assert any(row["kernel"] == "npu.pool" for row in compiled.metadata.extra["operators"])
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    expected = np.clip(np.round(x / 0.05) + 3, -128, 127)
    expected = ((expected - 3) * 0.05).reshape(1, 4, 4, 2, 4, 2).max(axis=(3, 5))
    np.testing.assert_allclose(compiled.run({"x": x})["y"], expected, atol=1e-6)
