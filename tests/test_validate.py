"""`tvmc validate`: the reference chain, the metrics, the per-layer bisection, a fault it must catch.

Light models get seeded random weights (`randomize_weights`) and NNCF quantization with random
calibration, so the QDQ models have real, non-uniform activations. The broken kernel is a
test-only fault: inside this test process the conv2d kernel's requantize is swapped, through
the kernel registry, for one with an off-by-one in its rounding constant.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tvm import te, tirx

import tvm_npu
import tvm_npu.cli
from tvm_npu import registry, validate as validate_module
from tvm_npu.errors import EXIT_BAD_INPUT, EXIT_COULD_NOT_VALIDATE, EXIT_OK, EXIT_VALIDATION_FAILED
from tvm_npu.onnx_builder import saturating_conv
from tvm_npu.runtime import make_inputs
from tvm_npu import fixed_point
from tvm_npu.validate import compare, probes, strip_qdq, validate
from tvm_npu.zoo import default_model_path, light_model_path, randomize_weights

from conftest import make_conv_model, run_tvmc


def quantized_light_model(name: str, folder: Path) -> tuple[Path, Path]:
    """(QDQ ONNX, package) of the light model `name` with seeded random weights, quantized by the pipeline."""
    fp32 = folder / f"{name}_random.onnx"
    onnx.save(randomize_weights(onnx.load(light_model_path(name)), seed=0), fp32)
    qdq, package = folder / f"{name}_qdq.onnx", folder / f"{name}.tar"
    tvm_npu.compile(fp32, output=package, target="npu", quantize_model=True, save_quantized=qdq)
    return qdq, package


def samples(model, count: int = 2) -> list[dict[str, np.ndarray]]:
    return [make_inputs(model.inputs, "random", seed) for seed in range(1, count + 1)]


def table(name: str, report) -> str:
    """One line per output for the resolution notes: max steps, cosine, top-1."""
    rows = []
    for o in report.outputs:
        steps = "-" if o.max_steps is None else f"{o.max_steps:g}"
        top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.0%}"
        rows.append(
            f"TABLE {name} {o.name}: max steps {steps}, cosine {o.cosine:.6f}, top-1 {top1}, {'PASS' if o.passed else 'FAIL'}"
        )
    return "\n".join(rows)


# --- fault injection (test-only) ------------------------------------------------------------------


def off_by_one_requantize(value, mult, shift, zero_point, lo, hi, dtype):
    """fixed_point.requantize_te with a rounding bug: adds 2^shift instead of 2^(shift-1) before the shift."""
    one = tirx.const(1, "int64")
    v = value.astype("int64") * mult
    r = ((v + (one << shift)) >> shift) + tirx.const(zero_point, "int64")
    return tirx.max(tirx.min(r, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(dtype)


def break_conv_kernel(monkeypatch, weight_shape: tuple[int, ...] | None = None) -> None:
    """The npu.conv2d kernel, as the registry hands it to lowering, requantizes with the off-by-one,
    on every conv or only on the one whose int8 weight has `weight_shape`."""
    originals = registry.kernels()
    conv = registry.kernel("npu.conv2d")

    def compute(params, inputs):
        if weight_shape is None or tuple(params.consts[0].shape) == weight_shape:
            with monkeypatch.context() as patch:
                patch.setattr(fixed_point, "requantize_te", off_by_one_requantize)  # conv2d's epilogue_te calls it
                return conv.compute(params, inputs)
        return conv.compute(params, inputs)

    broken = dataclasses.replace(conv, compute=compute)
    monkeypatch.setattr(registry, "kernels", lambda: tuple(broken if k.name == conv.name else k for k in originals))


def one_step_fault(y: te.Tensor) -> te.Tensor:
    """`y` one step up on half of its elements (a checkerboard over all indices, saturating at the dtype's
    maximum): what a rounding bug does to a kernel's integer output, whatever the kernel computes."""
    top = int(np.iinfo(str(y.dtype)).max)

    def value(*index):
        odd = tirx.floormod(functools.reduce(lambda a, b: a + b, index), 2).astype("int32")
        return tirx.min(y(*index).astype("int32") + odd, tirx.const(top, "int32")).astype(y.dtype)

    return te.compute(y.shape, value, name=f"{y.op.name}_one_step_fault")


def break_kernel(monkeypatch, name: str) -> None:
    """Kernel `name`, as the registry hands it to lowering, adds `one_step_fault` to its output on every
    layer: its TE compute runs with te.create_prim_func wrapping the last tensor (every kernel's output).
    The broken kernel runs untiled (its SRAM schedule names the original output stage)."""
    originals = registry.kernels()
    kernel = registry.kernel(name)
    create_prim_func = te.create_prim_func

    def compute(params, inputs):
        with monkeypatch.context() as patch:
            patch.setattr(te, "create_prim_func", lambda tensors: create_prim_func([*tensors[:-1], one_step_fault(tensors[-1])]))
            return kernel.compute(params, inputs)

    broken = dataclasses.replace(kernel, compute=compute, geometry=None, schedule=None)
    monkeypatch.setattr(registry, "kernels", lambda: tuple(broken if k.name == name else k for k in originals))


def kernels_of(package: Path) -> list[str]:
    """The NPU kernels a package's layers run on."""
    layers = tvm_npu.load(package).metadata.extra["layers"]
    return sorted({layer["kernel"] for layer in layers if layer["placement"] == "npu"})


def layer_of_conv(qdq: onnx.ModelProto, weight_shape: tuple[int, ...]) -> str:
    """The node whose output the QuantizeLinear after the conv with `weight_shape` quantizes."""
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    producers = {out: node for node in qdq.graph.node for out in node.output}
    consumers = {}
    for node in qdq.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    conv = next(
        n
        for n in qdq.graph.node
        if n.op_type == "Conv" and inits.get(producers[n.input[1]].input[0], np.empty(0)).shape == weight_shape
    )
    node = conv
    while True:
        (nxt,) = consumers[node.output[0]]
        if nxt.op_type == "QuantizeLinear":
            return node.name or node.output[0]
        node = nxt


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def squeezenet(tmp_path_factory) -> tuple[Path, Path]:
    return quantized_light_model("squeezenet", tmp_path_factory.mktemp("squeezenet"))


@pytest.fixture(scope="session")
def ort_int8_output_model(tmp_path_factory) -> Path:
    """An onnxruntime-quantized Conv+ReLU whose input's int8 QuantizeLinear output is also a graph
    output: OpenVINO CPU 2026.4 cannot compile it ("No suitable implementations"); TVM and ONNX
    Runtime run it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folder = tmp_path_factory.mktemp("ort")
    fp32 = make_conv_model(folder / "conv.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter([{"x": np.random.default_rng(i).random((1, 4, 8, 8), np.float32)} for i in range(8)])

        def get_next(self):
            return next(self.samples, None)

    qdq = folder / "conv_ort_qdq.onnx"
    quantize_static(
        str(fp32), str(qdq), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8
    )
    model = onnx.load(qdq)
    (q_input,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    model.graph.output.append(onnx.helper.make_tensor_value_info(q_input.output[0], onnx.TensorProto.INT8, [1, 4, 8, 8]))
    path = folder / "conv_ort_int8_output.onnx"
    onnx.save(model, path)
    return path


# --- the bundled model and the reference device ---------------------------------------------------


def test_bundled_model_validates_on_cpu_and_says_why(tmp_path):
    result = run_tvmc(
        "validate", default_model_path(), "--samples", "3", "--per-layer", "--report-json", tmp_path / "report.json"
    )
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    headline = next(line for line in lines if line.startswith("reference:"))
    assert headline.startswith("reference: OpenVINO") and "on CPU" in headline and "no NPU device" in headline
    assert "NPU" not in headline.split("(")[0]  # never claims the NPU served
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["device"] == "CPU" and report["properties"] == {"INFERENCE_PRECISION_HINT": "f32"}
    assert report["samples"] == 3 and report["tolerances"]["atol_steps"] == 2.0
    (probs,) = report["outputs"]
    # the classifier's Softmax runs on the NPU (passes.quantize_activations): a quantized output, judged in steps
    assert probs["criterion"] == "steps" and probs["cosine"] > 0.999 and probs["top1_agreement"] == 1.0
    # the output agrees with OpenVINO in steps, so no local check is needed (they run for float tails and disputes)
    assert probs["passed"] and report["local"] is None
    assert report["layers"] and report["first_divergent_layer"] is None
    print(f"TABLE default probs: cosine {probs['cosine']:.6f}, top-1 {probs['top1_agreement']:.0%}")


def test_npu_is_used_with_its_properties_when_openvino_has_one(monkeypatch):
    class FakeCore:
        available_devices = ["CPU", "NPU"]

    monkeypatch.setattr(validate_module.ov, "Core", FakeCore)
    assert validate_module.choose_device("AUTO") == ("NPU", "OpenVINO reports an NPU device")
    assert validate_module.choose_device("CPU")[0] == "CPU"
    properties = validate_module.reference_properties("NPU")
    assert properties["PERFORMANCE_HINT"] == "LATENCY" and properties["NPU_TURBO"] == "YES" and "CACHE_DIR" in properties


def test_help_lists_the_validate_flags():
    result = run_tvmc("validate", "--help")
    assert result.returncode == EXIT_OK, result.stderr
    for flag in ("--samples", "--atol-steps", "--max-bias-steps", "--min-cosine", "--per-layer", "--device"):
        assert flag in result.stdout


def test_npu_requested_without_one_could_not_validate(conv_package):
    result = run_tvmc("validate", conv_package, "--device", "NPU")
    assert result.returncode == EXIT_COULD_NOT_VALIDATE
    assert "no NPU" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- metrics --------------------------------------------------------------------------------------


def test_metrics_in_steps_bias_and_topk():
    rng = np.random.default_rng(0)
    ref = np.round(rng.normal(0, 20, (4, 1000))) * 0.1
    one_off = ref.copy()
    one_off[:, ::100] += 0.1  # 1 % of elements one step off, in both directions
    one_off[:, 50::100] -= 0.2
    c = compare("y", one_off, ref, quantized=True, step=0.1)
    assert c.passed and c.max_steps == 2 and c.within_1_step == pytest.approx(0.99) and c.within_2_steps == 1.0
    assert c.top1_agreement is not None and c.top5_agreement is not None
    biased = compare("y", ref + 0.1 * (rng.random(ref.shape) < 0.5), ref, quantized=True, step=0.1)
    assert not biased.passed and "bias" in biased.reason and biased.within_1_step == 1.0
    far = compare("y", ref + 0.3, ref, quantized=True, step=0.1, tolerances=validate_module.Tolerances(atol_steps=3))
    assert far.max_steps == 3 and "bias" in far.reason  # within --atol-steps 3, but every element shifted
    swapped = ref.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    assert compare("y", swapped, ref).top1_agreement is not None


def test_strip_qdq_gives_the_fp32_model(ort_int8_output_model):
    qdq = ort_int8_output_model.read_bytes()
    fp32 = onnx.load_from_string(strip_qdq(qdq))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in fp32.graph.node)
    assert [o.name for o in fp32.graph.output] == [o.name for o in onnx.load_from_string(qdq).graph.output]
    onnx.checker.check_model(fp32)


# --- light models ---------------------------------------------------------------------------------


def test_squeezenet_qdq_validates_with_every_layer(squeezenet, reference_isa):
    qdq, package = squeezenet
    model = tvm_npu.load(package)
    report = validate(model, samples(model), device="CPU", per_layer=True, reference_isa=reference_isa)
    print(report)
    print(table("squeezenet", report))
    assert report.passed, str(report)
    assert len(report.layers) >= 20 and all(layer.comparison.step for layer in report.layers)
    assert report.outputs[0].top1_agreement == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shufflenet", "resnet50"])
def test_light_model_qdq_validates(name, tmp_path):
    qdq, package = quantized_light_model(name, tmp_path)
    model = tvm_npu.load(package)
    report = validate(model, samples(model), device="CPU", per_layer=True)
    print(report)
    print(table(name, report))
    assert report.passed, str(report)


# --- a broken kernel is caught, and --per-layer names the layer -----------------------------------


def test_broken_conv_layer_is_named_by_per_layer(squeezenet, tmp_path, monkeypatch):
    """The off-by-one in a single mid-network conv (fire6/squeeze1x1) is found by comparing probes."""
    qdq, _ = squeezenet
    target = (48, 256, 1, 1)
    break_conv_kernel(monkeypatch, target)
    broken = tmp_path / "broken.tar"
    tvm_npu.compile(qdq, output=broken, target="npu")
    model = tvm_npu.load(broken)
    report = validate(model, samples(model), device="CPU", per_layer=True)
    print(report)
    assert not report.passed
    divergent = report.first_divergent_layer
    assert divergent is not None and divergent.layer == layer_of_conv(onnx.load(qdq), target), str(report)
    assert "bias" in divergent.comparison.reason
    earlier = [layer for layer in report.layers if layer.index < divergent.index]
    assert len(earlier) > 10 and all(layer.comparison.passed for layer in earlier)


@pytest.mark.slow
def test_broken_conv_kernel_fails_validation_and_per_layer_names_the_first_conv(squeezenet, tmp_path, monkeypatch, reference_isa):
    qdq, _ = squeezenet
    break_conv_kernel(monkeypatch)
    broken = tmp_path / "broken.tar"
    tvm_npu.compile(qdq, output=broken, target="npu")
    model = tvm_npu.load(broken)
    plain = validate(model, samples(model), device="CPU", reference_isa=reference_isa)
    print(table("squeezenet+broken-conv", plain))
    assert not plain.passed  # caught on the model's own output
    report = validate(model, samples(model), device="CPU", per_layer=True, reference_isa=reference_isa)
    first_conv = next(n for n in onnx.load(qdq).graph.node if n.op_type == "Conv")
    assert report.first_divergent_layer.layer == layer_of_conv(
        onnx.load(qdq),
        tuple(
            numpy_helper.to_array(
                next(
                    i
                    for i in onnx.load(qdq).graph.initializer
                    if i.name == next(n for n in onnx.load(qdq).graph.node if first_conv.input[1] in n.output).input[0]
                )
            ).shape
        ),
    )


# --- when OpenVINO cannot compile the model ------------------------------------------------------
# No model was found that OpenVINO 2026.4 CPU refuses under the f32 reference settings: the
# onnxruntime-quantized model below (an int8 QuantizeLinear output as a graph output) fails only
# at OpenVINO's default CPU precision ("No suitable implementations"), and compiles with
# INFERENCE_PRECISION_HINT=f32. The chain is therefore exercised with a real OpenVINO compile
# failure of another kind: asking OpenVINO for its NPU device on this machine, which has none
# (OpenVINO raises "VCL compiler loading failed"). Nothing fakes OpenVINO's answer.


def test_ort_quantized_model_with_int8_output_validates_in_steps(ort_int8_output_model, tmp_path):
    result = run_tvmc("validate", ort_int8_output_model, "--samples", "2", "--report-json", tmp_path / "report.json")
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reference"] == "OpenVINO" and report["properties"] == {"INFERENCE_PRECISION_HINT": "f32"}
    int8 = next(o for o in report["outputs"] if o["name"].endswith("QuantizeLinear_Output"))
    assert int8["step"] == 1.0 and int8["passed"] and int8["max_steps"] <= 1


def test_openvino_compile_failure_falls_back_to_onnxruntime_and_says_so(ort_int8_output_model, tmp_path):
    package = tmp_path / "m.tar"
    tvm_npu.compile(ort_int8_output_model, output=package, target="npu")
    model = tvm_npu.load(package)
    reference = validate_module._reference(model.onnx_bytes, samples(model), "NPU", "test: NPU requested", None)
    assert reference.runtime == "ONNX Runtime" and reference.model == "same"
    (note,) = reference.notes
    assert note.startswith("OpenVINO could not compile the model on NPU: ") and "\n" not in note


def test_without_onnxruntime_the_fp32_model_is_the_reference(ort_int8_output_model, tmp_path, monkeypatch):
    package = tmp_path / "m.tar"
    tvm_npu.compile(ort_int8_output_model, output=package, target="npu")
    model = tvm_npu.load(package)
    monkeypatch.setattr(validate_module, "_onnxruntime", lambda: None)  # the optional extra absent
    monkeypatch.setattr(validate_module, "choose_device", lambda device: ("NPU", "test: NPU requested"))
    report = validate(model, samples(model, 3), per_layer=True)
    print(report)
    text = str(report).splitlines()
    assert text[0].startswith("reference: OpenVINO") and "on CPU, the FP32 model" in text[0]
    assert text[1].startswith("OpenVINO could not compile the model on NPU") and "not installed" in text[2]
    assert report.reference_model == "fp32" and report.properties == {"INFERENCE_PRECISION_HINT": "f32"}
    assert report.passed and all(o.cosine >= validate_module.FP32_MIN_COSINE for o in report.outputs)
    assert report.layers is None and "skipped" in report.per_layer_note


def test_probes_name_layers_in_graph_order(squeezenet):
    qdq, _ = squeezenet
    found = probes(onnx.load(qdq))
    assert found[0].op_type == "input" and found[1].op_type == "Relu"
    assert len({p.tensor for p in found}) == len(found)


# --- the reference's int8 path: CPUs without VNNI saturate, the exact reference judges --------------


@pytest.fixture(scope="session")
def saturation_case(tmp_path_factory) -> tuple[Path, Path]:
    """(QDQ conv, inputs .npz): uint8 activations near 255 and full-range int8 weights (`saturating_conv`)."""
    folder = tmp_path_factory.mktemp("saturation")
    example = saturating_conv(np.random.default_rng(0))
    onnx.save(example.model, folder / "conv.onnx")
    np.savez(folder / "inputs.npz", **example.inputs)
    return folder / "conv.onnx", folder / "inputs.npz"


def tvmc_in_process(capsys, *args) -> tuple[int, str, str]:
    """`tvmc ARGS` through the console entry point in this process (so a monkeypatched kernel applies):
    exit code, stdout, stderr."""
    code = tvm_npu.cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def isa_flags(reference_isa: str | None) -> list[str]:
    return ["--reference-isa", reference_isa] if reference_isa else []


def test_int8_path_follows_cpu_flags_and_the_isa_cap(monkeypatch):
    monkeypatch.setattr(validate_module, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    monkeypatch.delenv(validate_module.ISA_CAP_VARIABLE, raising=False)
    assert validate_module.int8_path("OpenVINO").exact
    assert not validate_module.int8_path("OpenVINO", isa="AVX2").exact
    assert validate_module.int8_path("OpenVINO", isa="avx512_core_vnni").exact
    monkeypatch.setenv(validate_module.ISA_CAP_VARIABLE, "avx512_core")
    capped = validate_module.int8_path("OpenVINO")
    assert not capped.exact and "ONEDNN_MAX_CPU_ISA=AVX512_CORE" in capped.reason
    assert validate_module.int8_path("ONNX Runtime").exact  # MLAS does not read oneDNN's cap
    monkeypatch.setattr(validate_module, "cpu_flags", lambda: {"avx2", "fma"})
    assert not validate_module.int8_path("ONNX Runtime").exact and "no VNNI" in validate_module.int8_path("OpenVINO").reason


def test_saturation_risk_comes_from_the_weights(saturation_case):
    model = onnx.load(saturation_case[0])
    (risk,) = validate_module.saturation_risks(model)
    assert risk.op_type == "Conv" and risk.pair_sum > validate_module.INT16_MAX
    weight = next(i for i in model.graph.initializer if i.name.endswith("_int8"))
    halved = numpy_helper.to_array(weight) // 2  # 7-bit weights (NNCF's overflow fix): 255 * (64 + 64) < 32768
    weight.CopyFrom(numpy_helper.from_array(halved.astype(np.int8), weight.name))
    assert validate_module.saturation_risks(model) == []


def test_saturation_case_validates_and_names_the_judge(saturation_case, reference_isa, capsys):
    model, inputs = saturation_case
    code, out, _ = tvmc_in_process(capsys, "validate", model, "--inputs", inputs, *isa_flags(reference_isa))
    print(out)
    assert code == EXIT_OK, out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("reference: OpenVINO"))
    if validate_module.int8_path("OpenVINO", isa=reference_isa).exact:
        assert "judged by the exact reference" not in out and "accumulates int8 products in int32" in out
    else:  # the second line names the judge, why, and how much OpenVINO got wrong
        judged = lines[start + 1]
        assert judged.startswith("judged by the exact reference") and "saturating int16 pairs" in judged
        wrong, total = map(int, re.search(r"OpenVINO got (\d+) of (\d+)", judged).groups())
        assert total == 16 * 12 * 12 and wrong > total // 2


def test_one_step_rounding_bug_fails_validation_on_every_int8_path(saturation_case, reference_isa, monkeypatch, capsys, tmp_path):
    model, inputs = saturation_case
    break_conv_kernel(monkeypatch)
    broken = tmp_path / "broken.tar"
    tvm_npu.compile(model, output=broken, target="npu")
    x = dict(np.load(inputs))
    (exact,) = validate_module.exact_reference_outputs(model.read_bytes(), [x])
    off = tvm_npu.load(broken).run(x)["y"].astype(int) - exact["y"].astype(int)
    assert set(np.unique(off)) <= {0, 1} and off.mean() > 0.2  # the compiled kernel rounds up where it should not
    code, out, _ = tvmc_in_process(capsys, "validate", broken, "--inputs", inputs, *isa_flags(reference_isa))
    print(out)
    assert code == EXIT_VALIDATION_FAILED and "validation FAILED" in out and "bias" in out


def test_untrusted_reference_and_no_exact_judge_could_not_validate(saturation_case, capsys):
    model, inputs = saturation_case
    code, out, _ = tvmc_in_process(
        capsys, "validate", model, "--inputs", inputs, "--reference-isa", "AVX2", "--max-exact-gmacs", "0"
    )
    print(out)
    assert code == EXIT_COULD_NOT_VALIDATE, out
    assert "exact reference not run" in out and "--max-exact-gmacs" in out and "UNDECIDED" in out


def test_bad_reference_isa_is_one_line(capsys, saturation_case):
    code, _, err = tvmc_in_process(capsys, "validate", saturation_case[0], "--reference-isa", "AVX2; rm")
    assert code == EXIT_BAD_INPUT and len(err.strip().splitlines()) == 1 and "--reference-isa" in err
