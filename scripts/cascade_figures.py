"""The performance model's figures for QDQ models with and without cascading, from the plan alone.

Runs the compiler's stages up to planning (load -> import -> partition -> plan -> cascade) and the
performance model (`tvm_npu.perf.estimate`), without lowering or building: the same figures as
`tvmc report` on the compiled package, minus the proven SRAM footprints, in seconds instead of
minutes. Quantize once with `tvmc compile --save-quantized` (or pass a QDQ model). A third field names
a `tvmc tune` log of that model (tuned with `--cascade`): then also the figures with its tilings, cascading
off ("tuned") and on ("tuned+cascade": the records decide the pairs they cover, as `tvmc compile`).

    python scripts/cascade_figures.py resnet50_qdq.onnx:npu/mid shufflenet_qdq.onnx:npu/micro [--json out.json]
    python scripts/cascade_figures.py resnet50_qdq.onnx:npu/mid:resnet50_qdq_cascade.json
"""

from __future__ import annotations

import argparse
import json

from tvm_npu.cascade import cascade
from tvm_npu.frontend import import_onnx, load_onnx
from tvm_npu.partition import partition
from tvm_npu.perf import estimate
from tvm_npu.plan import plan
from tvm_npu.records import tuned_records, tuned_tiles
from tvm_npu.target import resolve_target


def figures(model: str, target: str, records: str | None = None) -> dict:
    config = resolve_target(target)
    mod, _ = partition(import_onnx(load_onnx(model)).mod)
    best = tuned_records(records, model, config) if records else {}
    ways = [("without", {}, False), ("with", {}, True)]
    ways += [("tuned", best, False), ("tuned+cascade", best, True)] if records else []
    result = {}
    for name, tuned, cascading in ways:
        layers = plan(mod, config, tuned=tuned_tiles(tuned))
        if cascading:
            layers = cascade(mod, layers, config, tuned)
        s = estimate(layers, config).summary()
        result[name] = {key: s[key] for key in (
            "conv_utilization", "utilization", "dram_bytes", "compulsory_bytes", "dram_over_compulsory", "cycles",
            "cascaded_layers", "cascades", "dram_saved_by_cascades")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="QDQ.onnx:TARGET[:RECORDS.json]")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    table = {}
    print(f"{'model':<28}{'target':<11}{'cascade':<15}{'conv util':>10}{'DRAM MiB':>10}{'/compulsory':>12}"
          f"{'cycles':>12}{'cascaded':>10}")
    for spec in args.models:
        model, target, *records = spec.split(":")
        table[spec] = figures(model, target, *records)
        for key, s in table[spec].items():
            print(f"{model.rsplit('/', 1)[-1]:<28}{target:<11}{key:<15}{100 * s['conv_utilization']:>9.1f}%"
                  f"{s['dram_bytes'] / 2**20:>10.2f}{s['dram_over_compulsory']:>11.3f}x{s['cycles']:>12.0f}"
                  f"{s['cascaded_layers']:>10}")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(table, stream, indent=2)


if __name__ == "__main__":
    main()
