"""`tvmc validate` on real trained models: the verdict, what decided it, and how far OpenVINO is from
ours, into results/validate_real_models.json (the README's validation numbers).

    python scripts/validate_real_models.py [--samples 2] [NAME ...]     # default: ppocr_det orientation

Each model is fetched (scripts/real_models.py), quantized and compiled as `tvmc compile` does, and
validated on `--fill-mode image` and `--fill-mode random` samples against OpenVINO CPU, on this
CPU's int8 path and with `--reference-isa AVX2` (the saturating path of CPUs without VNNI).
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
    row = {
        "model": name,
        "family": model.family,
        "input_shapes": model.input_shapes,
        "compile_s": round(time.perf_counter() - started, 1),
        "runs": [],
    }
    compiled = tvm_npu.load(package)
    for mode, isa in (("image", None), ("image", "AVX2"), ("random", None), ("random", "AVX2")):
        started = time.perf_counter()
        report = validate(
            compiled,
            [make_inputs(compiled.inputs, mode, seed) for seed in range(samples)],
            "CPU",
            reference_isa=isa,
            inputs_description=describe_fill(mode, 0, samples),
        )
        seconds = time.perf_counter() - started
        print(report)
        (output,) = report.outputs
        frontier = output.tail.frontier[-1] if output.tail is not None else None
        worst = max(report.local or [], key=lambda c: c.max_steps, default=None)
        row["runs"].append(
            {
                "fill_mode": mode,
                "samples": samples,
                "reference_isa": isa or "this CPU's",
                "int8_path": report.int8_path,
                "exit_code": report.exit_code,
                "passed": report.passed,
                "validate_s": round(seconds, 1),
                "output": output.name,
                "criterion": output.criterion,
                "decided_by": "local checks" if output.local_verdict is not None else output.criterion,
                "tail": None if output.tail is None else output.tail.ops,
                "output_step": output.step,
                "max_abs_error": output.max_abs_error,
                "cosine": output.cosine,
                "vs_reference": {
                    "judge": "exact reference" if report.exact and output.name in report.exact.outputs else "OpenVINO",
                    "passed": output.passed,
                    "max_steps": output.max_steps,
                    "bias_steps": output.bias_steps,
                    "within_2_steps": output.within_2_steps,
                    "reason": output.reason,
                },
                "within_propagated_tolerance": None if output.tail is None else output.tail.within_tolerance,
                "top1": None if output.top_rows is None else f"{output.top1_matches}/{output.top_rows}",
                "frontier_vs_openvino": None
                if frontier is None
                else {
                    "tensor": frontier.name,
                    "max_steps": frontier.max_steps,
                    "bias_steps": frontier.bias_steps,
                    "cosine": frontier.cosine,
                },
                "exact_reference_judged": None if report.exact is None else report.exact.describe(report.reference),
                "local_checks": len(report.local or []),
                "local_passed": sum(c.passed for c in report.local or []),
                "local_max_steps": None if worst is None else worst.max_steps,
                "third_opinion": None if report.third_opinion is None else report.third_opinion.findings(),
            }
        )
    return row


def summary(results: dict) -> str:
    """The README's sentence on these results (tests/test_validate_float_tail.py checks that it is there)."""
    runs = [(row["model"], run) for row in results["models"] for run in row["runs"]]
    failed = [
        f"{name} ({run['fill_mode']}, {run['reference_isa']} int8 path: exit {run['exit_code']})"
        for name, run in runs
        if run["exit_code"] != 0
    ]
    verdict = "every run exits 0" if not failed else "runs that did not exit 0: " + ", ".join(failed)
    local = max(run["local_max_steps"] or 0 for _, run in runs)
    decided = [(name, run) for name, run in runs if run["decided_by"] == "local checks"]
    off = max(
        (r for r in decided if r[1]["vs_reference"]["judge"] == "OpenVINO"),
        key=lambda r: r[1]["vs_reference"]["max_steps"],
        default=None,
    )
    openvino = (
        ""
        if off is None
        else (
            f"; {len(decided)} of {len(runs)} runs are decided by the local checks, OpenVINO being up to "
            f"{off[1]['vs_reference']['max_steps']:g} steps from ours ({off[0]}, {off[1]['fill_mode']}, "
            f"{off[1]['reference_isa']} int8 path, {off[1]['vs_reference']['within_2_steps']:.1%} within 2 steps)"
        )
    )
    names = " and ".join(f"{row['model']} ({row['input_shapes']})" for row in results["models"])
    samples = results["models"][0]["runs"][0]["samples"]
    slowest = max(runs, key=lambda r: r[1]["validate_s"])
    return (
        f"{names}, each on {samples} pictures and {samples} random inputs, on this CPU's int8 path and with "
        f"`--reference-isa AVX2`: {verdict}, every local check within {local:g} step(s){openvino}; the slowest "
        f"validation took {slowest[1]['validate_s']:.0f} s here ({slowest[0]})."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"of {', '.join(MODELS)} (default: ppocr_det orientation)")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--update", action="store_true", help="replace only these models' rows in the results file")
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="tvm_npu_validate_real_") as folder:
        rows = [measure(name, args.samples, Path(folder)) for name in args.names or ["ppocr_det", "orientation"]]
    if args.update:  # the other models' rows as the last run wrote them
        fresh = {row["model"]: row for row in rows}
        rows = [fresh.pop(row["model"], row) for row in json.loads(RESULTS.read_text())["models"]] + list(fresh.values())
    results = {"openvino": ov.get_version(), "models": rows}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}\n{summary(results)}")


if __name__ == "__main__":
    main()
