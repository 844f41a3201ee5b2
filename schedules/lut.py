"""npu.lut: activation functions on quantized tensors through a 256-entry table: Sigmoid, SiLU/Swish
(x * Sigmoid(x)), HardSigmoid, HardSwish, Tanh, Mish, LeakyRelu and GELU (tanh approximation).

An INT8 NPU has no transcendental unit, but an 8-bit input has only 256 values: the compiler
evaluates the function once per value, from the input and output quantization,
and the kernel indexes that table with the input integer.

    T[q - qmin] = clamp(round_half_even(f(sx * (q - zx)) / sy) + zy)   at compile time, float32
    Y = T[X - qmin]

The Relax forms are those of TVM 0.27's ONNX importer: `R.sigmoid`, `R.tanh`, `R.nn.leakyrelu`,
`R.nn.gelu_tanh`; SiLU as `x * sigmoid(x)`; Mish as `x * tanh(log(1 + exp(x)))`; HardSigmoid as
`clip(alpha * x + beta, 0, 1)`; HardSwish as `x * (clip(x + 3, 0, 6) / 6)` (and older exports'
`x * HardSigmoid(x, 1/6, 0.5)`). Models spelling them as several ONNX operators are first
rewritten to these forms (`tvm_npu.passes.canonical_activations`), and quantization places a
QuantizeLinear on each function's input (`tvm_npu.passes.quantize_activations`: NNCF treats
them as fused activations of the producing conv and leaves their inputs in float).

Tiled like elementwise (`schedules/elementwise.py`), with the 256-byte table resident in SRAM.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx
from tvm.relax.dpl import is_const, is_op, wildcard

from tvm_npu.fixed_point import scale_problem
from tvm_npu.onnx_builder import OPSET, quantized_operator, random_activation
from tvm_npu.tiling import Geometry, Tiles
from tvm_npu.registry import (
    Composite,
    KernelParams,
    NpuKernel,
    const_value,
    dequantized_tensor,
    op_name,
    per_tensor_problem,
)
from tvm_npu.schedules.elementwise import row_axis, stream_geometry
from tvm_npu.sram import stream_tiles


def _hard_sigmoid(x, annotations: dict):
    """alpha*x + beta clipped to [0, 1], as HardSigmoid or as HardSwish's inner clip(x + 3, 0, 6) / 6."""
    alpha, beta, divisor = is_const(), is_const(), is_const()
    scaled = is_op("relax.multiply")(alpha, x) | is_op("relax.multiply")(x, alpha)
    unit_clip = is_op("relax.clip")(is_op("relax.add")(scaled, beta), wildcard(), wildcard())
    wide_clip = is_op("relax.clip")(is_op("relax.add")(x, beta), wildcard(), wildcard())
    annotations.update(unit_clip=unit_clip, wide_clip=wide_clip, divisor=divisor)
    return unit_clip | is_op("relax.divide")(wide_clip, divisor)


# Functions of one tensor that TVM's importer writes as one Relax op.
_UNARY = {"relax.sigmoid": "sigmoid", "relax.tanh": "tanh", "relax.nn.leakyrelu": "leakyrelu", "relax.nn.gelu_tanh": "gelu_tanh"}


def _gated(x, gate):
    """x * gate(x) in either operand order: SiLU and Mish read x twice, like HardSwish below."""
    return is_op("relax.multiply")(x, gate) | is_op("relax.multiply")(gate, x)


def _softplus_tanh(x, annotations: dict):
    """tanh(log(c + exp(x))) (c = 1 in Mish: see check): Mish's gate as the importer writes it."""
    one, exp = is_const(), is_op("relax.exp")(x)
    annotations["one"] = one
    return is_op("relax.tanh")(is_op("relax.log")(is_op("relax.add")(one, exp) | is_op("relax.add")(exp, one)))


def patterns():
    found = []
    for op in _UNARY:
        x = dequantized_tensor()
        anchor = is_op(op)(x)
        found.append((is_op("relax.quantize")(anchor, is_const(), is_const()), {"x": x, "anchor": anchor}))
    for gate in (lambda x, _: is_op("relax.sigmoid")(x), _softplus_tanh):
        x, gate_x, annotations = dequantized_tensor(), dequantized_tensor(), {}
        anchor = _gated(x, gate(gate_x, annotations))
        found.append(
            (is_op("relax.quantize")(anchor, is_const(), is_const()), {"x": x, "gate_x": gate_x, "anchor": anchor, **annotations})
        )
    x, annotations = dequantized_tensor(), {}
    hard = _hard_sigmoid(x, annotations)
    found.append((is_op("relax.quantize")(hard, is_const(), is_const()), {"x": x, "anchor": hard, **annotations}))
    # HardSwish: the importer uses x twice; partition gives each use its own dequantize, so the
    # pattern takes two and `check` requires them to read the same tensor the same way.
    x, gate_x, annotations = dequantized_tensor(), dequantized_tensor(), {}
    swish = is_op("relax.multiply")(x, _hard_sigmoid(gate_x, annotations))
    found.append(
        (is_op("relax.quantize")(swish, is_const(), is_const()), {"x": x, "gate_x": gate_x, "anchor": swish, **annotations})
    )
    for root, annotations in found:
        annotations["root"] = root
    return found


def check(ann) -> str | None:
    return table_problem(ann) or _function_problem(ann)


def table_problem(ann) -> str | None:
    """Why no table can map the match's quantized `x` to its quantized `root`, if not (npu.clamp's check too)."""
    x = ann["x"]
    problem = per_tensor_problem(x, ann["root"])
    if problem:
        return problem
    if isinstance(x.args[0], tvm.ir.expr.Constant):
        return "attribute: a constant operand"
    sx, sy = (float(const_value(e.args[1])) for e in (x, ann["root"]))
    return scale_problem(sx) or scale_problem(sy)


def _function_problem(ann) -> str | None:
    """Why the matched operators are not the function the pattern names, if not."""
    x = ann["x"]
    if "gate_x" in ann:
        gate = ann["gate_x"]
        same = gate.args[0].same_as(x.args[0]) and all(
            np.array_equal(const_value(a), const_value(b)) for a, b in zip(gate.args[1:3], x.args[1:3])
        )
        if not same:
            return "attribute: x * f(y) with y != x is not a function of x alone"
    if "one" in ann and float(const_value(ann["one"])) != 1.0:
        return "attribute: x * tanh(log(c + exp(x))) with c != 1 is not Mish"
    for name in ("unit_clip", "wide_clip"):
        if name not in ann:
            continue
        clip = ann[name]
        top = 1.0 if name == "unit_clip" else float(const_value(ann["divisor"]))
        if (float(clip.args[1].value), float(clip.args[2].value)) != (0.0, top):
            return "attribute: clip bounds that make no hard sigmoid"
    return None


def _affine(comp: Composite) -> tuple[float, float]:
    """(alpha, beta) of the matched hard sigmoid, whichever importer form it has (bounds: see check)."""
    add = comp.calls("relax.add")[0]
    beta = float(comp.const(add.args[1]))
    divides = comp.calls("relax.divide")
    if divides:  # clip(x + beta, 0, d) / d == clip(x/d + beta/d, 0, 1)
        divisor = float(comp.const(divides[0].args[1]))
        return 1 / divisor, beta / divisor
    scaled = comp.value(add.args[0])
    constant = next(a for a in scaled.args if not isinstance(comp.value(a), tvm.relax.Call))
    return float(comp.const(constant)), beta


def function(attrs: dict, x: np.ndarray) -> np.ndarray:
    """The real-valued function, in x's float precision, in the importer's order of operations."""
    name, real, one = attrs["function"], x.dtype.type, x.dtype.type(1)
    with np.errstate(over="ignore"):  # exp overflows to inf at the ends: sigmoid is 0 there, Mish's gate 1
        if name in ("sigmoid", "silu"):
            gate = one / (one + np.exp(-x))
        elif name == "mish":
            gate = np.tanh(np.log(one + np.exp(x)))
        elif name == "tanh":
            return np.tanh(x)
        elif name == "leakyrelu":
            return np.where(x >= 0, x, x * real(attrs["alpha"]))
        elif name == "gelu_tanh":  # TVM's gelu_tanh, as ONNX Gelu(approximate="tanh")
            return real(0.5) * x * (one + np.tanh(real(np.sqrt(2 / np.pi)) * (x + real(0.044715) * x * x * x)))
        else:
            gate = np.clip(real(attrs["alpha"]) * x + real(attrs["beta"]), 0, one)
    return gate if name in ("sigmoid", "hardsigmoid") else x * gate


def table(attrs: dict) -> np.ndarray:
    """The 256 output integers, indexed by input integer - qmin."""
    info, out = np.iinfo(attrs["in_dtype"]), np.iinfo(attrs["out_dtype"])
    q = np.arange(info.min, info.max + 1, dtype=np.int64)
    # float32, in DequantizeLinear -> f -> QuantizeLinear order: the QDQ graph's own arithmetic.
    # Quantized inputs hit exact rounding ties often (hardswish(0.9) / 0.03 is 19.5 in float32 but
    # 19.4999... in float64), and a tie decided differently is a whole output step.
    x = (q - attrs["zx"]).astype(np.float32) * np.float32(attrs["sx"])
    y = np.round(function(attrs, x) / np.float32(attrs["sy"]))  # half to even, as QuantizeLinear
    return np.clip(y.astype(np.int64) + attrs["zy"], out.min, out.max).astype(attrs["out_dtype"])


def params(comp: Composite) -> KernelParams:
    dq = next(v for v in comp.bindings.values() if op_name(v) == "relax.dequantize")
    sx, zx = comp.activation_input(dq)
    sy, zy, dtype, _, _ = comp.output()
    attrs = {
        "sx": sx,
        "zx": zx,
        "sy": sy,
        "zy": zy,
        "in_dtype": str(dq.args[0].ty.dtype),
        "out_dtype": dtype,
        "alpha": 0.0,
        "beta": 0.0,
    }
    # x * gate(x): a multiply of two computed values (a constant operand is hard sigmoid's alpha)
    gated = any(all(isinstance(comp.value(a), tvm.relax.Call) for a in m.args) for m in comp.calls("relax.multiply"))
    unary = [_UNARY[op] for op in _UNARY if comp.calls(op)]
    if comp.calls("relax.log"):
        attrs["function"] = "mish"
    elif unary:
        attrs["function"] = "silu" if gated else unary[0]
        if unary[0] == "leakyrelu":
            attrs["alpha"] = float(comp.call("relax.nn.leakyrelu").attrs.alpha)
    else:
        attrs["alpha"], attrs["beta"] = _affine(comp)
        attrs["function"] = "hardswish" if gated else "hardsigmoid"
    return KernelParams(attrs, [table(attrs)])


def compute(p: KernelParams, inputs):
    (shape, dtype), *_ = inputs  # HardSwish's composite may pass x twice: both are the same tensor
    qmin = int(np.iinfo(dtype).min)
    xs = [te.placeholder(s, d, f"X{i}") for i, (s, d) in enumerate(inputs)]
    lut = te.placeholder((256,), p.attrs["out_dtype"], "T")
    y = te.compute(shape, lambda *i: lut[xs[0][i].astype("int32") - qmin], name="Y")
    return te.create_prim_func([*xs, lut, y])


def reference(p: KernelParams, inputs) -> np.ndarray:
    x = inputs[0]
    return p.consts[0][x.astype(np.int64) - int(np.iinfo(x.dtype).min)]


def examples(rng):
    def lut(name, op_type, opset=OPSET, **attributes):
        """Every input integer at least once, in an odd-channel tensor: the whole table is exercised."""
        dtype = str(rng.choice(["int8", "uint8"]))
        info = np.iinfo(dtype)
        every = np.concatenate(
            [np.arange(info.min, info.max + 1), rng.integers(info.min, info.max, 7 * 8 * 11 - 256, endpoint=True)]
        )
        x = random_activation(rng, (1, 7, 8, 11), dtype, values=rng.permutation(every))
        return quantized_operator(
            name, op_type, [x], rng, out_dtype=str(rng.choice(["int8", "uint8"])), opset=opset, **attributes
        )

    return [
        lut("sigmoid", "Sigmoid"),
        lut("silu", "Sigmoid", gated=True),
        lut("hardsigmoid", "HardSigmoid", alpha=float(rng.uniform(0.1, 0.3)), beta=0.5),
        lut("hardswish", "HardSwish"),
        lut("tanh", "Tanh"),
        lut("leakyrelu", "LeakyRelu", alpha=float(rng.uniform(0.01, 0.3))),
        lut("mish", "Mish", opset=18),
        lut("gelu_tanh", "Gelu", opset=20, approximate="tanh"),
    ]


def geometry(p: KernelParams, inputs) -> Geometry | None:
    (shape, _), *_ = inputs
    return stream_geometry("lut", shape, f"{p.attrs['function']} {'x'.join(map(str, shape))}", table_bytes=256)


def schedule(func: tirx.PrimFunc, tiles: Tiles) -> tirx.PrimFunc:
    return stream_tiles(func, tiles, row_axis([int(d) for d in func.params[-1].shape]), stationary=frozenset({"T"}))


KERNEL = NpuKernel(
    name="npu.lut",
    anchors=("relax.sigmoid", "relax.tanh", "relax.nn.gelu_tanh"),
    patterns=patterns,
    check=check,
    params=params,
    compute=compute,
    reference=reference,
    examples=examples,
    limits=(
        "Sigmoid, SiLU (x * Sigmoid(x)), HardSigmoid (clip(alpha x + beta, 0, 1)), HardSwish, Tanh, Mish, "
        "LeakyRelu, GELU (tanh approximation), as TVM's ONNX importer writes them",
        "input and output per tensor, the input quantized (compiling an FP32 model places that QuantizeLinear)",
        "SiLU, Mish and HardSwish read one tensor twice with the same quantization",
    ),
    geometry=geometry,
    schedule=schedule,
)
