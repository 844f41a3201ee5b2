"""Cascading: a fused conv -> conv pair is bit-exact against its two kernels, its SRAM footprint read back
from the lowered TIR equals the plan, the planner never picks a cascade that moves more DRAM bytes than
the two layers apart, and the report says which layers were fused."""

from __future__ import annotations

import json

from dataclasses import replace

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import tvm_npu
from tvm_npu.cascade import Cascade, _best, primfunc
from tvm_npu.cli import build_parser
from tvm_npu.frontend import load_onnx
from tvm_npu.perf import estimate
from tvm_npu.tiling import Geometry, cascade_footprint
from tvm_npu.plan import LayerPlan, choose_tiles
from tvm_npu.quantize import quantize
from tvm_npu.registry import KernelParams, kernel
from tvm_npu.report import report
from tvm_npu.sram import prove_footprint
from tvm_npu.target import PRESETS

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})
CONV = kernel("npu.conv2d")


def _conv_params(rng, c_in, c_out, size, pad, stride=1, groups=1) -> KernelParams:
    return KernelParams(
        {
            "strides": (stride, stride),
            "padding": (pad,) * 4,
            "dilation": (1, 1),
            "groups": groups,
            "upsample": (1, 1),
            "zx": int(rng.integers(-5, 5)),
            "zy": int(rng.integers(-5, 5)),
            "lo": -128,
            "hi": 127,
            "out_dtype": "int8",
        },
        [
            rng.integers(-128, 128, (c_out, c_in // groups, size, size)).astype(np.int8),
            rng.integers(-2000, 2000, c_out).astype(np.int64),
            rng.integers(2**30, 2**31, c_out).astype(np.int64),
            np.full(c_out, 40, np.int64),
        ],
    )


def _planned(name: str, params: KernelParams, x_shape) -> LayerPlan:
    """A planned conv layer as `cascade.primfunc` reads it: kernel, geometry, parameters and input."""
    inputs = [(tuple(x_shape), "int8")]
    return LayerPlan(name, f"f{name}", "npu.conv2d", geometry=CONV.geometry(params, inputs), params=params, inputs=inputs)


# (input size, band rows, producer (in, out, kernel, pad, stride, groups), consumer (out, kernel, pad, stride, groups))
PAIRS = [
    (9, 2, (4, 8, 1, 0, 1, 1), (8, 3, 1, 1, 1)),  # ResNet bottleneck 1x1 -> 3x3: the intermediate rolls
    (8, 3, (8, 8, 3, 1, 1, 8), (16, 1, 0, 1, 1)),  # depthwise -> pointwise: the producer's input rolls
    (11, 2, (4, 8, 3, 1, 1, 1), (8, 3, 1, 2, 1)),  # strided consumer, both roll, a short last band
    (12, 2, (4, 8, 3, 1, 2, 1), (8, 3, 1, 2, 8)),  # strided producer, depthwise strided consumer
    (9, 2, (4, 8, 3, 1, 1, 1), (8, 1, 0, 2, 1)),  # strided 1x1 consumer: skipped rows and columns, nothing rolls
    (8, 3, (4, 6, 3, 1, 1, 2), (8, 5, 2, 1, 2)),  # grouped convs, a 5x5 consumer
]


@pytest.mark.parametrize("index", range(len(PAIRS)))
def test_cascade_is_bit_exact_and_its_sram_proof_equals_the_plan(index):
    size, rows, (c_in, c_mid, k1, p1, s1, g1), (c_out, k2, p2, s2, g2) = PAIRS[index]
    rng = np.random.default_rng(index)
    first, second = _conv_params(rng, c_in, c_mid, k1, p1, s1, g1), _conv_params(rng, c_mid, c_out, k2, p2, s2, g2)
    x = rng.integers(-128, 128, (1, c_in, size, size)).astype(np.int8)
    middle = CONV.reference(first, [x])
    expected = CONV.reference(second, [middle])
    producer, consumer = (_planned(name, p, shape) for name, p, shape in (("a", first, x.shape), ("b", second, middle.shape)))
    fused = primfunc(producer, consumer, rows)
    proof = prove_footprint(fused)
    assert proof.total == sum(cascade_footprint(producer.geometry, consumer.geometry, rows).values()), proof.buffers
    assert {"Xp_p", "acc_p", "Xp_c", "acc_c", "Y_c"} <= {name.split("_global")[0] for name, _ in proof.buffers}
    lib = tvm.compile(tvm.IRModule({"main": fused}), target=TARGET)
    out = tvm.runtime.empty(expected.shape, "int8")
    lib["main"](*[tvm.runtime.tensor(a) for a in [x, *first.consts, *second.consts]], out)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_cascade_sram_proof_equals_the_plan_on_random_same_padded_pairs():
    """Kernel sizes 1..7 per axis, strides 1-2 per axis, grouped or not, any band height: the class of
    convolutions `cascade` fuses (odd kernels, k // 2 padding)."""
    rng = np.random.default_rng(11)
    for _ in range(25):
        specs = []
        for _layer in range(2):
            kernel_hw = tuple(int(v) for v in rng.choice([1, 3, 5, 7], 2))
            specs.append((kernel_hw, tuple(int(v) for v in rng.choice([1, 2], 2)), 2 if rng.random() < 0.3 else 1))
        x_shape = (1, 4, *(int(v) for v in rng.integers(3, 16, 2)))
        params = []
        for (kh, kw), stride, groups in specs:
            p = _conv_params(rng, 4, 4, 1, 0, groups=groups)
            w = rng.integers(-128, 128, (4, 4 // groups, kh, kw)).astype(np.int8)
            params.append(KernelParams(p.attrs | {"strides": stride, "padding": (kh // 2, kw // 2) * 2}, [w, *p.consts[1:]]))
        g1 = CONV.geometry(params[0], [(x_shape, "int8")])
        g2 = CONV.geometry(params[1], [((1, 4, g1.out_h, g1.out_w), "int8")])
        rows = int(rng.integers(1, g2.out_h + 1))
        producer, consumer = (
            _planned(n, p, shape) for n, p, shape in (("a", params[0], x_shape), ("b", params[1], (1, 4, g1.out_h, g1.out_w)))
        )
        fused = primfunc(producer, consumer, rows)
        assert prove_footprint(fused).total == sum(cascade_footprint(g1, g2, rows).values()), (g1, g2, rows)


def _random_pair(rng) -> tuple[Geometry, Geometry]:
    size = int(rng.choice([7, 14, 28, 56]))
    c_in, c_mid, c_out = (int(rng.choice([16, 32, 64, 128, 256, 512])) for _ in range(3))
    k1, k2 = (int(rng.choice([1, 3, 5])) for _ in range(2))
    s1, s2 = (int(rng.choice([1, 1, 2])) for _ in range(2))
    depthwise = rng.random() < 0.3
    groups = c_in if depthwise else 1
    c_mid = c_in if depthwise else c_mid
    mid = (size + 2 * (k1 // 2) - k1) // s1 + 1
    out = (mid + 2 * (k2 // 2) - k2) // s2 + 1
    producer = Geometry("conv2d", 1, c_in, size, size, c_mid, mid, mid, (k1, k1), (s1, s1), (1, 1), (k1 // 2,) * 4, groups)
    consumer = Geometry("conv2d", 1, c_mid, mid, mid, c_out, out, out, (k2, k2), (s2, s2), (1, 1), (k2 // 2,) * 4)
    return producer, consumer


def test_cascading_never_increases_dram_traffic():
    """Over generated conv pairs on every preset, the model's whole-network DRAM bytes with the planner's
    cascades are at most those without, and every cascade fits the SRAM."""
    rng = np.random.default_rng(7)
    fused_somewhere = 0
    for _ in range(30):
        g1, g2 = _random_pair(rng)
        for config in PRESETS.values():
            layers = []
            for row, g in enumerate((g1, g2)):
                tiles, _ = choose_tiles(g, config)
                layers.append(LayerPlan(f"lv{row}", f"f{row}", "npu.conv2d", geometry=g, tiles=tiles, row=row))
            if any(layer.tiles is None for layer in layers):
                continue
            apart = estimate(layers, config).summary()
            best = _best(*layers, config)
            if best is None:
                continue
            rows, size, saved = best
            assert size <= config.sram_bytes
            fused = Cascade(0, *layers, rows, size, saved)
            layers = [replace(layer, cascade=fused, sram_planned=size) for layer in layers]
            together = estimate(layers, config).summary()
            assert together["dram_bytes"] <= apart["dram_bytes"], (g1.describe(), g2.describe(), config.name)
            assert apart["dram_bytes"] - together["dram_bytes"] == saved == together["dram_saved_by_cascades"]
            assert together["cascaded_layers"] == 2
            fused_somewhere += 1
    assert fused_somewhere > 10  # the sample exercises cascades, not only refusals


def _chain_model(path):
    """conv 1x1 -> conv 3x3 -> (depthwise 3x3 + residual add) -> conv 1x1: the 3x3's output has two readers."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), n)
        for n, s in (("w1", (16, 8, 1, 1)), ("w2", (16, 16, 3, 3)), ("w3", (16, 1, 3, 3)), ("w4", (16, 16, 1, 1)))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1], group=16),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Add", ["r2", "r3"], ["a"]),
        helper.make_node("Conv", ["a", "w4"], ["c4"]),
        helper.make_node("Relu", ["c4"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    loaded = load_onnx(path)
    onnx.save(quantize(loaded.model, loaded.inputs, None, seed=0), path)
    return path


@pytest.fixture(scope="session")
def chain_packages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cascade")
    model = _chain_model(folder / "chain_qdq.onnx")
    return {
        cascade: tvm_npu.compile(model, output=folder / f"chain_{cascade}.tar", target="npu/micro", cascade=cascade)
        for cascade in (True, False)
    }


def test_cascaded_model_is_bit_exact_and_moves_fewer_dram_bytes(chain_packages):
    x = {"x": np.random.default_rng(3).standard_normal((1, 8, 16, 16)).astype(np.float32)}
    fused, apart = (tvm_npu.load(chain_packages[c].package_path).run(x)["y"] for c in (True, False))
    np.testing.assert_array_equal(fused, apart)
    with_, without = (chain_packages[c].metadata.extra["performance"]["summary"] for c in (True, False))
    assert with_["cascaded_layers"] == 2 and without["cascaded_layers"] == 0
    assert with_["dram_bytes"] == without["dram_bytes"] - with_["dram_saved_by_cascades"] < without["dram_bytes"]
    layers = chain_packages[True].metadata.extra["layers"]
    fused_layers = [layer for layer in layers if layer["cascade"] is not None]
    # conv1 -> conv3x3 fuses; the 3x3's output also feeds the residual add, so it cannot feed a cascade.
    assert [layer["cascade"]["role"] for layer in fused_layers] == ["producer", "consumer"]
    assert [list(layer["geometry"]["kernel"]) for layer in fused_layers] == [[1, 1], [3, 3]]
    for layer in fused_layers:
        assert layer["sram_proven"] == layer["sram_planned"] <= chain_packages[True].metadata.npu_config.sram_bytes


def test_report_marks_cascaded_layers(chain_packages):
    metadata = chain_packages[True].metadata
    table = report(metadata)
    assert "Cascaded layers              2 in 1 cascades" in table
    producer, consumer = (r for r in json.loads(report(metadata, "json"))["layers"] if r["cascade"])
    assert f"cascade 0 into {consumer['name']}" in table
    assert f"cascade 0 from {producer['name']}" in table
    assert "Cascaded layers              0 in 0 cascades" in report(chain_packages[False].metadata)


def test_no_cascade_flag():
    assert build_parser().parse_args(["compile", "m.onnx", "--cascade"]).cascade is True
    assert build_parser().parse_args(["compile", "m.onnx"]).cascade is False
    assert build_parser().parse_args(["tune", "m.onnx", "-o", "t.json", "--cascade"]).cascade is True
    assert build_parser().parse_args(["tune", "m.onnx", "-o", "t.json"]).cascade is False
