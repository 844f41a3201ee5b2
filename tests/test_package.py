import json
import tarfile

import numpy as np
import onnx
import pytest

import tvm_npu
from tvm_npu import PRESETS
from tvm_npu.build import build
from tvm_npu.frontend import import_onnx, load_onnx
from tvm_npu.package import METADATA_NAME, MEMBERS, write_package


def test_package_holds_library_metadata_and_model(conv_package):
    with tarfile.open(conv_package) as tar:
        assert sorted(tar.getnames()) == sorted(MEMBERS)
        metadata = json.load(tar.extractfile(METADATA_NAME))
    assert metadata["inputs"] == [{"name": "x", "shape": [1, 4, 8, 8], "dtype": "float32"}]
    assert metadata["outputs"] == [{"name": "y", "shape": [1, 8, 8, 8], "dtype": "float32"}]
    assert metadata["npu_config"]["name"] == "micro" and metadata["npu_config"]["sram_kib"] == 384
    assert metadata["target"]["model"] == "npu-micro" and metadata["target"]["keys"] == ["npu", "cpu"]
    assert metadata["versions"]["tvm"] == "0.27.0.post1"


def test_package_runs_and_matches_numpy(conv_package, conv_model):
    weight = onnx.numpy_helper.to_array(onnx.load(conv_model).graph.initializer[0])
    x = np.random.default_rng(3).standard_normal((1, 4, 8, 8)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # 1,4,8,8,3,3
    expected = np.maximum(np.einsum("nchwij,kcij->nkhw", windows, weight), 0)
    got = tvm_npu.load(conv_package).run({"x": x})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_interrupted_write_leaves_previous_package_intact(conv_package, conv_model, tmp_path, monkeypatch):
    """An exception while the package is being written (e.g. Ctrl-C) keeps the old file whole."""
    out = tmp_path / "model.tar"
    out.write_bytes(conv_package.read_bytes())
    imported = import_onnx(load_onnx(conv_model))
    executable = build(imported.mod, PRESETS["micro"])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_package(out, executable, tvm_npu.load(conv_package).metadata, imported.onnx_bytes)
    assert out.read_bytes() == conv_package.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.tar"]
