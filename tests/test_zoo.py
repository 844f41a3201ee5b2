"""Tests of tvm_npu.zoo and the scripts over it (onnxruntime and OpenVINO as references)."""

import importlib.util
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest

from tvm_npu import zoo

ROOT = pathlib.Path(__file__).resolve().parent.parent
# 60-140M parameters each: several seconds and ~2 GB of memory apiece.
BIG = ("bvlc_alexnet", "vgg19", "zfnet512")


def _run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unknown_light_model_lists_valid_names():
    with pytest.raises(ValueError, match="squeezenet"):
        zoo.light_model_path("mobilenet")


def test_light_references_are_complete():
    for name in zoo.LIGHT_MODELS:
        inputs, outputs = zoo.light_reference(name)
        assert [x.shape for x in inputs.values()] == [(1, 3, 224, 224)]
        assert all(x.dtype == np.float32 for x in inputs.values())
        assert len(outputs) == 1


def test_light_reference_matches_onnxruntime():
    # Not onnx's ReferenceEvaluator: it applies opset-9 Softmax to the last axis of
    # squeezenet's [1, 1000, 1, 1] logits instead of flattening them, giving all ones.
    inputs, expected = zoo.light_reference("squeezenet")
    actual = _run_ort(onnx.load(zoo.light_model_path("squeezenet")), inputs)
    np.testing.assert_allclose(actual, expected["softmaxout_1"], rtol=1e-3)


def test_randomize_weights_is_deterministic():
    model = onnx.load(zoo.light_model_path("squeezenet"))
    first = zoo.randomize_weights(model, seed=0).SerializeToString()
    assert zoo.randomize_weights(model, seed=0).SerializeToString() == first
    assert zoo.randomize_weights(model, seed=1).SerializeToString() != first


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in zoo.LIGHT_MODELS])
def test_randomized_light_model_is_valid_and_not_degenerate(name):
    inputs, expected = zoo.light_reference(name)
    constant = next(iter(expected.values()))
    model = zoo.randomize_weights(onnx.load(zoo.light_model_path(name)))
    onnx.checker.check_model(model, full_check=True)
    assert not [n for n in model.graph.node if n.op_type == "ConstantOfShape"]

    out = _run_ort(model, inputs)
    assert np.isfinite(out).all()
    # Constant weights give a uniform output (std ~1e-10, float noise); random ones
    # must spread it out, in absolute terms and relative to its magnitude.
    assert out.std() > 1e3 * constant.std()
    assert out.std() > 0.1 * np.abs(out).mean()
    assert out.argmax() != constant.argmax()


def test_randomize_weights_cli(tmp_path, capsys):
    cli = _load_script("randomize_weights")
    out = tmp_path / "squeezenet.onnx"
    assert cli.main(["squeezenet", str(out), "--seed", "3"]) == 0
    expected = zoo.randomize_weights(onnx.load(zoo.light_model_path("squeezenet")), seed=3)
    assert out.read_bytes() == expected.SerializeToString()
    assert [p.name for p in tmp_path.iterdir()] == ["squeezenet.onnx"]  # no temp file left

    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    for bad in [tmp_path / "missing.onnx", tmp_path / "bad.onnx", "mobilenet"]:
        capsys.readouterr()
        assert cli.main([str(bad), str(tmp_path / "x.onnx")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()


def test_default_model_is_valid_and_small():
    model = zoo.make_default_model()
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert sum(int(np.prod(t.dims)) for t in model.graph.initializer) < 150_000
    assert zoo.default_model_path().stat().st_size < 1_000_000
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "BatchNormalization", "Clip", "Add", "MaxPool", "GlobalAveragePool", "Gemm", "Softmax"} <= ops
    assert any(a.name == "group" and a.i > 1 for n in model.graph.node for a in n.attribute)  # depthwise


def test_default_model_file_is_up_to_date():
    assert zoo.default_model_path().read_bytes() == zoo.make_default_model().SerializeToString(), (
        "tvm_npu/data/default_model.onnx is stale: run scripts/make_default_model.py"
    )


def test_default_model_runs_in_onnxruntime_and_openvino():
    model = zoo.make_default_model()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), np.float32)
    probs = _run_ort(model, {"input": x})
    assert probs.shape == (1, 10)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    assert probs.std() > 0.1 * probs.mean()  # not uniform

    # OpenVINO CPU defaults to bf16 where the CPU supports it: ask for f32.
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model=model.SerializeToString()), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(x)[0], probs, rtol=1e-4, atol=1e-6)


def test_mobilenet_model_is_a_seeded_depthwise_separable_network():
    model = zoo.make_mobilenet_model()
    onnx.checker.check_model(model, full_check=True)
    assert model.SerializeToString() == zoo.make_mobilenet_model().SerializeToString()  # deterministic
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    assert len(convs) == 27 and sum(g > 1 for g in groups) == 13  # stem + 13 x (depthwise 3x3, pointwise 1x1)
    assert sum(n.op_type == "Clip" for n in model.graph.node) == 27  # ReLU6 after every conv
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    x = np.random.default_rng(0).random((1, 3, 128, 128), np.float32)
    logits = _run_ort(model, {"input": x})
    assert logits.shape == (1, 100) and logits.std() > 0.01  # random weights reach the output
