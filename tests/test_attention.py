"""A transformer block's integer path as a QDQ model (the form ONNX Runtime's quantizer writes; NNCF
leaves attention scores in float): tokens reshaped and transposed (npu.move), Q x K^T (npu.matmul),
Softmax (npu.softmax), P x V (npu.matmul). Everything but the QDQ boundary runs on the NPU, the moves
are exact copies, and the outputs agree with OpenVINO on the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_npu
from tvm_npu.validate import compare, openvino_outputs, quantization_steps

TOKENS, WIDTH = 6, 8


def make_attention_model(path: Path) -> Path:
    """x [1, WIDTH, 2, 3] -> Reshape [1, WIDTH, TOKENS] -> Transpose [1, TOKENS, WIDTH] (q = k = v = the
    tokens) -> MatMul(q, k^T) -> Softmax -> MatMul(p, v); each result behind its own QuantizeLinear."""
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(x, scale, zero_point, name):
        scale, zero_point = const(f"{name}_s", np.float32(scale)), const(f"{name}_z", np.int8(zero_point))
        q = helper.make_node("QuantizeLinear", [x, scale, zero_point], [f"{name}_q"])
        dq = helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])
        nodes.extend([q, dq])
        return f"{name}_dq"

    nodes.append(helper.make_node("DequantizeLinear", ["x", const("x_s", np.float32(0.05)), const("x_z", np.int8(2))], ["x_dq"]))
    nodes.append(helper.make_node("Reshape", ["x_dq", const("shape", np.array([1, WIDTH, TOKENS], np.int64))], ["seq"]))
    seq = qdq("seq", 0.05, 2, "seq")
    nodes.append(helper.make_node("Transpose", [seq], ["tokens"], perm=[0, 2, 1]))
    tokens = qdq("tokens", 0.05, 2, "tokens")
    nodes.append(helper.make_node("Transpose", [tokens], ["keys"], perm=[0, 2, 1]))
    keys = qdq("keys", 0.05, 2, "keys")
    nodes.append(helper.make_node("MatMul", [tokens, keys], ["scores"]))
    scores = qdq("scores", 0.08, -10, "scores")
    nodes.append(helper.make_node("Softmax", [scores], ["p"], axis=-1))
    p = qdq("p", 1 / 255, -128, "p")
    nodes.append(helper.make_node("MatMul", [p, tokens], ["attended"]))
    out_scale, out_zero_point = const("out_s", np.float32(0.04)), const("out_z", np.int8(0))
    nodes.append(helper.make_node("QuantizeLinear", ["attended", out_scale, out_zero_point], ["y"]))
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [1, WIDTH, 2, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.INT8, [1, TOKENS, WIDTH]),
            helper.make_tensor_value_info("tokens_q", TensorProto.INT8, [1, TOKENS, WIDTH]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def attention(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attention")
    path = make_attention_model(folder / "attention.onnx")
    result = tvm_npu.compile(path, output=folder / "attention.tar", target="npu/micro")
    return path, result.package_path, result.metadata.extra["operators"]


def test_attention_runs_on_the_npu(attention):
    _, _, operators = attention
    npu = [row["kernel"] for row in operators if row["runs_on"] == "npu"]
    assert sorted(npu) == sorted(["npu.move"] * 3 + ["npu.matmul"] * 2 + ["npu.softmax"]), operators
    assert all(row["ops"][0] in ("relax.quantize", "relax.dequantize") for row in operators if row["runs_on"] == "cpu")


def test_attention_moves_exactly_and_matches_openvino(attention):
    path, package, _ = attention
    x = np.random.default_rng(7).integers(-128, 128, (1, WIDTH, 2, 3), dtype=np.int8)
    out = tvm_npu.load(package).run({"x": x})
    np.testing.assert_array_equal(out["tokens_q"], x.reshape(1, WIDTH, TOKENS).transpose(0, 2, 1))  # int8 copies
    onnx_bytes = path.read_bytes()
    (reference,) = openvino_outputs(onnx_bytes, [{"x": x}], "CPU")
    _, steps = quantization_steps(onnx_bytes)
    for name, value in out.items():
        result = compare(name, value, reference[name], quantized=True, step=steps.get(name))
        assert result.passed, f"{name}: {result.reason}"
