"""A seeded mutation fuzzer: small valid ONNX models, mutated, compiled by `tvmc` for a bounded time.

Every mutant must end in a clean error (exit 2, one line) or in a package whose outputs match
ONNX Runtime on the same mutant (or the exact reference, where ONNX Runtime's int8 products may
saturate). Compiles and runs happen in their own processes (`forked_tvmc`), so a crash inside TVM
shows up as a signal, and a hang as a timeout, instead of
taking pytest down; each failing mutant is saved for reproduction and named in the failure.
Mutant `i` of base `b` depends only on (SEED, b, i): a failure reproduces with
TVM_NPU_FUZZ_SECONDS long enough to reach it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto

from tvm_npu.errors import NpuError
from tvm_npu.package import read_package
from tvm_npu.validate import exact_reference_outputs, int8_path, saturation_risks

from conftest import make_conv_model
from test_bad_inputs import corpus_module
from test_int8_end_to_end import make_small_cnn

SEED = 2026
FAST_SECONDS = float(os.environ.get("TVM_NPU_FUZZ_SECONDS", 30))  # raise it to explore
SLOW_SECONDS = 600
SLOW_FIRST_INDEX = 1_000_000  # the slow run explores mutants the fast run never reaches
CASE_TIMEOUT = 120
ATTRIBUTE_VALUES = (-1, 0, 1, 2, 3, 5, (1 << 31) - 1)
DIM_VALUES = (-1, 0, 1, 2, 3, 7, 64)  # small: every compiled mutant is also run
OP_SWAPS = (
    "Relu",
    "Sigmoid",
    "Add",
    "Mul",
    "MatMul",
    "Conv",
    "MaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Softmax",
    "Identity",
    "Concat",
    "QuantizeLinear",
    "DequantizeLinear",
    "Gemm",
    "GlobalAveragePool",
)
ELEM_TYPES = (
    TensorProto.DOUBLE,
    TensorProto.INT8,
    TensorProto.INT64,
    TensorProto.BOOL,
    TensorProto.FLOAT16,
    TensorProto.STRING,
    TensorProto.UNDEFINED,
)


def _qdq_conv(path: Path) -> Path:
    """The corpus's QDQ conv (no NNCF needed): exercises partition, plan and the NPU kernels."""
    onnx.save(corpus_module().qdq_conv(np.random.default_rng(0)), path)
    return path


BASES = {"conv": make_conv_model, "small_cnn": make_small_cnn, "qdq_conv": _qdq_conv}


# --- mutations: each edits the ModelProto in place and says what it did ----------------------------


def _set_attribute(model, rng):
    node = _pick(rng, model.graph.node)
    ints = [a for a in node.attribute if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)]
    if not ints:
        return f"{node.op_type}: no int attribute"
    attr = _pick(rng, ints)
    value = int(rng.choice(ATTRIBUTE_VALUES))
    if attr.type == onnx.AttributeProto.INT:
        attr.i = value
    elif attr.ints:
        attr.ints[int(rng.integers(len(attr.ints)))] = value
    return f"{node.op_type}.{attr.name} <- {value}"


def _drop_attribute(model, rng):
    node = _pick(rng, model.graph.node)
    if not node.attribute:
        return f"{node.op_type}: no attribute"
    index = int(rng.integers(len(node.attribute)))
    name = node.attribute[index].name
    del node.attribute[index]
    return f"{node.op_type}: drop {name}"


def _set_input_dim(model, rng):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    index, value = int(rng.integers(len(dims))), int(rng.choice(DIM_VALUES))
    dims[index].dim_value = value
    return f"input dim {index} <- {value}"


def _set_initializer_dims(model, rng):
    init = _pick(rng, model.graph.initializer)
    if not init.dims:
        return f"{init.name}: scalar"
    index, value = int(rng.integers(len(init.dims))), int(rng.choice(DIM_VALUES))
    init.dims[index] = value
    return f"{init.name}.dims[{index}] <- {value}"


def _set_initializer_type(model, rng):
    init = _pick(rng, model.graph.initializer)
    init.data_type = int(rng.choice(ELEM_TYPES))
    return f"{init.name} data_type <- {init.data_type}"


def _set_input_type(model, rng):
    value = int(rng.choice(ELEM_TYPES))
    model.graph.input[0].type.tensor_type.elem_type = value
    return f"input elem_type <- {value}"


def _swap_op(model, rng):
    node = _pick(rng, model.graph.node)
    old, node.op_type = node.op_type, str(rng.choice(OP_SWAPS))
    return f"{old} -> {node.op_type}"


def _rewire(model, rng):
    node = _pick(rng, model.graph.node)
    if not node.input:
        return f"{node.op_type}: no input"
    names = [i.name for i in model.graph.input] + [i.name for i in model.graph.initializer]
    names += [o for n in model.graph.node for o in n.output] + ["nowhere"]
    index = int(rng.integers(len(node.input)))
    node.input[index] = str(rng.choice(names))
    return f"{node.op_type}.input[{index}] <- {node.input[index]}"


def _delete_node(model, rng):
    index = int(rng.integers(len(model.graph.node)))
    op = model.graph.node[index].op_type
    del model.graph.node[index]
    return f"delete {op}"


def _swap_nodes(model, rng):
    nodes = model.graph.node
    i, j = (int(k) for k in rng.integers(len(nodes), size=2))
    a, b = onnx.NodeProto(), onnx.NodeProto()
    a.CopyFrom(nodes[i])
    b.CopyFrom(nodes[j])
    nodes[i].CopyFrom(b)
    nodes[j].CopyFrom(a)
    return f"swap nodes {i} and {j}"


def _set_opset(model, rng):
    model.opset_import[0].version = int(rng.integers(1, 30))
    return f"opset <- {model.opset_import[0].version}"


MUTATIONS = (
    _set_attribute,
    _drop_attribute,
    _set_input_dim,
    _set_initializer_dims,
    _set_initializer_type,
    _set_input_type,
    _swap_op,
    _rewire,
    _delete_node,
    _swap_nodes,
    _set_opset,
)


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def mutate(base: bytes, rng: np.random.Generator) -> tuple[bytes, list[str]]:
    """1-3 structural mutations, then (one time in eight) a few flipped bytes."""
    model = onnx.load_from_string(base)
    done = []
    for _ in range(int(rng.integers(1, 4))):
        if model.graph.node:  # deletions can empty the graph: nothing left to mutate
            done.append(str(rng.choice(MUTATIONS)(model, rng)))
    data = bytearray(model.SerializeToString())
    if rng.random() < 0.125:
        for position in rng.integers(len(data), size=int(rng.integers(1, 5))):
            data[position] = int(rng.integers(256))
        done.append("flipped bytes")
    return bytes(data), done


# --- the oracle ------------------------------------------------------------------------------------


def _reference(model_path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """The exact reference (onnx's evaluator, int8 products exact) for a mutant whose int8 products a CPU
    without VNNI may saturate, on any CPU; else ONNX Runtime's outputs, else the exact reference's (ONNX
    Runtime refuses opsets below 7); None when nothing trustworthy runs it."""
    model = onnx.load(model_path)
    try:
        risky = bool(saturation_risks(model))
    except Exception:  # noqa: BLE001 - a mutant's weights may be any shape; then trust no int8 runtime
        risky = True
    runtimes = ["exact"] + (["ort"] if not risky or int8_path("ONNX Runtime").exact else [])
    for runtime in runtimes if risky else reversed(runtimes):
        try:
            if runtime == "exact":
                (outputs,) = exact_reference_outputs(model.SerializeToString(), [inputs])
                return [np.asarray(outputs[o.name]) for o in model.graph.output]
            session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
            return [np.asarray(v) for v in session.run(None, inputs)]
        except Exception:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph kinds, the evaluator any
            continue
    return None


def judge(forked_tvmc, model_path: Path, folder: Path) -> str:
    """'error' (clean refusal), 'ok' (compiled and correct), 'unchecked' (compiled, no reference), or what went wrong."""
    package = folder / "mutant.tar"
    try:
        result = forked_tvmc("compile", "--no-quantize", "--target", "npu/micro", model_path, "-o", package, timeout=CASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return "compile hung"
    if result.returncode < 0:
        return f"compile killed by signal {-result.returncode}"
    if result.returncode != 0:
        lines = result.stderr.splitlines()
        if result.returncode == 2 and len(lines) == 1 and lines[0].startswith("tvmc: error: "):
            return "error"
        return f"compile exit {result.returncode}: {result.stderr.strip()[-300:]}"
    specs = onnx.load(model_path).graph
    try:
        metadata = read_package(package, load_library=False).metadata
    except NpuError as err:
        return f"compiled an unreadable package: {err}"
    rng = np.random.default_rng(0)
    inputs = {s.name: rng.uniform(-1, 1, s.shape).astype(s.dtype) for s in metadata.inputs}
    np.savez(folder / "inputs.npz", **inputs)
    try:
        run = forked_tvmc("run", package, "--inputs", folder / "inputs.npz", "-o", folder / "outputs.npz", timeout=CASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return "run hung"
    if run.returncode != 0:
        return f"run exit {run.returncode}: {run.stderr.strip()[-300:]}"
    expected = _reference(model_path, inputs)
    if expected is None:
        return "unchecked"  # compiled, but no reference runs this (valid) model: counted, not judged
    with np.load(folder / "outputs.npz") as archive:
        got = [archive[o.name] for o in specs.output]
    for ours, ref in zip(got, expected, strict=True):
        ref = ref.astype(ours.dtype) if ref.shape == ours.shape else ref
        if ours.shape != ref.shape or not np.allclose(ours, ref, rtol=1e-3, atol=0.05 * (np.abs(ref).max() + 1e-6)):
            return f"wrong output: max |diff| {np.abs(ours - ref).max() if ours.shape == ref.shape else 'shape'}"
    return "ok"


def fuzz(forked_tvmc, folder: Path, seconds: float, first_index: int) -> tuple[Counter, list[str]]:
    bases = {name: make(folder / f"{name}.onnx").read_bytes() for name, make in BASES.items()}
    outcomes, failures = Counter(), []
    deadline = time.monotonic() + seconds
    index = first_index
    while time.monotonic() < deadline:
        for name, base in bases.items():
            data, mutations = mutate(base, np.random.default_rng([SEED, list(BASES).index(name), index]))
            path = folder / f"{name}_{index}.onnx"
            path.write_bytes(data)
            verdict = judge(forked_tvmc, path, folder)
            print(f"{path.name}: {'; '.join(mutations)}: {verdict[:200]}", flush=True)
            outcomes[verdict if verdict in ("ok", "error", "unchecked") else "failure"] += 1
            if verdict in ("ok", "error", "unchecked"):
                path.unlink()
            else:
                failures.append(f"{path.name} ({'; '.join(mutations)}): {verdict}")
            for leftover in ("mutant.tar", "inputs.npz", "outputs.npz"):
                (folder / leftover).unlink(missing_ok=True)
        index += 1
    return outcomes, failures


def _check(forked_tvmc, tmp_path, seconds, first_index):
    outcomes, failures = fuzz(forked_tvmc, tmp_path, seconds, first_index)
    print(f"fuzz: {sum(outcomes.values())} mutants in {seconds} s: {dict(outcomes)}")
    assert outcomes["ok"] + outcomes["error"] > 0
    assert failures == [], "\n".join(failures)


def test_mutated_models_compile_correctly_or_fail_cleanly(forked_tvmc, tmp_path):
    _check(forked_tvmc, tmp_path, FAST_SECONDS, first_index=0)


@pytest.mark.slow
def test_mutated_models_long_run(forked_tvmc, tmp_path):
    _check(forked_tvmc, tmp_path, SLOW_SECONDS, first_index=SLOW_FIRST_INDEX)
