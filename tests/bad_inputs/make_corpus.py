"""Writes the bad-input corpus: every kind of file `tvmc` must refuse with one clear line.

    python tests/bad_inputs/make_corpus.py OUT_DIR [--package valid.tar]

Deterministic (seeded), made from scratch each time instead of committed binaries. Model files
go to OUT_DIR/models/ (so that `../secret.bin` is a real file outside the model's folder),
input files to OUT_DIR/data/, packages derived from a valid package to OUT_DIR/packages/.
Without --package, a valid package is compiled first. README.md beside this script lists the
cases; tests/test_bad_inputs.py runs every one through the real CLI.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import make_tflite_models  # noqa: E402 - the scripts folder is not a package
from conftest import make_conv_model  # noqa: E402 - the tests' one tiny model, shared with them

SEED = 10


def make_corpus(folder: Path, package: Path | None = None) -> Path:
    """Writes every corpus file under `folder` and returns it; `package` is a valid package to tamper with."""
    models, data, packages = folder / "models", folder / "data", folder / "packages"
    for sub in (models, data, packages):
        sub.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    valid = make_conv_model(models / "valid.onnx")
    if package is None:
        import tvm_npu

        package = tvm_npu.compile(valid, output=folder / "valid.tar", target="npu/micro", quantize_model=False).package_path
    _write_models(models, valid, rng)
    _write_data(data, rng)
    _write_configs(data)
    _write_tuning_logs(data, rng)
    _write_packages(packages, Path(package), rng)
    return folder


# --- models --------------------------------------------------------------------------------------


def _conv(opset: int = 13, **edits) -> onnx.ModelProto:
    """The valid model as a ModelProto: x[1,4,8,8] -> Conv(w[8,4,3,3]) -> Relu -> y."""
    weight = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    nodes = edits.get("nodes") or [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["y"]),
    ]
    x = edits.get("x") or helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, edits.get("y_shape", [1, 8, 8, 8]))
    graph = helper.make_graph(
        nodes,
        "corpus",
        [x, *edits.get("extra_inputs", [])],
        [y],
        edits.get("initializers", [numpy_helper.from_array(weight, "w")]),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _write_models(models: Path, valid: Path, rng: np.random.Generator) -> None:
    valid_bytes = valid.read_bytes()
    (models / "empty.onnx").write_bytes(b"")
    (models / "random.onnx").write_bytes(rng.bytes(4096))
    (models / "truncated.onnx").write_bytes(valid_bytes[: len(valid_bytes) // 2])
    (models / "folder.onnx").mkdir(exist_ok=True)
    onnx.save(helper.make_model(helper.make_graph([], "empty", [], [])), models / "no_graph.onnx")
    _save(_conv(opset=999), models / "unknown_opset.onnx")
    _save(_conv(nodes=[helper.make_node("NoSuchOp", ["x", "w"], ["y"])]), models / "unknown_operator.onnx")
    _save(_conv(nodes=[helper.make_node("Fancy", ["x", "w"], ["y"], domain="com.example")]), models / "foreign_domain.onnx")
    # Det is a valid ONNX operator that TVM's importer does not implement.
    _save(
        _conv(
            nodes=[helper.make_node("Det", ["x"], ["y"])],
            initializers=[],
            x=helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3]),
            y_shape=[2],
        ),
        models / "unsupported_operator.onnx",
    )
    cycle = [
        helper.make_node("Add", ["x", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Identity", ["a"], ["y"]),
    ]
    _save(_conv(nodes=cycle, initializers=[], y_shape=[1, 4, 8, 8]), models / "cycle.onnx")
    lying = numpy_helper.from_array(np.zeros(10, np.float32), "w")
    lying.dims[:] = [8, 4, 3, 3]  # 288 floats declared, 10 stored
    _save(_conv(initializers=[lying]), models / "lying_initializer.onnx")
    (models.parent / "secret.bin").write_bytes(np.arange(288, dtype=np.float32).tobytes())
    for name, location in (
        ("external_outside", "../secret.bin"),
        ("external_absolute", str(models.parent / "secret.bin")),
        ("external_missing", "missing.bin"),
    ):
        _save(_with_external_weight(_conv(), location), models / f"{name}.onnx")
    make_conv_model(models / "dynamic.onnx", batch="N")
    for name, dim in (("zero_dim", 0), ("negative_dim", -3), ("minus_one_dim", -1)):
        _save(_conv(x=helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, dim, 8])), models / f"{name}.onnx")
    # A reshape target read from NonZero's output shape: it depends on the input's values, not its shape.
    _save(
        _conv(
            nodes=[
                helper.make_node("NonZero", ["x"], ["nonzero"], name="nonzero"),
                helper.make_node("Shape", ["nonzero"], ["target"], name="target_shape"),
                helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
            ],
            initializers=[],
            y_shape=["a", "b"],
        ),
        models / "data_dependent_shape.onnx",
    )
    # Squeeze's axes given at run time: TVM's importer cannot tell the output's rank.
    _save(
        _conv(
            nodes=[helper.make_node("Squeeze", ["x", "axes"], ["y"], name="squeeze")],
            initializers=[],
            extra_inputs=[helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
            y_shape=["a", "b", "c"],
        ),
        models / "rank_unknown_output.onnx",
    )
    # Weights that need more than 1 KiB of SRAM in any tiling, pre-quantized (QDQ) so no calibration runs.
    _save(qdq_conv(rng), models / "wide_qdq.onnx")
    _write_tflite_models(models, rng)


def _write_tflite_models(models: Path, rng: np.random.Generator) -> None:
    """TFLite files tvm_npu must refuse, from scripts/make_tflite_models.py's writer (its tiny network)."""
    valid = make_tflite_models.write_tflite("tiny")
    (models / "float.tflite").write_bytes(make_tflite_models.write_tflite("tiny", quantized=False))
    (models / "unsupported_operator.tflite").write_bytes(
        make_tflite_models.write_tflite("tiny", replace_ops={"ADD": "SQUARED_DIFFERENCE"})
    )
    (models / "truncated.tflite").write_bytes(valid[: len(valid) // 2])
    (models / "random.tflite").write_bytes(rng.bytes(4096))


def _with_external_weight(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    return model


def qdq_conv(rng: np.random.Generator) -> onnx.ModelProto:
    """x[1,64,8,8] -> Q/DQ -> Conv 3x3 64->64 (int8 weights) -> Q/DQ -> y."""
    weight = rng.integers(-127, 128, (64, 64, 3, 3), dtype=np.int8)
    inits = [
        numpy_helper.from_array(weight, "wq"),
        numpy_helper.from_array(np.float32(0.02), "sx"),
        numpy_helper.from_array(np.int8(0), "zx"),
        numpy_helper.from_array(np.full(64, 0.01, np.float32), "sw"),
        numpy_helper.from_array(np.zeros(64, np.int8), "zw"),
        numpy_helper.from_array(np.float32(0.05), "sy"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "sy", "zx"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "sy", "zx"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())  # onnx.save would refuse some of these on purpose-broken models


# --- inputs, calibration data, hardware descriptions ------------------------------------------------


def _write_data(data: Path, rng: np.random.Generator) -> None:
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.savez(data / "wrong_dtype.npz", x=x.astype(np.float64))
    np.savez(data / "wrong_shape.npz", x=np.zeros((1, 4, 9, 8), np.float32))
    np.savez(data / "wrong_name.npz", z=x)
    np.savez(data / "missing_array.npz")
    np.savez(data / "extra_array.npz", x=x, extra=np.zeros(3, np.float32))
    np.savez(data / "pickled.npz", x=np.array([{"code": "runs on load"}], dtype=object))
    (data / "not_npz.npz").write_bytes(rng.bytes(512))
    np.savez(data / "calibration_missing.npz", z=np.stack([x, x]))
    np.savez(data / "calibration_no_samples.npz", x=np.zeros((0, 1, 4, 8, 8), np.float32))


def _write_tuning_logs(data: Path, rng: np.random.Generator) -> None:
    (data / "tuning_random.json").write_bytes(rng.bytes(512))
    # meta_schedule's own database format: JSON, but not a tvmc tune log
    (data / "tuning_not_ours.json").write_text(json.dumps([0, [["sample_categorical", [], [0]]]]) + "\n")
    (data / "tuning_bad_record.json").write_text(
        json.dumps({"format": "tvm_npu-tuning-log/1"}) + "\n" + json.dumps({"task": "npu.conv2d"}) + "\n"
    )
    (data / "tuning_bad_cascade.json").write_text(
        json.dumps({"format": "tvm_npu-tuning-log/1"})
        + "\n"
        + json.dumps({"task": "cascade npu.conv2d {} -> npu.conv2d {}", "rows": 0, "cost": 1e-5})
        + "\n"
    )


def _write_configs(data: Path) -> None:
    (data / "config_not_json.json").write_text("{sram_kib: 512")
    (data / "config_unknown_field.json").write_text(json.dumps({"sram_size": 512}))
    (data / "config_negative_sram.json").write_text(json.dumps({"base": "micro", "sram_kib": -64}))
    (data / "config_zero_bandwidth.json").write_text(json.dumps({"dram_bytes_per_cycle": 0}))
    (data / "config_unknown_base.json").write_text(json.dumps({"base": "huge"}))


# --- packages --------------------------------------------------------------------------------------


def _write_packages(packages: Path, valid: Path, rng: np.random.Generator) -> None:
    valid_bytes = valid.read_bytes()
    (packages / "empty.tar").write_bytes(b"")
    (packages / "random.tar").write_bytes(rng.bytes(4096))
    (packages / "truncated.tar").write_bytes(valid_bytes[: len(valid_bytes) // 2])

    def rewrite(name: str, edit: Callable[[dict[str, bytes]], dict[str, bytes]], links: dict[str, str] | None = None):
        with tarfile.open(valid) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        with tarfile.open(packages / name, "w") as tar:
            for member, data in edit(members).items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for member, target in (links or {}).items():
                info = tarfile.TarInfo(member)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)

    def edit_metadata(change: Callable[[dict], None]) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
        def edit(members: dict[str, bytes]) -> dict[str, bytes]:
            metadata = json.loads(members["metadata.json"])
            change(metadata)
            return members | {"metadata.json": json.dumps(metadata).encode()}

        return edit

    # The member names a careless extractor would write outside its folder; the test checks they never appear.
    rewrite("dotdot_member.tar", lambda m: m | {"../escaped.txt": b"written outside"})
    rewrite("absolute_member.tar", lambda m: m | {str(packages.parent / "absolute_escaped.txt"): b"written outside"})
    rewrite(
        "symlink_member.tar",
        lambda m: {k: v for k, v in m.items() if k != "metadata.json"},
        links={"metadata.json": "/etc/passwd"},
    )
    rewrite("missing_library.tar", lambda m: {k: v for k, v in m.items() if k != "mod.so"})
    rewrite("tampered_library.tar", lambda m: m | {"mod.so": m["mod.so"] + b"\0"})
    rewrite("metadata_not_json.tar", lambda m: m | {"metadata.json": b"{not json"})
    rewrite("future_format.tar", edit_metadata(lambda d: d.update(format_version=99)))
    rewrite("metadata_missing_field.tar", edit_metadata(lambda d: d.pop("outputs")))
    # Metadata that lies about the library's interface while every hash still matches.
    rewrite("metadata_wrong_shape.tar", edit_metadata(lambda d: d["inputs"][0].update(shape=[1, 4, 9, 9])))
    rewrite("metadata_wrong_dtype.tar", edit_metadata(lambda d: d["inputs"][0].update(dtype="int8")))
    rewrite("metadata_huge_shape.tar", edit_metadata(lambda d: d["inputs"][0].update(shape=[1 << 20, 1 << 20, 1 << 20])))
    rewrite("metadata_negative_shape.tar", edit_metadata(lambda d: d["inputs"][0].update(shape=[1, -4, 8, 8])))
    rewrite("metadata_extra_input.tar", edit_metadata(lambda d: d["inputs"].append(dict(d["inputs"][0], name="x2"))))
    rewrite("metadata_bad_config.tar", edit_metadata(lambda d: d["npu_config"].update(sram_kib=-1)))

    # A different library whose hash the metadata was updated to: it is not a loadable library at all.
    def foreign_library(members: dict[str, bytes]) -> dict[str, bytes]:
        library = rng.bytes(2048)
        metadata = json.loads(members["metadata.json"])
        metadata["library_sha256"] = hashlib.sha256(library).hexdigest()
        return members | {"mod.so": library, "metadata.json": json.dumps(metadata).encode()}

    rewrite("foreign_library.tar", foreign_library)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--package", type=Path, help="a valid package to derive the package cases from")
    args = parser.parse_args()
    print(make_corpus(args.folder, args.package))


if __name__ == "__main__":
    main()
