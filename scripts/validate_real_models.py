"""`tvmc validate` on real trained models with float outputs: the verdict, what decided it, and how far
OpenVINO's quantized tensors are from ours, into results/validate_real_models.json (the README's
validation numbers).

    python scripts/validate_real_models.py [--samples 2] [NAME ...]     # default: ppocr_det orientation

Each model is fetched (scripts/real_models.py), quantized and compiled as `tvmc compile` does, and
validated on `--fill-mode image` and `--fill-mode random` samples against OpenVINO CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import openvino as ov

import tvm_npu
from tvm_npu.frontend import parse_input_shapes
from tvm_npu.runtime import describe_fill, make_inputs
from tvm_npu.validate import validate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_models import MODELS, fetch  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results" / "validate_real_models.json"


def measure(name: str, samples: int, folder: Path) -> dict:
    model = MODELS[name]
    package = folder / f"{name}.tar"
    started = time.perf_counter()
    tvm_npu.compile(fetch(name), output=package, target="npu", input_shapes=parse_input_shapes(model.input_shapes))
    row = {"model": name, "family": model.family, "input_shapes": model.input_shapes,
           "compile_s": round(time.perf_counter() - started, 1), "runs": []}
    compiled = tvm_npu.load(package)
    for mode in ("image", "random"):
        started = time.perf_counter()
        report = validate(compiled, [make_inputs(compiled.inputs, mode, seed) for seed in range(samples)], "CPU",
                          inputs_description=describe_fill(mode, 0, samples))
        seconds = time.perf_counter() - started
        print(report)
        (output,) = report.outputs
        (frontier, *_) = output.tail.frontier
        worst = max(report.local, key=lambda c: c.max_steps)
        row["runs"].append({
            "fill_mode": mode, "samples": samples, "passed": report.passed, "validate_s": round(seconds, 1),
            "output": output.name, "criterion": output.criterion, "tail": output.tail.ops,
            "max_abs_error": output.max_abs_error, "cosine": output.cosine,
            "within_propagated_tolerance": output.tail.within_tolerance,
            "tail_tolerance_max": output.tail.tolerance_max,
            "top1": None if output.top_rows is None else f"{output.top1_matches}/{output.top_rows}",
            "frontier_vs_openvino": {"tensor": frontier.name, "max_steps": frontier.max_steps,
                                     "bias_steps": frontier.bias_steps, "cosine": frontier.cosine},
            "local_checks": len(report.local), "local_passed": sum(c.passed for c in report.local),
            "local_max_steps": worst.max_steps,
            "third_opinion": None if report.third_opinion is None else report.third_opinion.findings(),
        })
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"of {', '.join(MODELS)} (default: ppocr_det orientation)")
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="tvm_npu_validate_real_") as folder:
        rows = [measure(name, args.samples, Path(folder)) for name in args.names or ["ppocr_det", "orientation"]]
    RESULTS.write_text(json.dumps({"openvino": ov.get_version(), "models": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
