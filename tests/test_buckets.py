"""Shape buckets (tvm_npu.buckets): a model with a dynamic width compiled into one package of three width
buckets; the bucket boundary, the too-large input, the per-bucket report and the quantization cache.
The slow test does the same on the real text recogniser ppocr_rec against OpenVINO."""

from __future__ import annotations

import json

import numpy as np
import onnx
import openvino as ov
import pytest
from conftest import script_module
from onnx import TensorProto, helper, numpy_helper

import tvm_npu
from tvm_npu.buckets import is_bucketed
from tvm_npu.package import BUCKETS_FORMAT_VERSION
from tvm_npu.cache import cache_dir, entries
from tvm_npu.errors import NpuError
from tvm_npu.frontend import parse_input_shapes
from tvm_npu.package import read_package
from tvm_npu.report import bucket_rows, report
from tvm_npu.runtime import BucketedModel, make_inputs
from tvm_npu.validate import validate

SHAPES = "x:[1,3,8,{16,32,64}]"


def make_dynamic_width_model(path, masked: bool = False):
    """x[1,3,8,W] -> 3x3 stride-2 conv -> ReLU -> 3x3 conv: the output is [1,4,4,ceil(W/2)], and its last
    valid column sees the padding through the second convolution's window. `masked` adds the valid-length
    input `width` (int64[1]) and zeroes the columns at and past ceil(width/2) before the second convolution,
    as a model that wants its valid length does."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1" if masked else "r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, "W"])]
    if masked:
        inputs.append(helper.make_tensor_value_info("width", TensorProto.INT64, [1]))
        weights += [
            numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("zero", 0), ("one", 1), ("two", 2), ("axis3", [3]))
        ]
        nodes[2:2] = [
            helper.make_node("Shape", ["r1"], ["shape"]),
            helper.make_node("Gather", ["shape", "axis3"], ["columns1"]),
            helper.make_node("Squeeze", ["columns1"], ["columns"]),
            helper.make_node("Range", ["zero", "columns", "one"], ["column"]),
            helper.make_node("Add", ["width", "one"], ["width1"]),
            helper.make_node("Div", ["width1", "two"], ["valid"]),  # ceil(width / 2), as the stride gives
            helper.make_node("Less", ["column", "valid"], ["inside"]),
            helper.make_node("Cast", ["inside"], ["mask"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["r1", "mask"], ["r"]),
        ]
    graph = helper.make_graph(
        nodes, "dynamic_width", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, "W2"])], weights
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def bucketed(tmp_path_factory):
    """The masked model in three width buckets, its valid length filled by the runtime."""
    folder = tmp_path_factory.mktemp("buckets")
    model = make_dynamic_width_model(folder / "masked.onnx", masked=True)
    result = tvm_npu.compile(
        model, folder / "buckets.tar", input_shapes=parse_input_shapes(SHAPES), valid_length={"width": ("x", 3)}
    )
    return model, result.package_path


@pytest.fixture(scope="session")
def unmasked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unmasked")
    model = make_dynamic_width_model(folder / "unmasked.onnx")
    shapes = parse_input_shapes("x:[1,3,8,{16,32}]")
    return model, tvm_npu.compile(model, folder / "unmasked.tar", input_shapes=shapes).package_path


def test_size_sets_parse_into_buckets():
    shapes = parse_input_shapes("x:[1,3,48,{640,160,320}] y:[2]")
    assert shapes == {"x": (1, 3, 48, (160, 320, 640)), "y": (2,)} and is_bucketed(shapes)
    for bad in ("x:[1,{}]", "x:[1,{0,4}]", "x:[1,{2.5}]"):
        with pytest.raises(NpuError, match="sets of them for shape buckets"):
            parse_input_shapes(bad)


def test_package_lists_buckets_and_report_shows_each(bucketed):
    _, package = bucketed
    model = tvm_npu.load(package)
    assert isinstance(model, BucketedModel)
    assert model.metadata.format_version == BUCKETS_FORMAT_VERSION
    assert [b["x"][3] for b in model.bucketing.shapes] == [16, 32, 64]
    assert [spec.name for spec in model.inputs] == ["x"]  # the valid length is optional
    rows = bucket_rows(model.metadata)
    assert [r["shapes"] for r in rows] == ["x:[1,3,8,16] width:[1]", "x:[1,3,8,32] width:[1]", "x:[1,3,8,64] width:[1]"]
    assert rows[0]["cycles"] < rows[1]["cycles"] < rows[2]["cycles"]
    assert rows[1]["boundary"]["input"] == ["x[3]=17"] and rows[1]["boundary"]["padded_share"] == pytest.approx(15 / 32)
    text = report(model.metadata)
    assert "Padding cost at bucket boundaries" in text and "x[3]=33" in text
    # The int8 weights agree across buckets (per-channel scales come from the weights alone): stored once.
    lifted = [set(data["extra"]["weights"]) for data in model.metadata.extra["buckets"]]
    assert len(set.intersection(*lifted)) >= 2
    stored = read_package(package, load_library=False).weights
    assert set(stored) == set.union(*lifted) and len(stored) < sum(map(len, lifted))


@pytest.mark.parametrize("width, bucket", [(16, 0), (17, 1), (64, 2)])
def test_bucket_boundary_matches_openvino_on_the_unpadded_input(bucketed, width, bucket, reference_isa):
    _, package = bucketed
    model = tvm_npu.load(package)
    view = model.view({"x": (1, 3, 8, width)})
    assert view.index == bucket
    samples = [model.complete(make_inputs(view.inputs, "random", seed)) for seed in range(2)]
    assert samples[0]["width"].tolist() == [width]
    out = model.run(samples[0])["y"]
    assert out.shape == (1, 4, 4, (width + 1) // 2)  # cropped to what the model gives at this width
    result = validate(view, samples, "CPU", reference_isa=reference_isa)
    assert result.passed, str(result)


def test_padding_reaches_the_last_valid_column_of_an_unmasked_model(unmasked, reference_isa):
    """Without the valid length, the padded columns' activations (ReLU of the bias, not the zeros of the second
    convolution's own padding) reach the last valid output column: validation says so, and only there."""
    _, package = unmasked
    model = tvm_npu.load(package)
    for width, passes in ((16, True), (17, False)):
        view = model.view({"x": (1, 3, 8, width)})
        sample = make_inputs(view.inputs, "random", 0)
        assert validate(view, [sample], "CPU", reference_isa=reference_isa).passed == passes
    core = ov.Core()
    reference = core.compile_model(core.read_model(view.onnx_bytes, b""), "CPU")(sample)[0]
    ours = model.run(sample)["y"]
    close = np.isclose(ours, reference, atol=0.05).all(axis=(0, 1, 2))
    assert close[:-1].all() and not close[-1]


def test_too_large_input_is_one_line_exit_2_unless_truncated(bucketed, tmp_path, forked_tvmc):
    _, package = bucketed
    inputs = tmp_path / "wide.npz"
    np.savez(inputs, x=np.random.default_rng(0).random((1, 3, 8, 65), dtype=np.float32))
    failed = forked_tvmc("run", str(package), "-i", str(inputs))
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        "tvmc: error: input 'x' has size 65 in dimension 3, larger than the largest bucket x:[1,3,8,64]; "
        "compile a larger bucket, or pass --truncate to crop it"
    ]
    out = tmp_path / "out.npz"
    truncated = forked_tvmc("run", str(package), "-i", str(inputs), "--truncate", "-o", str(out))
    assert truncated.returncode == 0, truncated.stderr
    with np.load(out) as outputs:
        assert outputs["y"].shape == (1, 4, 4, 32)


def test_quantization_is_cached_by_calibration_data(unmasked, tmp_path):
    model, _ = unmasked
    quantized = lambda: [e for e in entries() if e.suffix == ".onnx"]  # noqa: E731
    before = len(quantized())
    for target in ("npu", "npu/micro"):  # a compile-cache miss that quantizes the same model the same way
        tvm_npu.compile(
            model, tmp_path / f"{target.replace('/', '_')}.tar", target=target, input_shapes={"x": (1, 3, 8, 16)}, cache=True
        )
    assert len(quantized()) == before + 1
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=np.random.default_rng(1).random((4, 1, 3, 8, 16), dtype=np.float32))
    tvm_npu.compile(
        model, tmp_path / "calibrated.tar", input_shapes={"x": (1, 3, 8, 16)}, calibration_data=calibration, cache=True
    )
    assert len(quantized()) == before + 2
    assert all(json.loads(e.seal_path.read_text())["sha256"] for e in quantized())
    assert (cache_dir() / "quantize").is_dir()


@pytest.mark.slow
def test_ppocr_rec_width_buckets_against_openvino(tmp_path):
    """The real text recogniser in three width buckets, at one width past each boundary: the bucket agrees with
    OpenVINO on the padded input (the compiler's own error), and the valid part against OpenVINO on the
    unpadded input is what results/buckets.json records (scripts/bench_buckets.py)."""
    bench = script_module("bench_buckets")
    recorded = {row["width"]: row for row in json.loads((bench.RESULTS / "buckets.json").read_text())["validation"]}
    measured = bench.measure(tmp_path, widths=(161, 321))
    assert [row["bucket"] for row in measured["validation"]] == ["x:[1,3,48,320]", "x:[1,3,48,640]"]
    for row in measured["validation"]:
        assert row["bucket_vs_openvino_padded"], row
        assert row["passed"] == recorded[row["width"]]["passed"], row
        assert row["cosine"] == pytest.approx(recorded[row["width"]]["cosine"], abs=1e-3), row
