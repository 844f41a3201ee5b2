"""Stage: plan. Every NPU layer gets SRAM tiles (or, when none fit, an error or a CPU placement).

Entry point: `plan(mod, config, allow_cpu_fallback=False) -> list[LayerPlan]`, on the
partitioned module (before `lower`). For a kernel with a `geometry`, it enumerates tilings
(output rows x output channels per tile, weights-outer or rows-outer loop order), keeps those
whose double-buffered footprint (`tiling.footprint`) fits `config.sram_bytes`, and picks the one
with the least modelled DRAM traffic, then the fewest modelled cycles (traffic first makes
"a larger SRAM never increases DRAM traffic" hold by construction: a larger SRAM only adds
candidates). Tuning records (`tvmc tune`, `tvm_npu.tune`) replace that choice per task
(`task_key`: the kernel and its geometry). `lower` then schedules the kernel with those tiles and proves the footprint on
the lowered TIR (`tvm_npu.sram.prove_footprint`).

A kernel's variants (`NpuKernel.variant_of`: CSR weights for conv2d and dense) are weighed here
too: `sparse="auto"` plans the layer both ways and keeps the variant only where the model gives
it fewer cycles (then less DRAM traffic); "force" takes it wherever it applies and fits; "off"
never does. `LayerPlan.weights` records the choice and the original vs encoded weight bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import tvm
from tvm import relax

from .errors import NpuError
from .fixed_point import arithmetic_of
from .perf import layer_cost
from .registry import Composite, KernelParams, TensorSpec, kernel, variants
from .sparse import SPARSE_MODES, zero_fraction
from .target import NpuConfig
from .tiling import Geometry, Tiles, footprint, inner_trips, outer_trips

if TYPE_CHECKING:
    from .cascade import Cascade


@dataclass(frozen=True)
class LayerPlan:
    """One NPU layer as the stages hand it forward: `plan` makes it, `cascade` and `lower` return
    updated copies (`dataclasses.replace`) with their decisions (a fusion, the proven footprint)."""

    name: str  # the operator's name in the offload report (its binding in main)
    function: str  # the composite function `lower` replaces
    kernel: str
    placement: str = "npu"  # "npu" | "cpu" (no tiling fits and --allow-cpu-fallback)
    reason: str = ""
    geometry: Geometry | None = None
    tiles: Tiles | None = None  # None: the kernel has no SRAM schedule ("not tiled")
    sram_planned: int | None = None
    sram_proven: int | None = None  # lower's, read back from the lowered TIR
    stream: dict = field(default_factory=dict)  # bytes read/written, ops, shape: for untiled layers
    row: int = -1  # index of this operator in the offload report (binding names repeat across blocks)
    weights: dict = field(default_factory=dict)  # weight bytes original/encoded, zeros, dense-vs-variant choice
    cascade: Cascade | None = None  # the cascade fusing this layer with its neighbour, if any
    label: str = ""  # what reports call the layer: its ONNX node, else kind and index ("pool_2")
    tuned: bool = False  # tiles from tuning records instead of the planner's choice
    # What `lower` builds the kernel from: its integer parameters (of the chosen variant) and its inputs.
    params: KernelParams | None = field(default=None, compare=False, repr=False)
    inputs: list[TensorSpec] = field(default_factory=list, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "row": self.row,
            "kernel": self.kernel,
            "placement": self.placement,
            "reason": self.reason,
            "geometry": None
            if self.geometry is None
            else {k: v for k, v in self.geometry.__dict__.items() if k != "row_nonzeros"},  # per channel: too long
            "tiles": None if self.tiles is None else self.tiles.__dict__,
            "sram_planned": self.sram_planned,
            "sram_proven": self.sram_proven,
            "weights": self.weights,
            "cascade": None if self.cascade is None else self.cascade.describe(self),
            "tuned": self.tuned,
        }


def plan(
    mod: tvm.IRModule,
    config: NpuConfig,
    allow_cpu_fallback: bool = False,
    sparse: str = "auto",
    tuned: dict[str, Tiles] | None = None,
) -> list[LayerPlan]:
    """`tuned` maps `task_key`s to the tiles tuning found best for them. The kernels read their parameters in
    the module's arithmetic (`fixed_point.arithmetic_of`: TFLite's for a model compiled from a TFLite file)."""
    if sparse not in SPARSE_MODES:
        raise NpuError(f"unknown sparse mode {sparse!r}; choose one of {', '.join(SPARSE_MODES)}")
    with arithmetic_of(mod):
        return _plan(mod, config, allow_cpu_fallback, sparse, tuned)


def _plan(mod, config, allow_cpu_fallback, sparse, tuned) -> list[LayerPlan]:
    plans = []
    per_kind: dict[str, int] = {}
    row = -1  # the offload report's row: it lists every call binding of main, in order
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            row += isinstance(call, relax.Call)
            if not (isinstance(call, relax.Call) and isinstance(call.op, relax.GlobalVar)):
                continue
            func = mod[call.op]
            if not (isinstance(func, relax.Function) and func.attrs and "Composite" in func.attrs):
                continue
            npu_kernel, composite = kernel(str(func.attrs["Composite"])), Composite(func)
            params = npu_kernel.params(composite)
            inputs = [(tuple(int(d) for d in a.ty.shape), str(a.ty.dtype)) for a in call.args]
            kind = npu_kernel.name.removeprefix("npu.")
            per_kind[kind] = per_kind.get(kind, -1) + 1
            layer = LayerPlan(
                binding.var.name,
                call.op.name_hint,
                npu_kernel.name,
                row=row,
                stream=_stream(params, inputs, call),
                params=params,
                inputs=inputs,
                label=composite.onnx_name() or f"{kind}_{per_kind[kind]}",
                # None: this instance cannot be tiled
                geometry=None if npu_kernel.geometry is None else npu_kernel.geometry(params, inputs),
            )
            if layer.geometry is not None:
                layer = _choose_variant(layer, npu_kernel, config, sparse)
                layer = _choose(layer, config, allow_cpu_fallback, (tuned or {}).get(task_key(layer.kernel, layer.geometry)))
            plans.append(layer)
    return plans


def _stream(params, inputs, call) -> dict:
    out_shape = tuple(int(d) for d in call.ty.shape)
    read = sum(math.prod(shape) * tvm.DataType(dtype).bits // 8 for shape, dtype in inputs)
    read += sum(int(c.nbytes) for c in params.consts)
    taps = math.prod(params.attrs.get("pool", (1,)))
    shapes = " + ".join("x".join(map(str, s)) for s, _ in inputs)
    return {
        "read": read,
        "write": math.prod(out_shape) * tvm.DataType(str(call.ty.dtype)).bits // 8,
        "ops": math.prod(out_shape) * taps,
        "shape": f"{shapes} -> {'x'.join(map(str, out_shape))}",
    }


def candidates(g: Geometry, config: NpuConfig) -> list[Tiles]:
    """Row tiles: every distinct ceil(out_h / k); channel tiles: multiples of the array width that split
    the channels evenly, small powers of two for tight SRAM, all of them; grouped convs keep whole groups."""
    rows = sorted({-(-g.out_h // k) for k in range(1, g.out_h + 1)})
    step = g.per_group if g.groups > 1 and not g.depthwise else 1
    orders = ("weights",) if g.sparse else ("weights", "rows")  # a CSR weight tile stays in SRAM
    chans = {g.out_channels}
    for k in range(1, g.out_channels + 1):
        size = -(-g.out_channels // k)
        chans.add(min(g.out_channels, -(-size // config.mac_cols) * config.mac_cols))
    chans.update(c for c in (1, 2, 4, 8, 16) if c < g.out_channels)
    chans = sorted({-(-c // step) * step for c in chans})
    return [Tiles(r, c, order) for order in orders for r in rows for c in chans]


def feasible(g: Geometry, config: NpuConfig, host: bool = False) -> list[Tiles]:
    """The search space of tuning: each candidate tiling double-buffered and (where its inner loop has more
    than one tile) single-buffered, if its footprint fits the SRAM; with `host`, each of those also with the
    host's loop knobs (serial outer tile loop where it has more than one tile or the kernel is CSR, scalar),
    which only measuring on the host tells apart. The planner's choice is always in it."""
    space = []
    for base in candidates(g, config):
        for tiles in [base] + [replace(base, double_buffer=False)] * (inner_trips(g, base) > 1):
            if sum(footprint(g, tiles).values()) > config.sram_bytes:
                continue
            serial = (False,) * (g.sparse or outer_trips(g, tiles) > 1)
            space += (
                [replace(tiles, parallel=p, vectorize=v) for p in (True, *serial) for v in (True, False)] if host else [tiles]
            )
    return space


def task_key(kernel_name: str, g: Geometry) -> str:
    """What identifies a tuning task: layers with the same kernel and geometry share their tiling."""
    return f"{kernel_name} {json.dumps(dataclasses.asdict(g), sort_keys=True, separators=(',', ':'))}"


def choose_tiles(g: Geometry, config: NpuConfig) -> tuple[Tiles | None, int]:
    """The tiling with the least DRAM traffic, then cycles, that fits; and the smallest footprint of any."""
    best, best_key, smallest = None, None, math.inf
    for tiles in candidates(g, config):
        size = sum(footprint(g, tiles).values())
        smallest = min(smallest, size)
        if size > config.sram_bytes:
            continue
        cost = layer_cost(g, tiles, config)
        key = (cost.dram_bytes, cost.cycles, size)
        if best_key is None or key < best_key:
            best, best_key = tiles, key
    return best, int(smallest)


def _choose_variant(layer: LayerPlan, base, config: NpuConfig, sparse: str) -> LayerPlan:
    """The layer on a variant kernel (CSR) when `sparse` and the model say so, else on `base`; it records why."""
    if not variants(base.name):
        return layer
    weights = layer.params.consts[0]
    record = {
        "original": int(weights.nbytes),
        "encoded": int(weights.nbytes),
        "zeros": zero_fraction(weights),
        "kernel": base.name,
        "reason": "--sparse off" if sparse == "off" else "",
    }
    if sparse == "off":
        return replace(layer, weights=record)
    dense_tiles, _ = choose_tiles(layer.geometry, config)
    dense_key = _key(layer.geometry, dense_tiles, config)
    for variant in variants(base.name):
        refusal = variant.check(layer.params)
        if refusal:
            record["reason"] = refusal
            continue
        own = variant.params(layer.params)
        geometry = variant.geometry(own, layer.inputs)
        tiles, _ = choose_tiles(geometry, config)
        key = _key(geometry, tiles, config)
        record.update(
            {
                f"{base.name}_cycles": _finite(dense_key[0]),
                f"{variant.name}_cycles": _finite(key[0]),
                f"{variant.name}_bytes": int(sum(c.nbytes for c in own.consts[:3])),
            }
        )
        if tiles is None:
            record["reason"] = f"{variant.name}: no tiling fits the SRAM"
        elif sparse == "force" or key < dense_key:
            record.update(
                kernel=variant.name,
                encoded=record[f"{variant.name}_bytes"],
                reason=f"--sparse {sparse}" if sparse == "force" else "modelled win",
            )
            return replace(layer, kernel=variant.name, geometry=geometry, params=own, weights=record)
        else:
            record["reason"] = f"the model predicts no win for {variant.name}"
    return replace(layer, weights=record)


def _finite(cycles: float) -> float | None:
    return None if math.isinf(cycles) else cycles


def _key(g: Geometry, tiles: Tiles | None, config: NpuConfig) -> tuple[float, float]:
    """How the planner compares implementations of a layer: modelled cycles, then DRAM bytes (none fits: worst)."""
    if tiles is None:
        return math.inf, math.inf
    cost = layer_cost(g, tiles, config)
    return cost.cycles, cost.dram_bytes


def _choose(layer: LayerPlan, config: NpuConfig, allow_cpu_fallback: bool, tuned: Tiles | None = None) -> LayerPlan:
    """The layer with its tiles (tuned, else the planner's choice), or placed on the CPU when none fit."""
    if tuned is not None and sum(footprint(layer.geometry, tuned).values()) <= config.sram_bytes:
        return replace(layer, tiles=tuned, tuned=True, sram_planned=sum(footprint(layer.geometry, tuned).values()))
    tiles, smallest = choose_tiles(layer.geometry, config)
    if tiles is not None:
        return replace(layer, tiles=tiles, sram_planned=sum(footprint(layer.geometry, tiles).values()))
    problem = (
        f"layer {layer.label or layer.name} ({layer.geometry.describe()}) needs at least {smallest} B of SRAM in its "
        f"smallest tiling, but npu/{config.name} has {config.sram_bytes} B"
    )
    if not allow_cpu_fallback:
        raise NpuError(f"{problem}; raise --target-npu-sram-kib or pass --allow-cpu-fallback to run it on the CPU")
    return replace(
        layer,
        placement="cpu",
        reason=f"sram: needs at least {smallest} B, the NPU has {config.sram_bytes} B (--allow-cpu-fallback)",
    )
