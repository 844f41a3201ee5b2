"""npu.conv2d_transpose: quantized 2-D transposed convolution (ONNX ConvTranspose: any kernel size,
stride, padding, output padding, dilation, groups) with bias and fused ReLU / ReLU6 / Clip.

A transposed convolution is a convolution over the input with stride - 1 zeros inserted between its
rows and columns, padded by dilation x (kernel - 1) - pads on each side (plus the output padding at
the end), with the kernel flipped and its input/output channel axes swapped. So it runs as
npu.conv2d with `upsample` = the stride (the zeros are zx, real 0, written while the padded input
tile is staged in SRAM) on weights rearranged at compile time: npu.conv2d's compute, reference,
SRAM tiling and epilogue, integer-only inside, as Ethos-U (Vela) runs TransposeConv2D.

    W'[g*P + j, c, y, x] = W[g*C + c, j, kh-1-y, kw-1-x]        P = outputs, C = inputs per group
"""

from __future__ import annotations

import numpy as np
from tvm.relax.dpl import is_const, is_op, wildcard

from tvm_npu.fixed_point import BIAS_FRACTION_BITS, scale_problem
from tvm_npu.onnx_builder import Constant, quantized_operator, random_activation, random_weight
from tvm_npu.registry import (
    Composite,
    KernelParams,
    NpuKernel,
    const_value,
    dequantized_constant,
    dequantized_tensor,
    pattern_activation,
    per_tensor_problem,
)
from tvm_npu.schedules import conv2d


def patterns():
    dq_x = dequantized_tensor()
    dq_w = dequantized_constant()
    tconv = is_op("relax.nn.conv2d_transpose")(dq_x, dq_w)
    bias_src = is_const() | dequantized_constant()
    biased = is_op("relax.add")(tconv, bias_src | is_op("relax.reshape")(bias_src, wildcard()))
    root = is_op("relax.quantize")(pattern_activation(tconv | biased), is_const(), is_const())
    return [(root, {"x": dq_x, "w": dq_w, "anchor": tconv, "root": root})]


def _conv_padding(attrs, kernel: tuple[int, int]) -> tuple[int, ...]:
    """The equivalent conv's padding (top, left, bottom, right) of the upsampled input."""
    (kh, kw), (dh, dw) = kernel, (int(d) for d in attrs.dilation)
    pt, pl, pb, pr = (int(p) for p in attrs.padding)
    oh, ow = (int(p) for p in attrs.output_padding)
    return dh * (kh - 1) - pt, dw * (kw - 1) - pl, dh * (kh - 1) - pb + oh, dw * (kw - 1) - pr + ow


def check(ann) -> str | None:
    tconv, dq_w, dq_x = ann["anchor"], ann["w"], ann["x"]
    problem = conv2d.output_problem(ann["root"]) or per_tensor_problem(dq_x)
    if problem:
        return problem
    attrs = tconv.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "IOHW", "NCHW"):
        return f"attribute: layout {attrs.data_layout}/{attrs.kernel_layout} (the NPU takes NCHW/IOHW)"
    problem = conv2d.weight_problem(dq_w, 1)
    if problem:
        return problem
    if int(attrs.groups) > 1 and const_value(dq_w.args[1]).size > 1:
        return "attribute: per-channel weight scales of a grouped transposed conv"
    kernel = const_value(dq_w.args[0]).shape[2:]
    if min(_conv_padding(attrs, kernel)) < 0:
        return "attribute: pads larger than dilation x (kernel - 1) (the output would crop the upsampled input)"
    sx, sy = float(const_value(dq_x.args[1])), float(const_value(ann["root"].args[1]))
    return scale_problem(sx * const_value(dq_w.args[1]).astype(np.float64) / sy, BIAS_FRACTION_BITS)


def conv_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """IOHW transposed-conv weights [groups*C, P, kh, kw] -> the equivalent conv's OIHW [groups*P, C, kh, kw], flipped."""
    channels, per_group, kh, kw = w.shape
    grouped = w.reshape(groups, channels // groups, per_group, kh, kw)
    swapped = grouped.transpose(0, 2, 1, 3, 4).reshape(groups * per_group, channels // groups, kh, kw)
    return np.ascontiguousarray(swapped[:, :, ::-1, ::-1])


def params(comp: Composite) -> KernelParams:
    tconv = comp.call("relax.nn.conv2d_transpose")
    dq_x, dq_w = comp.value(tconv.args[0]), comp.value(tconv.args[1])
    sx, zx = comp.activation_input(dq_x)
    groups = int(tconv.attrs.groups)
    w = conv_weights(comp.const(dq_w.args[0]).astype(np.int8), groups)
    per_group = w.shape[0] // groups  # ONNX scales W's axis 1: output channel j of every group
    w_scale = np.tile(np.broadcast_to(comp.quant(dq_w)[0].reshape(-1), (per_group,)), groups)
    attrs = conv2d.conv_attrs(comp, tconv, zx, upsample=tuple(int(s) for s in tconv.attrs.strides))
    attrs.update(strides=(1, 1), padding=_conv_padding(tconv.attrs, w.shape[2:]))
    return KernelParams(attrs, [w, *conv2d.epilogue(comp, sx * w_scale)])


def examples(rng):
    def tconv(
        name,
        c,
        o,
        hw,
        k,
        stride,
        pads=(0, 0, 0, 0),
        output_padding=(0, 0),
        dilation=1,
        group=1,
        activation=None,
        per_channel=True,
        bias=True,
    ):
        operands = [
            random_activation(rng, (1, c, *hw)),
            random_weight(rng, (c, o // group, k, k), axis=1, per_channel=per_channel),
        ]
        return quantized_operator(
            name,
            "ConvTranspose",
            operands + [Constant(rng.normal(0, 0.3, o))] * bias,
            rng,
            out_dtype=str(rng.choice(["int8", "uint8"])),
            activation=activation,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=list(pads),
            output_padding=list(output_padding),
            dilations=[dilation, dilation],
            group=group,
        )

    k, stride = int(rng.choice([2, 3, 4])), int(rng.integers(1, 4))
    return [
        tconv("2x2_stride2_relu", 5, 7, (5, 6), 2, 2, activation="relu"),  # DBNet's upsampling head
        tconv(
            "3x3_stride2_pads_output_padding_relu6",
            3,
            4,
            (4, 5),
            3,
            2,
            pads=(1, 0, 1, 2),
            output_padding=(1, 0),
            activation="relu6",
        ),
        # onnx.reference (which calibrates the output) implements grouped ConvTranspose only depthwise
        # and then adds the wrong bias: a depthwise example without bias.
        tconv(
            "depthwise_4x4_stride3_dilated",
            5,
            5,
            (3, 4),
            4,
            3,
            pads=(1, 2, 0, 1),
            dilation=2,
            group=5,
            per_channel=False,
            bias=False,
        ),
        tconv(
            f"random_{k}x{k}_stride{stride}",
            int(rng.integers(1, 9)),
            int(rng.integers(1, 12)),
            tuple(int(d) for d in rng.integers(2, 8, 2)),
            k,
            stride,  # pads <= k // 2: a non-empty output
            tuple(int(p) for p in rng.integers(0, k // 2 + 1, 4)),
            activation=rng.choice([None, "relu"]),
        ),
    ]


KERNEL = NpuKernel(
    name="npu.conv2d_transpose",
    anchors=("relax.nn.conv2d_transpose",),
    patterns=patterns,
    check=check,
    params=params,
    compute=conv2d.compute,
    reference=conv2d.reference,
    geometry=conv2d.geometry,
    schedule=conv2d.schedule,
    examples=examples,
    limits=(
        "NCHW data, IOHW int8 weights, symmetric, per-tensor or per-output-channel scales (per tensor when grouped)",
        "activations and output per tensor",
        "pads at most dilation x (kernel - 1)",
        "runs as npu.conv2d over the input with stride - 1 zeros inserted: those zero taps are computed and counted",
        "at most 65 793 taps (input channels per group x kernel height x width) per output: the int32 accumulator",
        "rescale factors (input x weight scale / output scale) within the fixed-point range",
    ),
)
