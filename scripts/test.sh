#!/usr/bin/env bash
# Sets up (see setup_env.sh), lints and checks formatting (ruff.toml) and runs the test suite; extra arguments go to pytest.
# The fast suite is the default; `scripts/test.sh -m slow` runs the long cases.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$repo"
ruff check .
ruff format --check .
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec python -m pytest "$@"
