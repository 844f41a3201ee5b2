"""INT8 end to end: QDQ models compiled with NPU kernels against OpenVINO CPU on the same QDQ ONNX, on
both of its int8 paths (the `reference_isa` fixture).

Outputs are compared in quantization steps on every activation DequantizeLinear of the model
(exposed as extra graph outputs, "probes"): at most 2 steps off on at least 99.9 % of elements.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import tvm_npu
from tvm_npu.quantize import quantize
from tvm_npu.validate import (
    downstream_of,
    exact_reference_outputs,
    int8_path,
    openvino_outputs,
    probes,
    saturation_risks,
    with_probes,
)
from tvm_npu.frontend import load_onnx
from tvm_npu.zoo import default_model_path

from conftest import run_tvmc

LIGHT = Path(onnx.__file__).parent / "backend/test/data/light"


def make_small_cnn(path: Path) -> Path:
    """conv+BN+ReLU (stride 2) -> depthwise+ReLU6 -> 1x1 -> residual add -> ReLU -> max pool -> GAP -> Gemm -> Softmax."""
    rng = np.random.default_rng(0)
    inits = []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    nodes = [
        helper.make_node(
            "Conv",
            ["x", const("w1", rng.normal(0, 0.3, (16, 3, 3, 3))), const("b1", rng.normal(0, 0.1, 16))],
            ["c1"],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
        ),
        helper.make_node(
            "BatchNormalization",
            [
                "c1",
                const("g", rng.uniform(0.5, 1.5, 16)),
                const("be", rng.normal(0, 0.1, 16)),
                const("m", rng.normal(0, 0.1, 16)),
                const("v", rng.uniform(0.5, 2, 16)),
            ],
            ["bn"],
        ),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("Conv", ["r1", const("w2", rng.normal(0, 0.3, (16, 1, 3, 3)))], ["c2"], pads=[1, 1, 1, 1], group=16),
        helper.make_node("Clip", ["c2", const("lo", 0.0), const("hi", 6.0)], ["r2"]),
        helper.make_node(
            "Conv", ["r2", const("w3", rng.normal(0, 0.3, (16, 16, 1, 1))), const("b3", rng.normal(0, 0.1, 16))], ["c3"]
        ),
        helper.make_node("Add", ["c3", "r1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r3"]),
        helper.make_node("MaxPool", ["r3"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["f"]),
        helper.make_node(
            "Gemm", ["f", const("wf", rng.normal(0, 0.3, (10, 16))), const("bf", rng.normal(0, 0.1, 10))], ["logits"], transB=1
        ),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def quantized_probe_model(source: Path, folder: Path) -> Path:
    """NNCF-quantized (seeded random calibration) copy of `source` with DQ probes."""
    loaded = load_onnx(source)
    path = folder / f"{source.stem}_qdq_probed.onnx"
    quantized = quantize(loaded.model, loaded.inputs, None, seed=0)
    onnx.save(with_probes(quantized, [p.tensor for p in probes(quantized)]), path)
    return path


def step_errors(package: Path, qdq: Path, reference_isa: str | None, seeds=(1, 2)) -> np.ndarray:
    """|ours - reference| in quantization steps over every probe and input. The reference is OpenVINO CPU on
    the int8 path `reference_isa` picks; where that path saturates (no VNNI), the probes computed from
    products that may saturate are taken from the exact reference instead, as `tvmc validate` does."""
    compiled = tvm_npu.load(package)
    model = onnx.load(qdq)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scale_of = {
        n.output[0]: float(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1
    }
    samples = [tvm_npu.runtime.make_inputs(compiled.inputs, "random", seed) for seed in seeds]
    references = openvino_outputs(qdq.read_bytes(), samples, "CPU", reference_isa)
    if not int8_path("OpenVINO", isa=reference_isa).exact:
        at_risk = downstream_of(model, [risk.node for risk in saturation_risks(model)])
        for reference, exact in zip(references, exact_reference_outputs(qdq.read_bytes(), samples)):
            reference.update({name: exact[name] for name in at_risk & set(exact)})
    steps = []
    for inputs, ref in zip(samples, references):
        ours = compiled.run(inputs)
        for name, scale in scale_of.items():
            if name in ours:
                steps.append(np.round(np.abs(ours[name].astype(np.float64) - ref[name]) / scale).ravel())
    return np.concatenate(steps)


def assert_within_two_steps(steps: np.ndarray, model: str):
    within = np.mean(steps <= 2)
    histogram = {int(k): int(v) for k, v in zip(*np.unique(steps, return_counts=True))}
    print(f"{model}: {steps.size} probed elements, steps histogram {histogram}, within 2 steps {within:.4%}")
    assert within >= 0.999, histogram


@pytest.fixture(scope="session")
def small_cnn_qdq(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("int8")
    return quantized_probe_model(make_small_cnn(folder / "small_cnn.onnx"), folder)


@pytest.fixture(scope="session")
def small_cnn_package(small_cnn_qdq, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8_pkg") / "small_cnn.tar"
    result = tvm_npu.compile(small_cnn_qdq, output=out, target="npu/micro")
    return out, result.metadata


def test_small_cnn_matches_openvino_in_steps(small_cnn_qdq, small_cnn_package, reference_isa):
    package, _ = small_cnn_package
    assert_within_two_steps(step_errors(package, small_cnn_qdq, reference_isa), "small_cnn")


def test_small_cnn_runs_its_operators_on_the_npu(small_cnn_package):
    _, metadata = small_cnn_package
    operators = metadata.extra["operators"]
    kernels = {row["kernel"] for row in operators if row["runs_on"] == "npu"}
    assert {"npu.conv2d", "npu.elementwise", "npu.pool"} <= kernels
    convs = [row for row in operators if "relax.nn.conv2d" in row["ops"]]
    # The depthwise conv's ReLU6 is an ONNX Clip (imported as opaque call_tirs, rewritten to R.clip).
    assert len(convs) == 3 and all(row["runs_on"] == "npu" for row in convs)
    assert all(row["reason"] for row in operators if row["runs_on"] == "cpu")
    softmax = [row for row in operators if "relax.nn.softmax" in row["ops"]]
    # NNCF leaves the classifier's softmax in float (a graph output); passes.quantize_activations quantizes its
    # input and output, so npu.softmax runs it
    assert [(row["runs_on"], row["kernel"]) for row in softmax] == [("npu", "npu.softmax")], softmax


def test_default_model_runs_its_depthwise_relu6_conv_on_the_npu(tmp_path):
    """The bundled model's depthwise conv has a ReLU6 (ONNX Clip); quantize.py asks NNCF for per-tensor
    activations, so the stem's output (the depthwise input) is not quantized per channel either."""
    operators = tvm_npu.compile(default_model_path(), output=tmp_path / "d.tar", target="npu/micro").metadata.extra["operators"]
    convs = [row for row in operators if "relax.nn.conv2d" in row["ops"]]
    on_cpu = [row["reason"] for row in convs if row["runs_on"] == "cpu"]
    assert len(convs) >= 4 and on_cpu == []
    assert not any(row["reason"].startswith("dtype: runs in float") for row in operators)


def make_activation_concat_model(path: Path) -> Path:
    """A hand-made QDQ model (the form ONNX Runtime / TFLite-style quantizers emit): conv+ReLU6 and a
    1x1 conv, HardSwish and Sigmoid on quantized inputs, and a concat of three differently quantized
    tensors requantized to its own output grid. Scales come from float min/max on seeded inputs."""
    rng = np.random.default_rng(5)
    w1, b1 = rng.normal(0, 0.6, (8, 3, 3, 3)), rng.normal(0, 0.3, 8)
    w2 = rng.normal(0, 0.5, (6, 8, 1, 1))
    float_nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["r6"]),
        helper.make_node("Conv", ["r6", "w2"], ["c2"]),
        helper.make_node("HardSwish", ["c2"], ["hs"]),
        helper.make_node("Sigmoid", ["c2"], ["sg"]),
        helper.make_node("Concat", ["hs", "sg", "r6"], ["y"], axis=1),
    ]
    tensors = ["x", "r6", "c2", "hs", "sg", "y"]
    inits = [
        numpy_helper.from_array(np.asarray(v, np.float32), k)
        for k, v in {"w1": w1, "b1": b1, "w2": w2, "zero": 0.0, "six": 6.0}.items()
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 20, 12, 12])
    probe = helper.make_model(
        helper.make_graph(
            float_nodes, "f", [x_info], [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors], inits
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    runs = [ReferenceEvaluator(probe).run(None, {"x": rng.random((1, 3, 12, 12), dtype=np.float32)}) for _ in range(4)]
    dtypes = {"x": np.uint8, "r6": np.uint8, "c2": np.int8, "hs": np.int8, "sg": np.uint8, "y": np.int8}
    nodes, qparams = [], []
    for name, node in zip(["x"] + [n.output[0] for n in float_nodes], [None] + float_nodes):
        if node is not None:
            nodes.append(node)
        if name not in dtypes:
            continue
        column = [r[tensors.index(name)] for r in runs]
        lo, hi = min(0.0, min(float(c.min()) for c in column)), max(float(c.max()) for c in column)
        info = np.iinfo(dtypes[name])
        scale = (hi - lo) / 255
        zp = np.array(np.clip(np.round(info.min - lo / scale), info.min, info.max), dtypes[name])
        qparams += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"), numpy_helper.from_array(zp, f"{name}_z")]
        final = name == "y"
        # Consumers read the dequantized tensor under the original name.
        raw = f"{name}_f"
        if node is not None:
            node.output[0] = raw
        else:
            x_info.name = raw
        nodes += [
            helper.make_node("QuantizeLinear", [raw, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], ["y" if final else name]),
        ]
    # Weights as int8 per-output-channel DequantizeLinear, like every QDQ quantizer writes them.
    quantized_inits = []
    for init in inits:
        if init.name in ("w1", "w2"):
            w = numpy_helper.to_array(init).astype(np.float64)
            ws = np.abs(w).reshape(len(w), -1).max(1) / 127
            quantized_inits += [
                numpy_helper.from_array(np.round(w / ws[:, None, None, None]).astype(np.int8), f"{init.name}_q"),
                numpy_helper.from_array(ws.astype(np.float32), f"{init.name}_s"),
            ]
            nodes.insert(0, helper.make_node("DequantizeLinear", [f"{init.name}_q", f"{init.name}_s"], [init.name], axis=0))
        else:
            quantized_inits.append(init)
    graph = helper.make_graph(nodes, "activation_concat", [x_info], [y_info], quantized_inits + qparams)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_activations_and_concat_run_on_the_npu_and_match_openvino(tmp_path_factory, reference_isa):
    folder = tmp_path_factory.mktemp("activation_concat")
    qdq = folder / "activation_concat_qdq_probed.onnx"
    model = onnx.load(make_activation_concat_model(folder / "model.onnx"))
    onnx.save(with_probes(model, [p.tensor for p in probes(model)]), qdq)
    package = folder / "activation_concat.tar"
    operators = tvm_npu.compile(qdq, output=package, target="npu/micro").metadata.extra["operators"]
    on_npu = [row["kernel"] for row in operators if row["runs_on"] == "npu"]
    assert sorted(on_npu) == ["npu.concat", "npu.conv2d", "npu.conv2d", "npu.lut", "npu.lut"], operators
    assert all(row["ops"][0] in ("relax.quantize", "relax.dequantize") for row in operators if row["runs_on"] == "cpu")
    assert_within_two_steps(step_errors(package, qdq, reference_isa, seeds=(1, 2, 3)), "activation_concat")


def test_unsupported_operator_falls_back_to_cpu_and_says_so(tmp_path):
    """A quantized model with an operator no NPU kernel has (Abs between QDQ) compiles and runs right."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "w_q")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "sw"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "sc", "zc"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "sc", "zc"], ["cd"]),
        helper.make_node("Abs", ["cd"], ["s"]),
        helper.make_node("QuantizeLinear", ["s", "ss", "zs"], ["sq"]),
        helper.make_node("DequantizeLinear", ["sq", "ss", "zs"], ["y"]),
    ]
    scalars = {
        "sx": np.float32(0.02),
        "zx": np.int8(3),
        "sw": np.float32(0.01),
        "sc": np.float32(0.05),
        "zc": np.int8(-4),
        "ss": np.float32(0.03),
        "zs": np.uint8(0),
    }
    graph = helper.make_graph(
        nodes,
        "abs_between_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [w] + [numpy_helper.from_array(np.array(v), k) for k, v in scalars.items()],
    )
    path = tmp_path / "abs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = run_tvmc("compile", path, "-o", tmp_path / "m.tar", "--dump-offloads")
    assert result.returncode == 0, result.stderr
    abs_line = next(line for line in result.stdout.splitlines() if "relax.abs" in line)
    assert "cpu" in abs_line and "unsupported op: no NPU kernel for relax.abs" in abs_line
    assert any("npu.conv2d" in line for line in result.stdout.splitlines())
    report = run_tvmc("validate", tmp_path / "m.tar", "--report-json", tmp_path / "v.json")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "max steps" in report.stdout


def test_fp32_default_quantizes_with_warning_and_saves_qdq(tmp_path):
    model = make_small_cnn(tmp_path / "cnn.onnx")
    saved = tmp_path / "cnn_qdq.onnx"
    result = run_tvmc("compile", model, "-o", tmp_path / "cnn.tar", "--save-quantized", saved)
    assert result.returncode == 0, result.stderr
    assert "accuracy is unknown" in result.stdout
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(saved).graph.node)
    assert tvm_npu.load(tmp_path / "cnn.tar").onnx_bytes == saved.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "inception_v1"])
def test_light_model_matches_openvino_in_steps(name, tmp_path, reference_isa):
    """Real architectures (constant-valued weights after folding) quantized by NNCF."""
    qdq = quantized_probe_model(LIGHT / f"light_{name}.onnx", tmp_path)
    package = tmp_path / f"{name}.tar"
    metadata = tvm_npu.compile(qdq, output=package, target="npu/micro").metadata
    assert sum(row["runs_on"] == "npu" for row in metadata.extra["operators"]) > 10
    assert_within_two_steps(step_errors(package, qdq, reference_isa, seeds=(1,)), name)
