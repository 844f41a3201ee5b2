"""The SRAM plan and schedules: scheduled kernels stay bit-exact, the footprint read back from the
lowered TIR equals the plan, a layer that cannot fit stops compilation with one line (or, with
--allow-cpu-fallback, runs on the CPU and the offload report says so)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import tvm_npu
from tvm_npu.build import pass_context
from tvm_npu.errors import EXIT_INTERNAL_ERROR, NpuError
from tvm_npu.lower import check_footprint, lower_layer
from tvm_npu.tiling import Geometry, Tiles, footprint
from tvm_npu.plan import LayerPlan, _choose, choose_tiles
from tvm_npu.registry import kernel, kernels
from tvm_npu.sram import prove_footprint
from tvm_npu.target import resolve_target
from test_kernels import CASES, conv2d_case, pool_case

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})


def _run_scheduled(name, params, inputs, tiles):
    npu_kernel = kernel(name)
    specs = [(x.shape, str(x.dtype)) for x in inputs]
    scheduled = npu_kernel.schedule(npu_kernel.primfunc("k", params, specs), tiles)
    with pass_context():
        lib = tvm.compile(tvm.IRModule({"k": scheduled}), target=TARGET)
    expected = npu_kernel.reference(params, inputs)
    out = tvm.runtime.empty(expected.shape, str(expected.dtype))
    lib["k"](*[tvm.runtime.tensor(a) for a in list(inputs) + list(params.consts)], out)
    return scheduled, out.numpy(), expected


TILED = [k.name for k in kernels() if k.schedule is not None and k.variant_of is None]  # variants: tests/test_sparse.py


# Kernels without an SRAM-tiled schedule yet (whole tensors staged; the report says "not tiled"): a new
# kernel is tiled unless it is added here, and one that gains a schedule must leave this list.
UNTILED = ["npu.matmul", "npu.move", "npu.resize", "npu.softmax"]


def test_every_kernel_is_tiled_or_declared_untiled():
    assert sorted(TILED) == sorted(set(CASES) - set(UNTILED))
    assert sorted(k.name for k in kernels() if k.schedule is None) == UNTILED


@pytest.mark.parametrize("name, index", [(n, i) for n in TILED for i in range(len(CASES[n]))])
@pytest.mark.parametrize("order", ["weights", "rows"])
def test_scheduled_kernel_is_bit_exact_and_its_sram_proof_equals_the_plan(name, index, order):
    rng = np.random.default_rng(1000 * index + len(name))  # the same cases as test_kernels
    params, inputs = CASES[name][index](rng)
    g = kernel(name).geometry(params, [(x.shape, str(x.dtype)) for x in inputs])
    channels = g.per_group * max(1, g.groups // 2) if g.groups > 1 else max(1, g.out_channels // 3)
    tiles = Tiles(max(1, g.out_h // 2), channels, order)
    scheduled, ours, expected = _run_scheduled(name, params, inputs, tiles)
    np.testing.assert_array_equal(ours, expected)
    proof = prove_footprint(scheduled)
    assert proof.total == sum(footprint(g, tiles).values()), proof.buffers
    assert all(size > 0 for _, size in proof.buffers) and len(proof.buffers) >= len(footprint(g, tiles))


def test_a_proof_that_differs_from_the_plan_or_finds_no_sram_is_an_internal_error():
    """lower_layer's proof must be the plan exactly: more, less, or no SRAM at all each stop the build."""
    rng = np.random.default_rng(3)
    params, inputs = CASES["npu.conv2d"][0](rng)
    npu_kernel, specs = kernel("npu.conv2d"), [(x.shape, str(x.dtype)) for x in inputs]
    g = npu_kernel.geometry(params, specs)
    tiles = Tiles(max(1, g.out_h // 2), g.out_channels, "weights")
    planned = sum(footprint(g, tiles).values())
    _, proof = lower_layer(npu_kernel, params, specs, tiles, planned)
    assert proof.total == planned > 0
    for wrong in (planned - 1, planned + 1):
        with pytest.raises(NpuError, match=f"allocates {planned} B of SRAM .* promised {wrong} B") as err:
            lower_layer(npu_kernel, params, specs, tiles, wrong)
        assert err.value.exit_code == EXIT_INTERNAL_ERROR
    untiled, _ = lower_layer(npu_kernel, params, specs, None)  # the default schedule: no SRAM buffer at all
    with pytest.raises(NpuError, match="allocates 0 B of SRAM"):
        check_footprint(untiled, 0, None, "npu.conv2d")


# Stride 2 over a padded height of 8 reads rows 0-6 only (3 output rows), and 2-row tiles leave a short last one:
# a padded input reaching the unread row 7 made TVM compact Xp to 9 rows where the plan has 5.
STRIDED_SHORT_LAST_TILE = {
    "npu.conv2d": lambda rng: conv2d_case(rng, c=9, o=6, hw=(7, 6), k=3, stride=2, pad=(0, 2, 1, 2), dilation=1),
    "npu.pool": lambda rng: pool_case(rng, mode="max", c=3, hw=(7, 7), k=3, stride=2, pad=(0, 0, 1, 0)),
}


@pytest.mark.parametrize("name", sorted(STRIDED_SHORT_LAST_TILE))
@pytest.mark.parametrize("order", ["weights", "rows"])
def test_strided_window_with_unread_padded_rows_and_a_short_last_tile_allocates_the_plan(name, order):
    params, inputs = STRIDED_SHORT_LAST_TILE[name](np.random.default_rng(7))
    g = kernel(name).geometry(params, [(x.shape, str(x.dtype)) for x in inputs])
    assert (g.out_h, g.in_h + g.padding[0] + g.padding[2], g.rows_in(g.out_h)) == (3, 8, 7)  # the shape described
    tiles = Tiles(2, 4 if name == "npu.conv2d" else 2, order)
    scheduled, ours, expected = _run_scheduled(name, params, inputs, tiles)
    np.testing.assert_array_equal(ours, expected)
    proof = prove_footprint(scheduled)
    assert proof.total == sum(footprint(g, tiles).values()), proof.buffers


WEIGHTLESS = [n for n in TILED if n not in ("npu.conv2d", "npu.dense")]


@pytest.mark.parametrize("name, index", [(n, i) for n in WEIGHTLESS for i in range(len(CASES[n]))])
def test_planned_weightless_kernels_are_bit_exact_on_two_presets(name, index):
    """The planner's own tiles, on npu/mid and on npu/micro with 1 KiB of SRAM (several tiles each)."""
    rng = np.random.default_rng(1000 * index + len(name))
    params, inputs = CASES[name][index](rng)
    g = kernel(name).geometry(params, [(x.shape, str(x.dtype)) for x in inputs])
    for config in (resolve_target("npu/mid"), resolve_target("npu/micro", sram_kib=1)):
        tiles, smallest = choose_tiles(g, config)
        assert tiles is not None, (g.describe(), smallest)
        scheduled, ours, expected = _run_scheduled(name, params, inputs, tiles)
        np.testing.assert_array_equal(ours, expected)
        proof = prove_footprint(scheduled)
        assert proof.total == sum(footprint(g, tiles).values()) <= config.sram_bytes, proof.buffers


def test_chosen_tiles_fit_and_prefer_no_halo_rereads():
    g = Geometry("conv2d", 1, 64, 56, 56, 64, 56, 56, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    mid = resolve_target("npu/mid")
    tiles, smallest = choose_tiles(g, mid)
    assert sum(footprint(g, tiles).values()) <= mid.sram_bytes and smallest < mid.sram_bytes
    assert tiles.rows == 56  # the whole input stays: compulsory traffic only


@pytest.mark.parametrize(
    "g",
    [
        Geometry("conv2d", 1, 512, 14, 14, 512, 14, 14, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
        Geometry("pool", 1, 64, 224, 224, 64, 112, 112, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), groups=64, label="max pool"),
        Geometry("elementwise", 1, 1, 256, 56 * 56, 1, 256, 56 * 56, operands=2, label="add 2x 1x256x56x56"),
    ],
    ids=lambda g: g.kind,
)
def test_no_tiling_fits_is_one_line_naming_layer_footprint_and_sram(g):
    tiny = resolve_target("npu/mid", sram_kib=1)
    layer = LayerPlan("lv7", "f", f"npu.{g.kind}", geometry=g)
    with pytest.raises(NpuError) as err:
        _choose(layer, tiny, allow_cpu_fallback=False)
    message = str(err.value)
    _, smallest = choose_tiles(g, tiny)
    assert "\n" not in message and "lv7" in message and f"{smallest} B" in message and "1024 B" in message
    assert "--allow-cpu-fallback" in message
    layer = _choose(layer, tiny, allow_cpu_fallback=True)
    assert layer.placement == "cpu" and "sram" in layer.reason


@pytest.fixture(scope="session")
def wide_conv_model(tmp_path_factory):
    """conv 3x3 16->64 -> ReLU -> conv 3x3 64->64 -> ReLU -> GAP: the second conv needs > 1 KiB of SRAM."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, s).astype(np.float32), n)
        for n, s in (("w1", (64, 16, 3, 3)), ("w2", (64, 64, 3, 3)))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 1, 1])],
        inits,
    )
    path = tmp_path_factory.mktemp("models") / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_compile_stops_when_no_tiling_fits_and_falls_back_when_allowed(wide_conv_model, tmp_path):
    with pytest.raises(NpuError, match=r"needs at least \d+ B of SRAM .* has 1024 B"):
        tvm_npu.compile(wide_conv_model, output=tmp_path / "a.tar", target=resolve_target("npu/micro", sram_kib=1))
    result = tvm_npu.compile(
        wide_conv_model, output=tmp_path / "b.tar", target=resolve_target("npu/micro", sram_kib=1), allow_cpu_fallback=True
    )
    extra = result.metadata.extra
    fallback = [row for row in extra["operators"] if row["reason"].startswith("sram:")]
    assert fallback and all(row["runs_on"] == "cpu" for row in fallback)
    assert any(layer["placement"] == "cpu" for layer in extra["layers"])
    assert extra["performance"]["summary"]["sram_fallback_layers"] >= 1
    x = np.random.default_rng(1).uniform(0, 1, (1, 16, 8, 8)).astype(np.float32)
    small = tvm_npu.load(result.package_path).run({"x": x})["y"]
    full = tvm_npu.compile(wide_conv_model, output=tmp_path / "c.tar", target="npu/micro")
    for layer in full.metadata.extra["layers"]:
        if layer["tiles"] is not None:
            assert layer["sram_proven"] == layer["sram_planned"] <= full.metadata.npu_config.sram_bytes
    reference = tvm_npu.load(full.package_path).run({"x": x})["y"]
    assert np.abs(small - reference).max() < 0.2 * (np.abs(reference).max() + 1e-6)


@pytest.mark.parametrize("extent, lanes", [(2100, 15), (160, 16), (12, 12), (17, None)])
def test_host_vectorization_is_a_divisor_of_the_loop_at_most_host_vector_lanes(extent, lanes):
    """A whole output row as one vector (2100 lanes in a YOLO head) made LLVM take minutes per kernel."""
    from tvm import s_tir, te, tirx

    from tvm_npu.sram import HOST_VECTOR_LANES, vectorize

    x = te.placeholder((3, extent), "int8", "X")
    sch = s_tir.Schedule(te.create_prim_func([x, te.compute((3, extent), lambda i, j: x[i, j] + 1, name="Y")]))
    vectorize(sch, sch.get_loops(sch.get_sblock("Y"))[-1])
    loops = [sch.get(loop) for loop in sch.get_loops(sch.get_sblock("Y"))]
    vectorized = [int(loop.extent) for loop in loops if loop.kind == tirx.ForKind.VECTORIZED]
    assert vectorized == ([] if lanes is None else [lanes]) and all(v <= HOST_VECTOR_LANES for v in vectorized)
    assert int(np.prod([int(loop.extent) for loop in loops])) == 3 * extent
