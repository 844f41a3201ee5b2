"""The NPU kernel registry: the only way the compiler learns which operators an NPU runs.

Each module of `tvm_npu.schedules` declares one `KERNEL = NpuKernel(...)`; `kernels()`
imports them all (pkgutil), so adding a kernel is adding a file. A kernel bundles, in one
place, the Relax pattern it offloads, why it may refuse a match, how it reads its integer
parameters out of a matched composite, its TE compute, a NumPy integer reference and the
one-operator QDQ ONNX examples the conformance harness (tests/conformance) checks it on.
Kernels under development can live outside the package: see KERNEL_PATH_VARIABLE.
The two helpers below (`Composite`, `pattern_activation`) are what the kernel files share.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern, is_const, is_op, wildcard

from .fixed_point import activation_bounds
from .tiling import Geometry, Tiles

TensorSpec = tuple[tuple[int, ...], str]  # a kernel input as the kernel sees it: (shape, dtype)


@dataclass
class KernelParams:
    """One kernel instance: compile-time attributes and constant operands (after the activations)."""

    attrs: dict
    consts: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class NpuKernel:
    name: str  # the composite name and the kernel family, e.g. "npu.conv2d"
    anchors: tuple[str, ...]  # the Relax ops it offloads; the offload report explains misses on them
    patterns: Callable[[], list[tuple[DFPattern, dict[str, DFPattern]]]]  # annotations need "anchor"
    check: Callable[[Mapping[str, relax.Expr]], str | None]  # annotated exprs -> reason it cannot offload
    params: Callable[[Composite], KernelParams]
    # compute(params, input (shape, dtype) list) -> PrimFunc(inputs..., consts..., out): the plain TE
    # compute is the default schedule; SRAM tiling schedules this PrimFunc next.
    compute: Callable[[KernelParams, list[TensorSpec]], tvm.tirx.PrimFunc]
    reference: Callable[[KernelParams, list[np.ndarray]], np.ndarray]  # integer-exact twin of compute
    # SRAM tiling (optional; a kernel without them runs untiled and the report says "not tiled"):
    # geometry(params, inputs): what the planner tiles and the model costs (None for an instance that
    # cannot be tiled, e.g. a rank-0 tensor); schedule(primfunc, tiles): the PrimFunc with its SRAM-tiled schedule.
    geometry: Callable[[KernelParams, list[TensorSpec]], Geometry | None] | None = None
    schedule: Callable[[tvm.tirx.PrimFunc, Tiles], tvm.tirx.PrimFunc] | None = None
    # A variant is another implementation of the layers of kernel `variant_of` (e.g. CSR weights for
    # npu.dense): no patterns or anchors of its own; the planner picks it per layer. Its `check`
    # takes the base kernel's KernelParams (why it cannot implement that instance, or None) and its
    # `params` maps them to its own.
    variant_of: str | None = None
    # examples(rng) -> [tvm_npu.onnx_builder.Example]: one-operator QDQ ONNX models with edge cases (odd
    # channels, borders, non-zero zero points, sizes tiles do not divide), drawn from `rng`. The
    # conformance harness derives every check from them; a kernel without examples fails it.
    examples: Callable[[np.random.Generator], list] | None = None
    limits: tuple[str, ...] = ()  # what `check` refuses, as SUPPORTED_OPS.md lists it
    # Cascading (optional; tvm_npu.cascade fuses a producer into its consumer with it):
    # tensors(params, x: te.Tensor, tag) -> (constant placeholders, output tensor), the compute on a
    # given input tensor instead of a placeholder; `tag` suffixes its stage names so two kernels compose.
    tensors: Callable[..., tuple[list, object]] | None = None

    def primfunc(self, symbol: str, params: KernelParams, inputs) -> tvm.tirx.PrimFunc:
        """The kernel's PrimFunc under a unique symbol (TE names every PrimFunc `main`)."""
        # op_pattern 8 (opaque) keeps fusing pipelines (FuseOps/FuseTIR) from merging NPU kernels with
        # CPU neighbours: an NPU kernel is one unit of work with its own SRAM schedule.
        return self.compute(params, inputs).with_attr("global_symbol", symbol).with_attr("op_pattern", 8)


# Folders (os.pathsep-separated) of kernels under development, one `KERNEL = NpuKernel(...)` per
# `*.py` file (files named `test_*` or `_*` are skipped): the conformance harness checks them without
# touching the repository. They come before the built-in kernels, so one can take over an operator.
KERNEL_PATH_VARIABLE = "TVM_NPU_KERNEL_PATH"


@cache
def kernels() -> tuple[NpuKernel, ...]:
    """Every kernel on $TVM_NPU_KERNEL_PATH, then every kernel in `tvm_npu.schedules` (module-name order)."""
    from . import schedules

    modules = [_load_file(path) for path in kernel_path_files()]
    for info in sorted(pkgutil.iter_modules(schedules.__path__), key=lambda m: m.name):
        modules.append(importlib.import_module(f"{schedules.__name__}.{info.name}"))
    found: dict[str, NpuKernel] = {}
    for module in modules:
        kernel = getattr(module, "KERNEL", None)
        if not isinstance(kernel, NpuKernel):
            raise TypeError(f"{module.__file__} must define KERNEL = NpuKernel(...)")
        if kernel.name in found:
            raise TypeError(f"{module.__file__}: kernel name {kernel.name} is taken; choose another name")
        found[kernel.name] = kernel
    return tuple(found.values())


def kernel_path_files() -> list[Path]:
    """The kernel files on $TVM_NPU_KERNEL_PATH, in load order."""
    return [
        path
        for folder in os.environ.get(KERNEL_PATH_VARIABLE, "").split(os.pathsep)
        if folder
        for path in sorted(Path(folder).glob("*.py"))
        if not path.name.startswith(("test_", "_"))
    ]


def _load_file(path: Path):
    name = f"tvm_npu_kernel_path.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up
    spec.loader.exec_module(module)
    return module


def kernel(name: str) -> NpuKernel:
    return {k.name: k for k in kernels()}[name]


def variants(name: str) -> tuple[NpuKernel, ...]:
    """The alternative implementations of kernel `name`."""
    return tuple(k for k in kernels() if k.variant_of == name)


def op_name(expr) -> str | None:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def const_value(expr) -> np.ndarray:
    return expr.value.numpy()


def dtype_of(expr) -> str:
    return str(expr.ty.dtype)


def dequantized_tensor() -> DFPattern:
    """An activation read through its DequantizeLinear (constant scale and zero point)."""
    return is_op("relax.dequantize")(wildcard(), is_const(), is_const())


def dequantized_constant() -> DFPattern:
    """Integer weights or bias stored as a constant behind a DequantizeLinear."""
    return is_op("relax.dequantize")(is_const(), is_const(), is_const())


def accumulator_overflows(taps: int) -> bool:
    """Whether `taps` int8 x int8 products (|x - zx| <= 255, |w| <= 128) can overflow int32."""
    return taps * 255 * 128 > 2**31 - 1


def pattern_activation(x: DFPattern) -> DFPattern:
    """`x` optionally followed by ReLU or a Relax clip (ReLU6 and friends)."""
    return x | is_op("relax.nn.relu")(x) | is_op("relax.clip")(x, wildcard(), wildcard())


class Composite:
    """Read access to a matched composite function: its bindings, ops and constants."""

    def __init__(self, func: relax.Function):
        self.func = func
        self.bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}

    def value(self, expr):
        """Follows a bound var to its value."""
        while isinstance(expr, relax.Var) and expr in self.bindings:
            expr = self.bindings[expr]
        return expr

    def calls(self, name: str) -> list[relax.Call]:
        return [v for v in self.bindings.values() if op_name(v) == name]

    def call(self, name: str) -> relax.Call:
        (found,) = self.calls(name)
        return found

    def const(self, expr) -> np.ndarray:
        """A constant operand, through any reshape/dequantize of constants (bias forms)."""
        expr = self.value(expr)
        if isinstance(expr, tvm.ir.expr.Constant):
            return const_value(expr)
        name = op_name(expr)
        if name == "relax.reshape":
            return self.const(expr.args[0])
        if name == "relax.dequantize":
            q, scale, zp = (self.const(a).astype(np.float64) for a in expr.args[:3])
            axis = int(expr.attrs.axis) % max(q.ndim, 1)
            if scale.ndim == 1 and q.ndim > 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            return (q - zp) * scale
        raise ValueError(f"not a constant expression: {name}")

    def quant(self, dq_or_q) -> tuple[np.ndarray, np.ndarray]:
        """(scale, zero point) of a quantize/dequantize call."""
        return self.const(dq_or_q.args[1]).astype(np.float64), self.const(dq_or_q.args[2]).astype(np.int64)

    def activation_input(self, dq: relax.Call) -> tuple[float, int]:
        scale, zp = self.quant(dq)
        return float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])

    def onnx_name(self) -> str | None:
        """The ONNX node whose result the composite's output quantize holds (recorded by import_onnx)."""
        span = self.value(self.func.body.body).span
        return span.source_name.name if span is not None else None

    def output(self) -> tuple[float, int, str, int, int]:
        """The output quantize's (scale, zero point, dtype) and the clamp a fused activation implies."""
        q = self.value(self.func.body.body)
        scale, zp = self.activation_input(q)
        dtype = str(q.attrs.out_dtype)
        relu = bool(self.calls("relax.nn.relu"))
        clips = self.calls("relax.clip")
        clip = (float(clips[0].args[1].value), float(clips[0].args[2].value)) if clips else None
        lo, hi = activation_bounds(dtype, zp, scale, relu, clip)
        return scale, zp, dtype, lo, hi


def per_tensor_problem(*exprs) -> str | None:
    """Activation quantize/dequantize must be per tensor with int8/uint8 integers."""
    for expr in exprs:
        if not all(isinstance(a, tvm.ir.expr.Constant) for a in expr.args[1:3]):
            return "attribute: quantization parameters are not constants"
        if const_value(expr.args[1]).size != 1:
            return "attribute: per-channel activation quantization"
        integer = expr.args[0] if op_name(expr) == "relax.dequantize" else expr
        dtype = dtype_of(integer)
        if dtype not in ("int8", "uint8"):
            return f"dtype: {dtype} activations (the NPU takes int8/uint8)"
    return None
