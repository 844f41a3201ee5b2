"""`tvmc report` (table, json, csv, plot) and the summary `tvmc compile` prints, on the small INT8 CNN."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_npu
from tvm_npu.cli import main
from tvm_npu.frontend import import_onnx, load_onnx
from tvm_npu.package import read_package
from tvm_npu.partition import partition
from tvm_npu.registry import kernels
from tvm_npu.report import cpu_operator_counts, mac_share, measured_host_time, summary_text
from tvm_npu.runtime import host_mismatch
from test_int8_end_to_end import make_small_cnn


@pytest.fixture(scope="session")
def cnn_package(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    return tvm_npu.compile(make_small_cnn(folder / "cnn.onnx"), output=folder / "cnn.tar", target="npu/micro")


def test_metadata_holds_plan_and_estimates(cnn_package):
    extra = cnn_package.metadata.extra
    # every kind is SRAM-tiled but those without a schedule (the flatten's npu.move, a DRAM-to-DRAM DMA copy;
    # the classifier's npu.softmax)
    untiled = {kernel.name for kernel in kernels() if kernel.schedule is None}
    npu = [layer for layer in extra["layers"] if layer["placement"] == "npu" and layer["kernel"] not in untiled]
    assert {layer["kernel"] for layer in npu} >= {"npu.conv2d", "npu.pool", "npu.elementwise"}
    assert all(layer["tiles"] and layer["sram_proven"] == layer["sram_planned"] for layer in npu)
    perf = extra["performance"]
    assert len(perf["layers"]) == len(extra["layers"])
    assert {row["kernel"] for row in perf["layers"] if row["tiles"] == "not tiled"} <= untiled
    for row in perf["layers"]:
        assert row["cycles"] >= row["roofline_cycles"] - 1e-9
    summary = perf["summary"]
    assert 0 < summary["sram_peak_proven"] <= summary["sram_bytes"]
    assert summary["dram_bytes"] >= summary["compulsory_bytes"]


def test_layers_are_named_as_in_the_onnx_model(cnn_package):
    """A layer is named by the ONNX node (or, unnamed, the tensor) its output quantize holds, seen through
    a fused activation: NNCF names the folded convs; a layer without its own QuantizeLinear is kind_N."""
    model = onnx.load_from_string(read_package(cnn_package.package_path).onnx_bytes)
    tensors = {node.name for node in model.graph.node} | {out for node in model.graph.node for out in node.output}
    names = [row["name"] for row in cnn_package.metadata.extra["performance"]["layers"]]
    assert len(set(names)) == len(names)
    convs = [row["name"] for row in cnn_package.metadata.extra["performance"]["layers"] if row["kernel"] == "npu.conv2d"]
    assert len(convs) == 3 and all(name in tensors for name in convs), convs
    assert all(name in tensors or re.fullmatch(r"[a-z0-9]+_\d+", name) for name in names), names


def test_report_formats_and_plot(cnn_package, capsys, tmp_path):
    path = str(cnn_package.package_path)
    assert main(["report", path, "--plot", str(tmp_path / "layers.png")]) == 0
    table = capsys.readouterr().out
    assert "Network summary" in table and "Inferences/s" in table and "npu.conv2d" in table and "npu.pool" in table
    names = [row["name"] for row in cnn_package.metadata.extra["performance"]["layers"]]
    assert all(name in table for name in names)
    assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["report", path, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["npu_layers"] == len([r for r in data["layers"] if r["placement"] == "npu"])
    assert main(["report", path, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(data["layers"]) and float(rows[0]["cycles"]) > 0
    assert [row["name"] for row in rows] == [row["name"] for row in data["layers"]] == names


def test_compile_prints_the_summary(tmp_path, capsys):
    model = make_small_cnn(tmp_path / "cnn.onnx")
    assert main(["compile", str(model), "-o", str(tmp_path / "m.tar"), "--target", "npu/micro"]) == 0
    out = capsys.readouterr().out
    assert "Network summary" in out and "SRAM used (proven peak)" in out and "Total cycles" in out
    assert "Conv/gemm MACs on the NPU" in out and "Host time per inference" in out


def test_report_of_a_missing_package_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.tar")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_conv_and_gemm_macs_are_counted_wherever_they_run(tmp_path):
    """Grouped conv, transposed conv, Gemm and a MatMul of two activations, in float (all on the CPU):
    each offload-report row carries its MACs, by the textbook formulas."""
    rng = np.random.default_rng(0)
    weights = {"w": (6, 2, 3, 3), "wt": (6, 3, 2, 2), "wg": (768, 10)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], group=2),  # [1,6,8,8]
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2]),  # [1,3,16,16]
        helper.make_node("MatMul", ["t", "t"], ["m"]),  # [1,3,16,16] x [1,3,16,16]
        helper.make_node("Flatten", ["m"], ["f"]),
        helper.make_node("Gemm", ["f", "wg"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "macs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "macs.onnx")
    _, rows = partition(import_onnx(load_onnx(tmp_path / "macs.onnx")).mod)
    counted = sorted(row["macs"] for row in rows if row["macs"])
    expected = {
        "conv": 6 * 8 * 8 * (2 * 3 * 3),
        "conv_transpose": 6 * 8 * 8 * (3 * 2 * 2),
        "matmul": 3 * 16 * 16 * 16,
        "gemm": 768 * 10,
    }
    assert counted == sorted(expected.values())
    assert all(row["runs_on"] == "cpu" for row in rows)


def test_summary_says_what_runs_where(cnn_package, tmp_path):
    """MAC share from the offload report; the NPU throughput labelled as the NPU part while CPU operators
    remain; host time measured on this host, by kind and per CPU function."""
    metadata = cnn_package.metadata
    share = mac_share(metadata)
    rows = metadata.extra["operators"]
    assert share["total_macs"] == sum(row["macs"] for row in rows) > 0
    assert share["npu_macs"] == sum(row["macs"] for row in rows if row["runs_on"] == "npu") > 0
    host = measured_host_time(cnn_package.package_path)
    assert host["total_ms"] > 0 and abs(host["cpu_share"] + host["npu_share"] + host["vm_share"] - 1) < 1e-9
    text = summary_text(metadata, host)
    assert f"Conv/gemm MACs on the NPU    {math.floor(1000 * share['npu_share']) / 10:.1f} %" in text
    assert ("(NPU part only; " in text) == (cpu_operator_counts(metadata)[0] > 0)
    assert "Host time per inference" in text and "CPU operators by host time" in text


def test_npu_rate_is_labelled_the_npu_part_while_cpu_operators_remain(tmp_path):
    """The small CNN compiled without quantization: every operator stays on the CPU, so the modelled rate
    covers none of them and says so."""
    fp32 = tvm_npu.compile(
        make_small_cnn(tmp_path / "cnn.onnx"), output=tmp_path / "fp32.tar", target="npu/micro", quantize_model=False
    )
    count, _ = cpu_operator_counts(fp32.metadata)
    assert count > 0
    assert f"(NPU part only; {count} CPU operators not included)" in summary_text(fp32.metadata, "not measured")


def test_host_time_is_not_measured_for_a_library_built_for_another_cpu(cnn_package):
    metadata = cnn_package.metadata
    assert host_mismatch(metadata) is None
    elsewhere = replace(
        metadata, target={**metadata.target, "mcpu": "some-other-cpu"}, target_isa=[*metadata.target_isa, "no-cpu-has-this"]
    )
    reason = host_mismatch(elsewhere)
    assert reason == "the library was built for some-other-cpu, this CPU lacks no-cpu-has-this"
    assert f"not measured: {reason}" in summary_text(elsewhere, reason)


def test_energy_per_layer_and_network_from_the_cited_constants(cnn_package, capsys):
    """`tvmc report --format json` carries each layer's energy split and the network's, which is their sum;
    each is MACs x 0.3 pJ + SRAM bytes x Horowitz's pJ/B at the preset's SRAM size + DRAM bytes x 162.5 pJ."""
    from tvm_npu.energy import DRAM_PJ_PER_BYTE, MAC_PJ, sram_pj_per_byte

    assert [sram_pj_per_byte(s) for s in (4096, 8192, 32768, 1 << 20, 1 << 24)] == [1.25, 1.25, 2.5, 12.5, 12.5]
    assert 2.5 < sram_pj_per_byte(384 * 1024) < 12.5
    assert main(["report", str(cnn_package.package_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    npu = [r for r in data["layers"] if r["placement"] == "npu"]
    sram_pj = sram_pj_per_byte(data["npu_config"]["sram_kib"] * 1024)
    for r in npu:
        assert r["energy_mac_pj"] == pytest.approx(r["macs"] * MAC_PJ)
        assert r["energy_dram_pj"] == pytest.approx(r["dram_bytes"] * DRAM_PJ_PER_BYTE)
        assert r["energy_sram_pj"] == pytest.approx((r["sram_traffic"] + r["dram_bytes"]) * sram_pj)
        assert r["sram_traffic"] > 0
    s = data["summary"]
    for key in ("energy_pj", "energy_mac_pj", "energy_sram_pj", "energy_dram_pj"):
        assert s[key] == pytest.approx(sum(r[key] for r in npu))
    assert s["energy_dram_share"] == pytest.approx(s["energy_dram_pj"] / s["energy_pj"]) and 0 < s["energy_dram_share"] < 1
    assert main(["report", str(cnn_package.package_path)]) == 0
    assert f"({100 * s['energy_dram_share']:.1f} % DRAM" in capsys.readouterr().out
