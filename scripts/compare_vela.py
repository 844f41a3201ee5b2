"""Our NPU performance model against Arm's Vela on the same TFLite files and the same hardware.

Networks: the five of scripts/int8_nets.py (seeded INT8 at Ethos-U benchmark sizes: MobileNetV1/V2-style,
ResNet-style, depthwise-heavy, dense-heavy; written on the fly) and the five TensorFlow-converted ones of
tests/data/tflite (scripts/make_tflite_models.py: smaller, a second producer). For every network and every
preset that names a Vela twin (`NpuConfig.vela`: ethos-u55-256, ethos-u65-512), Vela (ethos-u-vela,
`--verbose-performance`) compiles the .tflite file and our compiler plans the very same file
(`tvm_npu.pipeline.planned` through the TFLite frontend, then `cascade`, as `tvmc compile --cascade`: Vela
cascades by default; the performance model is the one `tvmc report` prints).

Per layer (matched by name: Vela reports each operator's output tensor, our TFLite frontend names layers the
same way): cycles, DRAM traffic (Vela's per-layer report has access cycles, not bytes: those of the memories
our model calls DRAM, see below; ours in bytes) and SRAM use (Vela's staging usage, our planned footprint)
side by side, and the Spearman rank correlation of the cycles per network (over layers both name alike
and, for weighted layers, with equal MAC counts). Our layers Vela has no twin of
(the NHWC <-> NCHW transposes our frontend adds) count in our totals only. Whole network: cycles, the bytes
our model calls DRAM traffic (the memory holding activations and weights: Vela's DRAM in Dedicated_Sram mode;
in Shared_Sram mode, where the activations live in system SRAM, Vela's SRAM feature-map traffic plus its
flash weight reads) and the SRAM peak. Writes results/vela_comparison.json (every row) and
results/vela_comparison.md (the table README shows); `--out` names another folder. About 5 minutes.

    python scripts/compare_vela.py [--out results] [--networks resnet tf/resnet]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import ethosu.vela
from scipy.stats import spearmanr

from tvm_npu.atomic import atomic_output
from tvm_npu.cascade import cascade
from tvm_npu.perf import estimate
from tvm_npu.pipeline import planned
from tvm_npu.target import PRESETS

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from int8_nets import NETWORKS as GENERATED, write  # noqa: E402 - scripts/int8_nets.py, beside this script

TF_FILES = REPO / "tests" / "data" / "tflite"  # TensorFlow's converter (scripts/make_tflite_models.py)
NETWORKS = list(GENERATED) + [f"tf/{name}" for name in GENERATED]  # the same five architectures, smaller

VELA_INI = Path(ethosu.vela.__file__).parent.parent / "config_files" / "Arm" / "vela.ini"
TWINS = [name for name, config in PRESETS.items() if config.vela]
WEIGHTED = ("Conv2D", "DepthwiseConv2D", "FullyConnected")


def run_vela(tflite: Path, config, folder: Path) -> dict:
    """Vela's per-layer CSV rows (summed per output tensor) and its summary row."""
    out = folder / f"vela_{config.name}"
    command = [
        sys.executable,
        "-m",
        "ethosu.vela",
        str(tflite),
        "--config",
        str(VELA_INI),
        *config.vela.split(),
        "--verbose-performance",
        "--output-dir",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"vela failed on {tflite.name}: {done.stderr.strip() or done.stdout[-500:]}")
    layers: dict[str, dict] = {}
    with open(out / f"{tflite.stem}_per-layer.csv") as f:
        for row in csv.DictReader(f):
            layer = layers.setdefault(
                row["Name"], {"op": row["Original Operator"], "cycles": 0.0, "sram": 0, "macs": 0, "access": {}}
            )
            layer["cycles"] += float(row["Op Cycles"])
            for memory in ("SRAM", "DRAM", "OffFlash"):
                layer["access"][memory] = layer["access"].get(memory, 0.0) + float(row[f"{memory} AC"])
            layer["sram"] = max(layer["sram"], int(row["Staging Usage"]))
            layer["macs"] += int(row["MAC Count"])
    (summary_file,) = out.glob(f"{tflite.stem}_summary_*.csv")
    with open(summary_file) as f:
        summary = next(csv.DictReader(f))
    return {"layers": layers, "summary": summary}


def vela_dram_access(layer: dict, config) -> float:
    """Vela's access cycles (bytes at the memory's bandwidth, burst-inflated) of the memories our model
    calls DRAM: DRAM in Dedicated_Sram mode; system SRAM and flash in Shared_Sram mode."""
    access = layer["access"]
    return access["SRAM"] + access["OffFlash"] if config.weight_bytes_per_cycle else access["DRAM"]


def vela_dram_bytes(summary: dict, config) -> float:
    """The traffic our model counts as DRAM, from Vela's summary (see the module docstring)."""
    if config.weight_bytes_per_cycle:  # Shared_Sram: activations in system SRAM, weights in flash
        return (
            float(summary["sram_feature_map_read_bytes"])
            + float(summary["sram_feature_map_write_bytes"])
            + float(summary["off_chip_flash_weight_read_bytes"])
        )
    return float(summary["dram_total_bytes"])


def tflite_file(network: str, folder: Path) -> Path:
    return TF_FILES / f"{network[3:]}.tflite" if network.startswith("tf/") else write(GENERATED[network](), folder)


def ours(path: Path, config) -> dict:
    front, layers = planned(path, config)
    flat = estimate(layers, config).summary()
    result = estimate(cascade(front.mod, layers, config), config)
    return {
        "layers": {layer.name: layer for layer in result.npu_layers},
        "summary": result.summary(),
        "cycles_without_cascading": flat["cycles"],
    }


def compare(name: str, config, folder: Path) -> dict:
    tflite = tflite_file(name, folder)
    vela, our = run_vela(tflite, config, folder), ours(tflite, config)
    rows = []
    for layer, v in vela["layers"].items():
        o = our["layers"].get(layer)
        rows.append(
            {
                "layer": layer,
                "op": v["op"],
                "macs": v["macs"],
                "our_macs": o.macs if o else None,
                "vela_cycles": v["cycles"],
                "vela_dram_access_cycles": vela_dram_access(v, config),
                "our_dram_bytes": o.dram_bytes if o else None,
                "our_cycles": o.cycles if o else None,
                "vela_sram": v["sram"],
                "our_sram": o.sram_planned if o else None,
                "our_kernel": o.kernel if o else None,
                "our_tiles": o.tiles if o else None,
            }
        )
    unmatched = sorted(set(our["layers"]) - set(vela["layers"]))
    # A weighted layer whose MACs differ carries another layer's name (our import names layers by the order
    # of the quantize calls, which TVM's importer does not always keep): no pair, named in misnamed_layers.
    misnamed = [r["layer"] for r in rows if r["our_macs"] is not None and r["op"] in WEIGHTED and r["our_macs"] != r["macs"]]
    matched = [r for r in rows if r["our_cycles"] is not None and r["layer"] not in misnamed]
    rho = spearmanr([r["vela_cycles"] for r in matched], [r["our_cycles"] for r in matched]).statistic
    s, vs = our["summary"], vela["summary"]
    vela_cycles = float(vs["cycles_total"])
    return {
        "network": name,
        "target": f"npu/{config.name}",
        "vela_flags": config.vela,
        "vela_cycles": vela_cycles,
        "our_cycles": s["cycles"],
        "cycle_ratio": s["cycles"] / vela_cycles,
        "our_cycles_without_cascading": our["cycles_without_cascading"],
        "vela_dram_bytes": vela_dram_bytes(vs, config),
        "our_dram_bytes": s["dram_bytes"],
        "vela_sram_peak": max(v["sram"] for v in vela["layers"].values()),
        "our_sram_peak": max((o.sram_planned or 0) for o in our["layers"].values()),
        "vela_sram_used_kib": float(vs["sram_memory_used"]),
        "macs": s["macs"],
        "spearman": float(rho),
        "matched_layers": len(matched),
        "layers_only_vela": [r["layer"] for r in rows if r["our_cycles"] is None],
        "layers_only_ours": unmatched,
        "misnamed_layers": misnamed,
        "our_cycles_only_ours": sum(our["layers"][name].cycles for name in unmatched),
        "vela_cycles_npu": float(vs["cycles_npu"]),
        "layers": rows,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| network | target (Vela twin) | MMACs | Vela cycles | our cycles | ours / Vela | per-layer Spearman "
        "| Vela DRAM KiB | our DRAM KiB | Vela SRAM peak KiB | our SRAM peak KiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['network']} | `{r['target']}` | {r['macs'] / 1e6:.1f} | {r['vela_cycles']:,.0f} "
            f"| {r['our_cycles']:,.0f} | {r['cycle_ratio']:.2f} | {r['spearman']:.2f} "
            f"| {r['vela_dram_bytes'] / 1024:,.0f} | {r['our_dram_bytes'] / 1024:,.0f} "
            f"| {r['vela_sram_peak'] / 1024:,.0f} | {r['our_sram_peak'] / 1024:,.0f} |"
        )
    within = [abs(r["cycle_ratio"] - 1) <= 0.2 for r in results]
    ranked = [r["spearman"] >= 0.9 for r in results]
    both = sorted({r["network"] for r, w, k in zip(results, within, ranked) if w and k})
    lines.append("")
    lines.append(
        f"{sum(within)} of {len(results)} within ±20 % of Vela's cycles; {sum(ranked)} of {len(results)} with "
        f"per-layer Spearman >= 0.9; {len(both)} networks meet both on at least one twin ({', '.join(both)}) "
        f"(ethos-u-vela {ethosu_version()})."
    )
    return "\n".join(lines) + "\n"


def ethosu_version() -> str:
    from ethosu.vela import __version__

    return __version__


def print_layers(r: dict) -> None:
    print(
        f"\n{r['network']} on {r['target']}: Vela {r['vela_cycles']:,.0f} cycles, ours {r['our_cycles']:,.0f} "
        f"({r['cycle_ratio']:.2f}x), Spearman {r['spearman']:.2f}"
    )
    print(
        f"  {'layer':8} {'op':16} {'Vela cycles':>12} {'our cycles':>12} {'Vela DRAM AC':>13} {'our DRAM B':>11} "
        f"{'Vela SRAM':>10} {'our SRAM':>10}  our tiles"
    )
    for row in r["layers"]:
        ours_c = "-" if row["our_cycles"] is None else f"{row['our_cycles']:,.0f}"
        ours_s = "-" if row["our_sram"] is None else f"{row['our_sram']:,}"
        ours_d = "-" if row["our_dram_bytes"] is None else f"{row['our_dram_bytes']:,}"
        print(
            f"  {row['layer']:8} {row['op']:16} {row['vela_cycles']:>12,.0f} {ours_c:>12} "
            f"{row['vela_dram_access_cycles']:>13,.0f} {ours_d:>11} {row['vela_sram']:>10,} {ours_s:>10}  "
            f"{row['our_tiles'] or ''}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "results"))
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=NETWORKS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not out.is_dir():
        print(f"compare_vela: error: output folder {out} does not exist; create it or pass another --out", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.networks:
            for twin in TWINS:
                results.append(compare(name, PRESETS[twin], Path(tmp)))
                print_layers(results[-1])
    text = table(results)
    print("\n" + text)
    with atomic_output(out / "vela_comparison.json") as f:
        f.write((json.dumps({"vela": ethosu_version(), "results": results}, indent=1) + "\n").encode())
    with atomic_output(out / "vela_comparison.md") as f:
        f.write(text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
