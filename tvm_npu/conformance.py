"""The kernel conformance harness: what every registered NPU kernel must pass, derived from its examples.

Each kernel declares `examples(rng)`: one-operator QDQ ONNX models (tvm_npu.onnx_builder). From
each example the harness derives, with no per-kernel code:

1. `prepare`: import and partition the model; the operator must land on this kernel (the only NPU
   composite, its inputs the graph inputs), which gives the kernel's `params` and inputs.
2. `check_default`: the kernel's PrimFunc, as computed (default schedule), built for the host and
   run, is bit-exact against the kernel's NumPy reference.
3. `check_presets`: per preset, the planner's choice (`plan`), the performance model's invariants
   (cycles >= roofline bound, DRAM traffic >= compulsory bytes) and, for SRAM-tiled kernels, the
   chosen tiling plus one that splits rows and channels unevenly: scheduled, footprint proven from
   the lowered TIR (<= planned <= the preset's SRAM), built, run, bit-exact.
4. `check_openvino`: the whole example compiled by `tvm_npu.compile` against OpenVINO on the same
   ONNX file, judged by `tvmc validate`'s rules (`tvm_npu.validate.validate`), on OpenVINO's native int8
   path and, capped at a oneDNN ISA without VNNI, on the saturating one.

A failure raises `ConformanceError` naming the kernel, the example, its input shape and, for
exactness, the first differing element (index, ours, reference).
"""

from __future__ import annotations

import tempfile
import zlib
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import tvm
from tvm import relax

from .build import pass_context
from .errors import NpuError
from .frontend import import_onnx, load_onnx
from .host import host_target, missing_isa, required_isa
from .lower import lower_layer
from .onnx_builder import Example
from .partition import partition
from .perf import estimate, layer_cost, roofline
from .plan import candidates, plan
from .registry import Composite, KernelParams, NpuKernel, kernel, kernels
from .target import PRESETS, NpuConfig
from .tiling import Tiles, footprint
from .validate import compare, exact_reference_outputs, quantization_steps, validate

# Seeds of the default run (tests/conformance) and of the sweep (`-m slow`).
DEFAULT_SEEDS = (0,)
SWEEP_SEEDS = (1, 2, 3, 4, 5)
# Host instruction sets the int8 MAC kernels (conv2d, dense: their accumulation loops vectorize per ISA) are
# also built for, beyond the portable default every other check uses (`--target-host` forms).
HOST_ISAS = {"avx512-vnni": "llvm -mcpu=x86-64-v4 -mattr=+avx512vnni", "avx-vnni": "llvm -mcpu=x86-64-v3 -mattr=+avxvnni"}
MAC_KERNELS = ("npu.conv2d", "npu.dense")


class ConformanceError(AssertionError):
    """A kernel failed the harness; the message names kernel, example and what differs."""


@cache
def examples(kernel: NpuKernel, seed: int) -> list[Example]:
    """The kernel's examples for `seed` (the same seed gives the same models and inputs; built once)."""
    if kernel.examples is None:
        raise ConformanceError(f"{kernel.name} declares no examples: add examples=... to its NpuKernel (CONTRIBUTING.md)")
    found = list(kernel.examples(np.random.default_rng([seed, zlib.crc32(kernel.name.encode())])))
    if not found:
        raise ConformanceError(f"{kernel.name}: examples() returned none")
    return found


def cases(seeds=DEFAULT_SEEDS) -> list[tuple[NpuKernel, int, int]]:
    """(kernel, seed, example index) for every registered kernel: what the tests parametrize over.
    A variant (CSR weights) takes the examples whose layer its `check` accepts, and must accept one."""
    found = []
    for k in kernels():
        mine = [
            (k, seed, i)
            for seed in seeds
            for i, example in enumerate(examples(k, seed))
            if k.variant_of is None or _variant_accepts(k, example)
        ]
        if not mine:
            raise ConformanceError(f"{k.name} refuses every one of its examples: give it examples it implements")
        found += mine
    return found


def _variant_accepts(variant: NpuKernel, example: Example) -> bool:
    return variant.check(prepare(base_kernel(variant), example).params) is None


def base_kernel(variant: NpuKernel) -> NpuKernel:
    return kernel(variant.variant_of)


def _sparse_mode(case: Case) -> str:
    """A variant is planned and compiled with --sparse force, its base kernel with --sparse off."""
    return "off" if case.kernel.variant_of is None else "force"


@dataclass
class Case:
    """An example as its kernel sees it: partitioned module, parameters, integer inputs, reference output."""

    kernel: NpuKernel
    example: Example
    mod: tvm.IRModule  # partitioned
    params: KernelParams
    inputs: list[np.ndarray]  # the composite's operands, in call order
    expected: np.ndarray

    def where(self) -> str:
        return f"{self.kernel.name}: example {self.example.name!r} (input {self.example.shape})"


def prepare(kernel: NpuKernel, example: Example) -> Case:
    with tempfile.TemporaryDirectory(prefix="tvm_npu_conformance_") as folder:
        path = Path(folder) / f"{example.name}.onnx"
        onnx.save(example.model, path)
        imported = import_onnx(load_onnx(path))
    mod, operators = partition(imported.mod)
    where = f"{kernel.name}: example {example.name!r} (input {example.shape})"
    on_npu = [row for row in operators if row["runs_on"] == "npu"]
    landed = [row["kernel"] for row in on_npu]
    if landed != [kernel.variant_of or kernel.name]:  # a variant's layers are its base kernel's
        reasons = "; ".join(
            f"{row['ops'][0]}: {row['reason']}"
            for row in operators
            if row["runs_on"] == "cpu" and row["ops"][0] not in ("relax.quantize", "relax.dequantize")
        )
        raise ConformanceError(
            f"{where}: the operator must land on {kernel.variant_of or kernel.name} alone, it landed on "
            f"{landed or 'the CPU'}{f' ({reasons})' if reasons else ''}"
        )
    call = next(
        b.value
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call)
        and isinstance(b.value.op, relax.GlobalVar)
        and "Composite" in (mod[b.value.op].attrs or {})
    )
    graph_inputs = list(mod["main"].params)
    inputs = []
    for arg in call.args:
        if not any(arg.same_as(param) for param in graph_inputs):
            raise ConformanceError(
                f"{where}: the {kernel.name} composite reads {arg}, not a graph input: "
                "an example must be one operator between DequantizeLinear inputs and a QuantizeLinear"
            )
        inputs.append(example.inputs[arg.name])
    if kernel.variant_of is None:
        params = kernel.params(Composite(mod[call.op]))
    else:
        params = kernel.params(base_kernel(kernel).params(Composite(mod[call.op])))
    return Case(kernel, example, mod, params, inputs, kernel.reference(params, inputs))


def first_difference(ours: np.ndarray, expected: np.ndarray) -> str | None:
    """None when equal; else the first differing element and how many differ."""
    if ours.shape != expected.shape or ours.dtype != expected.dtype:
        return f"output {ours.dtype}{list(ours.shape)}, reference {expected.dtype}{list(expected.shape)}"
    differ = np.argwhere(ours != expected)
    if not len(differ):
        return None
    index = tuple(int(i) for i in differ[0])
    return (
        f"first differing element at index {index}: ours {ours[index]}, reference {expected[index]} "
        f"({len(differ)} of {ours.size} elements differ)"
    )


def run_primfunc(prim: tvm.tirx.PrimFunc, case: Case, config: NpuConfig, host: dict | None = None) -> np.ndarray:
    """Builds one kernel PrimFunc for the host (`host`: a `tvm_npu.host.host_target`, default the portable
    level) as `tvm_npu.build` does and runs it on the case's inputs."""
    with pass_context():
        lib = tvm.compile(tvm.IRModule({"kernel": prim}), target=config.tvm_target(host))
    out = tvm.runtime.empty(case.expected.shape, str(case.expected.dtype))
    operands = [np.ascontiguousarray(a) for a in list(case.inputs) + list(case.params.consts)]
    lib["kernel"](*[tvm.runtime.tensor(a) for a in operands], out)
    return out.numpy()


def _specs(case: Case) -> list[tuple[tuple[int, ...], str]]:
    return [(tuple(x.shape), str(x.dtype)) for x in case.inputs]


def check_exact(case: Case, prim: tvm.tirx.PrimFunc, config: NpuConfig, schedule: str, host: dict | None = None) -> None:
    difference = first_difference(run_primfunc(prim, case, config, host), case.expected)
    if difference:
        raise ConformanceError(f"{case.where()}, {schedule}: {difference}")


def check_default(case: Case) -> None:
    prim, _ = lower_layer(case.kernel, case.params, _specs(case), None, symbol="kernel")
    check_exact(case, prim, PRESETS["mid"], "default schedule")


def host_isa_missing(isa: str) -> list[str]:
    """The features of HOST_ISAS[isa] this CPU lacks (its check cannot run here)."""
    return missing_isa(required_isa(host_target(HOST_ISAS[isa])))


def check_host_isa(case: Case, isa: str) -> str:
    """The layer as npu/mid plans it, built for the host instruction set HOST_ISAS[isa], is exact too."""
    config = PRESETS["mid"]
    (layer,) = plan(case.mod, config, sparse=_sparse_mode(case))
    planned = sum(footprint(layer.geometry, layer.tiles).values()) if layer.tiles is not None else None
    prim, _ = lower_layer(case.kernel, case.params, _specs(case), layer.tiles, planned, config.sram_bytes, "kernel")
    what = f"{isa} build of {'tiles ' + layer.tiles.describe() if layer.tiles else 'the default schedule'}"
    check_exact(case, prim, config, what, host_target(HOST_ISAS[isa]))
    return f"{what}: exact"


def uneven_tiles(geometry, config: NpuConfig) -> Tiles | None:
    """The smallest-footprint tiling that fits and splits rows and channels unevenly (short last tiles)."""
    uneven = [
        t
        for t in candidates(geometry, config)
        if geometry.out_h % t.rows
        and geometry.out_channels % t.channels
        and sum(footprint(geometry, t).values()) <= config.sram_bytes
    ]
    return min(uneven, key=lambda t: sum(footprint(geometry, t).values()), default=None)


def check_presets(case: Case) -> list[str]:
    """Every preset: plan, model invariants and (tiled kernels) scheduled exactness and SRAM proof.
    Each distinct tiling is built once. Returns one line per check made, for the test log."""
    done, tilings = [], {}
    for config in PRESETS.values():
        (layer,) = plan(case.mod, config, sparse=_sparse_mode(case))
        if layer.kernel != case.kernel.name:
            raise ConformanceError(f"{case.where()}, npu/{config.name}: planned on {layer.kernel}: {layer.weights.get('reason')}")
        (cost,) = estimate([layer], config).layers
        if cost.cycles < cost.roofline_cycles - 1e-9 or cost.roofline_cycles <= 0:
            raise ConformanceError(
                f"{case.where()}, npu/{config.name}: modelled {cost.cycles:.1f} cycles below the "
                f"roofline bound {cost.roofline_cycles:.1f}"
            )
        if layer.tiles is None:  # a kernel without a schedule, or an instance it cannot tile
            done.append(f"npu/{config.name}: not tiled, {cost.cycles:.0f} cycles >= roofline {cost.roofline_cycles:.0f}")
            continue
        uneven = uneven_tiles(layer.geometry, config)
        # The uneven tiling once more with every loop knob off (tuning may pick any combination).
        plain = uneven and replace(uneven, double_buffer=False, parallel=False, vectorize=False)
        for tiles in (layer.tiles, uneven, plain):
            if tiles is not None:
                _check_model(case, config, layer.geometry, tiles)
                tilings.setdefault(tiles, (layer.geometry, []))[1].append(config)
    for tiles, (geometry, configs) in tilings.items():
        done.append(_check_tiling(case, configs, geometry, tiles))
    return done


def _check_model(case: Case, config: NpuConfig, geometry, tiles: Tiles) -> None:
    cost = layer_cost(geometry, tiles, config)
    bound = roofline(geometry.compulsory_bytes, geometry.macs, config)
    if cost.cycles < bound - 1e-9 or cost.dram_bytes < geometry.compulsory_bytes:
        raise ConformanceError(
            f"{case.where()}, npu/{config.name} tiles {tiles.describe()}: modelled {cost.cycles:.1f} cycles, "
            f"{cost.dram_bytes} DRAM B, below the roofline bound {bound:.1f} cycles or the "
            f"compulsory {geometry.compulsory_bytes} B"
        )


def _check_tiling(case: Case, configs: list[NpuConfig], geometry, tiles: Tiles) -> str:
    presets = ", ".join(f"npu/{c.name}" for c in configs)
    what = f"tiles {tiles.describe()} ({presets})"
    planned = sum(footprint(geometry, tiles).values())
    smallest = min(c.sram_bytes for c in configs)
    try:
        prim, proof = lower_layer(case.kernel, case.params, _specs(case), tiles, planned, smallest, "kernel")
    except NpuError as err:
        raise ConformanceError(f"{case.where()}, {what}: {err}") from err
    if planned > smallest:
        raise ConformanceError(f"{case.where()}, {what}: planned {planned} B, the smallest SRAM is {smallest} B")
    check_exact(case, prim, configs[0], what)
    return f"{what}: exact, SRAM proven {proof.total} B <= planned {planned} B <= {smallest} B"


def check_openvino(case: Case, isa: str | None = None) -> str:
    """The example compiled whole (tvm_npu.compile, npu/mid) against OpenVINO CPU on the same ONNX file,
    judged as `tvmc validate` judges it: in quantization steps, and where OpenVINO's int8 path is not
    exact (on CPUs without VNNI, or under `isa`, e.g. AVX2), outputs it gets wrong by saturating are
    judged by the exact reference. An example that declares an OpenVINO deviation is judged by the
    exact reference, and OpenVINO must still deviate (or the declaration goes)."""
    from .pipeline import compile as compile_model  # the harness sits after the pipeline
    from .runtime import load

    example = case.example
    with tempfile.TemporaryDirectory(prefix="tvm_npu_conformance_") as folder:
        path = Path(folder) / f"{example.name}.onnx"
        onnx.save(example.model, path)
        compile_model(path, output=Path(folder) / "model.tar", target="npu", sparse=_sparse_mode(case))
        model = load(Path(folder) / "model.tar")
        report = validate(model, [example.inputs], device="CPU", reference_isa=isa)
        if example.openvino_deviation:
            # OpenVINO's own outputs, not the verdict: validate's third opinion may pass ours on the exact answer
            if all(o.passed for o in report.outputs):
                raise ConformanceError(
                    f"{case.where()}: OpenVINO now agrees; drop the example's openvino_deviation ({example.openvino_deviation})"
                )
            onnx_bytes = example.model.SerializeToString()
            (exact,), (_, steps) = exact_reference_outputs(onnx_bytes, [example.inputs]), quantization_steps(onnx_bytes)
            report.outputs = [
                compare(name, value, exact[name], quantized=True, step=steps.get(name))
                for name, value in model.run(example.inputs).items()
            ]
    judged_exactly = report.exact.outputs if report.exact else {}
    lines = []
    for o in report.outputs:
        judge = "the exact reference" if o.name in judged_exactly or example.openvino_deviation else "OpenVINO"
        if not o.passed:
            raise ConformanceError(
                f"{case.where()}: output {o.name} against {judge}: {o.reason} "
                f"(max {o.max_steps:g} steps, bias {o.bias_steps:+.3f}); {report.int8_path}"
                + (f"; {report.exact.describe(report.reference)}" if report.exact else "")
            )
        wrong = f" (OpenVINO: {judged_exactly[o.name][0]} elements wrong)" if o.name in judged_exactly else ""
        lines.append(f"{o.name} against {judge}{wrong}: max {o.max_steps:g} steps, {o.within_1_step:.1%} within 1 step")
    return "; ".join(lines)
