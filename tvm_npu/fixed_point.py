"""Fixed-point requantization shared by every NPU kernel: the TE form and its NumPy twin.

A real rescale factor becomes an integer multiplier M with MULTIPLIER_BITS significant
bits and a right shift: `y = (v * M + 2^(shift-1)) >> shift` (round half up) in int64.
The multiplier keeps 23 bits (float32's precision) so that an int32 accumulator carrying
BIAS_FRACTION_BITS extra bias fraction bits still fits int64 after the multiply:
2^(31+8) * 2^23 < 2^63.
"""

from __future__ import annotations

import contextlib
import contextvars

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


# --- TFLite's integer arithmetic ------------------------------------------------------------------------------
# A model compiled from a TFLite file is computed as TFLite's reference kernels compute it (tflite/kernels/
# internal/common.h): a Q31 multiplier and two roundings (MultiplyByQuantizedMultiplier), so that the package is
# bit-exact to TFLite's interpreter. The import stage marks such a module (ARITHMETIC_ATTR); the plan stage sets
# ARITHMETIC while the kernels read their parameters, and a kernel records the arithmetic in its attributes.
ARITHMETIC_ATTR = "tvm_npu.arithmetic"
ARITHMETIC: contextvars.ContextVar[str] = contextvars.ContextVar("tvm_npu_arithmetic", default="qdq")
TFLITE = "tflite"


@contextlib.contextmanager
def arithmetic_of(mod):
    """ARITHMETIC set to the module's arithmetic (ARITHMETIC_ATTR) for the duration."""
    attrs = mod.attrs
    token = ARITHMETIC.set(str(attrs[ARITHMETIC_ATTR]) if attrs is not None and ARITHMETIC_ATTR in attrs else "qdq")
    try:
        yield
    finally:
        ARITHMETIC.reset(token)


def tflite_multiplier(real) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's QuantizeMultiplier: (M, exponent) as int64 arrays, real ~= M * 2^(exponent - 31), M in [2^30, 2^31)."""
    mant, exp = np.frexp(np.asarray(real, dtype=np.float64))
    m = np.sign(mant) * np.floor(np.abs(mant) * (1 << 31) + 0.5)  # TfLiteRound: half away from zero
    overflow = m == (1 << 31)
    m = np.where(overflow, m / 2, m).astype(np.int64)
    exp = (exp + overflow).astype(np.int64)
    tiny = exp < -31
    return np.where(tiny, 0, m), np.where(tiny, 0, exp)


def tflite_requantize_te(value, mult, exponent, zero_point: int, lo: int, hi: int, dtype: str):
    """TE: MultiplyByQuantizedMultiplier(value, M, exponent) + zero_point, clamped to [lo, hi]: the high 32 bits
    of 2 * value * M rounded half away from zero, then a right shift rounded half away from zero. The product and
    its high half are Let-bound: each is read several times, and a nested requantization (TFLite's ADD) spelled
    out as one expression tree grows exponentially for TVM's simplifier."""
    one, zero = tirx.const(1, "int64"), tirx.const(0, "int64")
    left = tirx.max(exponent, zero)
    right = tirx.max(-exponent, zero)
    ab, high = tirx.Var("ab", "int64"), tirx.Var("high", "int64")
    nudge = tirx.if_then_else(ab >= zero, one << 30, one - (one << 30))
    mask = (one << right) - one
    threshold = (mask >> one) + tirx.if_then_else(high < zero, one, zero)
    r = (high >> right) + tirx.if_then_else((high & mask) > threshold, one, zero) + tirx.const(zero_point, "int64")
    clamped = tirx.max(tirx.min(r, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(dtype)
    return tirx.Let(ab, (value.astype("int64") << left) * mult, tirx.Let(high, tirx.truncdiv(ab + nudge, one << 31), clamped))


def tflite_requantize_np(value, mult, exponent, zero_point: int, lo: int, hi: int, dtype: str) -> np.ndarray:
    """The NumPy twin of `tflite_requantize_te`, bit for bit."""
    exponent = np.asarray(exponent, dtype=np.int64)
    left, right = np.maximum(exponent, 0), np.maximum(-exponent, 0)
    ab = (np.asarray(value, dtype=np.int64) << left) * np.asarray(mult, dtype=np.int64)
    biased = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.sign(biased) * (np.abs(biased) >> 31)  # C's division truncates toward zero
    mask = (np.int64(1) << right) - 1
    threshold = (mask >> 1) + (high < 0)
    r = (high >> right) + ((high & mask) > threshold) + zero_point
    return np.clip(r, lo, hi).astype(dtype)


def tflite_divide_te(num, den):
    """TFLite's average (num / den rounded half away from zero, den > 0, C's truncating division), in TE."""
    half = tirx.floordiv(den, 2)
    return tirx.if_then_else(num > 0, tirx.truncdiv(num + half, den), tirx.truncdiv(num - half, den))


def tflite_divide_np(num, den) -> np.ndarray:
    """The NumPy twin of `tflite_divide_te`."""
    num, den = np.asarray(num, dtype=np.int64), np.asarray(den, dtype=np.int64)
    shifted = np.where(num > 0, num + den // 2, num - den // 2)
    return np.sign(shifted) * (np.abs(shifted) // den)


# --- the conv/dense epilogue: accumulator + bias -> requantized output, in the model's arithmetic ----------------


def arithmetic_attrs() -> dict:
    """What a kernel adds to its attributes so that its compute follows ARITHMETIC (nothing for QDQ models)."""
    return {"arithmetic": TFLITE} if ARITHMETIC.get() == TFLITE else {}


def epilogue_consts(bias: np.ndarray, acc_scale: np.ndarray, out_scale: float) -> list[np.ndarray]:
    """Bias in accumulator units, multiplier and shift per output channel. QDQ: the bias keeps
    BIAS_FRACTION_BITS below the point and the multiplier MULTIPLIER_BITS; TFLite: its int32 bias and Q31
    multiplier with the exponent as the shift."""
    acc_scale = np.asarray(acc_scale, dtype=np.float64)
    if ARITHMETIC.get() == TFLITE:
        mult, exponent = tflite_multiplier(acc_scale / out_scale)
        return [np.round(bias / acc_scale).astype(np.int64), mult, exponent]
    mult, shift = multiplier(acc_scale / out_scale)
    return [np.round(bias / acc_scale * (1 << BIAS_FRACTION_BITS)).astype(np.int64), mult, shift + BIAS_FRACTION_BITS]


def epilogue_te(acc, bias, mult, shift, attrs: dict):
    """TE: the output element from an int32 accumulator and its channel's epilogue constants."""
    if attrs.get("arithmetic") == TFLITE:
        return tflite_requantize_te(
            acc.astype("int64") + bias, mult, shift, attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"]
        )
    return requantize_te(
        (acc.astype("int64") << BIAS_FRACTION_BITS) + bias, mult, shift, attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"]
    )


def epilogue_np(acc, bias, mult, shift, attrs: dict) -> np.ndarray:
    """The NumPy twin of `epilogue_te`."""
    acc = np.asarray(acc, dtype=np.int64)
    if attrs.get("arithmetic") == TFLITE:
        return tflite_requantize_np(acc + bias, mult, shift, attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"])
    return requantize_np(
        (acc << BIAS_FRACTION_BITS) + bias, mult, shift, attrs["zy"], attrs["lo"], attrs["hi"], attrs["out_dtype"]
    )
