"""Stage: report. The NPU performance model's figures for a compiled package, Vela-style.

Entry point: `report(metadata, fmt="table", host) -> str` (table, json or csv) and
`plot(metadata, path)` (per-layer cycles against the roofline bound, PNG via matplotlib Agg).
The figures themselves are computed at compile time (`tvm_npu.perf.estimate`) and stored in
the package metadata (`extra["performance"]`, with the tiling plan in `extra["layers"]`), as is
each operator's share of the conv/gemm MACs (`extra["operators"]`). Where host time goes is measured
when asked (`measured_host_time`): it depends on the host, so no package stores it.
"""

from __future__ import annotations

import csv
import io
import json
import math

from .atomic import atomic_output
from .errors import NpuError
from .package import PackageMetadata, read_package
from .runtime import CPU_FUNCTIONS, VM_BUILTINS, BucketedModel, CompiledModel, LayerTime, call_kind, host_mismatch, make_inputs

FORMATS = ("table", "json", "csv")
HOST_TOP = 5  # CPU functions the summary names
HOST_RUNS = 3
COLUMNS = (
    "name",
    "kernel",
    "placement",
    "shape",
    "tiles",
    "macs",
    "cycles",
    "roofline_cycles",
    "roofline_ratio",
    "utilization",
    "array_utilization",
    "weight_read",
    "activation_read",
    "activation_write",
    "dram_bytes",
    "compulsory_bytes",
    "sram_planned",
    "sram_proven",
    "weight_bytes_original",
    "weight_bytes_encoded",
    "sram_traffic",
    "energy_pj",
    "energy_mac_pj",
    "energy_sram_pj",
    "energy_dram_pj",
    "energy_dram_share",
)


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


def mac_share(metadata: PackageMetadata) -> dict | None:
    """The model's convolution and matrix-product MACs (`partition.conv_gemm_macs`) on the NPU and on the
    CPU, from the compile's offload report; None for a package compiled before they were counted."""
    rows = metadata.extra.get("operators", [])
    if any("macs" not in row for row in rows):
        return None
    npu = sum(row["macs"] for row in rows if row["runs_on"] == "npu")
    cpu = [row for row in rows if row["runs_on"] == "cpu" and row["macs"]]
    total = npu + sum(row["macs"] for row in cpu)
    return {
        "npu_macs": npu,
        "total_macs": total,
        "npu_share": npu / total if total else None,
        "cpu_operators_with_macs": len(cpu),
    }


def host_time(calls: list[LayerTime]) -> dict:
    """Host time of one inference by kind (NPU kernels run emulated on the host) and the CPU functions' shares."""
    total = sum(call.ms for call in calls)
    kinds = {"npu": 0.0, "cpu": 0.0, "vm": 0.0}
    cpu: dict[str, float] = {}
    for call in calls:
        kind = call_kind(call.symbol)
        key = "vm" if kind == VM_BUILTINS else "cpu" if kind == CPU_FUNCTIONS else "npu"
        kinds[key] += call.ms
        if key == "cpu":
            cpu[call.symbol] = cpu.get(call.symbol, 0.0) + call.ms
    share = (lambda ms: ms / total) if total else (lambda ms: 0.0)
    return {
        "total_ms": total,
        **{f"{key}_share": share(ms) for key, ms in kinds.items()},
        "cpu_functions": [
            {"symbol": symbol, "ms": ms, "share": share(ms)} for symbol, ms in sorted(cpu.items(), key=lambda kv: -kv[1])
        ],
    }


def measured_host_time(path) -> dict | str:
    """`host_time` of the package at `path`: the median of HOST_RUNS inferences on seeded random inputs, or
    why it was not measured."""
    reason = host_mismatch(read_package(path, load_library=False).metadata)
    if reason:
        return reason
    package = read_package(path)
    # A bucketed package: its largest bucket, which the top-level figures describe.
    model = BucketedModel(package, str(path)).buckets[-1] if package.buckets else CompiledModel(package, str(path))
    return host_time(model.median_profile(make_inputs(model.inputs, "random", seed=0), HOST_RUNS))


def _mac_line(metadata: PackageMetadata) -> str:
    share = mac_share(metadata)
    if share is None:
        return "unknown (compiled by an older tvm_npu: recompile)"
    if not share["total_macs"]:
        return "no convolutions or matrix products"
    cpu_macs = share["total_macs"] - share["npu_macs"]
    percent = math.floor(1000 * share["npu_share"]) / 10  # rounded down: 100 % means every MAC
    return (
        f"{percent:.1f} % ({format_count(share['npu_macs'])} of {format_count(share['total_macs'])} MACs; "
        f"{format_count(cpu_macs)} in {share['cpu_operators_with_macs']} CPU operators)"
    )


def format_count(n: int) -> str:
    """A count with a k/M/G unit, to one decimal."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def _host_lines(host: dict | str | None) -> list[str]:
    if host is None:
        return []
    if isinstance(host, str):
        return [f"  Host time per inference      not measured: {host}"]
    lines = [
        f"  Host time per inference      {host['total_ms']:.2f} ms on this CPU: CPU operators "
        f"{100 * host['cpu_share']:.1f} %, NPU kernels (emulated) {100 * host['npu_share']:.1f} %, "
        f"VM builtins {100 * host['vm_share']:.1f} %"
    ]
    functions = host["cpu_functions"]
    if functions:
        top = ", ".join(f"{f['symbol']} {100 * f['share']:.1f} %" for f in functions[:HOST_TOP])
        more = f" (top {HOST_TOP} of {len(functions)})" if len(functions) > HOST_TOP else ""
        lines.append(f"  CPU operators by host time   {top}{more}")
    return lines


def summary_text(metadata: PackageMetadata, host: dict | str | None = None) -> str:
    """The network summary; `host` adds where one inference's host time goes (`host_time`), or why it was
    not measured."""
    s = performance(metadata)["summary"]
    cpu_operators, boundaries = cpu_operator_counts(metadata)
    config = metadata.npu_config
    kib = 1024
    # The NPU model costs only NPU layers: with CPU operators left, the figure is not the model's rate.
    npu_part = f" (NPU part only; {cpu_operators} CPU operators not included)" if cpu_operators else ""
    return "\n".join(
        [
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
            f"  Inferences/s at {s['clock_mhz']:g} MHz      {s['inferences_per_second']:.1f}{npu_part}",
            f"  Energy per inference         {_energy_line(s)}",
            f"  Conv/gemm MACs on the NPU    {_mac_line(metadata)}",
            *_host_lines(host),
        ]
    )


def bucket_rows(metadata: PackageMetadata) -> list[dict]:
    """Per bucket of a bucketed package (smallest first): its shapes and modelled cycles, DRAM traffic and
    SRAM peak; and the padding an input just past the previous bucket pays (the worst case at that boundary:
    a 161-wide input runs in the 320 bucket). Empty for a single-shape package."""
    bucketing = metadata.extra.get("bucketing")
    if not bucketing:
        return []
    rows = []
    for index, data in enumerate(metadata.extra["buckets"]):
        summary = data["extra"]["performance"]["summary"]
        row = {
            "bucket": index,
            "shapes": data_shapes(data),
            "cycles": summary["cycles"],
            "dram_bytes": summary["dram_bytes"],
            "sram_peak": summary["sram_peak_proven"],
        }
        if index:
            previous = rows[-1]
            sizes = [
                (name, dim, bucketing["shapes"][index - 1][name][dim], bucketing["shapes"][index][name][dim])
                for name, dims in bucketing["dynamic"].items()
                for dim in dims
            ]
            grown = [(name, dim, low + 1, high) for name, dim, low, high in sizes if high > low]
            row["boundary"] = {
                "input": [f"{name}[{dim}]={first}" for name, dim, first, _ in grown],
                "padded_share": 1 - math.prod(first / high for _, _, first, high in grown),
                "cycles_over_previous": row["cycles"] / previous["cycles"],
                "dram_over_previous": row["dram_bytes"] / previous["dram_bytes"],
            }
        rows.append(row)
    return rows


def data_shapes(metadata: dict) -> str:
    return " ".join(f"{spec['name']}:[{','.join(map(str, spec['shape']))}]" for spec in metadata["inputs"])


def buckets_text(rows: list[dict]) -> str:
    """`bucket_rows` as two tables: each bucket's figures, and the padding cost at each bucket boundary."""
    width = max(len(r["shapes"]) for r in rows) + 2
    lines = [
        f"Shape buckets ({len(rows)}; an input runs in the smallest that holds it, padded)",
        f"  {'bucket':<{width}}{'cycles':>12}{'DRAM KiB':>11}{'SRAM peak KiB':>15}",
    ]
    lines += [
        f"  {r['shapes']:<{width}}{r['cycles']:>12.0f}{r['dram_bytes'] / 1024:>11.1f}{r['sram_peak'] / 1024:>15.1f}" for r in rows
    ]
    lines += [
        "",
        "Padding cost at bucket boundaries (the first size past the previous bucket)",
        f"  {'input':<18}{'runs in':<{width}}{'padded':>8}{'cycles vs previous bucket':>27}",
    ]
    for r in rows[1:]:
        b = r["boundary"]
        lines.append(
            f"  {' '.join(b['input']):<18}{r['shapes']:<{width}}{100 * b['padded_share']:>7.1f}%"
            f"{b['cycles_over_previous']:>26.2f}x"
        )
    return "\n".join(lines)


def _energy_line(s: dict) -> str:
    if "energy_pj" not in s:
        return "unknown (compiled by an older tvm_npu: recompile)"
    return (
        f"{s['energy_pj'] / 1e6:.1f} uJ: MACs {s['energy_mac_pj'] / 1e6:.1f}, SRAM {s['energy_sram_pj'] / 1e6:.1f}, "
        f"DRAM {s['energy_dram_pj'] / 1e6:.1f} uJ ({100 * s['energy_dram_share']:.1f} % DRAM; tvm_npu/energy.py)"
    )


def report(metadata: PackageMetadata, fmt: str = "table", host: dict | str | None = None) -> str:
    perf = performance(metadata)
    rows = perf["layers"]
    if fmt == "json":
        return json.dumps(
            {
                "model": metadata.model_name,
                "npu_config": metadata.npu_config.to_dict(),
                "summary": perf["summary"],
                "mac_share": mac_share(metadata),
                "host_time": host,
                "layers": rows,
                "buckets": bucket_rows(metadata),
            },
            indent=2,
        )
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
    head = (
        f"{'layer':<{width}}{'kernel':<17}{'tiles':<{tiles}}{'cycles':>11}{'bound':>8}{'util':>7}{'DRAM KiB':>10}"
        f"{'SRAM KiB':>10}{'W KiB orig':>11}{'W KiB enc':>10}{'nJ':>9}{'DRAM %':>7}  shape"
    )
    buckets = bucket_rows(metadata)
    lines = [summary_text(metadata, host), "", *([buckets_text(buckets), "", "Largest bucket"] if buckets else []), head]
    for r in rows:
        sram = "-" if r["sram_proven"] is None else f"{r['sram_proven'] / 1024:.1f}"
        lines.append(
            f"{r['name']:<{width}}{r['kernel']:<17}{r['tiles']:<{tiles}}{r['cycles']:>11.0f}"
            f"{r['roofline_ratio']:>7.2f}x{100 * r['utilization']:>6.1f}%{r['dram_bytes'] / 1024:>10.1f}"
            f"{sram:>10}{_kib(r.get('weight_bytes_original', 0)):>11}{_kib(r.get('weight_bytes_encoded', 0)):>10}"
            f"{_nj(r):>9}{_share(r):>7}  {r['shape']}"
        )
    return "\n".join(lines)


def _nj(row: dict) -> str:
    return f"{row['energy_pj'] / 1e3:.0f}" if "energy_pj" in row else "-"


def _share(row: dict) -> str:
    return f"{100 * row['energy_dram_share']:.0f}" if "energy_pj" in row else "-"


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
