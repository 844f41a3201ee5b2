"""Compiles (FP32, no quantization) and runs the nine onnx-wheel light models; prints the README's table.

For each model: compile time, host latency (median of --repeat runs) of the package,
the largest relative error against the expected output shipped beside the model, and,
with seeded random weights, the largest error against OpenVINO CPU (FP32) and
OpenVINO's own latency measured in the same run.

    python scripts/light_models.py [--models resnet50 squeezenet] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import openvino as ov

import tvm_npu
from tvm_npu.validate import reference_properties
from tvm_npu.zoo import LIGHT_MODELS, light_model_path, light_reference, randomize_weights


def openvino_latency_ms(model_path: Path, inputs: dict, repeat: int) -> tuple[dict, float]:
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(model_path)), "CPU", reference_properties("CPU"))
    result = compiled(inputs)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        compiled(inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return {port.get_any_name(): result[port] for port in compiled.outputs}, float(np.median(times))


def measure(name: str, repeat: int, folder: Path) -> dict:
    inputs, expected = light_reference(name)
    start = time.perf_counter()
    tvm_npu.compile(light_model_path(name), output=folder / f"{name}.tar", quantize_model=False)
    compile_s = time.perf_counter() - start
    model = tvm_npu.load(folder / f"{name}.tar")
    outputs = model.run(inputs)
    expected_err = max(
        float(np.max(np.abs(outputs[k] - v) / np.maximum(np.abs(v), 1e-12))) for k, v in expected.items()
    )
    latency_ms = model.benchmark(inputs, repeat=repeat).summary()["median"]

    random_path = folder / f"{name}_random.onnx"
    onnx.save(randomize_weights(onnx.load(light_model_path(name)), seed=0), random_path)
    tvm_npu.compile(random_path, output=folder / f"{name}_random.tar", quantize_model=False)
    ours = tvm_npu.load(folder / f"{name}_random.tar").run(inputs)
    reference, ov_ms = openvino_latency_ms(random_path, inputs, repeat)
    random_err = max(float(np.max(np.abs(ours[k] - reference[k]))) for k in ours)
    return {
        "model": name,
        "compile_s": compile_s,
        "latency_ms": latency_ms,
        "expected_rel_err": expected_err,
        "random_abs_err_vs_openvino": random_err,
        "openvino_ms": ov_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(LIGHT_MODELS), choices=LIGHT_MODELS)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per model (median reported)")
    args = parser.parse_args()
    print("| model | compile (s) | tvm_npu host latency (ms) | OpenVINO CPU FP32 (ms) | "
          "max rel. err vs expected | max abs. err vs OpenVINO (random weights) |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            row = measure(name, args.repeat, Path(folder))
            print(f"| {row['model']} | {row['compile_s']:.1f} | {row['latency_ms']:.0f} | {row['openvino_ms']:.1f} | "
                  f"{row['expected_rel_err']:.1e} | {row['random_abs_err_vs_openvino']:.1e} |", flush=True)
            for path in Path(folder).iterdir():
                path.unlink()


if __name__ == "__main__":
    main()
