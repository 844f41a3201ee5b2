"""Every registered NPU kernel, compiled alone, is bit-exact against its NumPy integer reference.

Each kernel family has a case generator here (randomized shapes and attributes) plus fixed
edge cases: odd channel counts, padding with a non-zero input zero point, stride 2, 1x1
spatial, ReLU/ReLU6 clamps. A kernel added without a generator fails `test_every_kernel_is_tested`.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tvm_npu.fixed_point import BIAS_FRACTION_BITS, activation_bounds, multiplier
from tvm_npu.registry import KernelParams, kernel, kernels

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})


def _integers(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _output_quant(rng, dtype):
    zy = int(rng.integers(0, 40)) if dtype == "uint8" else int(rng.integers(-20, 20))
    activation = rng.choice(["none", "relu", "relu6"])
    scale = float(rng.uniform(0.02, 0.2))
    lo, hi = activation_bounds(dtype, zy, scale, activation == "relu", (0.0, 6.0) if activation == "relu6" else None)
    return scale, zy, lo, hi


def _weighted(rng, out_channels, depth, x_dtype, y_dtype):
    """Per-channel multipliers and biases with the scale ranges real models have."""
    sx, sw = rng.uniform(0.005, 0.05), rng.uniform(0.001, 0.02, out_channels)
    sy, zy, lo, hi = _output_quant(rng, y_dtype)
    zx = int(rng.integers(0, 256)) if x_dtype == "uint8" else int(rng.integers(-128, 128))
    acc_scale = sx * sw
    bias = np.round(rng.normal(0, 2, out_channels) / acc_scale * (1 << BIAS_FRACTION_BITS)).astype(np.int64)
    mult, shift = multiplier(acc_scale / sy * np.sqrt(64 / depth))  # keep outputs inside the range
    attrs = {"zx": zx, "zy": zy, "lo": lo, "hi": hi, "out_dtype": y_dtype}
    return attrs, bias, mult, shift + BIAS_FRACTION_BITS


def conv2d_case(
    rng,
    *,
    n=1,
    c=None,
    o=None,
    hw=None,
    k=None,
    stride=None,
    pad=None,
    dilation=None,
    depthwise=None,
    groups=None,
    x_dtype=None,
    y_dtype=None,
):
    k = k or int(rng.choice([1, 3, 5, 7]))
    stride = stride or int(rng.choice([1, 2]))
    dilation = dilation or int(rng.choice([1, 1, 2]))
    pad = pad if pad is not None else tuple(int(p) for p in rng.integers(0, k, 4))
    x_dtype = x_dtype or str(rng.choice(["int8", "uint8"]))
    y_dtype = y_dtype or str(rng.choice(["int8", "uint8"]))
    c = c or int(rng.integers(1, 12))
    if depthwise:
        groups, o = c, c
    groups = groups or 1
    o = o or groups * int(rng.integers(1, 6))
    reach = dilation * (k - 1) + 1
    hw = hw or (
        max(reach - pad[0] - pad[2], 1) + int(rng.integers(0, 8)),
        max(reach - pad[1] - pad[3], 1) + int(rng.integers(0, 8)),
    )
    attrs, bias, mult, shift = _weighted(rng, o, c // groups * k * k, x_dtype, y_dtype)
    attrs.update(strides=(stride, stride), padding=tuple(pad), dilation=(dilation, dilation), groups=groups, upsample=(1, 1))
    w = _integers(rng, (o, c // groups, k, k), "int8")
    return KernelParams(attrs, [w, bias, mult, shift]), [_integers(rng, (n, c) + tuple(hw), x_dtype)]


def dense_case(rng, *, n=None, k=None, o=None, x_dtype=None, y_dtype=None):
    n, k, o = n or int(rng.integers(1, 4)), k or int(rng.integers(1, 300)), o or int(rng.integers(1, 40))
    x_dtype = x_dtype or str(rng.choice(["int8", "uint8"]))
    attrs, bias, mult, shift = _weighted(rng, o, k, x_dtype, y_dtype or str(rng.choice(["int8", "uint8"])))
    attrs["lead"] = 0  # a plain [n, k] input: no leading unit axes
    return KernelParams(attrs, [_integers(rng, (o, k), "int8"), bias, mult, shift]), [_integers(rng, (n, k), x_dtype)]


def elementwise_case(rng, *, op=None, shape=None, a_dtype=None, b_dtype=None):
    op = op or str(rng.choice(["add", "mul"]))
    shape = shape or tuple(int(d) for d in rng.integers(1, 9, int(rng.integers(1, 5))))
    a_dtype, b_dtype = a_dtype or str(rng.choice(["int8", "uint8"])), b_dtype or str(rng.choice(["int8", "uint8"]))
    y_dtype = str(rng.choice(["int8", "uint8"]))
    sa, sb = rng.uniform(0.01, 0.1, 2)
    sy, zy, lo, hi = _output_quant(rng, y_dtype)
    reals = np.array([sa / sy, sb / sy]) if op == "add" else np.array([sa * sb / sy / 4])
    _, shift = multiplier(reals.max())
    attrs = {
        "op": op,
        "za": int(rng.integers(-5, 5)) + (128 if a_dtype == "uint8" else 0),
        "zb": int(rng.integers(-5, 5)) + (128 if b_dtype == "uint8" else 0),
        "zy": zy,
        "lo": lo,
        "hi": hi,
        "out_dtype": y_dtype,
        "mults": tuple(int(m) for m in np.round(reals * 2.0 ** int(shift))),
        "shift": int(shift),
    }
    return KernelParams(attrs), [_integers(rng, shape, a_dtype), _integers(rng, shape, b_dtype)]


def pool_case(
    rng, *, mode=None, c=None, hw=None, k=None, stride=None, pad=None, include_pad=None, same_scale=False, x_dtype=None
):
    mode = mode or str(rng.choice(["max", "avg"]))
    k = k or int(rng.integers(1, 4))
    stride = stride or int(rng.integers(1, 3))
    pad = pad if pad is not None else tuple(int(p) for p in rng.integers(0, k, 4))
    x_dtype = x_dtype or str(rng.choice(["int8", "uint8"]))
    hw = hw or tuple(int(d) for d in rng.integers(k, k + 8, 2))
    zx = int(rng.integers(0, 256)) if x_dtype == "uint8" else int(rng.integers(-128, 128))
    if same_scale:
        y_dtype, sy, zy, lo, hi, real = x_dtype, 0.05, zx, *activation_bounds(x_dtype, zx, 0.05, False, None), 1.0
    else:
        y_dtype = str(rng.choice(["int8", "uint8"]))
        sy, zy, _, _ = _output_quant(rng, y_dtype)
        lo, hi = activation_bounds(y_dtype, zy, sy, False, None)  # pools fuse no activation
        real = rng.uniform(0.05, 0.1) / sy
    mult, shift = multiplier(real)
    attrs = {
        "zx": zx,
        "zy": zy,
        "lo": lo,
        "hi": hi,
        "out_dtype": y_dtype,
        "mult": int(mult),
        "shift": int(shift),
        "mode": mode,
        "pool": (k, k),
        "strides": (stride, stride),
        "dilation": (1, 1),
        "padding": pad,
        "include_pad": bool(rng.integers(0, 2)) if include_pad is None else include_pad,
    }
    return KernelParams(attrs), [_integers(rng, (1, c or int(rng.integers(1, 9))) + hw, x_dtype)]


def concat_case(rng, *, axis=None, count=None, rank=None, dtypes=None, same=False):
    """Inputs on their own grids (or, `same`, all on the output's: the pure-copy path)."""
    rank = rank or int(rng.integers(1, 5))
    axis = axis if axis is not None else int(rng.integers(0, rank))
    count = count or int(rng.integers(2, 5))
    base = [int(d) for d in rng.integers(1, 6, rank)]
    y_dtype = str(rng.choice(["int8", "uint8"]))
    sy, zy, _, _ = _output_quant(rng, y_dtype)
    lo, hi = activation_bounds(y_dtype, zy, sy, False, None)
    inputs, sources = [], []
    for i in range(count):
        dtype = y_dtype if same else (dtypes[i] if dtypes else str(rng.choice(["int8", "uint8"])))
        zx = zy if same else int(rng.integers(0, 256)) if dtype == "uint8" else int(rng.integers(-128, 128))
        sx = sy if same else float(rng.uniform(0.5, 2.0) * sy)
        mult, shift = multiplier(sx / sy)
        sources.append((same, zx, int(mult), int(shift)))
        shape = list(base)
        shape[axis] = int(rng.integers(1, 6))
        inputs.append(_integers(rng, tuple(shape), dtype))
    attrs = {"axis": axis, "zy": zy, "lo": lo, "hi": hi, "out_dtype": y_dtype, "sources": tuple(sources)}
    return KernelParams(attrs), inputs


def lut_case(rng, *, function=None, x_dtype=None, y_dtype=None):
    """Every input integer, once or more: the whole table is exercised."""
    from schedules.lut import table

    function = function or str(rng.choice(["sigmoid", "hardsigmoid", "hardswish"]))
    x_dtype, y_dtype = x_dtype or str(rng.choice(["int8", "uint8"])), y_dtype or str(rng.choice(["int8", "uint8"]))
    sx = float(rng.uniform(0.01, 0.08))
    zx = int(rng.integers(100, 156)) if x_dtype == "uint8" else int(rng.integers(-28, 28))
    info = np.iinfo(y_dtype)
    lo_real = -0.375 if function == "hardswish" else 0.0  # the function's minimum
    hi_real = sx * (np.iinfo(x_dtype).max - zx) if function == "hardswish" else 1.0
    sy = (hi_real - lo_real) / 255
    zy = int(np.clip(np.round(info.min - lo_real / sy), info.min, info.max))
    alpha, beta = (1 / 6, 0.5) if function == "hardswish" else (float(rng.uniform(0.1, 0.3)), 0.5)
    attrs = {
        "function": function,
        "sx": sx,
        "zx": zx,
        "sy": sy,
        "zy": zy,
        "in_dtype": x_dtype,
        "out_dtype": y_dtype,
        "alpha": alpha,
        "beta": beta,
    }
    every = np.arange(np.iinfo(x_dtype).min, np.iinfo(x_dtype).max + 1).astype(x_dtype)
    x = np.concatenate([every, _integers(rng, 7 * 8 * 11 - 256, x_dtype)]).reshape(1, 7, 8, 11)  # odd channels
    return KernelParams(attrs, [table(attrs)]), [rng.permutation(x.ravel()).reshape(x.shape)]


def channel_affine_case(rng, *, shape=None, x_dtype=None, y_dtype=None, per_channel_input=True):
    """Per-channel factors of both signs and one zero (a channel that only shifts), per-channel input quantization."""
    from tvm_npu.schedules.channel_affine import integers

    shape = shape or tuple(int(d) for d in rng.integers(1, 9, int(rng.integers(2, 5))))
    channels = shape[1]
    x_dtype = x_dtype or str(rng.choice(["int8", "uint8"]))
    y_dtype = y_dtype or str(rng.choice(["int8", "uint8"]))
    low, high = np.iinfo(x_dtype).min, np.iinfo(x_dtype).max
    sx = rng.uniform(0.01, 0.08, channels if per_channel_input else 1).repeat(1 if per_channel_input else channels)
    zx = rng.integers(low // 4, high // 4, channels if per_channel_input else 1).repeat(1 if per_channel_input else channels)
    factor = rng.uniform(0.3, 2, channels) * rng.choice([-1, 1], channels)
    factor[0] = 0.0
    shift = rng.normal(0, 1, channels)
    sy, zy, lo, hi = _output_quant(rng, y_dtype)
    (mult, bias, shifts), problem = integers(sx, zx, factor, shift, sy)
    assert problem is None, problem
    attrs = {"zy": zy, "lo": lo, "hi": hi, "out_dtype": y_dtype}
    return KernelParams(attrs, [mult, bias, shifts]), [_integers(rng, shape, x_dtype)]


def example_case(name: str, index: int):
    """A case drawn from the kernel's own example generator (with this test's seeds, not the harness's):
    the kernels whose parameters come from tables or index maps the compiler computes."""
    from tvm_npu.conformance import prepare

    def case(rng):
        found = prepare(kernel(name), kernel(name).examples(rng)[index])
        return found.params, found.inputs

    return case


_FROM_EXAMPLES = {"npu.conv2d_transpose": 4, "npu.resize": 6, "npu.clamp": 3, "npu.move": 7, "npu.matmul": 4, "npu.softmax": 4}

CASES = {
    **{name: [example_case(name, i) for i in range(count)] for name, count in _FROM_EXAMPLES.items()},
    "npu.channel_affine": [
        *(lambda rng: channel_affine_case(rng) for _ in range(4)),
        lambda rng: channel_affine_case(rng, shape=(1, 7, 5, 3), x_dtype="uint8", y_dtype="int8"),
        lambda rng: channel_affine_case(rng, shape=(2, 5), x_dtype="int8", per_channel_input=False),
    ],
    "npu.concat": [
        *(lambda rng: concat_case(rng) for _ in range(6)),
        lambda rng: concat_case(rng, axis=1, count=3, rank=4, dtypes=["int8", "uint8", "int8"]),
        lambda rng: concat_case(rng, axis=1, count=2, rank=4, same=True),
        lambda rng: concat_case(rng, axis=3, count=5, rank=4),
        lambda rng: concat_case(rng, axis=0, count=2, rank=2, dtypes=["uint8", "uint8"]),
    ],
    "npu.lut": [
        *(
            lambda rng, f=f, x=x: lut_case(rng, function=f, x_dtype=x)
            for f in ("sigmoid", "hardsigmoid", "hardswish")
            for x in ("int8", "uint8")
        ),
        lambda rng: lut_case(rng, function="hardswish", x_dtype="int8", y_dtype="uint8"),
    ],
    "npu.conv2d": [
        *(lambda rng: conv2d_case(rng) for _ in range(10)),
        lambda rng: conv2d_case(rng, c=3, o=5, hw=(7, 9), k=3, stride=2, pad=(1, 1, 1, 1), x_dtype="uint8"),
        lambda rng: conv2d_case(rng, c=7, hw=(6, 6), k=3, pad=(2, 1, 0, 2), depthwise=True),
        lambda rng: conv2d_case(rng, c=6, o=9, groups=3, k=3, pad=(1, 1, 1, 1)),
        lambda rng: conv2d_case(rng, c=5, o=4, hw=(1, 1), k=1, stride=1, pad=(0, 0, 0, 0)),
        lambda rng: conv2d_case(rng, c=4, o=3, hw=(1, 1), k=3, stride=1, pad=(1, 1, 1, 1), x_dtype="uint8"),
        lambda rng: conv2d_case(rng, c=3, o=8, hw=(12, 12), k=7, stride=2, pad=(3, 3, 3, 3), dilation=1),
        lambda rng: conv2d_case(rng, c=2, o=2, hw=(9, 9), k=3, stride=1, pad=(2, 2, 2, 2), dilation=2),
    ],
    "npu.dense": [
        *(lambda rng: dense_case(rng) for _ in range(6)),
        lambda rng: dense_case(rng, n=1, k=1, o=1),
        lambda rng: dense_case(rng, n=3, k=513, o=7, x_dtype="uint8"),
    ],
    "npu.elementwise": [
        *(lambda rng: elementwise_case(rng) for _ in range(6)),
        lambda rng: elementwise_case(rng, op="add", shape=(1, 7, 5, 3), a_dtype="int8", b_dtype="uint8"),
        lambda rng: elementwise_case(rng, op="mul", shape=(1,), a_dtype="uint8", b_dtype="uint8"),
    ],
    "npu.pool": [
        *(lambda rng: pool_case(rng) for _ in range(8)),
        lambda rng: pool_case(rng, mode="max", c=3, hw=(8, 8), k=2, stride=2, pad=(0, 0, 0, 0), same_scale=True),
        lambda rng: pool_case(rng, mode="max", c=5, hw=(7, 7), k=3, stride=2, pad=(1, 1, 1, 1), x_dtype="uint8"),
        lambda rng: pool_case(rng, mode="avg", c=5, hw=(5, 5), k=3, stride=1, pad=(1, 1, 1, 1), include_pad=False),
        lambda rng: pool_case(rng, mode="avg", c=3, hw=(7, 7), k=7, stride=1, pad=(0, 0, 0, 0), include_pad=True),
        lambda rng: pool_case(rng, mode="avg", c=3, hw=(1, 1), k=1, stride=1, pad=(0, 0, 0, 0), include_pad=True),
    ],
}


def run_kernel(name: str, params: KernelParams, inputs: list[np.ndarray]) -> np.ndarray:
    npu_kernel = kernel(name)
    expected = npu_kernel.reference(params, inputs)
    prim = npu_kernel.primfunc("k", params, [(x.shape, str(x.dtype)) for x in inputs])
    lib = tvm.compile(tvm.IRModule({"k": prim}), target=TARGET)
    out = tvm.runtime.empty(expected.shape, str(expected.dtype))
    lib["k"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in list(inputs) + list(params.consts)], out)
    return out.numpy(), expected


def test_every_kernel_is_tested():
    # Variants (CSR weights) are tested against their base kernels in tests/test_sparse.py.
    assert sorted(k.name for k in kernels() if k.variant_of is None) == sorted(CASES)


@pytest.mark.parametrize("name, index", [(name, i) for name, cases in CASES.items() for i in range(len(cases))])
def test_kernel_matches_integer_reference(name, index):
    rng = np.random.default_rng(1000 * index + len(name))
    params, inputs = CASES[name][index](rng)
    ours, expected = run_kernel(name, params, inputs)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)
    # A meaningful case exercises the range, not just the clamp.
    assert len(np.unique(expected)) > 1 or expected.size == 1 or expected.size < 8
