"""Fixed-point requantization shared by every NPU kernel: the TE form and its NumPy twin.

A real rescale factor becomes an integer multiplier M with MULTIPLIER_BITS significant
bits and a right shift: `y = (v * M + 2^(shift-1)) >> shift` (round half up) in int64.
The multiplier keeps 23 bits (float32's precision) so that an int32 accumulator carrying
BIAS_FRACTION_BITS extra bias fraction bits still fits int64 after the multiply:
2^(31+8) * 2^23 < 2^63.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx

MULTIPLIER_BITS = 23
# Float biases (NNCF keeps them) rounded to the accumulator scale move results by up to half an
# output step; 8 extra fraction bits make the integer path agree with float QDQ runtimes.
BIAS_FRACTION_BITS = 8
MAX_SHIFT = 62


def multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(M, shift) as int64 arrays with real ~= M * 2^-shift and M in [2^22, 2^23)."""
    mant, exp = np.frexp(np.asarray(real, dtype=np.float64))
    m = np.round(mant * (1 << MULTIPLIER_BITS)).astype(np.int64)
    overflow = m == (1 << MULTIPLIER_BITS)  # mantissa rounded up to 1.0: renormalise
    m = np.where(overflow, m >> 1, m)
    shift = (MULTIPLIER_BITS - exp - overflow).astype(np.int64)
    return m, shift


def scale_problem(real: np.ndarray | float, extra_shift: int = 0) -> str | None:
    """Why a rescale factor cannot be a fixed-point multiply (None when it can)."""
    real = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real <= 0):
        return "scale: non-positive or non-finite quantization scale"
    _, shift = multiplier(real)
    shift = shift + extra_shift
    if np.any(shift < 1) or np.any(shift > MAX_SHIFT):
        return f"scale: rescale factor {float(real.max()):.3g} is outside the fixed-point range"
    return None


def requantize_te(value, mult, shift, zero_point: int, lo: int, hi: int, dtype: str):
    """TE: round(value * M / 2^shift) + zero_point, clamped to [lo, hi] and cast to `dtype`."""
    one = tirx.const(1, "int64")
    v = value.astype("int64") * mult
    r = ((v + (one << (shift - one))) >> shift) + tirx.const(zero_point, "int64")
    return tirx.max(tirx.min(r, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(dtype)


def requantize_np(value, mult, shift, zero_point: int, lo: int, hi: int, dtype: str) -> np.ndarray:
    """The NumPy twin of `requantize_te`, bit for bit."""
    v = np.asarray(value, dtype=np.int64) * np.asarray(mult, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    r = ((v + (np.int64(1) << (shift - 1))) >> shift) + zero_point
    return np.clip(r, lo, hi).astype(dtype)


def activation_bounds(dtype: str, zero_point: int, scale: float, relu: bool, clip: tuple[float, float] | None):
    """The integer clamp [lo, hi] that applies a fused ReLU / ReLU6 / Clip in the output domain."""
    info = np.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)
    if relu:
        lo = max(lo, zero_point)
    if clip is not None:
        if np.isfinite(clip[0]):
            lo = max(lo, int(np.clip(np.round(clip[0] / scale) + zero_point, info.min, info.max)))
        if np.isfinite(clip[1]):
            hi = min(hi, int(np.clip(np.round(clip[1] / scale) + zero_point, info.min, info.max)))
    return lo, hi


def requantization_table(function, sx: float, zx: int, sy: float, zy: int, in_dtype: str, out_dtype: str) -> np.ndarray:
    """Q(function(DQ(q))) for every input integer q (at index q - qmin): what a QDQ graph computes from
    one int8 value, in its own float32 arithmetic and rounding half to even as QuantizeLinear does. A
    kernel that indexes it with the input integer equals the QDQ graph on every input."""
    info, out = np.iinfo(in_dtype), np.iinfo(out_dtype)
    real = (np.arange(info.min, info.max + 1, dtype=np.int64) - zx).astype(np.float32) * np.float32(sx)
    q = np.round(function(real) / np.float32(sy)).astype(np.int64) + zy
    return np.clip(q, out.min, out.max).astype(out_dtype)
