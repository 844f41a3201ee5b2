"""Scaffolds a new NPU kernel from an existing one: `python scripts/new_kernel.py NAME --like conv2d`.

Writes `schedules/NAME.py` (a copy of `schedules/LIKE.py` registered as `npu.NAME`) and
`tests/test_kernel_NAME.py` (the conformance harness on that kernel alone). With `--dir DIR` both go
to DIR instead, outside the repository: put DIR on $TVM_NPU_KERNEL_PATH and the registry (and so
the harness) finds the kernel there. Until you change its patterns, the copy claims the operators
of the kernel it was copied from; the harness says so. CONTRIBUTING.md walks through the rest.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tvm_npu.schedules

from tvm_npu.errors import NpuError
from tvm_npu.registry import kernels

REPO = Path(__file__).resolve().parent.parent
SCHEDULES = Path(tvm_npu.schedules.__file__).parent

TEST_TEMPLATE = '''"""npu.{name} through the conformance harness alone, while you work on it: pytest {test_path}

The full harness (every kernel) is `pytest tests/conformance`{path_note}.
"""

import pytest

from tvm_npu import conformance
from tvm_npu.registry import kernel

NAME = "npu.{name}"


@pytest.mark.parametrize("index", range(len(conformance.examples(kernel(NAME), 0))))
def test_npu_{name}_conforms(index):
    npu_kernel = kernel(NAME)
    case = conformance.prepare(npu_kernel, conformance.examples(npu_kernel, 0)[index])
    conformance.check_default(case)
    print("\\n".join(conformance.check_presets(case)))
    print(conformance.check_openvino(case))
'''


def scaffold(name: str, like: str, folder: Path | None, tests_folder: Path | None) -> list[Path]:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise NpuError(f"kernel name {name!r} must be a lowercase Python identifier, e.g. leaky_relu")
    families = sorted(p.stem for p in SCHEDULES.glob("*.py") if not p.stem.startswith("_"))
    if like not in families:
        raise NpuError(f"--like {like!r} is no kernel in {SCHEDULES}; choose one of {', '.join(families)}")
    if any(k.name == f"npu.{name}" for k in kernels()):
        raise NpuError(f"kernel npu.{name} exists already; choose another name")
    kernel_path = (folder or SCHEDULES) / f"{name}.py"
    test_path = (tests_folder or folder or REPO / "tests") / (f"test_{name}.py" if folder else f"test_kernel_{name}.py")
    for path in (kernel_path, test_path):
        if path.exists():
            raise NpuError(f"{path} exists already; remove it or choose another name")
    source = (SCHEDULES / f"{like}.py").read_text()
    text = source.replace(f'name="npu.{like}"', f'name="npu.{name}"', 1)
    if text == source:
        raise NpuError(f'{SCHEDULES / f"{like}.py"} has no name="npu.{like}" to rename')
    header = (
        f'"""npu.{name}: scaffolded from npu.{like} by scripts/new_kernel.py. Rewrite this docstring, then\n'
        f"patterns/check/params/compute/reference/examples/limits for the new operator (CONTRIBUTING.md).\n\n"
    )
    text = header + text.removeprefix('"""')
    path_note = f" with TVM_NPU_KERNEL_PATH={kernel_path.parent}" if folder else ""
    kernel_path.parent.mkdir(parents=True, exist_ok=True)
    test_path.parent.mkdir(parents=True, exist_ok=True)
    kernel_path.write_text(text)
    test_path.write_text(TEST_TEMPLATE.format(name=name, test_path=test_path, path_note=path_note))
    return [kernel_path, test_path]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the kernel's name without 'npu.', e.g. leaky_relu")
    parser.add_argument("--like", required=True, help="the kernel file in schedules/ to start from, e.g. conv2d or lut")
    parser.add_argument("--dir", type=Path, help="write kernel and test here (put it on $TVM_NPU_KERNEL_PATH)")
    parser.add_argument("--tests-dir", type=Path, help="write the test here (default: tests/, or --dir)")
    args = parser.parse_args()
    try:
        written = scaffold(args.name, args.like, args.dir, args.tests_dir)
    except NpuError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
