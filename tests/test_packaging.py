"""`pip install .` (not only editable) must carry schedules/ and the bundled model."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_schedules_data_and_console_scripts(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("tvm_npu-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    schedules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "schedules").glob("*.py")}
    assert {f"tvm_npu/{name}" for name in schedules} <= names
    assert "tvm_npu/data/default_model.onnx" in names
    assert "tvmc = tvm_npu.cli:main" in entry_points and "tvm-npu = tvm_npu.cli:main" in entry_points
