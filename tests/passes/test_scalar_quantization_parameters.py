"""passes.scalar_quantization_parameters: shape-(1,) scales and zero points (onnxruntime's) become scalars."""

from __future__ import annotations

import numpy as np
from onnx import helper

from pass_models import UINT8, imported, onnx_model, run
from tvm_npu.passes import scalar_quantization_parameters
from tvm_npu.registry import op_name


def _qdq_parameter_shapes(mod):
    calls = [
        b.value
        for block in mod["main"].body.blocks
        for b in block.bindings
        if op_name(b.value) in ("relax.quantize", "relax.dequantize")
    ]
    return [tuple(int(d) for d in arg.value.numpy().shape) for call in calls for arg in call.args[1:3]]


def test_size_one_parameters_become_scalars_with_the_same_values(tmp_path):
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"]),
        helper.make_node("Relu", ["f"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s2", "z2"], ["y"]),
    ]
    model = onnx_model(
        nodes,
        {"x": (UINT8, [1, 4, 3, 3])},
        {"y": (UINT8, [1, 4, 3, 3])},
        {
            "s": np.array([0.05], np.float32),
            "z": np.array([120], np.uint8),
            "s2": np.array([0.03], np.float32),
            "z2": np.array([7], np.uint8),
        },
    )
    mod = imported(model, tmp_path)
    assert _qdq_parameter_shapes(mod) == [(1,)] * 4
    rewritten = scalar_quantization_parameters(mod)
    assert _qdq_parameter_shapes(rewritten) == [()] * 4
    x = {"x": np.random.default_rng(0).integers(0, 256, (1, 4, 3, 3)).astype(np.uint8)}
    np.testing.assert_array_equal(run(rewritten, x)[0], run(mod, x)[0])
