"""scripts/compare_vela.py: our performance model against Arm's Vela on the same networks and presets.

Fast: the committed results file and the table README embeds agree (tests/test_figures.py checks the
README block). Slow: Vela and our compiler rerun on two networks reproduce the committed rows, and both
compilers read the same computation (every conv/dense layer has Vela's MAC count)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
RESULTS = REPO / "results" / "vela_comparison.json"


def test_committed_table_is_rendered_from_the_committed_rows():
    import compare_vela

    results = json.loads(RESULTS.read_text())["results"]
    assert (REPO / "results" / "vela_comparison.md").read_text() == compare_vela.table(results)
    assert len({r["network"] for r in results}) >= 5 and {r["target"] for r in results} == {
        f"npu/{name}" for name in compare_vela.TWINS
    }


@pytest.mark.slow
@pytest.mark.parametrize("network", ["dense_heavy", "resnet"])
def test_rerun_reproduces_the_committed_rows(network, tmp_path):
    pytest.importorskip("ethosu.vela", reason="ethos-u-vela is not installed (pip install 'tvm_npu[vela]')")
    import compare_vela
    from tvm_npu.target import PRESETS

    committed = {(r["network"], r["target"]): r for r in json.loads(RESULTS.read_text())["results"]}
    for twin in compare_vela.TWINS:
        row = compare_vela.compare(network, PRESETS[twin], tmp_path)
        weighted = [r for r in row["layers"] if r["op"] in compare_vela.WEIGHTED]
        assert weighted and all(r["our_macs"] == r["macs"] for r in weighted) and not row["misnamed_layers"], network
        assert row["matched_layers"] >= len(weighted)
        assert json.loads(json.dumps(row)) == committed[(network, f"npu/{twin}")]
