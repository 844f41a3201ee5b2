import json

import numpy as np
import pytest

import tvm_npu

from conftest import run_tvmc


@pytest.mark.parametrize("command", [[], ["compile"], ["run"], ["validate"], ["report"], ["tune"]])
def test_help_is_complete(command):
    result = run_tvmc(*command, "--help")
    assert result.returncode == 0
    for flag in {
        "compile": [
            "--target",
            "--input-shapes",
            "--target-npu-sram-kib",
            "--target-npu-config",
            "-o",
            "--quantize",
            "--calibration-data",
            "--save-quantized",
            "--dump-offloads",
            "--allow-cpu-fallback",
            "--tuning-records",
            "--overflow-fix",
        ],
        "run": ["--inputs", "--outputs", "--fill-mode", "--print-time", "--repeat"],
        "validate": [
            "--device",
            "--report-json",
            "--min-cosine",
            "--atol-steps",
            "--per-layer",
            "--samples",
            "--reference-isa",
            "--max-exact-gmacs",
            "--overflow-fix",
        ],
        "report": ["--format", "--plot"],
        "tune": ["-o", "--target", "--trials", "--runner", "--rpc-tracker", "--rpc-key", "--seed", "--early-stopping", "--plot"],
    }.get(command[0] if command else "", []):
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
    result = run_tvmc(
        "run", package, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz", "--print-time", "--repeat", "3"
    )
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
