"""Stage: quantize. An FP32 ONNX model becomes a QDQ INT8 ONNX model; a QDQ model passes through.

Entry point: `quantize(model, inputs, calibration, seed)`, on the model as the load stage left it
(its ONNX rewrites, `passes.ONNX_PASSES`, have folded constant subgraphs into initializers and
BatchNormalization and per-channel constant Mul/Add into the preceding Conv: NNCF's ONNX backend folds
neither, and activation functions spelled as several operators into one). NNCF, OpenVINO's own
post-training quantizer, calibrates it, squeeze-excite blocks included, and activation functions then
get the QDQ on their inputs that NNCF leaves out (`passes.QUANTIZE_PASSES`). The result is ONNX,
so the package embeds exactly the model the reference runtime runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from .errors import NpuError, first_line
from .frontend import TensorSpec
from .passes import run_quantize_passes
from .runtime import make_inputs, read_npz

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
RANDOM_SAMPLES = 16
MAX_SAMPLES = 300  # NNCF's default subset size: more samples add time, not accuracy
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear
# NNCF's AdvancedQuantizationParameters.overflow_fix values: which weights get 7 bits (half the int8 range).
OVERFLOW_FIXES = ("disable", "first_layer_only", "enable")
DEFAULT_OVERFLOW_FIX = "first_layer_only"  # NNCF's default for 8-bit quantization


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def quantize(
    model: onnx.ModelProto,
    inputs: Sequence[TensorSpec],
    calibration: list[dict[str, np.ndarray]] | None = None,
    seed: int = 0,
    overflow_fix: str = DEFAULT_OVERFLOW_FIX,
) -> onnx.ModelProto:
    """The QDQ model: `model` itself when already quantized, else NNCF post-training quantization.
    `overflow_fix` (one of OVERFLOW_FIXES, NNCF's OverflowFix) quantizes the weights of the first
    convolutions ("first_layer_only", NNCF's default), of every Conv/MatMul ("enable") or of none ("disable")
    to 7 bits, so that no pair of int8 products exceeds int16 on CPUs without VNNI."""
    if is_quantized(model):
        return model
    if calibration is None:
        print(
            f"warning: no --calibration-data given: calibrating on {RANDOM_SAMPLES} seeded random inputs; "
            "the INT8 model's accuracy is unknown"
        )
        calibration = [make_inputs(list(inputs), "random", seed + i) for i in range(RANDOM_SAMPLES)]
    model, samples = _with_min_opset(model), calibration[:MAX_SAMPLES]
    return run_quantize_passes(_nncf_quantize(model, samples, overflow_fix), model, samples)


def load_calibration(path: str | Path, inputs: Sequence[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Samples from an .npz with one array per input whose first axis counts samples."""
    arrays = read_npz(path)
    names = [spec.name for spec in inputs]
    if sorted(arrays) != sorted(names):
        raise NpuError(f"--calibration-data {path} holds arrays {sorted(arrays)}; it needs exactly one per input: {names}")
    counts = {len(a) if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise NpuError(
            f"--calibration-data {path}: every array needs the same number (at least 1) of samples along its first axis"
        )
    samples = [{} for _ in range(counts.pop())]
    for spec in inputs:
        array = arrays[spec.name]
        if array.shape[1:] == spec.shape:
            per_sample = list(array)
        elif spec.shape[0] == 1 and array.shape[1:] == spec.shape[1:]:
            per_sample = [row[None] for row in array]
        else:
            raise NpuError(
                f"--calibration-data {path}: {spec.name!r} has shape {list(array.shape)}; "
                f"expected [samples, {', '.join(map(str, spec.shape))}] or [samples, {', '.join(map(str, spec.shape[1:]))}]"
            )
        for sample, value in zip(samples, per_sample):
            sample[spec.name] = np.ascontiguousarray(value, dtype=spec.dtype)
    return samples


def _with_min_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as err:  # noqa: BLE001 - the converter raises assorted errors per operator
        raise NpuError(
            f"cannot upgrade the model from opset {opset} to {MIN_OPSET} for quantization "
            f"({first_line(err)}); export it with opset {MIN_OPSET} or newer"
        ) from None


def _nncf_quantize(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], overflow_fix: str) -> onnx.ModelProto:
    import nncf  # a slow import, needed only here
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix, QuantizationParameters

    nncf.set_log_level(logging.ERROR)
    try:
        # NNCF shows its own progress bars ("Statistics collection", "Applying Fast Bias correction").
        with _squeeze_excite_quantized():
            return nncf.quantize(
                model,
                nncf.Dataset(samples),
                subset_size=len(samples),
                # OpenVINO's CPU preset quantizes depthwise-conv inputs per channel; an integer NPU
                # needs one scale per activation tensor, since channels are summed in one accumulator.
                advanced_parameters=AdvancedQuantizationParameters(
                    activations_quantization_params=QuantizationParameters(per_channel=False),
                    overflow_fix=OverflowFix(overflow_fix),
                ),
            )
    except Exception as err:  # noqa: BLE001 - NNCF raises many kinds on models it cannot handle
        raise NpuError(
            f"NNCF could not quantize the model ({first_line(err)}); "
            "quantize it yourself to QDQ ONNX, or compile with --no-quantize"
        ) from None


@contextlib.contextmanager
def _squeeze_excite_quantized():
    """NNCF without its SE_BLOCK ignored pattern, which keeps squeeze-excite's convolutions and gate
    multiply in float (cheap on a CPU); on an integer NPU that float island keeps them on the host.
    NNCF (pinned) has no parameter for it: the pattern leaves its registry for this call only."""
    from nncf.common.graph.patterns.patterns import IgnoredPatternNames
    from nncf.onnx.quantization.ignored_patterns import ONNX_IGNORED_PATTERNS

    patterns = ONNX_IGNORED_PATTERNS.registry_dict
    removed = patterns.pop(IgnoredPatternNames.SE_BLOCK, None)
    try:
        yield
    finally:
        if removed is not None:
            patterns[IgnoredPatternNames.SE_BLOCK] = removed
