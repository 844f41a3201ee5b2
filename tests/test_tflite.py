"""INT8 TFLite input: files from two producers (scripts/make_tflite_models.py: its own flatbuffer writer, and
TensorFlow's converter, whose files are committed in tests/data/tflite/) compile onto the NPU and agree with
TFLite's own interpreter; `tvmc validate` runs that interpreter on the original file.

Fast: the tiny network of both producers. Slow (-m slow): every network of both producers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import run_tvmc, script_module

import tvm_npu
from tvm_npu.tflite_onnx import embedded_tflite, tflite_to_onnx
from tvm_npu.tflite_reference import INTERPRETER, interpreter_outputs, openvino_outputs
from tvm_npu.validate import DEFAULT_ATOL_STEPS, output_quantization, reference_properties, validate

pytest.importorskip("ai_edge_litert", reason="TFLite's interpreter (ai-edge-litert, the test extra) is not installed")

makers = script_module("make_tflite_models")
PRODUCERS = ("writer", "tf")
SAMPLES = 4


def _tflite(name: str, producer: str, folder: Path) -> Path:
    """The writer's file is made on the fly (numpy + tflite only); TensorFlow's is the committed one."""
    if producer == "tf":
        return makers.path(name, "tf")
    return makers.make(name, "writer", out=folder)


def _samples(package: Path, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Integers over the input's whole int8 range."""
    spec = tvm_npu.load(package).inputs[0]
    rng = np.random.default_rng(seed)
    return [{spec.name: rng.integers(-128, 128, spec.shape).astype(spec.dtype)} for _ in range(SAMPLES)]


@pytest.fixture(scope="session")
def tiny_packages(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """producer -> (.tflite, compiled package) for the tiny network."""
    folder = tmp_path_factory.mktemp("tflite_tiny")
    packages = {}
    for producer in PRODUCERS:
        source = _tflite("tiny", producer, folder)
        package = tvm_npu.compile(source, output=folder / f"{producer}.tar", target="npu/micro").package_path
        packages[producer] = (source, package)
    return packages


def _step_differences(source: Path, package: Path) -> np.ndarray:
    samples = _samples(package)
    ours = [tvm_npu.load(package).run(sample) for sample in samples]
    theirs = interpreter_outputs(source.read_bytes(), samples)
    return np.concatenate([np.abs(o[k].astype(int) - t[k].astype(int)).ravel() for o, t in zip(ours, theirs) for k in t])


@pytest.mark.parametrize("producer", PRODUCERS)
def test_tiny_network_runs_entirely_on_the_npu_within_two_steps_of_tflite(tiny_packages, producer):
    source, package = tiny_packages[producer]
    operators = tvm_npu.load(package).metadata.extra["operators"]
    assert [row["name"] for row in operators if row["runs_on"] != "npu"] == []
    diff = _step_differences(source, package)
    assert diff.max() <= DEFAULT_ATOL_STEPS, f"{producer}: up to {diff.max()} steps from TFLite's interpreter"


@pytest.mark.parametrize("producer", PRODUCERS)
def test_conversion_to_qdq_onnx_computes_what_the_tflite_file_does(tiny_packages, producer):
    """ONNX Runtime on the converted model against TFLite's reference kernels, in real values: a layout, axis or
    parameter slip in the conversion leaves no resemblance; the two runtimes' rounding (a pooled value's tie, which
    the fully-connected layer after it amplifies to a few output steps) keeps the cosine near 1."""
    source, package = tiny_packages[producer]
    converted = tflite_to_onnx(source.read_bytes(), source)
    assert embedded_tflite(converted.SerializeToString()) == source.read_bytes()
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    samples = _samples(package)
    theirs = interpreter_outputs(source.read_bytes(), samples)
    (name,) = theirs[0]
    zero = output_quantization(converted.SerializeToString())[name][1]
    assert _cosine([session.run([name], sample)[0] for sample in samples], [t[name] for t in theirs], zero) > 0.99


def _cosine(got: list[np.ndarray], expected: list[np.ndarray], zero_point: int) -> float:
    """Cosine similarity of two runs' outputs in (unscaled) real values."""
    a, b = (np.concatenate([v.ravel() for v in values]).astype(float) - zero_point for values in (got, expected))
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_validate_compares_a_tflite_package_with_tflites_interpreter(tiny_packages):
    source, package = tiny_packages["tf"]
    report = validate(tvm_npu.load(package), _samples(package))
    assert report.reference == INTERPRETER
    assert report.passed, str(report)


def test_openvino_reads_the_original_tflite_file_as_the_fallback_reference(tiny_packages):
    """OpenVINO's TFLite frontend on the writer's file: the same network (in real values; OpenVINO's own rounding
    of the pooled tie is a few output steps off the interpreter here, where our package is within two)."""
    source, package = tiny_packages["writer"]
    samples = _samples(package)
    theirs = interpreter_outputs(source.read_bytes(), samples)
    got = openvino_outputs(source.read_bytes(), samples, "CPU", reference_properties("CPU"))
    (name,) = theirs[0]
    zero = output_quantization(tvm_npu.load(package).onnx_bytes)[name][1]
    assert _cosine([g[name] for g in got], [t[name] for t in theirs], zero) > 0.99


def test_tvmc_compiles_and_validates_a_tflite_file_by_its_format(tiny_packages, tmp_path):
    source, _ = tiny_packages["tf"]
    done = run_tvmc("validate", source, "--model-format", "tflite", "--target", "npu/micro", "--fill-mode", "random")
    assert done.returncode == 0, done.stderr
    assert f"reference: {INTERPRETER}" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("producer", PRODUCERS)
@pytest.mark.parametrize("name", [n for n in makers.NETWORKS if n != "tiny"])
def test_every_network_compiles_onto_the_npu_and_validates_against_tflite(name, producer, tmp_path):
    source = _tflite(name, producer, tmp_path)
    package = tvm_npu.compile(source, output=tmp_path / "model.tar", target="npu").package_path
    model = tvm_npu.load(package)
    assert [row["name"] for row in model.metadata.extra["operators"] if row["runs_on"] != "npu"] == []
    report = validate(model, _samples(package))
    assert report.reference == INTERPRETER
    assert report.passed, str(report)


def test_readme_table_is_the_committed_results():
    """README's TFLite table is scripts/tflite_networks.py's table of results/tflite_networks.json."""
    networks = script_module("tflite_networks")
    rows = json.loads(networks.RESULTS.read_text())["rows"]
    assert {r["producer"] for r in rows} == set(PRODUCERS)
    assert networks.table(rows) in (Path(__file__).resolve().parent.parent / "README.md").read_text()
