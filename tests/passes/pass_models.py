"""Tiny ONNX graphs for the rewrite tests, and running them before and after a rewrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tvm import relax

from tvm_npu.frontend import import_onnx, load_onnx
from tvm_npu.registry import op_name


def onnx_model(nodes, inputs: dict, outputs: dict, constants: dict, opset: int = 17) -> onnx.ModelProto:
    """`inputs`/`outputs`: name -> (TensorProto type, shape); `constants`: name -> array."""
    graph = helper.make_graph(
        nodes,
        "rewrite_test",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def reference(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


def imported(model: onnx.ModelProto, folder: Path) -> tvm.IRModule:
    """The Relax module TVM's importer makes of `model` (after the load stage, as the pipeline runs it)."""
    path = folder / "model.onnx"
    onnx.save(model, path)
    return import_onnx(load_onnx(path)).mod


def run(mod: tvm.IRModule, feeds: dict) -> list[np.ndarray]:
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    result = relax.VirtualMachine(executable, tvm.cpu())["main"](*(tvm.runtime.tensor(v) for v in feeds.values()))
    return [r.numpy() for r in ([result] if isinstance(result, tvm.runtime.Tensor) else result)]


def ops(mod: tvm.IRModule) -> list[str]:
    """The operator of every binding in `main` (`call_tir` for TE-lowered ones), in order."""
    return [op_name(b.value) for block in mod["main"].body.blocks for b in block.bindings if op_name(b.value)]


FLOAT, UINT8, INT8 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8
