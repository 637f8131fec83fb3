#!/usr/bin/env bash
# One epoch each of teacher, student and distillation on CUDA, with seconds per epoch
# and test accuracy, and a check that `--device auto` picks the GPU.
#
# Usage: scripts/gpu_check.sh [DATA_DIR]
#   KDTRAIN_BIN   the binary (default: target/release/kdtrain)
#   OUT           where the runs go (default: a temporary folder)
#   PYTHON        a python with torch, used to find libtorch when the binary's rpath
#                 does not exist on this machine (default: python3)
set -euo pipefail
bin=${KDTRAIN_BIN:-target/release/kdtrain}
data=${1:-/usr/share/datasets/fashion-mnist}
out=${OUT:-$(mktemp -d)}/gpu-check
python=${PYTHON:-python3}
if ldd "$bin" | grep -q 'not found'; then
  lib=$("$python" -W ignore -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
mkdir -p "$out"
common=(--data-dir "$data" --out-dir "$out" --epochs 1 --quiet)
"$bin" train teacher --device cuda --run-name teacher "${common[@]}"
"$bin" train student --device cuda --run-name student "${common[@]}"
"$bin" distill --device cuda --run-name distilled --teacher "$out/teacher/model.safetensors" "${common[@]}"
"$bin" distill --device cuda --run-name distilled-nocache --no-teacher-cache --teacher "$out/teacher/model.safetensors" "${common[@]}"
"$bin" train student --device auto --run-name auto "${common[@]}"
"$python" - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
print("| run | device | s/epoch | eval test s | startup s | test acc |")
print("| --- | --- | --- | --- | --- | --- |")
for run in ["teacher", "student", "distilled", "distilled-nocache", "auto"]:
    s = json.load(open(os.path.join(out, run, "summary.json")))
    print(f"| {run} | {s['device']} | {s['median_epoch_seconds']:.3f} | {s['eval_test_seconds']:.4f} | {s['startup_seconds']:.2f} | {s['test_acc']:.4f} |")
auto = json.load(open(os.path.join(out, "auto", "summary.json")))["device"]
assert auto.startswith("Cuda"), f"--device auto picked {auto}, not the GPU"
print(f"--device auto picked {auto}: ok")
PY
