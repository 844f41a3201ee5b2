"""Stage: report. The NPU performance model's figures for a compiled package, Vela-style.

Entry point: `report(metadata, fmt="table") -> str` (table, json or csv) and
`plot(metadata, path)` (per-layer cycles against the roofline bound, PNG via matplotlib Agg).
The figures themselves are computed at compile time (`tvm_npu.perf.estimate`) and stored in
the package metadata (`extra["performance"]`, with the tiling plan in `extra["layers"]`).
"""

from __future__ import annotations

import csv
import io
import json

from .atomic import atomic_output
from .errors import NpuError
from .package import PackageMetadata

FORMATS = ("table", "json", "csv")
COLUMNS = ("name", "kernel", "placement", "shape", "tiles", "macs", "cycles", "roofline_cycles", "roofline_ratio",
           "utilization", "array_utilization", "weight_read", "activation_read", "activation_write", "dram_bytes",
           "compulsory_bytes", "sram_planned", "sram_proven", "weight_bytes_original", "weight_bytes_encoded")


def performance(metadata: PackageMetadata) -> dict:
    perf = metadata.extra.get("performance")
    if perf is None:
        raise NpuError(f"package of {metadata.model_name} has no performance model figures; recompile it with this tvm_npu")
    return perf


def cpu_operator_counts(metadata: PackageMetadata) -> tuple[int, int]:
    """(CPU operators, quantize/dequantize boundaries) from the compile's offload report."""
    cpu = [row for row in metadata.extra.get("operators", []) if row["runs_on"] == "cpu"]
    boundaries = sum(row["ops"] in (["relax.quantize"], ["relax.dequantize"]) for row in cpu)
    return len(cpu) - boundaries, boundaries


def summary_text(metadata: PackageMetadata) -> str:
    s = performance(metadata)["summary"]
    cpu_operators, boundaries = cpu_operator_counts(metadata)
    config = metadata.npu_config
    kib = 1024
    return "\n".join([
        f"Network summary for {metadata.model_name} on npu/{config.name} "
        f"({config.macs_per_cycle} MACs/cycle, {config.sram_kib} KiB SRAM, {config.clock_mhz:g} MHz)",
        f"  NPU operators                {s['npu_layers']} ({s['tiled_layers']} SRAM-tiled, "
        f"{s['npu_layers'] - s['tiled_layers']} not tiled)",
        f"  CPU operators (fallback)     {cpu_operators} ({s['sram_fallback_layers']} for lack of SRAM), "
        f"plus {boundaries} quantize/dequantize boundaries",
        f"  Cascaded layers              {s.get('cascaded_layers', 0)} in {s.get('cascades', 0)} cascades, "
        f"{s.get('dram_saved_by_cascades', 0) / kib:.1f} KiB of DRAM traffic saved",
        f"  SRAM used (proven peak)      {s['sram_peak_proven'] / kib:.1f} of {s['sram_bytes'] / kib:.0f} KiB",
        f"  Weights original / encoded   {s.get('weight_bytes_original', 0) / kib:.1f} KiB / "
        f"{s.get('weight_bytes_encoded', 0) / kib:.1f} KiB ({s.get('csr_layers', 0)} layers with CSR weights)",
        f"  DRAM read: weights           {s['dram_weight_read'] / kib:.1f} KiB",
        f"  DRAM read: activations       {s['dram_activation_read'] / kib:.1f} KiB",
        f"  DRAM written: activations    {s['dram_activation_write'] / kib:.1f} KiB",
        f"  DRAM total / compulsory      {s['dram_bytes'] / kib:.1f} KiB / {s['compulsory_bytes'] / kib:.1f} KiB "
        f"= {s['dram_over_compulsory']:.3f}x",
        f"  Total cycles                 {s['cycles']:.0f} (roofline bound {s['roofline_cycles']:.0f})",
        f"  MAC utilization              {100 * s['utilization']:.1f} % (conv layers {100 * s['conv_utilization']:.1f} %)",
        f"  Inferences/s at {s['clock_mhz']:g} MHz      {s['inferences_per_second']:.1f}",
    ])


def report(metadata: PackageMetadata, fmt: str = "table") -> str:
    perf = performance(metadata)
    rows = perf["layers"]
    if fmt == "json":
        return json.dumps({"model": metadata.model_name, "npu_config": metadata.npu_config.to_dict(),
                           "summary": perf["summary"], "layers": rows}, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    if fmt != "table":
        raise NpuError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
    # Names (as in the ONNX model) and tilings ("(tuned)", cascades) vary in length: columns fit them whole.
    width, tiles = (max([least] + [len(r[key]) + 2 for r in rows]) for key, least in (("name", 12), ("tiles", 32)))
    head = (f"{'layer':<{width}}{'kernel':<17}{'tiles':<{tiles}}{'cycles':>11}{'bound':>8}{'util':>7}{'DRAM KiB':>10}"
            f"{'SRAM KiB':>10}{'W KiB orig':>11}{'W KiB enc':>10}  shape")
    lines = [summary_text(metadata), "", head]
    for r in rows:
        sram = "-" if r["sram_proven"] is None else f"{r['sram_proven'] / 1024:.1f}"
        lines.append(f"{r['name']:<{width}}{r['kernel']:<17}{r['tiles']:<{tiles}}{r['cycles']:>11.0f}"
                     f"{r['roofline_ratio']:>7.2f}x{100 * r['utilization']:>6.1f}%{r['dram_bytes'] / 1024:>10.1f}"
                     f"{sram:>10}{_kib(r.get('weight_bytes_original', 0)):>11}{_kib(r.get('weight_bytes_encoded', 0)):>10}"
                     f"  {r['shape']}")
    return "\n".join(lines)


def _kib(size: int) -> str:
    return f"{size / 1024:.1f}" if size else "-"


def plot(metadata: PackageMetadata, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in performance(metadata)["layers"] if r["placement"] == "npu"]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(rows)), 4))
    xs = range(len(rows))
    ax.bar(xs, [r["cycles"] for r in rows], label="modelled cycles", color="tab:blue")
    ax.plot(xs, [r["roofline_cycles"] for r in rows], "k_", markersize=10, label="roofline bound")
    ax.set_xticks(list(xs), [r["name"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("cycles")
    ax.set_yscale("log")
    ax.set_title(f"{metadata.model_name} on npu/{metadata.npu_config.name}: cycles per NPU layer")
    ax.legend()
    fig.tight_layout()
    with atomic_output(path) as stream:
        fig.savefig(stream, format="png", dpi=120)
    plt.close(fig)
