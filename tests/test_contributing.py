"""CONTRIBUTING.md followed literally, outside the repository: a kernel scaffolded into a temporary
directory (TVM_NPU_KERNEL_PATH) runs as scaffolded, the worked example (LeakyRelu through a table)
passes the conformance harness, and a kernel with a rounding bug fails it with a message naming the
kernel, the input shape and the first differing element."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tvm_npu import conformance
from tvm_npu.registry import KERNEL_PATH_VARIABLE, kernel
from tvm_npu.validate import int8_path

REPO = Path(__file__).resolve().parent.parent


def _scaffold(name: str, like: str, folder: Path) -> Path:
    run = subprocess.run(
        [sys.executable, REPO / "scripts" / "new_kernel.py", name, "--like", like, "--dir", folder],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert (folder / f"test_{name}.py").is_file()
    return folder / f"{name}.py"


def _pytest(folder: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-m", "not slow", *args],
        env={**os.environ, KERNEL_PATH_VARIABLE: str(folder)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _worked_example() -> tuple[str, str]:
    text = (REPO / "CONTRIBUTING.md").read_text()
    match = re.search(r"<!-- worked-example: (\S+) -->\n```python\n(.*?)```\n<!-- /worked-example -->", text, re.DOTALL)
    return match[1], match[2]


def test_worked_example_kernel_is_scaffolded_implemented_and_passes_the_harness(tmp_path):
    kernel_file = _scaffold("leaky_relu", "lut", tmp_path)
    assert 'name="npu.leaky_relu"' in kernel_file.read_text()
    scaffolded = _pytest(tmp_path, str(tmp_path / "test_leaky_relu.py"), "--rootdir", str(tmp_path), cwd=tmp_path)
    lut_examples = len(conformance.examples(kernel("npu.lut"), 0))  # the copy runs lut's examples
    assert scaffolded.returncode == 0 and f" {lut_examples} passed" in scaffolded.stdout, scaffolded.stdout[-3000:]

    file_name, source = _worked_example()
    assert file_name == kernel_file.name
    kernel_file.write_text(source)
    run = _pytest(tmp_path, "tests/conformance", "-k", "leaky_relu")
    assert run.returncode == 0, run.stdout[-3000:]
    passed = re.findall(r"::(test_\w+)\[(?:\w+-)?npu\.leaky_relu-seed0-([^\]]+)\] PASSED", run.stdout)
    # Three checks on each of its two examples, the OpenVINO one on both int8 paths (VNNI where the CPU has it).
    assert len(passed) == (4 if int8_path("OpenVINO").exact else 3) * 2, run.stdout[-3000:]


BUGGY_ROUNDING = '''
def _truncating_requantize(value, mult, shift, zero_point, lo, hi, dtype):
    """The deliberate bug: rounds down where requantize_te rounds half up."""
    from tvm import tirx

    r = ((value.astype("int64") * mult) >> shift) + tirx.const(zero_point, "int64")
    return tirx.max(tirx.min(r, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(dtype)


def compute('''


def test_kernel_with_wrong_rounding_fails_naming_kernel_shape_and_first_difference(tmp_path):
    kernel_file = _scaffold("mul_floor", "elementwise", tmp_path)
    source = kernel_file.read_text()
    buggy = source.replace("\ndef compute(", BUGGY_ROUNDING, 1).replace(
        "lambda *i: requantize_te(", "lambda *i: _truncating_requantize(", 1
    )
    assert buggy.count("_truncating_requantize(") == 2
    kernel_file.write_text(buggy)
    run = _pytest(tmp_path, "tests/conformance", "-k", "mul_floor and default_schedule")
    assert run.returncode == 1, run.stdout[-3000:]
    failures = re.findall(
        r"npu\.mul_floor: example '(\w+)' \(input ((?:\d+x)*\d+ u?int8(?: \+ (?:\d+x)*\d+ u?int8)*)\), default schedule: "
        r"first differing element at index \(([\d, ]+)\): ours (-?\d+), reference (-?\d+)",
        run.stdout,
    )
    assert failures, run.stdout[-3000:]
    for _, _, _, ours, reference in failures:
        assert int(ours) == int(reference) - 1  # truncation lands one step below the rounded reference


def test_the_public_api_table_names_what_the_modules_define_and_kernels_use_nothing_else():
    """Every name CONTRIBUTING.md's API table lists exists; the built-in kernels import tvm_npu only from those modules."""
    import importlib

    text = (REPO / "CONTRIBUTING.md").read_text()
    table = text[text.index("## The public API a kernel builds on") : text.index("## Worked example")]
    rows = re.findall(r"^\| `(tvm_npu\.\w+)` \| (.*) \|$", table, re.MULTILINE)
    assert len(rows) >= 7
    for module, description in rows:
        found = importlib.import_module(module)
        for name in re.findall(r"`(\w+)`", description):
            assert hasattr(found, name) or name in ("geometry", "schedule", "lower"), (module, name)
    public = {module for module, _ in rows}
    for path in (REPO / "schedules").glob("*.py"):
        imported = set(re.findall(r"^from (tvm_npu\.\w+) import", path.read_text(), re.MULTILINE))
        assert imported <= public, (path.name, imported - public)
