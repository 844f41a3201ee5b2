"""The nine real architectures that ship in the onnx wheel, end to end through `tvmc`.

These run in FP32 (`--no-quantize`): the host-execution baseline. Their shipped weights are constants, so
matching the expected outputs proves little on its own; the same architectures with seeded random weights are checked against
OpenVINO CPU (FP32) on the same modified model.
"""

import json

import numpy as np
import onnx
import pytest

from tvm_npu.zoo import LIGHT_MODELS, light_model_path, light_reference, randomize_weights

from conftest import run_tvmc

# onnx's own backend test tolerances for these models (densenet121 needs 2e-3 there too).
RTOL = {"densenet121": 2e-3}


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_expected_output(name, tmp_path):
    inputs, expected = light_reference(name)
    np.savez(tmp_path / "in.npz", **inputs)
    package = tmp_path / f"{name}.tar"
    result = run_tvmc("compile", "--target", "npu", "--no-quantize", light_model_path(name), "-o", package)
    assert result.returncode == 0, result.stderr
    result = run_tvmc("run", package, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "out.npz") as outputs:
        assert sorted(outputs.files) == sorted(expected)
        for out_name, want in expected.items():
            np.testing.assert_allclose(outputs[out_name], want, rtol=RTOL.get(name, 1e-3), atol=1e-7)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_randomized_light_model_matches_openvino(name, tmp_path):
    model = randomize_weights(onnx.load(light_model_path(name)), seed=0)
    onnx.save(model, tmp_path / f"{name}_random.onnx")
    inputs, _ = light_reference(name)
    np.savez(tmp_path / "in.npz", **inputs)
    result = run_tvmc(
        "validate",
        tmp_path / f"{name}_random.onnx",
        "--inputs",
        tmp_path / "in.npz",
        "--no-quantize",
        "--device",
        "CPU",
        "--report-json",
        tmp_path / "report.json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["device"] == "CPU" and report["properties"] == {"INFERENCE_PRECISION_HINT": "f32"}
    for output in report["outputs"]:
        assert output["passed"] and output["cosine"] > 0.9999
        assert output["top1_agreement"] == 1.0
