"""The rewrite folder's convention (CONTRIBUTING.md): one file per rewrite, each in one ordered list, each tested."""

from __future__ import annotations

from pathlib import Path

import tvm

from tvm_npu import passes

HELPERS = {"__init__", "common"}


def _rewrite_files() -> set[str]:
    return {p.stem for p in Path(passes.__file__).parent.glob("*.py")} - HELPERS


def test_every_rewrite_file_is_listed_once_and_tested():
    listed = [r.__name__ for r in passes.ONNX_PASSES + passes.QUANTIZE_PASSES] + [
        module for module in _rewrite_files() if getattr(passes, module, None) in passes.RELAX_PASSES
    ]
    assert sorted(listed) == sorted(_rewrite_files()), "a rewrite file is in none of ONNX_PASSES, QUANTIZE_PASSES, RELAX_PASSES"
    tests = Path(__file__).parent
    untested = [name for name in _rewrite_files() if not (tests / f"test_{name}.py").exists()]
    assert not untested, f"rewrites without tests/passes/test_<name>.py: {untested}"


def test_relax_rewrites_are_tvm_module_passes():
    for rewrite in passes.RELAX_PASSES:
        assert isinstance(rewrite, tvm.ir.transform.ModulePass), rewrite
