#!/usr/bin/env bash
# Sets up (see setup_env.sh) and runs the main job on the bundled default model:
# compile for the NPU target, run it, validate it against OpenVINO, print a report.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$repo"
model="$(python -c 'import tvm_npu.zoo as z; print(z.default_model_path())')"
mkdir -p out
echo "== tvmc compile --target npu $model -o out/default.tar"
tvmc compile --target npu "$model" -o out/default.tar
echo "== tvmc run out/default.tar --fill-mode random --outputs out/default_outputs.npz --print-top 3 --print-time --repeat 20"
tvmc run out/default.tar --fill-mode random --outputs out/default_outputs.npz --print-top 3 --print-time --repeat 20
echo "== tvmc validate out/default.tar --fill-mode random --report-json out/default_validation.json"
tvmc validate out/default.tar --fill-mode random --report-json out/default_validation.json
