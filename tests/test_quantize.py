"""The quantize stage: QDQ models pass through; calibration files. (Its graph folding: tests/passes/.)"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_npu import NpuError
from tvm_npu.frontend import TensorSpec
from tvm_npu.quantize import DEFAULT_OVERFLOW_FIX, OVERFLOW_FIXES, is_quantized, load_calibration, quantize
from tvm_npu.validate import saturation_risks

from test_int8_end_to_end import make_small_cnn


def test_qdq_model_passes_through_unchanged(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "qdq",
        [x],
        [y],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert is_quantized(model)
    assert quantize(model, [TensorSpec("x", (1, 4), "float32")]) is model


def test_quantize_with_calibration_data_is_deterministic(tmp_path):
    model = onnx.load(make_small_cnn(tmp_path / "cnn.onnx"))
    spec = [TensorSpec("x", (1, 3, 32, 32), "float32")]
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32))
    samples = load_calibration(tmp_path / "cal.npz", spec)
    assert len(samples) == 8 and samples[0]["x"].shape == (1, 3, 32, 32)
    first, second = quantize(model, spec, samples), quantize(model, spec, samples)
    assert is_quantized(first) and first.SerializeToString() == second.SerializeToString()


def test_overflow_fix_gives_weights_no_cpu_saturates(tmp_path):
    """NNCF's overflow fix: `enable` leaves no Conv/Gemm whose int8 weight pairs can exceed int16 (7-bit
    weights), `first_layer_only` (the default) fixes the first conv only, `disable` none (NNCF renames nodes)."""
    model = onnx.load(make_small_cnn(tmp_path / "cnn.onnx"))
    spec = [TensorSpec("x", (1, 3, 32, 32), "float32")]
    samples = [{"x": np.random.default_rng(i).random((1, 3, 32, 32), dtype=np.float32)} for i in range(4)]
    at_risk = {
        fix: [risk.node for risk in saturation_risks(quantize(model, spec, samples, overflow_fix=fix))] for fix in OVERFLOW_FIXES
    }
    print(at_risk)
    assert at_risk["enable"] == []
    assert set(at_risk["first_layer_only"]) < set(at_risk["disable"]) and len(at_risk["disable"]) >= 2
    assert (
        quantize(model, spec, samples).SerializeToString()
        == quantize(model, spec, samples, overflow_fix=DEFAULT_OVERFLOW_FIX).SerializeToString()
    )


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"x": np.zeros((4, 3, 16, 16), np.float32)}, "expected [samples, 1, 3, 32, 32]"),
    ],
)
def test_bad_calibration_data_names_the_problem(tmp_path, arrays, fragment):
    np.savez(tmp_path / "cal.npz", **arrays)
    with pytest.raises(NpuError, match="calibration-data") as err:
        load_calibration(tmp_path / "cal.npz", [TensorSpec("x", (1, 3, 32, 32), "float32")])
    assert fragment in str(err.value)
