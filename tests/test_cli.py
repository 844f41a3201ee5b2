import json

import numpy as np
import pytest

import tvm_npu
from tvm_npu.errors import EXIT_BAD_INPUT

from conftest import make_conv_model, run_tvmc


def assert_one_line_error(result, *fragments):
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvmc: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("command", [[], ["compile"], ["run"], ["validate"], ["report"], ["tune"]])
def test_help_is_complete(command):
    result = run_tvmc(*command, "--help")
    assert result.returncode == 0
    for flag in {"compile": ["--target", "--input-shapes", "--target-npu-sram-kib", "--target-npu-config", "-o",
                             "--quantize", "--calibration-data", "--save-quantized", "--dump-offloads",
                             "--allow-cpu-fallback", "--tuning-records"],
                 "run": ["--inputs", "--outputs", "--fill-mode", "--print-time", "--repeat"],
                 "validate": ["--device", "--report-json", "--min-cosine", "--atol-steps", "--per-layer", "--samples"],
                 "report": ["--format", "--plot"],
                 "tune": ["-o", "--target", "--trials", "--runner", "--rpc-tracker", "--rpc-key", "--seed",
                          "--early-stopping", "--plot"]}.get(command[0] if command else "", []):
        assert flag in result.stdout
    if not command:
        assert "exit codes" in result.stdout and "report" in result.stdout


def test_compile_run_validate_end_to_end(conv_model, tmp_path):
    package = tmp_path / "conv.tar"
    result = run_tvmc("compile", "--no-quantize", "--target", "npu/micro", conv_model, "-o", package)
    assert result.returncode == 0, result.stderr
    assert "input  x: float32[1, 4, 8, 8]" in result.stdout

    x = np.random.default_rng(5).standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    result = run_tvmc("run", package, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz",
                      "--print-time", "--repeat", "3")
    assert result.returncode == 0, result.stderr
    header, values = result.stdout.strip().splitlines()[-2:]
    assert header.split() == ["mean", "(ms)", "median", "(ms)", "max", "(ms)", "min", "(ms)", "std", "(ms)"]
    stats = [float(v) for v in values.split()]
    assert stats[3] <= stats[1] <= stats[2] and stats[4] >= 0
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["y"], tvm_npu.load(package).run({"x": x})["y"])

    result = run_tvmc("validate", package, "--inputs", tmp_path / "in.npz", "--report-json", tmp_path / "v.json")
    assert result.returncode == 0, result.stdout + result.stderr
    first_line = result.stdout.splitlines()[0]
    assert first_line.startswith("reference: OpenVINO ")
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["outputs"][0]["cosine"] > 0.9999
    assert report["device"] in first_line


@pytest.mark.parametrize("mode, expected", [("zeros", 0.0), ("ones", None)])
def test_fill_modes(conv_package, tmp_path, mode, expected):
    result = run_tvmc("run", conv_package, "--fill-mode", mode, "--outputs", tmp_path / "o.npz")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "o.npz") as out:
        y = out["y"]
    if expected is not None:
        assert np.all(y == expected)
    else:
        assert y.max() > 0  # ones through a random conv and ReLU leave positive activations


def test_missing_model(tmp_path):
    assert_one_line_error(run_tvmc("compile", tmp_path / "absent.onnx"), "does not exist")


def test_non_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 20)
    assert_one_line_error(run_tvmc("compile", path, "-o", tmp_path / "m.tar"), "not a valid ONNX model")
    assert not (tmp_path / "m.tar").exists()


def test_truncated_onnx(conv_model, tmp_path):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(conv_model.read_bytes()[:150])
    assert_one_line_error(run_tvmc("compile", path, "-o", tmp_path / "m.tar"), "truncated.onnx")
    assert not (tmp_path / "m.tar").exists()


def test_unknown_preset(conv_model):
    assert_one_line_error(run_tvmc("compile", "--target", "npu/huge", conv_model), "unknown NPU preset 'huge'")


def test_bad_input_shapes_string(conv_model):
    assert_one_line_error(run_tvmc("compile", "--input-shapes", "x:[1,four]", conv_model), "--input-shapes")


def test_dynamic_model_needs_input_shapes(tmp_path):
    model = make_conv_model(tmp_path / "dyn.onnx", batch="batch")
    assert_one_line_error(run_tvmc("compile", model), "'x'", '--input-shapes "x:[1,4,8,8]"')


def test_invalid_hardware_override(conv_model):
    assert_one_line_error(run_tvmc("compile", "--target-npu-sram-kib", "0", conv_model), "sram_kib")


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"x": np.zeros((1, 4, 8, 8), np.float64)}, "float64[1, 4, 8, 8] but the model takes float32[1, 4, 8, 8]"),
        ({"x": np.zeros((1, 4, 9, 8), np.float32)}, "but the model takes float32[1, 4, 8, 8]"),
        ({"z": np.zeros((1, 4, 8, 8), np.float32)}, "missing x; unexpected z"),
        ({"x": np.zeros((1, 4, 8, 8), np.float32), "extra": np.zeros(1)}, "unexpected extra"),
    ],
)
def test_run_rejects_wrong_inputs(conv_package, tmp_path, arrays, fragment):
    np.savez(tmp_path / "in.npz", **arrays)
    result = run_tvmc("run", conv_package, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "o.npz")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "o.npz").exists()


def test_run_refuses_pickled_npz(conv_package, tmp_path):
    np.savez(tmp_path / "in.npz", x=np.array([{"evil": 1}], dtype=object))
    assert_one_line_error(run_tvmc("run", conv_package, "--inputs", tmp_path / "in.npz"), "in.npz")
