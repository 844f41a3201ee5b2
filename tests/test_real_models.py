"""Real trained models bundled in PyPI packages (scripts/real_models.py) compile at their fixed input shapes;
their share of conv/gemm MACs on the NPU is reported (the target is 95 %; the README table, written by
scripts/real_model_table.py, says where each model stands), and the `--save-quantized` QDQ model reloads into the
same partition. README's table is the committed results file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import tvm_npu
from tvm_npu.frontend import parse_input_shapes
from tvm_npu.pipeline import partitioned
from tvm_npu.report import mac_share

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import real_model_table  # noqa: E402 - the scripts folder is not a package
from real_models import MODELS, fetch  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_real_model_compiles_and_reports_its_npu_mac_share(name, tmp_path, record_property):
    model = MODELS[name]
    shapes = parse_input_shapes(model.input_shapes)
    result = tvm_npu.compile(
        fetch(name), output=tmp_path / f"{name}.tar", input_shapes=shapes, save_quantized=tmp_path / "qdq.onnx"
    )
    assert result.package_path.is_file()
    # the saved QDQ model reloads as a QDQ model and partitions exactly as the compile did
    reloaded = partitioned(tmp_path / "qdq.onnx", shapes)
    assert [r["runs_on"] for r in reloaded.operators] == [r["runs_on"] for r in result.metadata.extra["operators"]]
    assert all(all(d > 0 for d in spec.shape) for spec in result.metadata.outputs)
    share = mac_share(result.metadata)
    assert share["total_macs"] > 0
    record_property("npu_mac_share", share["npu_share"])
    print(f"{name}: {100 * share['npu_share']:.1f} % of {share['total_macs'] / 1e6:.1f} M conv/gemm MACs on the NPU")


def test_readme_real_model_table_is_the_committed_results():
    results = json.loads((REPO / "results" / "real_models.json").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme.split(real_model_table.README_BEGIN, 1)[1].split(real_model_table.README_END, 1)[0]
    assert section == "\n" + real_model_table.markdown(results)
    assert (REPO / "results" / "real_models.md").read_text() == real_model_table.markdown(results)
    assert set(results["models"]) <= set(MODELS)
    # a model the last run did not measure is named in the README's text beside the table, never left out silently
    intro = readme.split(real_model_table.README_BEGIN, 1)[0].rsplit("### Real trained models", 1)[1]
    for name in sorted(set(MODELS) - set(results["models"])):
        assert f"{name}'s compile did not finish" in intro, name
