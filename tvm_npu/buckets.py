"""Shape buckets: one package, one compiled plan per input size, for a static-shape NPU.

`--input-shapes "x:[1,3,48,{160,320,640}]"` names a set of sizes for a dynamic dimension; every
combination of the sets is a bucket, compiled like a fixed shape. At run time an input goes to the
smallest bucket that holds it, is padded up to it with the package's pad value (the end of each bucketed
dimension: zero by default, the "zero after normalisation" that text recognisers are trained with), and
each output dimension that follows a bucketed input dimension is cropped to the length the model gives
at the unpadded size. Those lengths are not a fixed ratio (a stride-2 convolution rounds up, a pooling
down), so the compile records them for every size up to the largest bucket, from OpenVINO's shape
inference on the source model (`crop_tables`).

A model that wants the valid size itself (to mask attention or slice its own output) declares an extra
input, `--valid-length NAME=INPUT:DIM`: the runtime fills NAME (an integer input of one element) with
the unpadded size of INPUT's dimension DIM, unless the caller gives it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import NpuError
from .frontend import TensorSpec


def is_bucketed(shapes: Mapping[str, tuple] | None) -> bool:
    return any(isinstance(d, tuple) for shape in (shapes or {}).values() for d in shape)


def require_fixed(shapes: Mapping[str, tuple] | None, what: str) -> None:
    if is_bucketed(shapes):
        raise NpuError(f"{what} takes one fixed shape per input, not size sets {{...}}; give one size per dimension")


def expand(shapes: Mapping[str, tuple]) -> list[dict[str, tuple[int, ...]]]:
    """Every combination of the size sets, smallest first: one fixed shape dict per bucket."""
    dims = [(name, i, d if isinstance(d, tuple) else (d,)) for name, shape in shapes.items() for i, d in enumerate(shape)]
    buckets = []
    for sizes in itertools.product(*(choices for _, _, choices in dims)):
        bucket = {name: [] for name in shapes}
        for (name, _, _), size in zip(dims, sizes):
            bucket[name].append(size)
        buckets.append({name: tuple(shape) for name, shape in bucket.items()})
    return sorted(buckets, key=_volume)


def dynamic_dims(shapes: Mapping[str, tuple]) -> dict[str, list[int]]:
    """Which dimensions of which inputs are bucketed."""
    return {
        name: [i for i, d in enumerate(shape) if isinstance(d, tuple)]
        for name, shape in shapes.items()
        if any(isinstance(d, tuple) for d in shape)
    }


def parse_valid_length(text: str) -> tuple[str, str, int]:
    """`--valid-length NAME=INPUT:DIM` -> (NAME, INPUT, DIM)."""
    try:
        name, target = text.split("=", 1)
        source, dim = target.rsplit(":", 1)
        if name and source:
            return name, source, int(dim)
    except ValueError:
        pass
    raise NpuError(f"cannot parse --valid-length {text!r}; expected NAME=INPUT:DIM, e.g. x_width=x:3")


def _volume(bucket: Mapping[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(shape)) for shape in bucket.values())


def crop_tables(source_onnx: bytes, buckets: list[dict[str, tuple[int, ...]]], dynamic: dict[str, list[int]]) -> list[dict]:
    """For each output dimension that follows a bucketed input dimension: its length at every size of that
    dimension from 1 to the largest bucket (None where the model does not take that size), from OpenVINO's
    shape inference on the source model with the other dimensions at the largest bucket."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(source_onnx, b"")
    largest = buckets[-1]
    tables: dict[tuple[str, int], dict] = {}
    for name, dims in dynamic.items():
        for dim in dims:
            lengths: dict[str, list] = {}
            for size in range(1, largest[name][dim] + 1):
                shape = {n: list(s) for n, s in largest.items()}
                shape[name][dim] = size
                try:
                    model.reshape(shape)
                    outputs = {out.get_any_name(): list(out.get_partial_shape().to_shape()) for out in model.outputs}
                except RuntimeError:
                    outputs = None
                for out in model.outputs:
                    lengths.setdefault(out.get_any_name(), []).append(None if outputs is None else outputs[out.get_any_name()])
            for output, shapes in lengths.items():
                known = [s for s in shapes if s is not None]
                if not known:
                    raise NpuError(
                        f"OpenVINO cannot reshape the model's {name!r} dimension {dim} to any size up to "
                        f"{largest[name][dim]}; bucket another dimension or compile fixed shapes"
                    )
                for axis in range(len(known[0])):
                    if len({s[axis] for s in known}) == 1:
                        continue
                    if (output, axis) in tables:
                        raise NpuError(
                            f"output {output!r} dimension {axis} follows two bucketed dimensions; bucket only one of them"
                        )
                    tables[(output, axis)] = {
                        "output": output,
                        "dim": axis,
                        "input": name,
                        "input_dim": dim,
                        "lengths": [None if s is None else s[axis] for s in shapes],
                    }
    return list(tables.values())


@dataclass
class Bucketing:
    """What the runtime needs to choose, pad and crop (the metadata's `extra["bucketing"]`)."""

    shapes: list[dict[str, tuple[int, ...]]]  # per bucket, smallest first
    dynamic: dict[str, list[int]]
    crops: list[dict] = field(default_factory=list)
    pad_value: float = 0.0
    valid_length: dict[str, tuple[str, int]] = field(default_factory=dict)  # extra input -> (input, dim)

    def to_dict(self) -> dict:
        return {
            "shapes": [{n: list(s) for n, s in b.items()} for b in self.shapes],
            "dynamic": self.dynamic,
            "crops": self.crops,
            "pad_value": self.pad_value,
            "valid_length": {n: list(v) for n, v in self.valid_length.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Bucketing:
        return cls(
            [{n: tuple(s) for n, s in b.items()} for b in data["shapes"]],
            data["dynamic"],
            data["crops"],
            float(data["pad_value"]),
            {n: (v[0], int(v[1])) for n, v in data["valid_length"].items()},
        )

    def describe(self, index: int) -> str:
        return " ".join(f"{name}:[{','.join(map(str, shape))}]" for name, shape in self.shapes[index].items())

    def choose(self, inputs: Mapping[str, np.ndarray], truncate: bool = False) -> tuple[int, dict[str, np.ndarray]]:
        """The smallest bucket that holds every input, and the inputs padded to it. An input larger than every
        bucket is an error unless `truncate` crops it to the largest."""
        sizes = {name: [np.shape(inputs[name])[d] for d in dims] for name, dims in self.dynamic.items() if name in inputs}
        index = next(
            (
                i
                for i, bucket in enumerate(self.shapes)
                if all(
                    s <= bucket[name][d]
                    for name, dims in self.dynamic.items()
                    if name in sizes
                    for d, s in zip(dims, sizes[name])
                )
            ),
            None,
        )
        if index is None:
            index = len(self.shapes) - 1
            if not truncate:
                name, dim, size = next(
                    (n, d, s)
                    for n, dims in self.dynamic.items()
                    if n in sizes
                    for d, s in zip(dims, sizes[n])
                    if s > self.shapes[index][n][d]
                )
                raise NpuError(
                    f"input {name!r} has size {size} in dimension {dim}, larger than the largest bucket "
                    f"{self.describe(index)}; compile a larger bucket, or pass --truncate to crop it"
                )
        bucket = self.shapes[index]
        padded = dict(inputs)
        for name, dims in self.dynamic.items():
            if name not in inputs:
                continue
            value = np.asarray(inputs[name])[
                tuple(slice(0, bucket[name][d]) if d in dims else slice(None) for d in range(np.ndim(inputs[name])))
            ]
            widths = [(0, bucket[name][d] - value.shape[d]) if d in dims else (0, 0) for d in range(value.ndim)]
            padded[name] = np.pad(value, widths, constant_values=np.asarray(self.pad_value).astype(value.dtype))
        return index, padded

    def valid_sizes(self, inputs: Mapping[str, np.ndarray], index: int) -> dict[tuple[str, int], int]:
        bucket = self.shapes[index]
        return {
            (name, d): min(np.shape(inputs[name])[d], bucket[name][d])
            for name, dims in self.dynamic.items()
            if name in inputs
            for d in dims
        }

    def crop(self, outputs: dict[str, np.ndarray], valid: Mapping[tuple[str, int], int]) -> dict[str, np.ndarray]:
        """Each output cut to the part the unpadded input gives; a size the model does not take is an error."""
        outputs = dict(outputs)
        for table in self.crops:
            size = valid[(table["input"], table["input_dim"])]
            length = table["lengths"][size - 1]
            if length is None:
                smallest = 1 + next(i for i, n in enumerate(table["lengths"]) if n is not None)
                raise NpuError(
                    f"input {table['input']!r} has size {size} in dimension {table['input_dim']}, below "
                    f"the smallest the model takes ({smallest}); pad it to at least {smallest}"
                )
            value = outputs[table["output"]]
            outputs[table["output"]] = value[
                tuple(slice(0, length) if d == table["dim"] else slice(None) for d in range(value.ndim))
            ]
        return outputs

    def fill_specs(self, inputs: list[TensorSpec]) -> list[TensorSpec]:
        """The inputs a caller gives: the valid-length inputs are optional and left out."""
        return [spec for spec in inputs if spec.name not in self.valid_length]


def reference_model(
    source_onnx: bytes, bucket_onnx: bytes, bucket: Mapping[str, tuple[int, ...]], sizes: Mapping[str, tuple[int, ...]]
) -> bytes:
    """The bucket's quantized model at unpadded `sizes`: what the reference runs on the input as given.

    The load stage folds shape computations to constants at the bucket's shapes; loading the source model at
    both shapes tells which folded constants depend on the size, and those (only those) are replaced in the
    bucket's QDQ model, whose scales and weights stay the bucket's. A constant the two loads name differently
    is not found: the reference then fails on shapes, and validation says it could not validate."""
    import tempfile
    from pathlib import Path

    import onnx

    from .frontend import load_onnx

    with tempfile.TemporaryDirectory(prefix="tvm_npu_reference_") as folder:
        path = Path(folder) / "source.onnx"
        path.write_bytes(source_onnx)
        at_bucket, at_size = (load_onnx(path, dict(shapes)).model for shapes in (bucket, sizes))
    before = {**{i.name: i for i in at_bucket.graph.initializer}, **_constants(at_bucket)}
    after = {**{i.name: i for i in at_size.graph.initializer}, **_constants(at_size)}
    changed = {name: after[name] for name in before.keys() & after.keys() if before[name] != after[name]}
    model = onnx.load_from_string(bucket_onnx)
    for init in model.graph.initializer:
        if init.name in changed:
            init.CopyFrom(changed[init.name])
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in changed:
            node.attribute[0].t.CopyFrom(changed[node.output[0]])
            node.attribute[0].t.name = ""
    for value in model.graph.input:
        if value.name in sizes:
            for dim, size in zip(value.type.tensor_type.shape.dim, sizes[value.name]):
                dim.dim_value = size
    del model.graph.value_info[:]
    for value in model.graph.output:  # the reference infers them at the new sizes
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            dim.dim_param = f"{value.name}_{index}"
    return model.SerializeToString()


def _constants(model) -> dict:
    """Constant nodes' tensors, by output name (as initializers are by name)."""
    import onnx

    return {
        node.output[0]: onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(node.attribute[0].t), node.output[0])
        for node in model.graph.node
        if node.op_type == "Constant" and node.attribute[0].name == "value"
    }


LIFTED_MIN_BYTES = 64  # smaller constants (zero points, shifts) stay in the library: not worth a lookup


def lift_weights(mod):
    """The NPU kernels' constant operands (weights, biases, multipliers) of at least LIFTED_MIN_BYTES become
    parameters of `main` after the model's inputs, named `w_<sha256 prefix of dtype, shape and bytes>`; returns
    the module and those arrays by name. Buckets whose kernels take the same array name the same parameter,
    so a package stores it once (`weights.npz`) and the runtime uploads it once."""
    import hashlib

    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    lifted: dict[str, tuple] = {}

    def lift(arg):
        if not isinstance(arg, tvm.ir.expr.Constant):
            return arg
        array = arg.value.numpy()
        if array.nbytes < LIFTED_MIN_BYTES:
            return arg
        key = "w_" + hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()[:20]
        if key not in lifted:
            lifted[key] = (relax.Var(key, arg.ty), array)
        return lifted[key][0]

    @relax.expr_functor.mutator
    class _Lift(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != call_tir or not call.args[0].name_hint.startswith("npu_"):
                return call
            operands = relax.Tuple([lift(arg) for arg in call.args[1].fields])
            return relax.Call(call.op, [call.args[0], operands, *call.args[2:]], call.attrs, call.ty_args)

    main = mod["main"]
    body = _Lift(mod).visit_expr(main.body)
    params = list(main.params) + [var for var, _ in lifted.values()]
    mod = mod.clone()
    mod.update_func(mod.get_global_var("main"), relax.Function(params, body, main.ret_ty, main.is_pure, main.attrs))
    return mod, {key: array for key, (_, array) in lifted.items()}
