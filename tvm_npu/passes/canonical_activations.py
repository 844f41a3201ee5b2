"""ONNX rewrite before quantization: an activation function spelled as several operators becomes one.

Exporters spell activations in many ways: Paddle2ONNX writes HardSwish as `x * Clip(x + 3, 0, 6) / 6`
and HardSigmoid as `Clip(x + 3, 0, 6) / 6`; older PyTorch exports write GELU's tanh approximation
as a dozen Mul/Add/Pow/Tanh nodes, Mish as `x * Tanh(Softplus(x))`, LeakyRelu as `Max(x, 0.1 x)`.
Instead of matching each spelling, the rewrite finds every maximal subgraph of elementwise
operators with scalar constants that reads one tensor `x` (a function of `x` alone), evaluates it
on a dense grid of `x` with onnx's reference evaluator and, where it equals a known activation
within float rounding, replaces it by that activation's canonical form:

    HardSwish(x) (opset >= 14, else x * HardSigmoid(x, 1/6, 1/2)), HardSigmoid(x, alpha, beta),
    Sigmoid(x), x * Sigmoid(x) (SiLU: no ONNX operator below opset 24), Tanh(x), LeakyRelu(x, alpha),
    Mish(x) (opset >= 18), Gelu(x, approximate="tanh") (opset >= 20)

A subgraph that matches nothing, or whose canonical form needs a newer opset, stays as it is. As
one operator each, quantization sees one function of one tensor (`quantize_activations` quantizes
its input and output) and the NPU runs it as one 256-entry table (`npu.lut`).

Entry point: `canonical_activations(model) -> model`; run after constant folding (constants are
initializers then).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .common import copy_model

# Operators computing each output element from the same element of their inputs (and scalars).
ELEMENTWISE = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Tanh",
    "Sigmoid",
    "Erf",
    "Softplus",
    "Relu",
    "LeakyRelu",
    "Clip",
    "Max",
    "Min",
    "HardSigmoid",
    "HardSwish",
    "Identity",
}
GRID = np.concatenate([np.linspace(-12, 12, 4801), [-1e3, -40.0, 40.0, 1e3]]).astype(np.float32)
_RTOL, _ATOL = 1e-4, 1e-5


def canonical_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = copy_model(model)
    graph = copy.graph
    opset = next((o.version for o in copy.opset_import if o.domain in ("", "ai.onnx")), 1)
    scalars = {
        init.name: numpy_helper.to_array(init)
        for init in graph.initializer
        if int(np.prod(init.dims)) == 1 and init.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE)
    }
    while _rewrite_once(graph, opset, scalars):  # a function of rewritten functions shows up in the next round
        pass
    return copy


def _rewrite_once(graph: onnx.GraphProto, opset: int, scalars: dict) -> bool:
    """Rewrites every function found from the last node backwards; whether any was rewritten."""
    done: set[str] = set()  # outputs of the nodes of functions already identified
    rewritten = False
    for root in reversed(list(graph.node)):  # consumers first: each function is found from its last node
        if root.op_type not in ELEMENTWISE or root.output[0] in done:
            continue
        # the first (largest) function that is a known one; an affine map after an activation, say, is none,
        # but the activation before it is found from its own last node
        region, canonical = next(
            (
                (region, canonical)
                for region, x in _functions_ending_at(graph, root, scalars)
                if (canonical := _identify(graph, region, x, root.output[0], opset)) is not None
            ),
            (None, None),
        )
        if canonical is None:
            continue
        done.update(out for node in region for out in node.output)
        if sorted(n.op_type for n in canonical) != sorted(n.op_type for n in region):
            _replace(graph, region, canonical)
            rewritten = True
    return rewritten


def _functions_ending_at(graph: onnx.GraphProto, root: onnx.NodeProto, scalars: dict) -> list[tuple[list, str]]:
    """(the nodes, x) of each elementwise subgraph ending at `root` that reads one tensor x besides scalar
    constants and whose inner tensors nothing else reads, largest first: grown one producer level at a time
    (HardSigmoid(x) then Mish: the whole is no known function, the last level is)."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.output[0])
    outputs = {o.name for o in graph.output}
    region, levels = {root.output[0]: root}, []
    while True:
        levels.append(dict(region))
        grown = dict(region)
        for node in region.values():
            for name in node.input:
                producer = producers.get(name)
                if (
                    producer is not None
                    and producer.output[0] not in grown
                    and producer.op_type in ELEMENTWISE
                    and len(producer.output) == 1
                    and name not in outputs
                    and all(c in region for c in consumers.get(name, []))
                ):
                    grown[producer.output[0]] = producer
        if len(grown) == len(region):
            break
        region = grown
    found = []
    for level in reversed(levels[1:]):  # one operator is canonical as it is
        external = {
            name
            for node in level.values()
            for name in node.input
            if name and name not in scalars and (name not in producers or producers[name].output[0] not in level)
        }
        if len(external) == 1:
            found.append(([node for node in graph.node if node.output[0] in level], external.pop()))
    return found


def _identify(graph: onnx.GraphProto, region: list[onnx.NodeProto], x: str, y: str, opset: int) -> list[onnx.NodeProto] | None:
    """The canonical nodes computing `y` from `x` when the region's function is a known activation."""
    values = _evaluate(graph, region, x, y)
    if values is None:
        return None
    name = f"{y}_canonical"
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf at the grid's ends: sigmoid is 0 there
        for make, function, min_opset in _candidates(values):
            if (
                make is not None
                and opset >= min_opset
                and np.allclose(values, function(GRID.astype(np.float64)), rtol=_RTOL, atol=_ATOL)
            ):
                return make(x, y, name, opset)
    return None


def _candidates(values: np.ndarray):
    """(make nodes, the function in float64, minimum opset) of each known activation; HardSigmoid and
    LeakyRelu take their parameters from the values (checked against the whole grid afterwards)."""
    grid = GRID.astype(np.float64)
    at = {v: float(values[np.argmin(np.abs(grid - v))]) for v in (-1.0, 0.0, 1.0)}
    alpha_hs, beta_hs = at[1.0] - at[0.0], at[0.0]  # hard sigmoid: slope and offset at 0
    alpha_lr = -at[-1.0]  # leaky relu: f(-1) = -alpha
    # slopes 0 and 1 would turn clip(x, 0, 1), Relu or Identity chains into degenerate HardSigmoid / LeakyRelu
    hard_sigmoid_ok, leaky_ok = alpha_hs > 0 and 0 < beta_hs < 1, alpha_lr not in (0.0, 1.0)

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    def hard_sigmoid(v, a, b):
        return np.clip(a * v + b, 0, 1)

    def node(op_type, **attrs) -> Callable:
        return lambda x, y, name, _: [helper.make_node(op_type, [x], [y], name=name, **attrs)]

    def hard_swish(x, y, name, opset):
        if opset >= 14:
            return [helper.make_node("HardSwish", [x], [y], name=name)]
        return [
            helper.make_node("HardSigmoid", [x], [f"{name}_gate"], name=f"{name}_gate", alpha=1 / 6, beta=0.5),
            helper.make_node("Mul", [x, f"{name}_gate"], [y], name=name),
        ]

    def silu(x, y, name, _):
        return [
            helper.make_node("Sigmoid", [x], [f"{name}_gate"], name=f"{name}_gate"),
            helper.make_node("Mul", [x, f"{name}_gate"], [y], name=name),
        ]

    return [
        (hard_swish, lambda v: v * hard_sigmoid(v, 1 / 6, 0.5), 1),
        (
            node("HardSigmoid", alpha=alpha_hs, beta=beta_hs) if hard_sigmoid_ok else None,
            lambda v: hard_sigmoid(v, alpha_hs, beta_hs),
            1,
        ),
        (node("Sigmoid"), sigmoid, 1),
        (silu, lambda v: v * sigmoid(v), 1),
        (node("Tanh"), np.tanh, 1),
        (node("LeakyRelu", alpha=alpha_lr) if leaky_ok else None, lambda v: np.where(v >= 0, v, alpha_lr * v), 1),
        (node("Mish"), lambda v: v * np.tanh(np.logaddexp(0, v)), 18),
        (node("Gelu", approximate="tanh"), lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3))), 20),
    ]


def _evaluate(graph: onnx.GraphProto, region: list[onnx.NodeProto], x: str, y: str) -> np.ndarray | None:
    """The region's output for x = GRID (a 1-D tensor: scalar constants broadcast onto it)."""
    used = {name for node in region for name in node.input}
    inits = [init for init in graph.initializer if init.name in used]
    probe = helper.make_graph(
        region,
        "function",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [len(GRID)])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
        inits,
    )
    try:
        with np.errstate(all="ignore"):
            (result,) = ReferenceEvaluator(helper.make_model(probe, opset_imports=[helper.make_opsetid("", 21)])).run(
                None, {x: GRID}
            )
    except Exception:  # noqa: BLE001 - a region the evaluator cannot run is no function we know
        return None
    result = np.asarray(result, np.float64)
    return result if result.shape == GRID.shape and np.isfinite(result).all() else None


def _replace(graph: onnx.GraphProto, region: list[onnx.NodeProto], canonical: list[onnx.NodeProto]) -> None:
    outputs = {out for node in region for out in node.output}
    index = min(i for i, node in enumerate(graph.node) if node.output[0] in outputs)
    kept = [node for node in graph.node if node.output[0] not in outputs]
    del graph.node[:]
    graph.node.extend(kept[:index] + canonical + kept[index:])
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
