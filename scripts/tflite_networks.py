"""Compiles every TFLite test network of both producers (scripts/make_tflite_models.py) for the NPU and compares
the package with TFLite's interpreter (reference kernels) on seeded int8 inputs over the whole range.

    python scripts/tflite_networks.py      # writes results/tflite_networks.json and prints README's table
    python scripts/tflite_networks.py --networks tiny dense_heavy      # only those (both producers)

README's "TFLite input" table is this file's `table()` (tests/test_tflite.py checks that they agree).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "tflite_networks.json"
SAMPLES = 8
sys.path.insert(0, str(REPO / "scripts"))
import make_tflite_models  # noqa: E402 - the scripts folder is not a package


def measure(name: str, producer: str, folder: Path) -> dict:
    import tvm_npu
    from tvm_npu.tflite_reference import interpreter_outputs

    source = make_tflite_models.path(name, "tf") if producer == "tf" else make_tflite_models.make(name, "writer", folder)
    result = tvm_npu.compile(source, output=folder / f"{producer}_{name}.tar", target="npu")
    model = tvm_npu.load(result.package_path)
    spec = model.inputs[0]
    rng = np.random.default_rng(0)
    samples = [{spec.name: rng.integers(-128, 128, spec.shape).astype(spec.dtype)} for _ in range(SAMPLES)]
    theirs = interpreter_outputs(source.read_bytes(), samples)
    diff = np.concatenate(
        [np.abs(model.run(s)[k].astype(int) - t[k].astype(int)).ravel() for s, t in zip(samples, theirs) for k in t]
    )
    operators = result.metadata.extra["operators"]
    return {
        "network": name,
        "producer": producer,
        "bytes": source.stat().st_size,
        "npu_operators": sum(row["runs_on"] == "npu" for row in operators),
        "operators": len(operators),
        "max_steps": int(diff.max()),
        "elements_off": int((diff > 0).sum()),
        "elements": int(diff.size),
    }


def table(rows: list[dict]) -> str:
    lines = ["| network | producer | file | on the NPU | max steps from TFLite | elements off |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['producer']} | {r['bytes'] / 1024:.0f} KiB | "
            f"{r['npu_operators']} of {r['operators']} | {r['max_steps']} | "
            f"{r['elements_off']} of {r['elements']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--networks", nargs="+", choices=list(make_tflite_models.NETWORKS), default=list(make_tflite_models.NETWORKS)
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tvm_npu_tflite_") as folder:
        rows = [measure(name, producer, Path(folder)) for name in args.networks for producer in make_tflite_models.PRODUCERS]
    RESULTS.write_text(json.dumps({"samples": SAMPLES, "target": "npu", "rows": rows}, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
