"""`tvmc report` (table, json, csv, plot) and the summary `tvmc compile` prints, on the small INT8 CNN."""

from __future__ import annotations

import csv
import io
import json
import re

import onnx

import pytest

import tvm_npu
from tvm_npu.cli import main
from tvm_npu.package import read_package
from test_int8_end_to_end import make_small_cnn


@pytest.fixture(scope="session")
def cnn_package(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    return tvm_npu.compile(make_small_cnn(folder / "cnn.onnx"), output=folder / "cnn.tar", target="npu/micro")


def test_metadata_holds_plan_and_estimates(cnn_package):
    extra = cnn_package.metadata.extra
    # every kind is SRAM-tiled but npu.move (the flatten before the classifier), a DRAM-to-DRAM DMA copy
    npu = [layer for layer in extra["layers"] if layer["placement"] == "npu" and layer["kernel"] != "npu.move"]
    assert {layer["kernel"] for layer in npu} >= {"npu.conv2d", "npu.pool", "npu.elementwise"}
    assert all(layer["tiles"] and layer["sram_proven"] == layer["sram_planned"] for layer in npu)
    perf = extra["performance"]
    assert len(perf["layers"]) == len(extra["layers"])
    assert {row["kernel"] for row in perf["layers"] if row["tiles"] == "not tiled"} <= {"npu.move"}
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


def test_report_of_a_missing_package_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.tar")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
