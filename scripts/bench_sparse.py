"""Dense vs CSR INT8 kernels at several sparsities: host latency, NPU-model cycles, weight bytes.

For a 1024x1024 dense layer (one input row) and a 3x3 256->256 convolution (14x14, padding 1),
each sparsity prunes the same random int8 weights by magnitude; both kernels are planned for the
target (SRAM tiles as `tvmc compile` would), built, checked equal to each other and timed in
the same run with TVM's time_evaluator. Weight bytes: dense int8 vs CSR (values + indices + row pointers).
Writes the table README's "Sparse weights" section shows to results/sparse.md (and its rows to
results/sparse.json); `--out` names another folder.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tvm

from tvm_npu.fixed_point import BIAS_FRACTION_BITS, multiplier
from tvm_npu.atomic import atomic_output
from tvm_npu.build import pass_context
from tvm_npu.lower import lower_layer
from tvm_npu.perf import layer_cost
from tvm_npu.tiling import footprint
from tvm_npu.plan import choose_tiles
from tvm_npu.registry import KernelParams, kernel
from tvm_npu.target import resolve_target

SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)

RESULTS = Path(__file__).resolve().parent.parent / "results"


def layers(rng):
    """(label, dense kernel, its params, input) of the two benchmark layers, dense weights."""
    attrs = {"zx": 3, "zy": -2, "lo": -128, "hi": 127, "out_dtype": "int8"}

    def requantize(out_channels, depth):
        mult, shift = multiplier(np.full(out_channels, 0.5 / np.sqrt(depth) / 40))
        bias = rng.integers(-1000, 1000, out_channels).astype(np.int64) << BIAS_FRACTION_BITS
        return [bias, mult, shift + BIAS_FRACTION_BITS]

    w_dense = rng.integers(-127, 128, (1024, 1024), dtype=np.int8)
    x_dense = rng.integers(-128, 128, (1, 1024), dtype=np.int8)
    conv_attrs = attrs | {"strides": (1, 1), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1, "upsample": (1, 1)}
    w_conv = rng.integers(-127, 128, (256, 256, 3, 3), dtype=np.int8)
    x_conv = rng.integers(-128, 128, (1, 256, 14, 14), dtype=np.int8)
    dense_attrs = attrs | {"lead": 0}  # no unit dimensions before [N, K]
    return [
        ("dense 1024x1024 (N=1)", "npu.dense", KernelParams(dense_attrs, [w_dense, *requantize(1024, 1024)]), x_dense),
        ("conv 3x3 256->256 14x14", "npu.conv2d", KernelParams(conv_attrs, [w_conv, *requantize(256, 2304)]), x_conv),
    ]


def pruned(params: KernelParams, sparsity: float) -> KernelParams:
    w = params.consts[0]
    count = int(round(sparsity * w.size))
    order = np.argsort(np.abs(w.astype(np.int16)), axis=None, kind="stable")
    flat = w.copy().reshape(-1)
    flat[order[:count]] = 0
    return KernelParams(params.attrs, [flat.reshape(w.shape), *params.consts[1:]])


def build(name: str, params: KernelParams, x: np.ndarray, config):
    """The planned, SRAM-scheduled kernel: (run function, modelled cycles, proven SRAM bytes)."""
    npu_kernel = kernel(name)
    inputs = [(x.shape, str(x.dtype))]
    g = npu_kernel.geometry(params, inputs)
    tiles, _ = choose_tiles(g, config)
    prim, _ = lower_layer(npu_kernel, params, inputs, tiles, sum(footprint(g, tiles).values()), symbol="k")
    with pass_context():
        lib = tvm.compile(tvm.IRModule({"k": prim}), target=config.tvm_target())
    return lib, layer_cost(g, tiles, config).cycles, tiles


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="npu", help="NPU preset for tiles and the model (default: npu)")
    parser.add_argument("--repeat", type=int, default=20, help="time_evaluator repeats (default: 20)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"folder of sparse.md and sparse.json (default: {RESULTS})")
    args = parser.parse_args(argv)
    rows = []
    config = resolve_target(args.target)
    rng = np.random.default_rng(0)
    print(f"npu/{config.name}; host latency: median of {args.repeat} time_evaluator repeats, same run")
    print(
        f"{'layer':<26}{'sparsity':>9}{'dense ms':>10}{'CSR ms':>9}{'speedup':>9}"
        f"{'dense cyc':>11}{'CSR cyc':>11}{'cyc ratio':>10}{'dense B':>10}{'CSR B':>10}{'B ratio':>9}"
    )
    for label, name, base, x in layers(rng):
        csr_kernel = kernel(f"{name}_csr")
        for sparsity in SPARSITIES:
            dense_params = pruned(base, sparsity)
            csr_params = csr_kernel.params(dense_params)
            results = {}
            for kind, kname, params in (("dense", name, dense_params), ("csr", csr_kernel.name, csr_params)):
                lib, cycles, _ = build(kname, params, x, config)
                expected = kernel(name).reference(dense_params, [x])
                out = tvm.runtime.empty(expected.shape, str(expected.dtype))
                args_ = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in [x, *params.consts]] + [out]
                lib["k"](*args_)
                np.testing.assert_array_equal(out.numpy(), expected)  # both exact against the integer reference
                timer = lib.jit().time_evaluator("k", tvm.cpu(), number=5, repeat=args.repeat)
                results[kind] = (float(np.median(timer(*args_).results)) * 1e3, cycles)
            dense_bytes = int(dense_params.consts[0].nbytes)
            csr_bytes = int(sum(c.nbytes for c in csr_params.consts[:3]))
            (d_ms, d_cyc), (c_ms, c_cyc) = results["dense"], results["csr"]
            print(
                f"{label:<26}{100 * sparsity:>8.0f}%{d_ms:>10.3f}{c_ms:>9.3f}{d_ms / c_ms:>8.2f}x"
                f"{d_cyc:>11.0f}{c_cyc:>11.0f}{d_cyc / c_cyc:>9.2f}x{dense_bytes:>10}{csr_bytes:>10}"
                f"{dense_bytes / csr_bytes:>8.2f}x",
                flush=True,
            )
            rows.append(
                {
                    "layer": label,
                    "zeros": sparsity,
                    "dense_ms": d_ms,
                    "csr_ms": c_ms,
                    "dense_cycles": d_cyc,
                    "csr_cycles": c_cyc,
                    "dense_bytes": dense_bytes,
                    "csr_bytes": csr_bytes,
                }
            )
    settings = {"target": f"npu/{config.name}", "repeat": args.repeat, "date": time.strftime("%Y-%m-%d")}
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out / "sparse.json") as stream:
        stream.write(json.dumps({"settings": settings, "rows": rows}, indent=2).encode())
    with atomic_output(args.out / "sparse.md") as stream:
        stream.write(render(settings, rows).encode())
    return 0


def render(settings: dict, rows: list[dict]) -> str:
    """The Markdown table of README's "Sparse weights" section."""
    lines = [
        f"Measured {settings['date']} (`python scripts/bench_sparse.py --repeat {settings['repeat']}`, "
        f"{settings['target']}; host latencies are noisy, both kernels timed in the same run; every output checked exact):",
        "",
        "| layer | zeros | dense ms | CSR ms | host speedup | model cycles dense / CSR | weight bytes dense / CSR |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    previous = None
    for r in rows:
        cycles, size = r["dense_cycles"] / r["csr_cycles"], r["dense_bytes"] / r["csr_bytes"]
        lines.append(
            f"| {'' if r['layer'] == previous else r['layer']} | {100 * r['zeros']:.0f} % | {r['dense_ms']:.3f} | "
            f"{r['csr_ms']:.3f} | {r['dense_ms'] / r['csr_ms']:.2f}x | "
            f"{r['dense_cycles']:.0f} / {r['csr_cycles']:.0f}{f' ({cycles:.2f}x)' if cycles > 1 else ''} | "
            f"{r['dense_bytes']} / {r['csr_bytes']}{f' ({size:.2f}x)' if size > 1 else ''} |"
        )
        previous = r["layer"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
