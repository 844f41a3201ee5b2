"""Default vs tuned, for the committed tuning logs: NPU-model cycles and host latency (the table in
tuning_logs/README.md), with OpenVINO CPU on the same QDQ model for scale.

    python scripts/tuned_models.py [--repeat 30] [tuning_logs/NAME.json ...]

Each log's model is compiled twice (planner's tiles, then `--tuning-records`); both packages
run the same random input and must agree bit for bit. Each measured log's row replaces its row in
results/tuned_models.json, and the table of all rows is written to results/tuned_models.md (what
tuning_logs/README.md embeds), so one log can be re-measured alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov

import tvm_npu
from tvm_npu.atomic import atomic_output
from tvm_npu.records import file_sha256, read_log
from tvm_npu.runtime import make_inputs
from tvm_npu.zoo import default_model_path, light_model_path

LOGS = Path(__file__).resolve().parent.parent / "tuning_logs"
RESULTS = Path(__file__).resolve().parent.parent / "results" / "tuned_models.md"


def model_path(name: str) -> Path:
    return default_model_path() if name == "default_model" else light_model_path(name.removeprefix("light_"))


def openvino_ms(qdq: Path, inputs: dict, repeat: int) -> float:
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(qdq)), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    compiled(inputs)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        compiled(inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def measure(log: Path, repeat: int, folder: Path) -> dict:
    head, records = read_log(log)
    model = model_path(head["model"])
    if file_sha256(model) != head["model_sha256"]:
        raise SystemExit(f"{log} was tuned for another {model.name}")
    qdq = folder / "qdq.onnx"
    row = {"model": head["model"], "target": head["target"], "runner": head["runner"], "log": log.name}
    outputs = {}
    for kind, records_file in (("default", None), ("tuned", log)):
        # The tuner searches each layer's tiling on its own: both builds leave cascading off to compare those.
        result = tvm_npu.compile(
            model, folder / f"{kind}.tar", head["target"], save_quantized=qdq, tuning_records=records_file, cascade=False
        )
        compiled = tvm_npu.load(result.package_path)
        inputs = make_inputs(compiled.inputs, "random", 0)
        outputs[kind] = compiled.run(inputs)
        summary = result.metadata.extra["performance"]["summary"]
        row[f"{kind}_cycles"], row["roofline_cycles"] = summary["cycles"], summary["roofline_cycles"]
        row[f"{kind}_ms"] = compiled.benchmark(inputs, repeat=repeat).summary()["median"]
    row["exact"] = all(np.array_equal(outputs["default"][k], outputs["tuned"][k]) for k in outputs["default"])
    row["openvino_ms"] = openvino_ms(qdq, inputs, repeat)
    trials = max(Counter(r["task"] for r in records).values())
    source = (
        "tvm_npu.zoo.default_model_path()"
        if head["model"] == "default_model"
        else f"tvm_npu.zoo.light_model_path('{head['model'].removeprefix('light_')}')"
    )
    cascades = " --cascade" if any(r["task"].startswith("cascade ") for r in records) else ""
    row["command"] = (
        f"tvmc tune $({source}) --target {head['target']} -o tuning_logs/{log.name} "
        f"--trials {trials} --runner {head['runner']} --seed {head['seed']}{cascades}"
    )
    return row


def render(rows: dict[str, dict]) -> str:
    """The table of tuning_logs/README.md: NPU-model runner first, then by model."""
    lines = [
        "| model | target | runner | NPU-model cycles default | tuned | fewer | roofline bound | host ms default | tuned "
        "| OpenVINO CPU ms | outputs identical | reproduce |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in sorted(rows.values(), key=lambda r: (r["runner"] != "npu-model", r["runner"], r["model"])):
        lines.append(
            f"| {r['model']} | {r['target']} | {r['runner']} | {r['default_cycles']:.0f} | {r['tuned_cycles']:.0f} | "
            f"{r['default_cycles'] / r['tuned_cycles']:.2f}x | {r['roofline_cycles']:.0f} | "
            f"{r['default_ms']:.2f} | {r['tuned_ms']:.2f} | "
            f"{r['openvino_ms']:.2f} | {'yes' if r['exact'] else 'NO'} | `{r['command']}` |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="*", type=Path, default=sorted(LOGS.glob("*.json")))
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    saved = json.loads(RESULTS.with_suffix(".json").read_text()) if RESULTS.with_suffix(".json").is_file() else {"rows": {}}
    for log in args.logs:
        with tempfile.TemporaryDirectory() as folder:
            saved["rows"][log.name] = measure(log, args.repeat, Path(folder)) | {
                "date": time.strftime("%Y-%m-%d"),
                "repeat": args.repeat,
            }
        with atomic_output(RESULTS.with_suffix(".json")) as stream:  # each row as soon as it is measured
            stream.write(json.dumps(saved, indent=2).encode())
        with atomic_output(RESULTS) as stream:
            stream.write(render(saved["rows"]).encode())
    print(render(saved["rows"]), end="")


if __name__ == "__main__":
    main()
