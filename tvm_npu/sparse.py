"""Sparse INT8 weights: zero analysis, CSR encoding, and the TIR pieces the CSR kernels share.

After quantization a zero weight is an exact zero (weights are symmetric, zero point 0), so a
layer's sparsity is known at compile time. CSR stores a weight matrix [rows, columns] (rows =
output channels, columns = the reduction: K for dense, cin*kh*kw for a convolution, in OIHW
order) as

    values  int8   [nnz]       the non-zero weights, row by row
    indices uintN  [nnz]       their columns, in the smallest unsigned type that holds columns - 1
    rowptr  int32  [rows + 1]  row o's non-zeros are values[rowptr[o]:rowptr[o + 1]]

`values` and `indices` keep at least one (never read) entry so that an all-zero layer still has
buffers. The CSR kernels (`schedules/dense_csr.py`, `schedules/conv2d_csr.py`) are variants of
the dense kernels: `--sparse {auto,off,force}` and the performance model choose per layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import tirx as T

from .onnx_builder import pruned
from .tiling import Geometry
from .registry import KernelParams, NpuKernel
from .sram import HOST_VECTOR_LANES, SRAM_SCOPE

SPARSE_MODES = ("auto", "off", "force")
ROWPTR_BYTES = 4


@dataclass(frozen=True)
class Csr:
    values: np.ndarray
    indices: np.ndarray
    rowptr: np.ndarray
    columns: int

    @property
    def rows(self) -> int:
        return self.rowptr.size - 1

    @property
    def nonzeros(self) -> int:
        return int(self.rowptr[-1])

    @property
    def row_nonzeros(self) -> np.ndarray:
        return np.diff(self.rowptr)

    @property
    def nbytes(self) -> int:
        """Encoded bytes as stored (values, indices, row pointers)."""
        return self.values.nbytes + self.indices.nbytes + self.rowptr.nbytes

    def dense(self) -> np.ndarray:
        w = np.zeros((self.rows, self.columns), np.int8)
        rows = np.repeat(np.arange(self.rows), self.row_nonzeros)
        w[rows, self.indices[: self.nonzeros].astype(np.int64)] = self.values[: self.nonzeros]
        return w


def index_dtype(columns: int) -> np.dtype:
    """The smallest unsigned integer type that holds every column index of a `columns`-wide matrix."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if columns - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{columns} columns do not fit 32-bit CSR indices")


def zero_fraction(weights: np.ndarray) -> float:
    return float(np.mean(weights == 0)) if weights.size else 0.0


def encode(weights: np.ndarray) -> Csr:
    """CSR of an int8 matrix; a higher-rank weight (OIHW) is flattened to [O, I*H*W] first."""
    w = np.asarray(weights, np.int8).reshape(weights.shape[0], -1)
    rows, cols = np.nonzero(w)  # row-major: row by row, columns ascending
    rowptr = np.zeros(w.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=rowptr[1:])
    padded = max(rows.size, 1)
    values = np.zeros(padded, np.int8)
    values[: rows.size] = w[rows, cols]
    indices = np.zeros(padded, index_dtype(w.shape[1]))
    indices[: rows.size] = cols
    return Csr(values, indices, rowptr, w.shape[1])


# ---- TIR shared by the CSR kernels (IRBuilder; called inside `with IRBuilder()` and a T.prim_func) ----


def stage_weight_tile(csr_buffers, params, rows: int, first, channels: int, capacity: int):
    """Copies one output-channel tile's CSR slice (`csr_buffers` = values, indices, rowptr) and its
    per-channel parameters into SRAM. Returns (rowptr, values, indices, [bias, mult, shift]) SRAM
    buffers: row i of the tile has its non-zeros at [rowptr_s[i], rowptr_s[i + 1]) of values/indices."""
    values, indices, rowptr = (T.buffer_proxy(b) for b in csr_buffers)
    params = [T.buffer_proxy(b) for b in params]
    rowptr_s = sram_buffer((channels + 1,), "int32")
    values_s = sram_buffer((capacity,), "int8")
    indices_s = sram_buffer((capacity,), csr_buffers[1].dtype)
    params_s = [sram_buffer((channels,), "int64") for _ in params]
    base = rowptr[first]
    with T.serial(0, channels + 1) as i:
        rowptr_s[i] = rowptr[tirx.min(first + i, rows)] - base
    with T.serial(0, rowptr_s[channels]) as j:
        values_s[j] = values[base + j]
        indices_s[j] = indices[base + j]
    with T.serial(0, channels) as i:
        for src, dst in zip(params, params_s):
            dst[i] = src[tirx.min(first + i, rows - 1)]
    return rowptr_s, values_s, indices_s, params_s


def csr_arguments(layer: dict, y_shape) -> tuple:
    """The CSR kernels' arguments (X, values V, indices I, row pointers P, parameters B, M, S, output Y):
    (x, [V, I, P], [B, M, S], y), x and y indexable."""
    x_shape, x_dtype = layer["input"]
    out_channels = layer["attrs"]["weight_shape"][0]
    x = T.buffer_proxy(T.arg("X", T.buffer(x_shape, x_dtype)))
    csr = [T.arg(name, T.buffer(shape, dtype)) for name, (shape, dtype) in zip("VIP", layer["csr"])]
    params = [T.arg(name, T.buffer((out_channels,), "int64")) for name in ("B", "M", "S")]
    y = T.buffer_proxy(T.arg("Y", T.buffer(y_shape, layer["attrs"]["out_dtype"])))
    return x, csr, params, y


def sram_buffer(shape, dtype: str):
    """An SRAM tile buffer, indexable for stores (the IRBuilder's proxy)."""
    return T.buffer_proxy(T.alloc_buffer(tuple(shape), dtype, scope=SRAM_SCOPE))


def stream_tiles(count: int, load, compute, store, double_buffered: bool = True) -> None:
    """The inner tile loop, double-buffered as the dense kernels' software pipeline is: the load of
    tile t+1 and the store of tile t-1 go with the compute of tile t; callbacks take (tile, slot).
    Single-buffered (or one tile): each tile loads, computes and stores in slot 0."""
    if count == 1 or not double_buffered:
        with T.serial(0, count) as t:
            load(t, 0)
            compute(t, 0)
            store(t, 0)
        return
    load(0, 0)
    with T.serial(0, count) as t:
        slot = t % 2
        with T.If(t + 1 < count):
            with T.Then():
                load(t + 1, 1 - slot)
        with T.If(t > 0):
            with T.Then():
                store(t - 1, 1 - slot)
        compute(t, slot)
    store(count - 1, (count - 1) % 2)


def csr_params(base: KernelParams) -> KernelParams:
    """A CSR variant's parameters from its dense kernel's: W becomes (values, indices, rowptr)."""
    w, *rest = base.consts
    csr = encode(w)
    return KernelParams(base.attrs | {"weight_shape": tuple(w.shape)}, [csr.values, csr.indices, csr.rowptr, *rest])


def dense_params(p: KernelParams) -> KernelParams:
    """The dense kernel's parameters back from a CSR variant's (for its reference and geometry)."""
    values, indices, rowptr, *rest = p.consts
    shape = p.attrs["weight_shape"]
    w = Csr(values, indices, rowptr, int(np.prod(shape[1:]))).dense().reshape(shape)
    attrs = {k: v for k, v in p.attrs.items() if k != "weight_shape"}
    return KernelParams(attrs, [w, *rest])


def sparse_geometry(base_geometry: Geometry, rowptr, index_dtype) -> Geometry:
    """The dense geometry with the CSR weights' non-zeros per output channel and index width."""
    return replace(base_geometry, row_nonzeros=tuple(int(n) for n in np.diff(rowptr)), index_bytes=np.dtype(index_dtype).itemsize)


def layer_geometry(layer: dict, base_geometry: Geometry) -> Geometry:
    """The geometry of a `csr_layer`, given the dense geometry of its shapes: what its TIR tiles by."""
    return sparse_geometry(base_geometry, layer["rowptr"], layer["csr"][1][1])


def csr_layer(p: KernelParams, inputs) -> dict:
    """What a CSR kernel's TIR is generated from, JSON-serializable: the PrimFunc carries it (attribute
    `npu_csr_layer`) so that `schedule` can regenerate the kernel tile by tile."""
    values, indices, rowptr, *_ = p.consts
    return {
        "attrs": p.attrs,
        "rowptr": rowptr.tolist(),
        "input": [list(inputs[0][0]), inputs[0][1]],
        "csr": [[list(a.shape), str(a.dtype)] for a in (values, indices, rowptr)],
    }


def retile(func: tirx.PrimFunc, tiles, generate) -> tirx.PrimFunc:
    """`generate(layer, tiles)` again from the layer `func` carries, keeping `func`'s attributes (symbol...)."""
    tiled = generate(json.loads(str(func.attrs["npu_csr_layer"])), tiles)
    for key, value in func.attrs.items():
        tiled = tiled.with_attr(key, value)
    return tiled


def channel_tile_loop(chan_tiles: int, tiles):
    """The loop over output-channel tiles: the host's threads split it (`tiles.parallel`), unless there is one tile."""
    return T.parallel(0, chan_tiles) if chan_tiles > 1 and tiles.parallel else T.serial(0, chan_tiles)


def channel_loop(chan_tiles: int, channels: int, tiles):
    """The loop over a tile's channels: parallel on the host when the tile loop is not."""
    return T.parallel(0, channels) if chan_tiles == 1 and tiles.parallel else T.serial(0, channels)


def lanes(extent, tiles):
    """The innermost output loop: the host's SIMD lanes (`tiles.vectorize`) where it fits `HOST_VECTOR_LANES`
    (a wider one stays a loop, for LLVM's own loop vectorizer: see `sram.vectorize`)."""
    return T.vectorized(0, extent) if tiles.vectorize and extent <= HOST_VECTOR_LANES else T.serial(0, extent)


def csr_variant(base: NpuKernel, check, compute, generate, limits: tuple[str, ...]) -> NpuKernel:
    """The NpuKernel of the CSR variant of `base`: `base`'s parameters re-encoded, its reference and
    geometry on the decoded weights; `generate(layer, tiles)` writes the TIR for an SRAM tiling. Its
    conformance examples are `base`'s with pruned weights; `limits` add to `base`'s."""
    return NpuKernel(
        name=f"{base.name}_csr",
        anchors=(),
        patterns=list,  # no patterns of its own: the planner picks it
        check=check,
        params=csr_params,
        compute=compute,
        reference=lambda p, inputs: base.reference(dense_params(p), inputs),
        geometry=lambda p, inputs: sparse_geometry(base.geometry(dense_params(p), inputs), p.consts[2], p.consts[1].dtype),
        schedule=lambda func, tiles: retile(func, tiles, generate),
        variant_of=base.name,
        examples=lambda rng: [pruned(example, rng) for example in base.examples(rng)],
        limits=base.limits + limits,
    )
