"""CSR weights: encoding, zero-skipping kernels exact against the dense kernels, --sparse end to end, prune.py."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import tvm_npu
from tvm_npu.cli import main
from tvm_npu.errors import NpuError
from tvm_npu.package import read_package
from tvm_npu.build import pass_context
from tvm_npu.tiling import Tiles, footprint
from tvm_npu.registry import kernel, kernels, variants
from tvm_npu.sparse import encode, index_dtype
from tvm_npu.sram import prove_footprint
from test_kernels import TARGET, conv2d_case, dense_case

ROOT = Path(__file__).resolve().parents[1]


def _prune_script():
    spec = importlib.util.spec_from_file_location("prune", ROOT / "scripts" / "prune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sparsify(rng, w: np.ndarray, sparsity: float, zero_row: bool) -> None:
    w[rng.random(w.shape) < sparsity] = 0
    if zero_row:
        w[int(rng.integers(0, w.shape[0]))] = 0


def _build(prim):
    with pass_context():
        return tvm.compile(tvm.IRModule({"k": prim.with_attr("global_symbol", "k")}), target=TARGET)


def _run(prim, inputs, consts, like: np.ndarray) -> np.ndarray:
    out = tvm.runtime.empty(like.shape, str(like.dtype))
    _build(prim)["k"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in [*inputs, *consts]], out)
    return out.numpy()


def test_every_variant_names_an_existing_kernel_and_has_no_patterns():
    names = {k.name for k in kernels()}
    found = [k for k in kernels() if k.variant_of]
    assert {k.name for k in found} == {"npu.dense_csr", "npu.conv2d_csr"}
    for k in found:
        assert k.variant_of in names and k.patterns() == [] and k.anchors == ()
    assert variants("npu.conv2d") == (kernel("npu.conv2d_csr"),)


@pytest.mark.parametrize(
    "columns, dtype", [(1, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)]
)
def test_index_width_is_the_smallest_that_fits(columns, dtype):
    assert index_dtype(columns) == dtype


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.97, 1.0])
def test_encoding_round_trips(sparsity):
    rng = np.random.default_rng(int(sparsity * 100))
    w = rng.integers(-128, 128, (13, 4, 3, 3), dtype=np.int8)
    _sparsify(rng, w, sparsity, zero_row=True)
    csr = encode(w)
    assert csr.nonzeros == np.count_nonzero(w) and csr.rowptr.dtype == np.int32 and csr.values.size >= 1
    assert csr.indices.dtype == np.uint8  # 36 columns
    np.testing.assert_array_equal(csr.dense(), w.reshape(13, -1))
    np.testing.assert_array_equal(csr.row_nonzeros, np.count_nonzero(w.reshape(13, -1), axis=1))


CASES = [  # (dense kernel, case generator, sparsity, an all-zero row)
    ("npu.dense", lambda rng: dense_case(rng, n=5, k=70, o=23), 0.0, False),
    ("npu.dense", lambda rng: dense_case(rng, n=1, k=300, o=9, x_dtype="uint8"), 0.9, True),
    ("npu.dense", lambda rng: dense_case(rng, n=3, k=40, o=7), 1.0, False),
    (
        "npu.conv2d",
        lambda rng: conv2d_case(rng, n=2, c=5, o=7, hw=(9, 8), k=3, stride=1, pad=(1, 1, 1, 1), dilation=1, x_dtype="uint8"),
        0.5,
        True,
    ),
    ("npu.conv2d", lambda rng: conv2d_case(rng, c=3, o=6, hw=(11, 9), k=3, stride=2, pad=(2, 1, 0, 2), dilation=1), 0.8, False),
    ("npu.conv2d", lambda rng: conv2d_case(rng, c=4, o=5, hw=(9, 9), k=3, stride=1, pad=(2, 2, 2, 2), dilation=2), 0.95, True),
    ("npu.conv2d", lambda rng: conv2d_case(rng, c=6, o=4, hw=(5, 7), k=1, stride=1, pad=(0, 0, 0, 0)), 1.0, False),
]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_csr_kernel_is_exact_against_the_dense_kernel(index):
    name, make, sparsity, zero_row = CASES[index]
    rng = np.random.default_rng(7 + index)
    params, inputs = make(rng)
    _sparsify(rng, params.consts[0], sparsity, zero_row)
    dense, csr = kernel(name), kernel(f"{name}_csr")
    shapes = [(x.shape, str(x.dtype)) for x in inputs]
    expected = dense.reference(params, inputs)
    assert csr.check(params) is None
    own = csr.params(params)
    g = csr.geometry(own, shapes)
    out_rows = g.out_h
    tiles = Tiles(max(1, -(-out_rows // 2)), max(1, g.out_channels // 3), "weights")  # several tiles, short tails
    prim = csr.schedule(csr.primfunc("k", own, shapes), tiles)
    assert prove_footprint(prim).total == sum(footprint(g, tiles).values())
    ours = _run(prim, inputs, own.consts, expected)
    theirs = _run(dense.primfunc("k", params, shapes), inputs, params.consts, expected)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(csr.reference(own, inputs), expected)


def test_grouped_conv_stays_dense_with_a_reason():
    params, _ = conv2d_case(np.random.default_rng(3), c=6, o=6, groups=3, k=3, pad=(1, 1, 1, 1))
    assert "grouped" in kernel("npu.conv2d_csr").check(params)


def _sparse_model(path: Path, folder: Path) -> Path:
    """conv 3x3 -> conv 3x3/2 -> GAP -> Gemm 64->512 -> ReLU -> Gemm, pruned to 90 % per layer."""
    rng = np.random.default_rng(0)
    inits = []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    nodes = [
        helper.make_node(
            "Conv",
            ["x", const("w1", rng.normal(0, 0.3, (32, 8, 3, 3))), const("b1", rng.normal(0, 0.1, 32))],
            ["c1"],
            pads=[1] * 4,
        ),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "Conv",
            ["r1", const("w2", rng.normal(0, 0.1, (64, 32, 3, 3))), const("b2", rng.normal(0, 0.1, 64))],
            ["c2"],
            pads=[1] * 4,
            strides=[2, 2],
        ),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["f"]),
        helper.make_node(
            "Gemm", ["f", const("wf", rng.normal(0, 0.2, (512, 64))), const("bf", rng.normal(0, 0.1, 512))], ["g1"], transB=1
        ),
        helper.make_node("Relu", ["g1"], ["r3"]),
        helper.make_node("Gemm", ["r3", const("wo", rng.normal(0, 0.1, (10, 512)))], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "sparse_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    dense = folder / "dense.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), dense)
    assert _prune_script().main([str(dense), str(path), "--sparsity", "0.9", "--scope", "layer"]) == 0
    return path


@pytest.fixture(scope="session")
def sparse_packages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sparse")
    model = _sparse_model(folder / "pruned.onnx", folder)
    qdq = folder / "pruned_qdq.onnx"
    tvm_npu.compile(model, output=folder / "auto.tar", save_quantized=qdq, sparse="auto")
    for mode in ("off", "force"):
        tvm_npu.compile(qdq, output=folder / f"{mode}.tar", sparse=mode)
    return {mode: folder / f"{mode}.tar" for mode in ("off", "auto", "force")}


def test_sparse_modes_choose_per_layer_and_agree_exactly(sparse_packages):
    x = {"x": np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)}
    outputs = {mode: tvm_npu.load(path).run(x)["y"] for mode, path in sparse_packages.items()}
    np.testing.assert_array_equal(outputs["auto"], outputs["off"])
    np.testing.assert_array_equal(outputs["force"], outputs["off"])
    layers = {
        mode: [row for row in read_package(path).metadata.extra["layers"] if row["weights"]]
        for mode, path in sparse_packages.items()
    }
    assert len(layers["off"]) == 3  # two convs and the first Gemm (NNCF leaves the last Gemm's output float)
    assert all(not row["kernel"].endswith("_csr") for row in layers["off"])
    assert all(row["kernel"].endswith("_csr") for row in layers["force"])
    for row in layers["auto"]:
        w = row["weights"]
        assert w["zeros"] >= 0.89
        base, variant = row["kernel"].removesuffix("_csr"), row["kernel"].removesuffix("_csr") + "_csr"
        wins = w[f"{variant}_cycles"] < w[f"{base}_cycles"]
        assert row["kernel"] == (variant if wins else base), row
    picked = [row["kernel"] for row in layers["auto"]]
    assert "npu.dense_csr" in picked and "npu.conv2d" in picked  # this model has both outcomes


def test_report_shows_original_and_encoded_weight_bytes(sparse_packages, capsys):
    assert main(["report", str(sparse_packages["force"]), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    weighted = [r for r in rows if int(r["weight_bytes_original"])]
    assert len(weighted) == 3
    for r in weighted:  # 90 % zeros: CSR (values + uint8/uint16 indices + row pointers) is smaller
        assert int(r["weight_bytes_encoded"]) < 0.5 * int(r["weight_bytes_original"])
    assert main(["report", str(sparse_packages["force"]), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["weight_bytes_encoded"] == sum(int(r["weight_bytes_encoded"]) for r in rows)
    assert summary["csr_layers"] == 3
    assert main(["report", str(sparse_packages["off"])]) == 0
    table = capsys.readouterr().out
    assert "Weights original / encoded" in table and "W KiB enc" in table


def test_unknown_sparse_mode_is_one_error(tmp_path):
    with pytest.raises(NpuError, match="sparse mode"):
        tvm_npu.compile(ROOT / "tvm_npu" / "data" / "default_model.onnx", output=tmp_path / "m.tar", sparse="maybe")


def test_prune_reaches_the_target_globally_and_per_layer(tmp_path):
    prune = _prune_script()
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(0, s, shape).astype(np.float32), n)
        for n, shape, s in (("a", (8, 4, 3, 3), 1.0), ("b", (16, 8), 0.01))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "a"], ["c"]),
            helper.make_node("Flatten", ["c"], ["f"]),
            helper.make_node("Gemm", ["f", "b"], ["y"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    per_layer = prune.prune(model, 0.75, "layer")
    assert all(abs(v - 0.75) < 0.01 for v in per_layer.values())
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    overall = prune.prune(model, 0.5, "global")
    assert overall["b"] == 1.0 and overall["a"] < 0.5  # one threshold: the small-magnitude layer goes first
    assert prune.main([str(tmp_path / "missing.onnx"), str(tmp_path / "o.onnx"), "--sparsity", "0.5"]) == 2
    assert not (tmp_path / "o.onnx").exists()
