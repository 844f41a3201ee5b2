"""How much a CPU reference's int8 path matters to `tvmc validate`, and what NNCF's overflow fix costs.

CPUs without VNNI sum int8 products in saturating int16 pairs (vpmaddubsw); this host takes that
path by capping OpenVINO's oneDNN at AVX2 (`--reference-isa AVX2`, a child process). Measured:

1. `cases`: the saturation case (`onnx_builder.saturating_conv`) and npu.conv2d's conformance example
   `3x3_stride2_pad1_relu6`: steps off the exact reference (onnx.reference, int8 products exact) for
   OpenVINO on each int8 path and for our package, the verdict OpenVINO alone would give (before the
   exact reference judged) and `tvmc validate`'s verdict on each path.
2. `overflow_fix`: the digits CNN (scripts/train_digits.py, trained on scikit-learn's digits) quantized
   with each `--overflow-fix`: nodes still at risk of saturating, held-out accuracy of our package
   (exact integer kernels), of OpenVINO on each int8 path and of the FP32 model.

    python scripts/validation_cpu_paths.py [--out results/validation_cpu_paths.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

import tvm_npu
from tvm_npu import conformance
from tvm_npu.onnx_builder import saturating_conv
from tvm_npu.quantize import OVERFLOW_FIXES
from tvm_npu.registry import kernel
from tvm_npu.validate import (
    compare,
    cpu_flags,
    exact_reference_outputs,
    int8_path,
    openvino_outputs,
    quantization_steps,
    saturation_risks,
    validate,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import train_digits  # noqa: E402 - a script beside this one

PATHS = {"vnni": None, "avx2": "AVX2"}  # OpenVINO's native int8 path on this host, and capped below VNNI


def steps_off(values: np.ndarray, exact: np.ndarray, step: float) -> dict:
    off = np.round(np.abs(values.astype(np.float64) - exact.astype(np.float64)) / step)
    return {"max_steps": int(off.max()), "beyond_2_steps": int(np.count_nonzero(off > 2)), "elements": int(off.size)}


def measure_case(name: str, model: onnx.ModelProto, inputs: dict, folder: Path) -> dict:
    onnx_bytes = model.SerializeToString()
    (exact,), (_, steps) = exact_reference_outputs(onnx_bytes, [inputs]), quantization_steps(onnx_bytes)
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    tvm_npu.compile(path, output=folder / f"{name}.tar", target="npu")
    package = tvm_npu.load(folder / f"{name}.tar")
    (output,) = package.outputs
    ours = package.run(inputs)[output.name]
    row = {"ours_vs_exact": steps_off(ours, exact[output.name], steps[output.name])}
    for label, isa in PATHS.items():
        if isa is None and not int8_path("OpenVINO").exact:
            row[label] = "not run: this CPU has no VNNI path"
            continue
        (reference,) = openvino_outputs(onnx_bytes, [inputs], "CPU", isa)
        report = validate(package, [inputs], device="CPU", reference_isa=isa)
        alone = compare(output.name, ours, reference[output.name], quantized=True, step=steps[output.name])
        row[label] = {
            "openvino_vs_exact": steps_off(reference[output.name], exact[output.name], steps[output.name]),
            "ours_vs_openvino_alone": "passed" if alone.passed else f"failed: {alone.reason}",
            "validate": {0: "PASSED", 1: "FAILED", 3: "UNDECIDED"}[report.exit_code],
            "judged_by_exact_reference": report.exact is not None and output.name in report.exact.outputs,
            "report_first_lines": str(report).splitlines()[:2],
        }
    return row


def measure_overflow_fix(folder: Path) -> dict:
    model, (train_x, _, test_x, test_y) = train_digits.train(seed=0)
    fp32 = folder / "digits_cnn.onnx"
    onnx.save(train_digits.to_onnx(model), fp32)
    np.savez(folder / "calibration.npz", image=train_x[:200])
    samples = [{"image": image[None]} for image in test_x]
    rows = {"fp32_accuracy": float(np.mean(model.forward(test_x)[0].argmax(1) == test_y)), "held_out_images": len(test_y)}
    for fix in OVERFLOW_FIXES:
        qdq, package_path = folder / f"digits_{fix}.onnx", folder / f"digits_{fix}.tar"
        tvm_npu.compile(
            fp32,
            output=package_path,
            target="npu",
            calibration_data=folder / "calibration.npz",
            save_quantized=qdq,
            overflow_fix=fix,
        )
        package = tvm_npu.load(package_path)
        ours = np.array([package.run(sample)["logits"].argmax() for sample in samples])
        row = {
            "nodes_at_risk": [risk.node for risk in saturation_risks(onnx.load(qdq))],
            "ours_accuracy": float(np.mean(ours == test_y)),
        }
        for label, isa in PATHS.items():
            if isa is None and not int8_path("OpenVINO").exact:
                row[f"openvino_{label}_accuracy"] = "not run: this CPU has no VNNI path"
                continue
            reference = openvino_outputs(qdq.read_bytes(), samples, "CPU", isa)
            predictions = np.array([run["logits"].argmax() for run in reference])
            row[f"openvino_{label}_accuracy"] = float(np.mean(predictions == test_y))
            row[f"openvino_{label}_top1_disagreements_with_ours"] = int(np.count_nonzero(predictions != ours))
        rows[fix] = row
        print(f"overflow fix {fix}: {row}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "validation_cpu_paths.json")
    args = parser.parse_args()
    results = {
        "host_vnni_flags": sorted(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        "openvino_native_int8_path": int8_path("OpenVINO").reason,
        "openvino_capped_int8_path": int8_path("OpenVINO", isa="AVX2").reason,
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="validation_cpu_paths_") as tmp:
        folder = Path(tmp)
        saturating = saturating_conv(np.random.default_rng(0))
        results["cases"]["saturating_conv"] = measure_case("saturating_conv", saturating.model, saturating.inputs, folder)
        conv = kernel("npu.conv2d")
        example = next(e for e in conformance.examples(conv, 0) if e.name == "3x3_stride2_pad1_relu6")
        results["cases"]["npu.conv2d/3x3_stride2_pad1_relu6"] = measure_case(example.name, example.model, example.inputs, folder)
        print(json.dumps(results["cases"], indent=1), flush=True)
        results["overflow_fix"] = measure_overflow_fix(folder)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
