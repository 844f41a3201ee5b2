"""ONNX rewrite before quantization: activation functions spelled as several operators become one.

Exporters (Paddle2ONNX, older PyTorch) write HardSwish as `x * Clip(x + 3, 0, 6) / 6` and
HardSigmoid as `Clip(x + 3, 0, 6) / 6` or `Clip(alpha * x + beta, 0, 1)`; Mish as
`x * Tanh(Softplus(x))`. As one operator each, quantization sees one function of one tensor
(`quantize_activations` quantizes its input and output) and the NPU runs it as one 256-entry table
(`npu.lut`). The rewrite is exact up to float rounding of the same real function:

    hard sigmoid spellings        -> HardSigmoid(x, alpha, beta)
    x * HardSigmoid(x, 1/6, 1/2)  -> HardSwish(x)    (opset >= 14; older: stays x * HardSigmoid(x))
    x * Tanh(Softplus(x))         -> Mish(x)         (opset >= 18)

SiLU (`x * Sigmoid(x)`) has no ONNX operator below opset 24 and stays as it is: the pair is one
unit for quantization and for `npu.lut` alike.

Entry point: `canonical_activations(model) -> model`; run after constant folding (constants are
initializers then).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

HARD_SWISH_OPSET, MISH_OPSET = 14, 18


def canonical_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = _Graph(copy)
    opset = next((o.version for o in copy.opset_import if o.domain in ("", "ai.onnx")), 1)
    for node in list(copy.graph.node):  # producers come first: a hard sigmoid is rewritten before its swish
        if node not in graph.alive:
            continue
        found = _hard_sigmoid(graph, node)
        if found is not None and node.op_type != "HardSigmoid":
            x, alpha, beta = found
            graph.replace(node, [helper.make_node("HardSigmoid", [x], [node.output[0]], alpha=alpha, beta=beta,
                                                  name=f"{node.name or node.output[0]}_hard_sigmoid")])
            continue
        name = node.name or node.output[0]
        hard_swish = _hard_swish(graph, node)
        if hard_swish is not None:
            x, alpha, beta, spelled = hard_swish
            if opset >= HARD_SWISH_OPSET and np.isclose([alpha, beta], [1 / 6, 0.5], rtol=1e-6).all():
                graph.replace(node, [helper.make_node("HardSwish", [x], [node.output[0]], name=f"{name}_hard_swish")])
            elif spelled:
                gate = f"{name}_hard_sigmoid"
                graph.replace(node, [helper.make_node("HardSigmoid", [x], [gate], alpha=alpha, beta=beta, name=gate),
                                     helper.make_node("Mul", [x, gate], [node.output[0]], name=f"{name}_hard_swish")])
            continue
        swish = _gated(graph, node)
        if swish is not None and swish[1].op_type == "Tanh" and opset >= MISH_OPSET:
            graph.replace(node, [helper.make_node("Mish", [swish[0]], [node.output[0]], name=f"{name}_mish")])
    graph.drop_unused()
    return copy


def _hard_swish(graph: "_Graph", node: onnx.NodeProto) -> tuple[str, float, float, bool] | None:
    """(x, alpha, beta, spelled) when `node` computes x * clip(alpha * x + beta, 0, 1): as x * HardSigmoid(x)
    (spelled False) or as x * Clip(x + b, 0, d) / d (spelled True; Paddle2ONNX writes HardSwish so)."""
    gated = _gated(graph, node)
    if gated is not None and gated[1].op_type == "HardSigmoid":
        return (*_hard_sigmoid(graph, gated[1]), False)
    if node.op_type not in ("Div", "Mul") or graph.constant(node.input[1]) in (None, 0.0):
        return None
    divisor = graph.constant(node.input[1]) if node.op_type == "Div" else 1 / graph.constant(node.input[1])
    product = graph.producer(node.input[0])
    if product is None or product.op_type != "Mul":
        return None
    for x, other in (product.input, product.input[::-1]):
        clip = graph.producer(other)
        inner = _clipped_affine(graph, clip, top=divisor) if clip is not None and clip.op_type == "Clip" else None
        if inner is not None and inner[0] == x and inner[1] == 1.0:
            return x, 1 / divisor, inner[2] / divisor, True
    return None


def _gated(graph: "_Graph", node: onnx.NodeProto) -> tuple[str, onnx.NodeProto] | None:
    """(x, gate node) when `node` computes x * gate(x)."""
    if node.op_type != "Mul":
        return None
    for x, other in (node.input, node.input[::-1]):
        gate = graph.producer(other)
        if gate is not None and gate.input and gate.input[0] == x and gate.op_type in ("HardSigmoid", "Tanh", "Sigmoid"):
            return x, gate
        if gate is not None and gate.op_type == "Tanh":  # Mish's gate reads x through Softplus
            inner = graph.producer(gate.input[0])
            if inner is not None and inner.op_type == "Softplus" and inner.input[0] == x:
                return x, gate
    return None


def _hard_sigmoid(graph: "_Graph", node: onnx.NodeProto) -> tuple[str, float, float] | None:
    """(x, alpha, beta) when `node` computes clip(alpha * x + beta, 0, 1)."""
    if node.op_type == "HardSigmoid":
        attrs = {a.name: a.f for a in node.attribute}
        return node.input[0], attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    if node.op_type in ("Div", "Mul"):  # clip(x + b, 0, d) / d  or  clip(x + b, 0, d) * (1 / d)
        operand = graph.constant(node.input[1])
        clip = graph.producer(node.input[0])
        if operand is None or operand == 0 or clip is None or clip.op_type != "Clip":
            return None
        divisor = operand if node.op_type == "Div" else 1 / operand
        inner = _clipped_affine(graph, clip, top=divisor)
        if inner is None or inner[1] != 1.0:
            return None
        x, _, b = inner
        return x, 1 / divisor, b / divisor
    if node.op_type == "Clip":
        return _clipped_affine(graph, node, top=1.0)
    return None


def _clipped_affine(graph: "_Graph", clip: onnx.NodeProto, top: float) -> tuple[str, float, float] | None:
    """(x, a, b) when `clip` is Clip(a * x + b, 0, top) (a = 1 when there is no Mul)."""
    bounds = [graph.constant(name) if name else None for name in list(clip.input[1:3]) + [""] * (3 - len(clip.input))]
    if len(bounds) < 2 or bounds[0] != 0.0 or bounds[1] is None or not np.isclose(bounds[1], top, rtol=1e-6):
        return None
    add = graph.producer(clip.input[0])
    if add is None or add.op_type != "Add":
        return None
    for term, offset in (add.input, add.input[::-1]):
        b = graph.constant(offset)
        if b is None or graph.constant(term) is not None:
            continue
        scaled = graph.producer(term)
        if scaled is not None and scaled.op_type == "Mul":
            for x, factor in (scaled.input, scaled.input[::-1]):
                a = graph.constant(factor)
                if a is not None and graph.constant(x) is None:
                    return x, a, b
        return term, 1.0, b
    return None


class _Graph:
    """Producers and scalar constants of an ONNX graph, and node replacement in place."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.inits = {init.name: init for init in self.graph.initializer}
        self.producers = {out: node for node in self.graph.node for out in node.output}
        self.alive = list(self.graph.node)

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self.producers.get(name)

    def constant(self, name: str) -> float | None:
        """A scalar (or one-element) initializer's value."""
        init = self.inits.get(name)
        if init is None:
            return None
        value = numpy_helper.to_array(init)
        return float(value.reshape(-1)[0]) if value.size == 1 else None

    def replace(self, node: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
        """`new` computes `node`'s output in its place; the nodes only `node` read become unused."""
        index = list(self.graph.node).index(node)
        self.graph.node.remove(node)
        for offset, made in enumerate(new):
            self.graph.node.insert(index + offset, made)
            for out in made.output:
                self.producers[out] = made
        self.alive = list(self.graph.node)

    def drop_unused(self) -> None:
        """Removes nodes whose outputs nothing reads (the replaced spellings' inner nodes), last first."""
        outputs = {o.name for o in self.graph.output}
        while True:
            used = {name for node in self.graph.node for name in node.input} | outputs
            dead = [node for node in self.graph.node if not any(out in used for out in node.output)]
            if not dead:
                break
            for node in dead:
                self.graph.node.remove(node)
        used = {name for node in self.graph.node for name in node.input} | outputs
        kept = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
