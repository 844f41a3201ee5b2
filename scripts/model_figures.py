"""The performance model's figures README quotes, from the plan alone: cascading, cascade tuning, the
ResNet-50 stem, the pruned ResNet-50 with CSR weights, and the energy split of all of them.

Runs the compiler's stages up to planning (`tvm_npu.pipeline.planned`: load -> quantize -> import ->
partition -> plan, then `cascade`) and the performance model (`tvm_npu.perf.estimate`), without lowering
or building: the same figures as `tvmc report` on the compiled package, minus the proven SRAM
footprints. Each model is quantized as `tvmc compile` quantizes it (NNCF, seed 0); the tuning logs are
the committed ones of tuning_logs/. A few minutes; writes results/model_figures.json and the Markdown
tables README embeds: results/cascading.md, results/cascade_tuning.md, results/resnet50_stem.md,
results/pruned_resnet50.md, and results/energy.json with its table results/energy.md (`--out` names
another folder).

    python scripts/model_figures.py [--out results]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx

from tvm_npu.atomic import atomic_output
from tvm_npu.cascade import cascade
from tvm_npu.perf import estimate
from tvm_npu.pipeline import planned
from tvm_npu.plan import plan
from tvm_npu.records import tuned_records, tuned_tiles
from tvm_npu.target import resolve_target
from tvm_npu.zoo import default_model_path, light_model_path, randomize_weights

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from prune import prune  # noqa: E402 - scripts/prune.py, beside this script

RESULTS = REPO / "results"
LOGS = REPO / "tuning_logs"
NAMES = {"default": "default model", "resnet50": "ResNet-50", "shufflenet": "ShuffleNet"}
CASCADING = (("resnet50", "npu/mid"), ("shufflenet", "npu/micro"))
CASCADE_TUNING = (
    ("default", "npu/mid", "default_mid.json"),
    ("resnet50", "npu/mid", "resnet50_mid.json"),
    ("shufflenet", "npu/mid", "shufflenet_mid.json"),
)


def model_path(name: str) -> Path:
    return default_model_path() if name == "default" else light_model_path(name)


def summary(layers, config) -> dict:
    s = estimate(layers, config).summary()
    return {
        key: s[key]
        for key in (
            "conv_utilization",
            "utilization",
            "dram_bytes",
            "compulsory_bytes",
            "dram_over_compulsory",
            "cycles",
            "cascaded_layers",
            "cascades",
            "dram_saved_by_cascades",
            "weight_bytes_original",
            "weight_bytes_encoded",
            "csr_layers",
            "energy_pj",
            "energy_mac_pj",
            "energy_sram_pj",
            "energy_dram_pj",
            "energy_dram_share",
        )
    }


def figures() -> dict:
    fronts = {}

    def front(name):
        if name not in fronts:
            fronts[name] = planned(model_path(name), resolve_target("npu/mid"))[0]
        return fronts[name]

    result = {"cascading": [], "cascade_tuning": []}
    for name, target in CASCADING:
        config, mod = resolve_target(target), front(name).mod
        layers = plan(mod, config)
        result["cascading"].append(
            {"model": name, "target": target, "off": summary(layers, config), "on": summary(cascade(mod, layers, config), config)}
        )
    for name, target, log in CASCADE_TUNING:
        config, mod = resolve_target(target), front(name).mod
        best = tuned_records(LOGS / log, model_path(name), config)
        untuned, tuned = plan(mod, config), plan(mod, config, tuned=tuned_tiles(best))
        result["cascade_tuning"].append(
            {
                "model": name,
                "target": target,
                "log": log,
                "heuristic_cascades": summary(cascade(mod, untuned, config), config),
                "tuned": summary(tuned, config),
                "tuned_cascades": summary(cascade(mod, tuned, config, best), config),
            }
        )
    config, mod = resolve_target("npu/mid"), front("resnet50").mod
    layers = plan(mod, config)
    stem = next(layer for layer in estimate(layers, config).to_dict()["layers"] if layer["kernel"] == "npu.conv2d")
    unlimited = resolve_target("npu/mid", sram_bytes_per_cycle=10**6)
    result["resnet50_stem"] = {
        "target": "npu/mid",
        "stem": {k: stem[k] for k in ("name", "shape", "tiles", "utilization", "array_utilization")},
        "conv_utilization": summary(layers, config)["conv_utilization"],
        "conv_utilization_unlimited_sram_bandwidth": summary(plan(mod, unlimited), unlimited)["conv_utilization"],
    }
    with tempfile.TemporaryDirectory(prefix="tvm_npu_figures_") as folder:
        model = randomize_weights(onnx.load(light_model_path("resnet50")), seed=0)
        prune(model, 0.9, "global")
        path = Path(folder) / "resnet50_pruned.onnx"
        onnx.save(model, path)
        mod = planned(path, config)[0].mod
        result["pruned_resnet50"] = {
            "target": "npu/mid",
            "sparsity": 0.9,
            "scope": "global",
            "off": summary(plan(mod, config, sparse="off"), config),
            "auto": summary(plan(mod, config, sparse="auto"), config),
        }
    return result


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def render(f: dict) -> dict[str, str]:
    """The Markdown README embeds, per results file."""
    rows = [
        "| model, target | cascading | conv MAC utilization | DRAM MiB | DRAM / compulsory | cascaded layers |",
        "|---|---|---|---|---|---|",
    ]
    for r in f["cascading"]:
        off, on = r["off"], r["on"]
        for way, s in (("off", off), ("on", on)):
            saved = f" ({_mib(s['dram_bytes'] - off['dram_bytes'])})" if way == "on" else ""
            pairs = f" ({s['cascades']} pairs)" if s["cascades"] else ""
            rows.append(
                f"| {NAMES[r['model']]}, `{r['target']}` | {way} | {100 * s['conv_utilization']:.1f} % | "
                f"{_mib(s['dram_bytes'])}{saved} | {s['dram_over_compulsory']:.3f}x | {s['cascaded_layers']}{pairs} |"
            )
    tuning = [
        "| model, target, log | heuristic cascades: pairs, cycles | tuned tilings, no cascade | "
        "tuned + records' cascades: pairs, cycles |",
        "|---|---:|---:|---:|",
    ]
    for r in f["cascade_tuning"]:
        h, t, c = r["heuristic_cascades"], r["tuned"], r["tuned_cascades"]
        tuning.append(
            f"| {NAMES[r['model']]}, `{r['target']}`, `{r['log']}` | {h['cascades']}, {h['cycles']:.0f} | "
            f"{t['cycles']:.0f} | {c['cascades']}, {c['cycles']:.0f} |"
        )
    s = f["resnet50_stem"]
    stem = [
        "| ResNet-50, `npu/mid` | tiles | MAC utilization |",
        "|---|---|---:|",
        f"| stem ({s['stem']['shape']}) | {s['stem']['tiles']} | {100 * s['stem']['utilization']:.1f} % |",
        f"| all convolutions | planner's | {100 * s['conv_utilization']:.1f} % |",
        f"| all convolutions, SRAM bandwidth unlimited (`--target-npu-sram-bytes-per-cycle 1000000`) | planner's | "
        f"{100 * s['conv_utilization_unlimited_sram_bandwidth']:.1f} % |",
    ]
    p = f["pruned_resnet50"]
    pruned = [
        "| pruned ResNet-50, `npu/mid` | NPU weight KiB (as stored) | CSR layers | NPU-model cycles | DRAM KiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for way in ("off", "auto"):
        w = p[way]
        pruned.append(
            f"| `--sparse {way}` | {w['weight_bytes_encoded'] / 1024:.0f} | {w['csr_layers']} | {w['cycles']:.0f} | "
            f"{w['dram_bytes'] / 1024:.0f} |"
        )
    return {
        name: "\n".join(lines) + "\n"
        for name, lines in (
            ("cascading.md", rows),
            ("cascade_tuning.md", tuning),
            ("resnet50_stem.md", stem),
            ("pruned_resnet50.md", pruned),
            ("energy.md", energy_table(energy_rows(f))),
        )
    }


def energy_rows(f: dict) -> list[dict]:
    """Energy per inference of every configuration above whose cascading or CSR choice differs."""
    rows = [
        {"model": NAMES[r["model"]], "target": r["target"], "variant": f"cascading {way}"} | r[way]
        for r in f["cascading"]
        for way in ("off", "on")
    ]
    p = f["pruned_resnet50"]
    rows += [
        {"model": f"ResNet-50 pruned to {100 * p['sparsity']:.0f} %", "target": p["target"], "variant": f"--sparse {way}"}
        | p[way]
        for way in ("off", "auto")
    ]
    return rows


def energy_table(rows: list[dict]) -> list[str]:
    lines = [
        "| model, target | variant | energy µJ | MACs µJ | SRAM µJ | DRAM µJ | DRAM share |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']}, `{r['target']}` | {r['variant']} | {r['energy_pj'] / 1e6:.0f} | "
            f"{r['energy_mac_pj'] / 1e6:.0f} | {r['energy_sram_pj'] / 1e6:.0f} | {r['energy_dram_pj'] / 1e6:.0f} | "
            f"{100 * r['energy_dram_share']:.1f} % |"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"folder of the results (default: {RESULTS})")
    args = parser.parse_args(argv)
    found = figures()
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out / "model_figures.json") as stream:
        stream.write(json.dumps(found, indent=2).encode())
    with atomic_output(args.out / "energy.json") as stream:
        stream.write(json.dumps({"constants": "tvm_npu/energy.py", "rows": energy_rows(found)}, indent=2).encode())
    for name, text in render(found).items():
        with atomic_output(args.out / name) as stream:
            stream.write(text.encode())
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
