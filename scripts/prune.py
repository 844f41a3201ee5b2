"""Magnitude-prune the Conv / Gemm / MatMul weights of an ONNX model to a target sparsity (for CSR experiments).

Shipped models are dense; this zeroes the smallest-magnitude weights, either with one threshold
over all pruned layers (--scope global) or to the same fraction in every layer (--scope layer).
Pruning without fine-tuning costs accuracy (a lot at high sparsity): the output is for measuring
weight bytes and speed, not a model to deploy. Zeroed FP32 weights stay exact zeros after the
symmetric INT8 quantization, so `tvmc compile --sparse` sees exactly this sparsity.
"""

import argparse
import pathlib
import sys

import numpy as np
import onnx
from onnx import numpy_helper

from tvm_npu.atomic import atomic_output
from tvm_npu.errors import EXIT_BAD_INPUT, EXIT_OK, NpuError, first_line
from tvm_npu.frontend import read_onnx

WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}


def prunable(model: onnx.ModelProto) -> list[str]:
    """Float initializers used as a Conv / Gemm / MatMul weight, in graph order."""
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    names = []
    for node in model.graph.node:
        index = WEIGHT_INPUT.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in floats:
            if node.input[index] not in names:
                names.append(node.input[index])
    return names


def prune(model: onnx.ModelProto, sparsity: float, scope: str = "global") -> dict[str, float]:
    """Zeroes weights in place; returns the achieved sparsity per pruned initializer."""
    if not 0.0 <= sparsity <= 1.0:
        raise NpuError(f"sparsity {sparsity} is outside [0, 1]; pass a fraction such as 0.9")
    names = prunable(model)
    if not names:
        raise NpuError("the model has no float Conv/Gemm/MatMul weight initializers to prune")
    tensors = {t.name: t for t in model.graph.initializer}
    weights = {name: numpy_helper.to_array(tensors[name]) for name in names}
    if scope == "global":
        magnitudes = np.concatenate([np.abs(w).ravel() for w in weights.values()])
        thresholds = dict.fromkeys(names, _threshold(magnitudes, sparsity))
    else:
        thresholds = {name: _threshold(np.abs(w).ravel(), sparsity) for name, w in weights.items()}
    achieved = {}
    for name, w in weights.items():
        pruned = np.where(np.abs(w) <= thresholds[name], 0, w).astype(w.dtype)
        tensors[name].CopyFrom(numpy_helper.from_array(pruned, name))
        achieved[name] = float(np.mean(pruned == 0))
    return achieved


def _threshold(magnitudes: np.ndarray, sparsity: float) -> float:
    """The magnitude at or below which `sparsity` of the values fall (-1: prune nothing)."""
    count = int(round(sparsity * magnitudes.size))
    return -1.0 if count == 0 else float(np.partition(magnitudes, count - 1)[count - 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", metavar="IN", help="FP32 .onnx model with weight initializers")
    parser.add_argument("output", metavar="OUT", help="where to write the pruned model")
    parser.add_argument("--sparsity", type=float, required=True, help="fraction of weights to zero, e.g. 0.9")
    parser.add_argument(
        "--scope",
        choices=("global", "layer"),
        default="global",
        help="one magnitude threshold for all layers (global) or the same fraction per layer",
    )
    parser.add_argument("--verbose", action="store_true", help="print the sparsity of every pruned weight")
    args = parser.parse_args(argv)
    try:
        model = read_onnx(pathlib.Path(args.input))
        achieved = prune(model, args.sparsity, args.scope)
        with atomic_output(args.output) as stream:
            stream.write(model.SerializeToString())
    except NpuError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"error: cannot write {args.output}: {err.strerror or first_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.verbose:
        for name, value in achieved.items():
            print(f"{name:<40} {100 * value:6.2f} % zeros")
    sizes = {t.name: np.prod(t.dims) for t in model.graph.initializer if t.name in achieved}
    total = sum(sizes[n] * achieved[n] for n in achieved) / sum(sizes.values())
    print(f"wrote {args.output}: {len(achieved)} weights pruned, {100 * total:.2f} % zeros overall ({args.scope})")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
