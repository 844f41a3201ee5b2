"""Shared fixtures: compiled packages are built once per session (TVM builds are slow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvm_npu


def run_tvmc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the real console entry point in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "tvm_npu", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_conv_model(path: Path, batch: int | str = 1, channels: int = 4) -> Path:
    """A tiny Conv+Relu model; a str `batch` makes the batch dimension dynamic."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, channels, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["y"]),
        ],
        "tiny_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, 8, 8])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def conv_model(tmp_path_factory) -> Path:
    return make_conv_model(tmp_path_factory.mktemp("models") / "conv.onnx")


@pytest.fixture(scope="session")
def conv_package(conv_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packages") / "conv.tar"
    tvm_npu.compile(conv_model, output=out, target="npu/micro", quantize_model=False)
    return out
