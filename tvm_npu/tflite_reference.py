"""`tvmc validate`'s references for a package compiled from a TFLite file: TFLite's own interpreter on the
original flatbuffer (ai-edge-litert, `pip install "tvm_npu[validate]"`), else OpenVINO reading that .tflite file.

Both run the user's file itself, not the QDQ ONNX it was converted to, so a conversion mistake shows up as a
difference. The interpreter runs its reference kernels (`BUILTIN_REF`): TFLite's integer arithmetic as the
quantization spec defines it, without XNNPACK's delegate or optimized kernels.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import first_line

INTERPRETER = "TFLite interpreter"


class TFLiteReferenceFailure(Exception):
    """One line: why this reference could not run the model."""


def litert_version() -> str | None:
    try:
        return importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        return None


def interpreter_outputs(tflite: bytes, samples: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The outputs of TFLite's reference kernels, by tensor name, for each sample (inputs by tensor name)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        interpreter = Interpreter(model_content=tflite, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        interpreter.allocate_tensors()
        inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
        outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        results = []
        for sample in samples:
            for name, value in sample.items():
                interpreter.set_tensor(inputs[name], np.asarray(value))
            interpreter.invoke()
            results.append({name: interpreter.get_tensor(index).copy() for name, index in outputs.items()})
        return results
    except Exception as err:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError with its message
        raise TFLiteReferenceFailure(f"TFLite's interpreter could not run the model: {first_line(err)}") from None


def openvino_outputs(
    tflite: bytes, samples: Sequence[Mapping[str, np.ndarray]], device: str, properties: dict
) -> list[dict[str, np.ndarray]]:
    """OpenVINO's TFLite frontend on the flatbuffer (it reads TFLite from a file only)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="tvm_npu_tflite_") as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(tflite)
        try:
            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(path)), device, properties)
            results = [compiled(dict(sample)) for sample in samples]
        except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError and friends
            raise TFLiteReferenceFailure(f"OpenVINO could not run the .tflite file on {device}: {first_line(err)}") from None
    return [{name: result[port] for port in compiled.outputs for name in port.get_names()} for result in results]
