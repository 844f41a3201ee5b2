import numpy as np
import onnx
import pytest

import tvm_npu
from tvm_npu import NpuError
from tvm_npu.frontend import format_input_shapes, import_onnx, load_onnx, parse_input_shapes

from conftest import make_conv_model


def test_parse_input_shapes_tvmc_syntax():
    shapes = parse_input_shapes("gpu_0/data_0:[1,3,224,224] mask:[1, 10]")
    assert shapes == {"gpu_0/data_0": (1, 3, 224, 224), "mask": (1, 10)}
    assert parse_input_shapes(format_input_shapes(shapes)) == shapes


@pytest.mark.parametrize("text", ["x", "x:[1,x]", "x:[1,-3]", "x:[0,3]", "x:[]", "x:1,3", "x:[1.5]", "x:[1] junk"])
def test_parse_input_shapes_rejects_garbage(text):
    with pytest.raises(NpuError, match="input-shapes"):
        parse_input_shapes(text)


def test_import_gives_static_interface(conv_model):
    imported = import_onnx(load_onnx(conv_model))
    assert [(s.name, s.shape, s.dtype) for s in imported.inputs] == [("x", (1, 4, 8, 8), "float32")]
    assert [(s.name, s.shape, s.dtype) for s in imported.outputs] == [("y", (1, 8, 8, 8), "float32")]


def test_input_shapes_fix_dynamic_dimensions(tmp_path):
    model = make_conv_model(tmp_path / "dyn.onnx", batch="N")
    result = tvm_npu.compile(
        model, output=tmp_path / "dyn.tar", target="npu/micro", input_shapes={"x": (2, 4, 8, 8)}, quantize_model=False
    )
    assert result.metadata.inputs[0].shape == (2, 4, 8, 8)
    assert result.metadata.outputs[0].shape == (2, 8, 8, 8)
    compiled = tvm_npu.load(result.package_path)
    x = np.random.default_rng(1).random((2, 4, 8, 8), dtype=np.float32)
    assert compiled.run({"x": x})["y"].shape == (2, 8, 8, 8)


def test_input_shapes_must_match_fixed_dimensions(conv_model):
    with pytest.raises(NpuError, match="declares \\[1,4,8,8\\]"):
        import_onnx(load_onnx(conv_model, {"x": (1, 3, 8, 8)}))
    with pytest.raises(NpuError, match="unknown input\\(s\\) y"):
        import_onnx(load_onnx(conv_model, {"y": (1, 3, 8, 8)}))


def test_external_data_beside_the_model_is_inlined(tmp_path, conv_model):
    model = onnx.load(conv_model)
    onnx.save(
        model,
        tmp_path / "ext.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.data",
        size_threshold=0,
    )
    imported = import_onnx(load_onnx(tmp_path / "ext.onnx"))
    embedded = onnx.load_from_string(imported.onnx_bytes)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in embedded.graph.initializer)
