"""Stage: validate. The compiled package against OpenVINO on the same ONNX model and inputs.

Entry point: `validate(model, inputs, device)`. OpenVINO's NPU device serves when this
machine has one; otherwise its CPU device does, and the report's first line says so.
Integer runtimes legitimately disagree by a rounding step here and there, so outputs of a
quantized model are judged in quantization steps: an output that is an integer tensor, or
the float result of a per-tensor DequantizeLinear, passes when at most MAX_STEPS steps off on
at least MIN_WITHIN_STEPS of its elements. Other float outputs of a quantized model have no
step to count in and are judged by cosine similarity alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import openvino as ov
from onnx import numpy_helper

from .errors import EXIT_COULD_NOT_VALIDATE, NpuError, first_line
from .runtime import CompiledModel

DEVICES = ("AUTO", "NPU", "CPU")
DEFAULT_RTOL = 1e-3  # float outputs: |ours - ref| <= atol + rtol * |ref| elementwise
DEFAULT_ATOL = 1e-5
DEFAULT_MIN_COSINE = 0.999
MAX_STEPS = 2
MIN_WITHIN_STEPS = 0.999


@dataclass
class OutputComparison:
    name: str
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    top1_agreement: float | None  # for classifier-shaped outputs [batch, classes(, 1, 1)]
    passed: bool
    step: float | None = None  # the output's quantization step, when it has one
    max_steps: float | None = None
    within_steps: float | None = None  # fraction of elements at most MAX_STEPS steps off

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ValidationReport:
    device: str
    device_reason: str
    outputs: list[OutputComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        return {
            "reference": f"OpenVINO {ov.get_version()}",
            "device": self.device,
            "device_reason": self.device_reason,
            "properties": reference_properties(self.device),
            "passed": self.passed,
            "outputs": [o.to_dict() for o in self.outputs],
        }

    def __str__(self) -> str:
        lines = [f"reference: OpenVINO {self.device} ({self.device_reason})"]
        lines.append(f"{'output':<24}{'max abs err':>14}{'mean abs err':>14}{'cosine':>10}{'top-1':>8}"
                     f"{'max steps':>11}{f'<={MAX_STEPS} steps':>12}  result")
        for o in self.outputs:
            top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.0%}"
            steps = ("-", "-") if o.step is None else (f"{o.max_steps:g}", f"{o.within_steps:.3%}")
            lines.append(
                f"{o.name:<24}{o.max_abs_error:>14.3g}{o.mean_abs_error:>14.3g}{o.cosine:>10.6f}{top1:>8}"
                f"{steps[0]:>11}{steps[1]:>12}  {'PASS' if o.passed else 'FAIL'}"
            )
        lines.append("validation " + ("PASSED" if self.passed else "FAILED"))
        return "\n".join(lines)


def choose_device(requested: str = "AUTO") -> tuple[str, str]:
    """The OpenVINO device that will serve, and why, never claiming an NPU that is not there."""
    available = ov.Core().available_devices
    if requested not in DEVICES:
        raise NpuError(f"unknown reference device {requested!r}; choose one of {', '.join(DEVICES)}")
    if requested == "CPU":
        return "CPU", "requested with --device CPU"
    if "NPU" in available:
        return "NPU", "OpenVINO reports an NPU device"
    if requested == "NPU":
        raise NpuError(
            f"--device NPU requested but OpenVINO sees no NPU on this machine (devices: {', '.join(available)}); "
            "use --device CPU or AUTO",
            EXIT_COULD_NOT_VALIDATE,
        )
    return "CPU", f"no NPU device on this machine (OpenVINO devices: {', '.join(available)})"


def reference_properties(device: str) -> dict[str, str]:
    """OpenVINO settings for a faithful reference run, recorded in the report.

    OpenVINO's CPU plugin silently computes FP32 models in bf16 on CPUs with AVX512-BF16
    or AMX; a reference must compute what the model says.
    """
    return {"INFERENCE_PRECISION_HINT": "f32"} if device == "CPU" else {}


def reference_outputs(onnx_bytes: bytes, inputs: Mapping[str, np.ndarray], device: str) -> dict[str, np.ndarray]:
    """Runs the ONNX model with OpenVINO on `device`."""
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(onnx_bytes), device, reference_properties(device))
        result = compiled(dict(inputs))
    except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError and friends
        raise NpuError(f"OpenVINO could not run the model on {device}: {first_line(err)}", EXIT_COULD_NOT_VALIDATE) from None
    return {port.get_any_name(): result[port] for port in compiled.outputs}


def quantization_steps(onnx_bytes: bytes) -> tuple[bool, dict[str, float]]:
    """Whether the model is quantized, and the step size of each output that has one."""
    graph = onnx.load_from_string(onnx_bytes).graph
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    quantized = any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node)
    steps = {}
    for output in graph.output:
        elem = output.type.tensor_type.elem_type
        node = producers.get(output.name)
        if elem in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            steps[output.name] = 1.0
        elif node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]])
            if scale.size == 1:
                steps[output.name] = float(scale)
    return quantized, steps


def compare(
    name: str, ours: np.ndarray, ref: np.ndarray, rtol: float, atol: float, min_cosine: float,
    quantized: bool = False, step: float | None = None,
) -> OutputComparison:
    ours64, ref64 = ours.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    error = np.abs(ours64 - ref64)
    norms = np.linalg.norm(ours64) * np.linalg.norm(ref64)
    cosine = float(ours64 @ ref64 / norms) if norms > 0 else float(np.array_equal(ours64, ref64))
    comparison = OutputComparison(
        name=name,
        max_abs_error=float(error.max(initial=0.0)),
        mean_abs_error=float(error.mean()) if error.size else 0.0,
        cosine=cosine,
        top1_agreement=_top1_agreement(ours, ref),
        passed=False,
    )
    if step is not None:
        steps = np.round(error / step)
        comparison.step = step
        comparison.max_steps = float(steps.max(initial=0.0))
        comparison.within_steps = float(np.mean(steps <= MAX_STEPS)) if steps.size else 1.0
        comparison.passed = comparison.within_steps >= MIN_WITHIN_STEPS
    elif quantized:
        comparison.passed = cosine >= min_cosine
    else:
        comparison.passed = bool(np.all(error <= atol + rtol * np.abs(ref64))) and cosine >= min_cosine
    return comparison


def _top1_agreement(ours: np.ndarray, ref: np.ndarray) -> float | None:
    scores = ours.reshape(ours.shape[0], -1) if ours.ndim >= 2 else None
    if scores is None or scores.shape[1] < 2 or np.prod(ours.shape[1:]) != max(ours.shape[1:]):
        return None
    return float(np.mean(scores.argmax(1) == ref.reshape(ref.shape[0], -1).argmax(1)))


def validate(
    model: CompiledModel,
    inputs: Mapping[str, np.ndarray],
    device: str = "AUTO",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    min_cosine: float = DEFAULT_MIN_COSINE,
) -> ValidationReport:
    served, reason = choose_device(device)
    ours = model.run(inputs)
    ref = reference_outputs(model.onnx_bytes, inputs, served)
    quantized, steps = quantization_steps(model.onnx_bytes)
    report = ValidationReport(served, reason)
    for spec in model.outputs:
        if spec.name not in ref:
            raise NpuError(f"OpenVINO did not produce output {spec.name!r}", EXIT_COULD_NOT_VALIDATE)
        report.outputs.append(compare(spec.name, ours[spec.name], ref[spec.name], rtol, atol, min_cosine,
                                      quantized, steps.get(spec.name)))
    return report
