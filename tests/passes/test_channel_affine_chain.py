"""passes.channel_affine_chain: BatchNormalization, Mul and Add by per-channel constants after a
dequantize become one per-channel multiply-add."""

from __future__ import annotations

import numpy as np
from onnx import helper

from pass_models import FLOAT, UINT8, imported, onnx_model, ops, run
from tvm_npu.passes import channel_affine_chain


def test_batch_norm_mul_add_chain_becomes_one_multiply_add(tmp_path):
    rng = np.random.default_rng(3)
    c = 5
    constants = {
        "s": np.float32(0.04),
        "z": np.uint8(90),
        "g": rng.uniform(0.5, 1.5, c),
        "be": rng.normal(0, 0.2, c),
        "m": rng.normal(0, 0.2, c),
        "v": rng.uniform(0.5, 2, c),
        "k": rng.uniform(0.5, 1.5, (c, 1, 1)),
        "b": rng.normal(0, 0.2, (1, c, 1, 1)),
    }
    constants = {n: v if n in ("s", "z") else v.astype(np.float32) for n, v in constants.items()}
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"]),
        helper.make_node("BatchNormalization", ["f", "g", "be", "m", "v"], ["n"]),
        helper.make_node("Mul", ["n", "k"], ["p"]),
        helper.make_node("Add", ["p", "b"], ["y"]),
    ]
    model = onnx_model(nodes, {"x": (UINT8, [1, c, 3, 4])}, {"y": (FLOAT, [1, c, 3, 4])}, constants)
    mod = imported(model, tmp_path)
    rewritten = channel_affine_chain(mod)
    assert ops(rewritten) == ["relax.dequantize", "relax.multiply", "relax.add"]
    x = {"x": rng.integers(0, 256, (1, c, 3, 4)).astype(np.uint8)}
    np.testing.assert_allclose(run(rewritten, x)[0], run(mod, x)[0], rtol=1e-5, atol=1e-5)


def test_scalar_multiply_alone_starts_no_chain(tmp_path):
    """HardSigmoid's and HardSwish's scalars are left for npu.lut's pattern."""
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"]), helper.make_node("Mul", ["f", "k"], ["y"])]
    model = onnx_model(
        nodes,
        {"x": (UINT8, [1, 2, 3, 3])},
        {"y": (FLOAT, [1, 2, 3, 3])},
        {"s": np.float32(0.04), "z": np.uint8(90), "k": np.float32(0.5)},
    )
    mod = imported(model, tmp_path)
    assert ops(channel_affine_chain(mod)) == ops(mod)
