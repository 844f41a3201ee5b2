"""Every figure table README.md and tuning_logs/README.md show is the results file its script wrote,
verbatim: a block between `<!-- results/NAME.md -->` and `<!-- /results/NAME.md -->` must equal
results/NAME.md, so a figure edited by hand (or a results file regenerated without updating the
README) fails here. scripts/bench.py's Performance section is checked by tests/test_bench.py."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "tuning_logs/README.md")
# results file -> the script that writes it
FIGURES = {
    "results/sparse.md": "scripts/bench_sparse.py",
    "results/cascading.md": "scripts/model_figures.py",
    "results/cascade_tuning.md": "scripts/model_figures.py",
    "results/resnet50_stem.md": "scripts/model_figures.py",
    "results/pruned_resnet50.md": "scripts/model_figures.py",
    "results/tuned_models.md": "scripts/tuned_models.py",
    "results/buckets.md": "scripts/bench_buckets.py",
    "results/energy.md": "scripts/model_figures.py",
    "results/vela_comparison.md": "scripts/compare_vela.py",
}
BLOCK = re.compile(r"<!-- (results/[\w./-]+\.md) -->\n(.*?)<!-- /\1 -->", re.DOTALL)


def _blocks() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for name, body in BLOCK.findall((REPO / doc).read_text()):
            found.setdefault(name, []).append(body)
    return found


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_readme_figure_is_its_results_file_verbatim(name):
    blocks = _blocks()
    assert name in blocks, f"no <!-- {name} --> block in {' or '.join(DOCS)}"
    text = (REPO / name).read_text()
    for body in blocks[name]:
        assert body == text, f"a README block differs from {name}: rerun {FIGURES[name]} and copy its output"
    assert name.rsplit("/", 1)[-1] in (REPO / FIGURES[name]).read_text(), f"{FIGURES[name]} does not write {name}"


def test_every_results_block_names_a_known_figure():
    assert set(_blocks()) <= set(FIGURES), set(_blocks()) - set(FIGURES)
