"""SUPPORTED_OPS.md is generated from the registry; a stale committed file fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "supported_ops.py"


def test_supported_ops_md_is_current(tmp_path):
    check = subprocess.run([sys.executable, SCRIPT, "--check"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr
    # --check really compares: a file one line off is stale.
    stale = tmp_path / "SUPPORTED_OPS.md"
    stale.write_text(SCRIPT.parent.parent.joinpath("SUPPORTED_OPS.md").read_text() + "| extra |\n")
    check = subprocess.run([sys.executable, SCRIPT, "--check", "-o", stale], capture_output=True, text=True, timeout=300)
    assert check.returncode == 1 and "stale: run python scripts/supported_ops.py" in check.stderr
