"""npu.clamp: a standalone ReLU, ReLU6 or Clip (constant bounds) on a quantized tensor, one not fused
into a conv's epilogue (after a residual add, a concat, a resize, a BatchNorm NNCF left alone).

    T[q - qmin] = Q(clip(DQ(q), lo, hi))      at compile time, in the QDQ graph's float32
    Y = T[X - qmin]                           npu.lut's lookup, tiling and resident table

A table, not an integer clamp, so that the output may be on another grid than the input (NNCF gives
the ReLU's output its own scale) and still equal the QDQ graph on every input integer.
"""

from __future__ import annotations

import numpy as np
from tvm.relax.dpl import is_const, is_op, wildcard

from tvm_npu.fixed_point import requantization_table
from tvm_npu.onnx_builder import Constant, quantized_operator, random_activation
from tvm_npu.registry import Composite, KernelParams, NpuKernel, dequantized_tensor
from tvm_npu.schedules.lut import compute, reference, schedule, table_problem
from tvm_npu.schedules.elementwise import stream_geometry


def patterns():
    found = []
    for anchor_of in (lambda x: is_op("relax.nn.relu")(x), lambda x: is_op("relax.clip")(x, wildcard(), wildcard())):
        x = dequantized_tensor()
        anchor = anchor_of(x)
        root = is_op("relax.quantize")(anchor, is_const(), is_const())
        found.append((root, {"x": x, "anchor": anchor, "root": root}))
    return found


def params(comp: Composite) -> KernelParams:
    dq = comp.call("relax.dequantize")
    sx, zx = comp.activation_input(dq)
    sy, zy, dtype, _, _ = comp.output()
    clips = comp.calls("relax.clip")
    lo, hi = (float(clips[0].args[1].value), float(clips[0].args[2].value)) if clips else (0.0, np.inf)
    attrs = {"function": f"clip [{lo:g}, {hi:g}]", "out_dtype": dtype}
    bounds = (np.float32(lo), np.float32(hi))
    return KernelParams(
        attrs, [requantization_table(lambda v: np.clip(v, *bounds), sx, zx, sy, zy, str(dq.args[0].ty.dtype), dtype)]
    )


def geometry(p: KernelParams, inputs):
    ((shape, _),) = inputs
    return stream_geometry("lut", shape, f"{p.attrs['function']} {'x'.join(map(str, shape))}", table_bytes=256)


def examples(rng):
    def every_integer(shape):
        """An activation holding every input integer at least once: the whole table is exercised."""
        dtype = str(rng.choice(["int8", "uint8"]))
        info = np.iinfo(dtype)
        every = np.concatenate(
            [np.arange(info.min, info.max + 1), rng.integers(info.min, info.max, int(np.prod(shape)) - 256, endpoint=True)]
        )
        return random_activation(rng, shape, dtype, values=rng.permutation(every))

    def clamp(name, op_type, x, *bounds):
        return quantized_operator(
            name, op_type, [x, *(Constant(np.float32(b)) for b in bounds)], rng, out_dtype=str(rng.choice(["int8", "uint8"]))
        )

    x = every_integer((2, 300))
    # a few input steps around 0: the output grid (calibrated on [low, high]) is ~255 / steps times finer
    first = x.zero_point - int(rng.integers(3, 9))
    low, high = (x.scale * (q - x.zero_point + 0.5) for q in (first, first + int(rng.integers(8, 15))))
    off_grid = clamp("clip_bounds_between_input_steps", "Clip", x, low, high)
    # OpenVINO (2026.4, CPU) clamps in the input's integer domain, its bounds rounded onto the input grid:
    # half an input step off, many output steps on the output's finer grid. ONNX's reference evaluator
    # agrees with the table on every element.
    off_grid.openvino_deviation = "OpenVINO rounds Clip bounds onto the input's grid (half an input step off)"
    return [
        clamp("relu", "Relu", every_integer((1, 7, 8, 11))),
        clamp("relu6", "Clip", every_integer((1, 7, 8, 11)), 0.0, 6.0),
        off_grid,
    ]


KERNEL = NpuKernel(
    name="npu.clamp",
    anchors=("relax.nn.relu", "relax.clip"),
    patterns=patterns,
    check=table_problem,
    params=params,
    compute=compute,
    reference=reference,
    geometry=geometry,
    schedule=schedule,
    examples=examples,
    limits=(
        "Relu, and Clip with constant bounds (ReLU6), on an activation not fused into a conv/dense/add epilogue",
        "input and output per tensor, the input quantized; a table: equal to the QDQ graph on every input",
    ),
)
