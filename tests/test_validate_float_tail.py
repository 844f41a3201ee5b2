"""`tvmc validate` on float outputs of quantized models: judged where the model is integer.

A tiny QDQ model ends in a float tail (Conv > Sigmoid after its last QuantizeLinear/DequantizeLinear),
with a bias that makes every probability near 1e-5, as a text detector's map is on an image without
text: cosine similarity says nothing there. The test-only faults: our side compiled from a model
whose Sigmoid input is scaled by 1.05 (a wrong float tail), and the conv kernel's off-by-one
rounding from test_validate (a one-step rounding bug in an NPU kernel).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_npu
from tvm_npu import cli
from tvm_npu.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_VALIDATION_FAILED
from tvm_npu.frontend import TensorSpec, parse_input_shapes
from tvm_npu.runtime import ImageFill, make_inputs
from tvm_npu.validate import float_tails, validate, wilson_interval

from conftest import run_tvmc, script_module
from test_validate import break_conv_kernel, break_kernel, kernels_of

SIGMOID_BIAS = -11.0  # every probability near exp(-11) = 1.7e-5


def sigmoid_tail_model(
    path: Path, sigmoid_input_scale: float | None = None, output_step: float | None = None, size: int = 16
) -> Path:
    """x -> Q/DQ -> Conv(4->8) + ReLU -> Q/DQ -> Conv(8->1) + bias -> Sigmoid: a QDQ model whose output
    is float. `sigmoid_input_scale` inserts a Mul before the Sigmoid (the wrong tail). `output_step`
    quantizes the logits (step 0.1) and the Sigmoid (uint8, this step) instead: a quantized output, as
    a quantizer calibrated on such maps makes it (PP-OCRv4's detector: a step of about 1e-6). `size`: H = W."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.float32(1 / 255), "x_scale"),
        numpy_helper.from_array(np.uint8(0), "x_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (8, 4, 3, 3)).astype(np.int8), "w1"),
        numpy_helper.from_array(rng.uniform(0.002, 0.01, 8).astype(np.float32), "w1_scale"),
        numpy_helper.from_array(np.zeros(8, np.int8), "w1_zero"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(np.float32(0.01), "h_scale"),
        numpy_helper.from_array(np.uint8(0), "h_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (1, 8, 3, 3)).astype(np.int8), "w2"),
        numpy_helper.from_array(np.float32(0.002), "w2_scale"),
        numpy_helper.from_array(np.int8(0), "w2_zero"),
        numpy_helper.from_array(np.full(1, SIGMOID_BIAS, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w1", "w1_scale", "w1_zero"], ["w1_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w1_dq", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["h_relu"]),
        helper.make_node("QuantizeLinear", ["h_relu", "h_scale", "h_zero"], ["h_q"]),
        helper.make_node("DequantizeLinear", ["h_q", "h_scale", "h_zero"], ["h_dq"]),
        helper.make_node("DequantizeLinear", ["w2", "w2_scale", "w2_zero"], ["w2_dq"]),
        helper.make_node("Conv", ["h_dq", "w2_dq", "b2"], ["logits"], pads=[1, 1, 1, 1]),
    ]
    if sigmoid_input_scale is not None:
        inits.append(numpy_helper.from_array(np.float32(sigmoid_input_scale), "tail_scale"))
        nodes.append(helper.make_node("Mul", ["logits", "tail_scale"], ["logits_scaled"]))
    if output_step is not None:
        inits += [
            numpy_helper.from_array(np.float32(0.1), "l_scale"),
            numpy_helper.from_array(np.int8(0), "l_zero"),
            numpy_helper.from_array(np.float32(output_step), "p_scale"),
            numpy_helper.from_array(np.uint8(0), "p_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", [nodes[-1].output[0], "l_scale", "l_zero"], ["l_q"]),
            helper.make_node("DequantizeLinear", ["l_q", "l_scale", "l_zero"], ["l_dq"]),
            helper.make_node("Sigmoid", ["l_dq"], ["p"]),
            helper.make_node("QuantizeLinear", ["p", "p_scale", "p_zero"], ["p_q"]),
            helper.make_node("DequantizeLinear", ["p_q", "p_scale", "p_zero"], ["probability"]),
        ]
    else:
        nodes.append(helper.make_node("Sigmoid", [nodes[-1].output[0]], ["probability"]))
    graph = helper.make_graph(
        nodes,
        "sigmoid_tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, size, size])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1, 1, size, size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def sigmoid_tail(tmp_path_factory) -> tuple[Path, Path]:
    """(QDQ ONNX, package) of the correct model."""
    folder = tmp_path_factory.mktemp("sigmoid_tail")
    source = sigmoid_tail_model(folder / "sigmoid_tail.onnx")
    package = folder / "sigmoid_tail.tar"
    tvm_npu.compile(source, output=package, target="npu", quantize_model=False)
    return source, package


def samples(model, count: int = 3) -> list[dict[str, np.ndarray]]:
    return [make_inputs(model.inputs, "random", seed) for seed in range(count)]


def test_float_tail_is_found_after_the_last_quantized_tensor(sigmoid_tail):
    source, _ = sigmoid_tail
    (tail,) = float_tails(onnx.load(source)).values()
    assert tail.output == "probability" and tail.frontier == ("h_dq",) and tail.ops == "Conv > Sigmoid"


def test_near_constant_sigmoid_output_passes_judged_where_integer(sigmoid_tail):
    _, package = sigmoid_tail
    model = tvm_npu.load(package)
    report = validate(model, samples(model), device="CPU")
    print(report)
    (output,) = report.outputs
    assert report.passed, str(report)
    assert output.criterion == "float tail" and output.tail.frontier[0].name == "h_dq"
    assert output.tail.within_tolerance == 1.0 and output.tail.ours_tail_error < 1e-9 and output.tail.ours_tail_within == 1.0
    assert float(np.max(model.run(samples(model)[0])["probability"])) < 1e-3  # near constant: cosine is no verdict
    assert report.local and all(c.passed for c in report.local) and {c.name for c in report.local} >= {"x_dq", "h_dq"}
    text = str(report)
    assert "probability: last quantized tensors vs reference: h_dq" in text and "float tail Conv > Sigmoid" in text


def test_wrong_float_tail_fails_though_its_cosine_is_high(sigmoid_tail, tmp_path):
    """Our package computes Sigmoid(1.05 x); the reference runs the model's own Sigmoid(x)."""
    correct, _ = sigmoid_tail
    wrong = tmp_path / "wrong.tar"
    tvm_npu.compile(sigmoid_tail_model(tmp_path / "wrong_tail.onnx", 1.05), output=wrong, target="npu", quantize_model=False)
    model = tvm_npu.load(wrong)
    model.onnx_bytes = correct.read_bytes()  # validated as the correct model: the reference and the probes use it
    report = validate(model, samples(model), device="CPU")
    print(report)
    (output,) = report.outputs
    assert output.cosine > 0.99  # cosine alone would pass it ...
    assert not report.passed and "propagated tolerance" in output.reason  # ... the tail check does not
    assert all(c.passed for c in report.local)  # the integer part is right
    opinion = report.third_opinion
    assert opinion is not None and opinion.decides and not opinion.ours_passed
    assert opinion.findings()["probability"] == "ours is off"


def test_one_step_rounding_bug_in_a_kernel_fails_with_exit_1(sigmoid_tail, tmp_path, monkeypatch, capsys):
    source, _ = sigmoid_tail
    break_conv_kernel(monkeypatch)  # in this process: the package and its probed copy both get it
    code = cli.main(["validate", str(source), "--samples", "2", "--report-json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    print(out)
    assert code == EXIT_VALIDATION_FAILED
    assert "local check failed" in out and re.search(r"h_dq .* FAIL \(bias \+0\.\d+ steps beyond 0.1\)", out)


# --- a quantized near-constant output: decided by the local checks where OpenVINO is off ------------

OUTPUT_STEP = 2e-7  # probabilities near exp(-11) = 1.7e-5 are about 80 steps


def near_ties(seed: int) -> dict[str, np.ndarray]:
    """Pixels (k + 0.5) / 255 in float32: x / scale lands next to a rounding tie of the input QuantizeLinear,
    which OpenVINO (multiplying by 1 / scale) rounds the other way from the ONNX specification (x / scale,
    half to even; our package and the evaluator) on about a third of them: a real disagreement, amplified
    by the tiny output step."""
    k = np.random.default_rng(seed).integers(0, 255, (1, 4, 32, 32))
    return {"x": ((k + 0.5) / np.float32(255)).astype(np.float32)}


@pytest.fixture(scope="session")
def quantized_sigmoid(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(QDQ ONNX, package, near-tie inputs .npz) of the model whose Sigmoid output is quantized."""
    folder = tmp_path_factory.mktemp("quantized_sigmoid")
    source = sigmoid_tail_model(folder / "quantized_sigmoid.onnx", output_step=OUTPUT_STEP, size=32)
    package = folder / "quantized_sigmoid.tar"
    tvm_npu.compile(source, output=package, target="npu", quantize_model=False)
    np.savez(folder / "ties.npz", **near_ties(0))
    return source, package, folder / "ties.npz"


def test_quantized_output_openvino_is_off_and_the_local_checks_decide(quantized_sigmoid, reference_isa):
    _, package, _ = quantized_sigmoid
    model = tvm_npu.load(package)
    report = validate(model, [near_ties(seed) for seed in range(2)], device="CPU", reference_isa=reference_isa)
    print(report)
    (output,) = report.outputs
    assert report.exit_code == EXIT_OK and not float_tails(onnx.load(quantized_sigmoid[0]))
    if report.exact is not None:  # OpenVINO's saturating int8 path is off by more: the exact reference judged
        assert output.passed and output.name in report.exact.outputs and output.local_verdict is None
        return
    assert output.criterion == "steps" and not output.passed and output.local_verdict is True  # OpenVINO is off ...
    assert output.cosine > 0.999  # ... by up to tens of steps on a near-constant map, where cosine says nothing
    assert report.local and all(c.passed for c in report.local) and output.name in {c.name for c in report.local}
    assert "OpenVINO is the one off" in str(report) and "PASS by local checks (reference: FAIL" in str(report)
    assert report.third_opinion.findings()[output.name] == "the reference is off"


def test_one_step_fault_in_any_kernel_of_the_quantized_output_model_fails(quantized_sigmoid, tmp_path, monkeypatch, capsys):
    """Each NPU kernel of the package in turn adds one step to half of its output (`break_kernel`)."""
    source, package, _ = quantized_sigmoid
    kernels = kernels_of(package)
    assert kernels == ["npu.conv2d", "npu.lut"]
    for kernel in kernels:
        with monkeypatch.context() as patch:
            break_kernel(patch, kernel)
            broken = tmp_path / f"{kernel}.tar"
            tvm_npu.compile(source, output=broken, target="npu", quantize_model=False)
            code = cli.main(["validate", str(broken), "--fill-mode", "random"])  # OpenVINO agrees with the model here
            out = capsys.readouterr().out
            print(kernel, out)
            assert code == EXIT_VALIDATION_FAILED and "FAIL by local checks" in out, kernel


def test_quantized_output_of_a_wrong_sigmoid_fails(quantized_sigmoid, tmp_path):
    """Our package computes Sigmoid(1.05 x): its output is not what the probed copy (compiled from the
    model) computes, so the local checks cannot speak for it, and both OpenVINO and the evaluator fail it."""
    correct, _, _ = quantized_sigmoid
    wrong = tmp_path / "wrong.tar"
    tvm_npu.compile(
        sigmoid_tail_model(tmp_path / "wrong.onnx", 1.05, OUTPUT_STEP, 32), output=wrong, target="npu", quantize_model=False
    )
    model = tvm_npu.load(wrong)
    model.onnx_bytes = correct.read_bytes()
    report = validate(model, samples(model, 2), device="CPU")
    print(report)
    (output,) = report.outputs
    assert report.exit_code == EXIT_VALIDATION_FAILED and output.local_verdict is None
    assert "the probed copy's output is not the package's" in output.local_reason
    assert report.third_opinion.findings()[output.name] == "ours is off"


# --- inputs ---------------------------------------------------------------------------------------


def test_image_fill_is_a_picture_in_each_layout_and_samples_differ():
    nchw = [TensorSpec("x", (2, 3, 32, 48), "float32")]
    whole, crop = make_inputs(nchw, "image", 0)["x"], make_inputs(nchw, "image", 1)["x"]
    assert whole.shape == (2, 3, 32, 48) and not np.array_equal(whole, crop) and not np.array_equal(whole[0], whole[1])
    assert -2.2 < whole.min() < -1.0 and 1.0 < whole.max() < 2.7  # ImageNet-normalised pixels, dark to bright
    unit = make_inputs(nchw, "image", 0, ImageFill(normalization="unit"))["x"]
    np.testing.assert_allclose(whole[:, 0], (unit[:, 0] - 0.485) / 0.229, atol=1e-5)
    pixels = make_inputs([TensorSpec("x", (1, 20, 20, 1), "uint8")], "image", 3)["x"]
    assert pixels.shape == (1, 20, 20, 1) and pixels.max() > 150 and pixels.min() < 60
    with pytest.raises(tvm_npu.NpuError, match="not an image"):
        make_inputs([TensorSpec("t", (1, 10), "float32")], "image", 0)


def test_image_flags_are_checked(conv_package, tmp_path):
    result = run_tvmc("run", conv_package, "--image", tmp_path / "missing.png")
    assert result.returncode == EXIT_BAD_INPUT and "--image needs --fill-mode image" in result.stderr
    result = run_tvmc("run", conv_package, "--fill-mode", "image", "--image", tmp_path / "missing.png")
    assert result.returncode == EXIT_BAD_INPUT and len(result.stderr.strip().splitlines()) == 1
    assert "does not exist" in result.stderr


def test_wilson_interval_of_agreement():
    assert wilson_interval(None, 3) is None
    low, high = wilson_interval(3, 3)
    assert low == pytest.approx(0.4385, abs=1e-3) and high == 1.0  # three of three is not 100 %
    low, high = wilson_interval(95, 100)
    assert low == pytest.approx(0.8883, abs=1e-3) and high == pytest.approx(0.9785, abs=1e-3)


def test_readme_states_the_real_model_results_file():
    """README's validation numbers are scripts/validate_real_models.py's results file (rerun it, copy its sentence)."""
    script = script_module("validate_real_models")
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert script.summary(json.loads(script.RESULTS.read_text())) in readme


# --- real trained models (slow) -------------------------------------------------------------------

REAL_MODELS = ("ppocr_det", "orientation")  # a Sigmoid probability map; a 4-class Softmax classifier


@pytest.fixture(scope="session")
def real_packages(tmp_path_factory) -> dict[str, tuple[Path, Path, str]]:
    """name -> (QDQ ONNX, package, input shapes) of each real model, quantized as `tvmc compile` does."""
    real = script_module("real_models")
    folder = tmp_path_factory.mktemp("real")
    built = {}
    for name in REAL_MODELS:
        model = real.MODELS[name]
        qdq, package = folder / f"{name}_qdq.onnx", folder / f"{name}.tar"
        tvm_npu.compile(
            real.fetch(name),
            output=package,
            target="npu",
            input_shapes=parse_input_shapes(model.input_shapes),
            save_quantized=qdq,
        )
        built[name] = (qdq, package, model.input_shapes)
    return built


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_validates_on_pictures(real_packages, name, reference_isa, tmp_path):
    """Exit 0 on this CPU's int8 path and on the saturating one (--reference-isa AVX2). The detector's
    quantized Sigmoid map (a step of about 1e-6) is decided by the local checks where OpenVINO is off;
    the classifier's Softmax is a float tail."""
    _, package, _ = real_packages[name]
    isa = ["--reference-isa", reference_isa] if reference_isa else []
    result = run_tvmc(
        "validate", package, "--fill-mode", "image", "--samples", "2", *isa, "--report-json", tmp_path / "r.json", timeout=3600
    )
    print(result.stdout)
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    (output,) = report["outputs"]
    assert output["verdict"] and "--fill-mode image" in report["inputs"]
    if name == "orientation":
        assert output["criterion"] == "float tail" and report["local"]
    else:
        assert output["criterion"] == "steps" and output["step"] < 1e-5
        assert output["passed"] or (report["local"] and output["local_verdict"])


@pytest.mark.slow
def test_real_detector_with_a_wrong_sigmoid_fails(real_packages, tmp_path):
    qdq, _, shapes = real_packages["ppocr_det"]
    model = onnx.load(qdq)
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    model.graph.initializer.append(numpy_helper.from_array(np.float32(1.05), "tail_scale"))
    scaled = helper.make_node("Mul", [sigmoid.input[0], "tail_scale"], ["tail_scaled"])
    sigmoid.input[0] = "tail_scaled"
    model.graph.node.insert(list(model.graph.node).index(sigmoid), scaled)
    onnx.save(model, tmp_path / "wrong.onnx")
    tvm_npu.compile(
        tmp_path / "wrong.onnx",
        output=tmp_path / "wrong.tar",
        target="npu",
        input_shapes=parse_input_shapes(shapes),
        quantize_model=False,
    )
    wrong = tvm_npu.load(tmp_path / "wrong.tar")
    wrong.onnx_bytes = qdq.read_bytes()
    report = validate(wrong, [make_inputs(wrong.inputs, "image", 0)], device="CPU")
    print(report)
    (output,) = report.outputs
    assert report.exit_code == EXIT_VALIDATION_FAILED and not output.verdict
    assert "the probed copy's output is not the package's" in output.local_reason


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_with_a_one_step_fault_in_any_kernel_fails(real_packages, name, tmp_path, monkeypatch):
    """Each NPU kernel of the model in turn adds one step to half of its output (`break_kernel`)."""
    qdq, package, shapes = real_packages[name]
    caught = {}
    for kernel in kernels_of(package):
        with monkeypatch.context() as patch:
            break_kernel(patch, kernel)
            broken = tmp_path / f"{kernel}.tar"
            tvm_npu.compile(qdq, output=broken, target="npu", input_shapes=parse_input_shapes(shapes), quantize_model=False)
            model = tvm_npu.load(broken)
            # 3 pictures: a squeeze-excite pool's output (480 values) reaches the 1000 elements its bias is judged on
            report = validate(model, [make_inputs(model.inputs, "image", seed) for seed in range(3)], device="CPU")
            failed = [c.name for c in report.local or [] if not c.passed]  # a layer inside a float tail: the
            print(kernel, report.exit_code, failed[:3], report.outputs[0].reason)  # output fails on our own tail
            caught[kernel] = report.exit_code == EXIT_VALIDATION_FAILED and bool(
                failed or "our float tail" in report.outputs[0].reason
            )
    assert all(caught.values()), caught
