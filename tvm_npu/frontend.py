"""Stages load and import: an ONNX file becomes a checked model, then a static-shaped Relax module.
An INT8 TFLite file (`model_format`) is first converted to the equivalent QDQ ONNX model (`tflite_onnx`).

Entry points: `load_onnx(path, input_shapes)` (everything that can be wrong with a user's
model file is found here, before TVM sees it, and reported as one NpuError line; the input shapes
are fixed in the model and its shape computations folded to constants, `passes.fold_shapes`) and
`import_onnx(model)`, which runs after quantization. The Relax module is not constant-folded:
folding would turn int8 weight dequantizes into float constants before partitioning.

TVM's importer names every binding `lv<n>`; to let reports name layers as the ONNX model
does, each `R.quantize` (one per QuantizeLinear, emitted in graph order) carries in its span
the ONNX node whose result it quantizes (read back by `registry.Composite.onnx_name`).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import tvm
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model, uses_external_data
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from .errors import NpuError, first_line, one_line
from .passes import run_onnx_passes
from .passes.fold_shapes import SHAPE_READERS
from .fixed_point import ARITHMETIC_ATTR, TFLITE
from .tflite_onnx import SOURCE_KEY, is_tflite, tflite_to_onnx

_NUMERIC_TYPES = {
    getattr(onnx.TensorProto, name)
    for name in ("FLOAT", "DOUBLE", "FLOAT16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")
}
_DYNAMIC_DIM = -1  # how some exporters (Paddle's) store a dimension without a fixed size
_SHAPE_ENTRY = re.compile(r"\s*(?P<name>[^\s\[\]]+?):(?P<shape>\[[^\]]*\])\s*")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the compiled package sees it."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(data["name"], tuple(data["shape"]), data["dtype"])


@dataclass
class OnnxModel:
    """The load stage's product: a checked ONNX model with a static interface."""

    model: onnx.ModelProto
    inputs: list[TensorSpec]
    name: str


@dataclass
class ImportedModel:
    """The frontend's product: the Relax module and the interface it was compiled for."""

    mod: tvm.IRModule
    onnx_model: onnx.ModelProto
    onnx_bytes: bytes  # self-contained serialization: what the package embeds for reference runs
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    name: str


def parse_input_shapes(text: str) -> dict[str, tuple]:
    """Parses tvmc's `--input-shapes "name:[1,3,224,224] other:[1,10]"` syntax. A dimension may be a set of
    sizes, `x:[1,3,48,{160,320,640}]`: shape buckets (`tvm_npu.buckets`), returned as a sorted tuple."""
    shapes: dict[str, tuple] = {}
    pos = 0
    while pos < len(text.strip()):
        match = _SHAPE_ENTRY.match(text, pos)
        if match is None:
            raise NpuError(
                f"cannot parse --input-shapes {text!r}: expected space-separated entries "
                f'like "input:[1,3,224,224] other:[1,10]" (a set of sizes for a bucketed dimension: {{160,320}})'
            )
        name, shape_text = match["name"], match["shape"]
        try:
            shape = tuple(tuple(sorted(d)) if isinstance(d, set) else d for d in ast.literal_eval(shape_text))
        except (ValueError, SyntaxError, TypeError):
            shape = ()
        if not shape or not all(_positive(d) or (isinstance(d, tuple) and d and all(map(_positive, d))) for d in shape):
            raise NpuError(
                f"invalid shape {shape_text} for input {name!r} in --input-shapes: dimensions must be positive "
                f"integers, or sets of them for shape buckets, e.g. {name}:[1,3,224,224] or {name}:[1,3,48,{{160,320}}]"
            )
        shapes[name] = shape
        pos = match.end()
    return shapes


def _positive(dim) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def format_input_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    return " ".join(f"{name}:[{','.join(map(str, shape))}]" for name, shape in shapes.items())


def load_onnx(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> OnnxModel:
    """Loads and checks an ONNX model, fixes every input shape in it and runs the ONNX rewrites
    (`passes.ONNX_PASSES`), which fold every shape computation to constants at those shapes."""
    path = Path(path)
    model = read_onnx(path)
    inputs = _resolve_inputs(model, input_shapes or {})
    _check_operators(model)
    model = _with_input_shapes(model, inputs)
    _check_shapes(model, inputs, path)
    model = run_onnx_passes(model)
    _check_shapes_folded(model, path)
    return OnnxModel(model, inputs, path.stem)


def import_onnx(loaded: OnnxModel) -> ImportedModel:
    """The Relax module of a loaded (possibly quantized) ONNX model."""
    failure = None
    # When the importer fails, TVM logs a warning on stderr as its half-built module is freed (at the end of
    # the except block): keep the user's one error line alone.
    with _native_stderr_discarded():
        try:
            mod = from_onnx(
                loaded.model,
                shape_dict={spec.name: list(spec.shape) for spec in loaded.inputs},
                dtype_dict={spec.name: spec.dtype for spec in loaded.inputs},
                keep_params_in_input=False,
            )
        except tvm.error.OpNotImplemented as err:
            failure = f"{loaded.name}: {err}; remove or replace those operators before compiling"
        except Exception as err:  # noqa: BLE001 - TVM's importer raises many kinds; the message is what matters
            failure = (
                f"{loaded.name}: TVM's ONNX importer rejected the model: {first_line(err)[:300]}; fix or re-export the model"
            )
    if failure:
        raise NpuError(failure)
    _check_no_empty_tensors(mod, loaded.name)
    outputs = _output_specs(loaded.model, mod, loaded.name)
    mod = _name_quantizations(mod, loaded.model)
    if any(p.key == SOURCE_KEY for p in loaded.model.metadata_props):  # computed as TFLite computes (fixed_point)
        mod = mod.with_attr(ARITHMETIC_ATTR, TFLITE)
    return ImportedModel(mod, loaded.model, loaded.model.SerializeToString(), loaded.inputs, outputs, loaded.name)


_FUSED_ACTIVATIONS = ("Relu", "Clip")


def _quantized_sources(model: onnx.ModelProto) -> list[str]:
    """Per QuantizeLinear node, in graph order: the node whose result it quantizes, seen through a
    fused activation (a conv's ReLU is part of the conv layer), by name or else by output tensor."""
    producer = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        source = producer.get(node.input[0])
        while source is not None and source.op_type in _FUSED_ACTIVATIONS and source.input[0] in producer:
            source = producer[source.input[0]]
        names.append(node.input[0] if source is None else source.name or source.output[0])
    return names


@relax.expr_functor.mutator
class _SpanNamer(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, names: list[str]):
        super().__init__(mod)
        self.names = iter(names)

    def visit_call_(self, call):
        call = super().visit_call_(call)
        name = next(self.names, None) if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.quantize" else None
        if name is None:
            return call
        span = tvm.ir.Span(tvm.ir.SourceName(name), 0, 0, 0, 0)
        return relax.Call(call.op, call.args, call.attrs, call.ty_args, span)


def _name_quantizations(mod: tvm.IRModule, model: onnx.ModelProto) -> tvm.IRModule:
    """Tags each R.quantize with its ONNX source (see the module doc); when the importer did not
    emit exactly one per QuantizeLinear, the order proves nothing and no call is tagged."""
    names = _quantized_sources(model)
    bindings = [b for block in mod["main"].body.blocks for b in block.bindings]
    calls = [b.value for b in bindings if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)]
    if not names or len(names) != sum(call.op.name == "relax.quantize" for call in calls):
        return mod
    namer = _SpanNamer(mod, names)
    namer.builder_.update_func(mod.get_global_var("main"), namer.visit_expr(mod["main"]))
    return namer.builder_.finalize()


@contextlib.contextmanager
def _native_stderr_discarded():
    """Sends file descriptor 2 (where TVM's C++ logging writes) to /dev/null for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


MODEL_FORMATS = ("onnx", "tflite")


def model_format(path: Path, data: bytes, requested: str | None = None) -> str:
    """ "tflite" or "onnx", as read_onnx will read the file; `requested` (tvmc's --model-format) must agree."""
    found = "tflite" if is_tflite(path, data) else "onnx"
    if requested is not None and requested != found:
        names = {"onnx": "an ONNX", "tflite": "a TFLite"}
        raise NpuError(
            f"{path} is {names[found]} model, not {names[requested][2:].strip()}; drop --model-format "
            f"{requested} or give {names[requested]} file"
        )
    return found


def read_onnx(path: Path) -> onnx.ModelProto:
    """The parsed, checked model with any external data inlined."""
    if not path.exists():
        raise NpuError(f"model file {path} does not exist; check the path")
    if not path.is_file():
        raise NpuError(f"model path {path} is not a regular file; give the .onnx or .tflite file itself")
    data = path.read_bytes()
    if not data:
        raise NpuError(f"model file {path} is empty; re-export the model")
    if model_format(path, data) == "tflite":
        model = tflite_to_onnx(data, path)
        onnx.checker.check_model(model)  # the converter's own output: a failure here is a bug, not bad input
        return model
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, RuntimeWarning, ValueError) as err:
        raise NpuError(f"{path} is not a valid ONNX model ({first_line(err)}); re-export it from your framework") from None
    if not model.graph.node:
        raise NpuError(f"{path} holds no ONNX graph (truncated or not an ONNX file); re-export the model")
    _check_opset(model, path)
    if any(uses_external_data(init) for init in model.graph.initializer):
        _load_external_data(model, path)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, UnicodeDecodeError) as err:
        raise NpuError(f"{path} is not a valid ONNX model: {one_line(err)}; re-export it") from None
    _check_initializer_sizes(model, path)
    return model


def _check_initializer_sizes(model: onnx.ModelProto, path: Path) -> None:
    """onnx's checker catches raw data too short for its shape, not too long: either way the shape lies."""
    for init in model.graph.initializer:
        if not init.HasField("raw_data") or init.data_type not in _NUMERIC_TYPES:
            continue
        needed = int(np.prod(init.dims, dtype=np.int64)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        if len(init.raw_data) != needed:
            raise NpuError(
                f"{path}: initializer {init.name!r} holds {len(init.raw_data)} bytes but its shape "
                f"{_shape_str(init.dims)} and type need {needed}; re-export the model"
            )


def _check_opset(model: onnx.ModelProto, path: Path) -> None:
    """An opset newer than the installed onnx knows has no operator definitions to check against."""
    newest = onnx.defs.onnx_opset_version()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not 1 <= opset <= newest:
        raise NpuError(
            f"{path} declares ONNX opset {opset}, but opsets 1 to {newest} are supported; "
            f"re-export it with opset {newest} or older"
        )


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    folder = path.parent.resolve()
    for init in model.graph.initializer:
        if not uses_external_data(init):
            continue
        location = {entry.key: entry.value for entry in init.external_data}.get("location", "")
        if not (folder / location).resolve().is_relative_to(folder):
            raise NpuError(
                f"{path}: initializer {init.name!r} points outside the model's folder ({location!r}); "
                "refusing to read it: keep external data files beside the model"
            )
    try:
        load_external_data_for_model(model, str(folder))
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        raise NpuError(f"{path}: cannot read its external data ({one_line(err)}); keep the data files beside the model") from None


def _resolve_inputs(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> list[TensorSpec]:
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    names = [i.name for i in graph_inputs]
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise NpuError(f"--input-shapes names unknown input(s) {', '.join(unknown)}; the model's inputs are {', '.join(names)}")
    specs = []
    for value in graph_inputs:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise NpuError(f"input {value.name!r} is not a tensor; only tensor inputs are supported")
        if tensor_type.elem_type not in _NUMERIC_TYPES:
            raise NpuError(
                f"input {value.name!r} has element type {_type_name(tensor_type.elem_type)}; "
                "re-export the model with a float, integer or bool input"
            )
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim]
        if value.name in input_shapes:
            shape = input_shapes[value.name]
            if len(shape) != len(declared) or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(declared, shape)):
                raise NpuError(
                    f"--input-shapes gives {value.name!r} shape {list(shape)} but the model declares "
                    f"{_shape_str(declared)}; give a shape of rank {len(declared)} matching its fixed dimensions"
                )
        else:
            if any(isinstance(d, int) and d <= 0 and d != _DYNAMIC_DIM for d in declared):
                raise NpuError(
                    f"input {value.name!r} declares shape {_shape_str(declared)} with a zero or negative dimension; "
                    f"re-export the model with positive dimensions or give them with --input-shapes"
                )
            if not all(isinstance(d, int) and d > 0 for d in declared):
                example = [d if isinstance(d, int) and d > 0 else 1 for d in declared]
                raise NpuError(
                    f"input {value.name!r} has dynamic shape {_shape_str(declared)}; fix it with "
                    f'--input-shapes "{value.name}:[{",".join(map(str, example))}]"'
                )
            shape = tuple(declared)
        specs.append(TensorSpec(value.name, tuple(shape), dtype))
    return specs


def _with_input_shapes(model: onnx.ModelProto, inputs: list[TensorSpec]) -> onnx.ModelProto:
    """`model` with each input's dimensions fixed as `inputs` says, and every other dimension stored as a
    negative number (exporters write -1 for "dynamic") made unknown, so that shape inference at the fixed
    shapes fills it in instead of calling it a conflict (a model already static is returned as is)."""
    shapes = {spec.name: spec.shape for spec in inputs}
    declared = {value.name: value.type.tensor_type.shape.dim for value in model.graph.input if value.name in shapes}
    annotated = [*model.graph.output, *model.graph.value_info]
    if all(
        [d.dim_value if d.HasField("dim_value") else None for d in dims] == list(shapes[name]) for name, dims in declared.items()
    ) and not any(d.HasField("dim_value") and d.dim_value < 0 for v in annotated for d in v.type.tensor_type.shape.dim):
        return model
    static = onnx.ModelProto()
    static.CopyFrom(model)
    for value in static.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name]):
                dim.Clear()
                dim.dim_value = size
    for value in [*static.graph.output, *static.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()
    return static


def _check_shapes(model: onnx.ModelProto, inputs: list[TensorSpec], path: Path) -> None:
    """ONNX's strict shape inference at the fixed input shapes: inconsistent shapes, types and attributes
    are named here, in ONNX's terms, before TVM's importer sees them."""
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, UnicodeDecodeError) as err:
        shapes = {spec.name: spec.shape for spec in inputs}
        raise NpuError(
            f"{path} is inconsistent at input shapes {format_input_shapes(shapes)}: {one_line(err)}; fix or re-export the model"
        ) from None


# Operands that give an operator's output shape: at fixed input shapes each must fold to a constant.
_SHAPE_OPERANDS = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
}


def _check_shapes_folded(model: onnx.ModelProto, path: Path) -> None:
    """After `passes.fold_shapes`, a shape still computed at run time depends on the input's values
    (NonZero, TopK's k, ...) or on a shape ONNX cannot infer. Nodes come in graph order, so the first
    one named is where the dependence starts (a Shape node before the Reshape it feeds)."""
    constants = {init.name for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        operands = (
            [node.input[0]]
            if node.op_type in SHAPE_READERS
            else [node.input[i] for i in _SHAPE_OPERANDS.get(node.op_type, ()) if i < len(node.input) and node.input[i]]
        )
        unfolded = [name for name in operands if name not in constants]
        if not unfolded:
            continue
        what = "reads the shape of" if node.op_type in SHAPE_READERS else "takes its output shape from"
        producer = producers.get(unfolded[0])
        source = f"made by {producer.op_type} node {producer.name or producer.output[0]!r}" if producer else "a graph input"
        raise NpuError(
            f"{path}: {node.op_type} node {node.name or node.output[0]!r} {what} {unfolded[0]!r} ({source}), "
            "which does not fold to a constant at the fixed input shapes; only static shapes compile: "
            "re-export the model so that shapes depend on input shapes only"
        )


def _check_no_empty_tensors(mod: tvm.IRModule, name: str) -> None:
    """TVM's own shapes, which can disagree with ONNX's inference (it truncates negative conv extents to one)."""
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            ty = binding.var.ty
            if not (isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr)):
                continue
            dims = [int(d) for d in ty.shape.values if isinstance(d, tvm.tirx.IntImm)]
            if any(d <= 0 for d in dims):
                op = getattr(binding.value, "op", None)
                raise NpuError(
                    f"{name}: {getattr(op, 'name', 'an operator').removeprefix('relax.')} would produce an empty "
                    f"tensor of shape {_shape_str(dims)}; fix the model's attributes (pads, strides, kernel) or input shapes"
                )


def _check_operators(model: onnx.ModelProto) -> None:
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise NpuError(
            f"the model uses operators outside the standard ONNX domain ({', '.join(foreign)}); "
            f"export it with standard ONNX operators only"
        )
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            params = [constants.get(name) for name in node.input[1:3] if name]
            if any(p is not None and len(p.dims) > 1 for p in params) or (
                len(params) == 2 and all(p is not None for p in params) and params[0].dims != params[1].dims
            ):
                raise NpuError(
                    f"{node.op_type} node {node.name or node.output[0]!r}: scale and zero point must be scalars or "
                    "1-D tensors of one shape; fix or re-quantize the model"
                )
        bounds = [constants.get(name) for name in node.input[1:3]] if node.op_type == "Clip" else []
        if len(bounds) == 2 and all(bounds):
            low, high = float(numpy_helper.to_array(bounds[0]).max()), float(numpy_helper.to_array(bounds[1]).min())
            if low > high:
                # ONNX then sets every value to max; TVM's clip applies min last and returns min.
                raise NpuError(
                    f"Clip node {node.name or node.output[0]!r} has min {low:g} above max {high:g}; fix its bounds (min <= max)"
                )


def _output_specs(model: onnx.ModelProto, mod: tvm.IRModule, model_name: str) -> list[TensorSpec]:
    ret = mod["main"].ret_ty
    types = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    producers = {out: node for node in model.graph.node for out in node.output}
    specs = []
    for output, ty in zip(model.graph.output, types, strict=True):
        name = output.name
        producer = producers.get(name)
        source = f" (from {producer.op_type} node {producer.name or name!r})" if producer else ""
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise NpuError(
                f"{model_name}: output {name!r}{source} has no known rank at the fixed input shapes: its rank depends "
                "on values computed at run time; re-export the model so that output shapes depend on input shapes only"
            )
        try:
            shape = tuple(int(d) for d in ty.shape)
        except TypeError:
            raise NpuError(
                f"{model_name}: output {name!r}{source} has a data-dependent shape {ty.shape}; only static shapes "
                "compile: re-export the model so that output shapes depend on input shapes only"
            ) from None
        specs.append(TensorSpec(name, shape, str(ty.dtype)))
    return specs


def _type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() else str(elem_type)


def _shape_str(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
