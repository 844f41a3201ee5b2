"""Graph rewrites: one file each, run in the order of the lists below (CONTRIBUTING.md says how to add one).

- `ONNX_PASSES`: functions `onnx.ModelProto -> onnx.ModelProto`, run by the load stage
  (`frontend.load_onnx`) on the model at its fixed input shapes, before quantization and import.
  Each keeps the model's function exactly (up to float rounding where it folds arithmetic).
- `RELAX_PASSES`: `tvm.ir.transform` module passes, run by the partition stage (`partition.partition`)
  on the imported module before the NPU patterns match. They put what TVM's importer leaves opaque
  or scattered into the forms the kernels' patterns read; none constant-folds, since folding would
  turn the int8 weight dequantizes into float constants before partitioning claims them.
- `QUANTIZE_PASSES`: functions `(qdq, float_model, samples) -> qdq`, run by the quantize stage
  (`quantize.quantize`) on NNCF's output, with the float model it quantized and its calibration
  samples: they place the QuantizeLinear/DequantizeLinear NNCF leaves out where NPU kernels need them.
- `LOWERED_PASSES`: run by the pipeline after lowering, once the NPU kernels hold their weights:
  what is still constant (the CPU layers' dequantized weights) folds now.
"""

from __future__ import annotations

import onnx
import tvm
from tvm import relax

from .canonical_activations import canonical_activations
from .channel_affine_chain import channel_affine_chain
from .clip_as_relax_op import clip_as_relax_op
from .concat_of_dequantized import concat_of_dequantized
from .duplicate_shared_dequantize import duplicate_shared_dequantize
from .fold_channel_affines import fold_channel_affines
from .fold_constants import fold_constants
from .fold_shapes import fold_shapes
from .pad_as_relax_op import pad_as_relax_op
from .quantize_activations import quantize_activations
from .requantize_value_preserving import requantize_value_preserving
from .scalar_quantization_parameters import scalar_quantization_parameters
from .split_as_slices import split_as_slices
from .sum_as_add import sum_as_add

ONNX_PASSES = [
    fold_shapes,  # first: what folds at the fixed input shapes becomes constant
    fold_constants,  # the later rewrites read constants as initializers
    fold_channel_affines,
    canonical_activations,  # after the folds: BatchNorm and scale layers no longer sit inside the functions
]

QUANTIZE_PASSES = [quantize_activations]

RELAX_PASSES = [
    scalar_quantization_parameters,  # first: every later rewrite reads per-tensor parameters as scalars
    clip_as_relax_op,
    pad_as_relax_op,  # before requantize_value_preserving: it requantizes a zero pad
    sum_as_add,
    split_as_slices,  # before requantize_value_preserving: it re-quantizes each part
    requantize_value_preserving,
    concat_of_dequantized,
    channel_affine_chain,  # after concat_of_dequantized: a BatchNorm after a concat reads its dequantize
    duplicate_shared_dequantize,  # last: the copies it makes are what the patterns match one by one
]

LOWERED_PASSES = [relax.transform.FoldConstant()]


def run_onnx_passes(model: onnx.ModelProto) -> onnx.ModelProto:
    for rewrite in ONNX_PASSES:
        model = rewrite(model)
    return model


def run_quantize_passes(qdq: onnx.ModelProto, float_model: onnx.ModelProto, samples: list) -> onnx.ModelProto:
    for rewrite in QUANTIZE_PASSES:
        qdq = rewrite(qdq, float_model, samples)
    return qdq


def run_relax_passes(mod: tvm.IRModule, passes: list = RELAX_PASSES) -> tvm.IRModule:
    return tvm.transform.Sequential(passes, name="NpuRewrites")(mod)
