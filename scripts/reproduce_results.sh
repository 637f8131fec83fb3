#!/usr/bin/env bash
# The committed multi-seed results: one `reproduce` on the real data, by default the
# Quick start's (the shipped teacher, seeds 0 to 4, the student with dropout 0.1, kd at
# T 2, alpha 0.5, 200 student epochs), copied to docs/results/ (results.md, results.json,
# comparison.png, gains.png), and the README's tables updated from every committed one.
#
# Usage: scripts/reproduce_results.sh [extra kdtrain flags, e.g. --objective kd,dkd]
#   RESULTS_DIR=docs/results/fraction scripts/reproduce_results.sh --experiment fraction
#   RESULTS_DIR=docs/results/omit scripts/reproduce_results.sh --experiment omit
#   RESULTS_DIR=docs/results/ensemble scripts/reproduce_results.sh --config configs/ensemble.toml
#   RESULTS_DIR=docs/history/results/teacher20 scripts/reproduce_results.sh \
#     --config configs/teacher15.toml --teacher-epochs 20
#   RESULTS_DIR=docs/history/results/no-student-dropout scripts/reproduce_results.sh \
#     --config configs/no-student-dropout.toml   the student without dropout.
# The wall time on the machine it ran on is in results.md. SKIP_README=1 leaves README.md
# alone (copy the tables later with scripts/readme_results.py).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
out=$(mktemp -d)
target/release/kdtrain reproduce --out-dir "$out" --quiet "$@" > "$out/stdout.txt"
root=$(ls -d "$out"/reproduce-*)
dest=${RESULTS_DIR:-docs/results}
mkdir -p "$dest"
cp "$root/results.md" "$root/results.json" "$root/comparison.png" "$root/gains.png" "$dest/"
[ "${SKIP_README:-0}" = 1 ] || python3 scripts/readme_results.py
echo "$dest/ updated from $root"
