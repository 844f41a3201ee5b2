#!/usr/bin/env bash
# Sourced by the other scripts: use the active virtual environment, or create .venv, and
# install tvm_npu (editable, with its pinned dependencies and test extra) into it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
    python="${PYTHON:-python3.11}"
    command -v "$python" >/dev/null || python=python3
    if [ ! -x "$repo/.venv/bin/python" ]; then
        echo "== creating virtual environment $repo/.venv"
        "$python" -m venv "$repo/.venv"
    fi
    # shellcheck disable=SC1091
    source "$repo/.venv/bin/activate"
fi
stamp="$VIRTUAL_ENV/.tvm_npu_installed"
if [ ! -f "$stamp" ] || [ "$repo/setup.py" -nt "$stamp" ]; then
    echo "== installing tvm_npu and its pinned dependencies into $VIRTUAL_ENV"
    log="$VIRTUAL_ENV/tvm_npu_install.log"
    if ! { python -m pip install --upgrade pip && python -m pip install -e "$repo[test]"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "setup failed: pip could not install tvm_npu (full log: $log)" >&2
        exit 1
    fi
    touch "$stamp"
fi
