#!/usr/bin/env bash
# The committed multi-seed results: one full `reproduce` on the real data with the
# default config (the best recipe measured: the CNN teacher, kd at T 2, alpha 0.5, 200
# student epochs), copied to docs/results/ (results.md, results.json, comparison.png)
# and into the README's Results section.
#
# Usage: scripts/reproduce_results.sh [extra kdtrain flags, e.g. --objective kd,dkd]
# The wall time on the machine it ran on is in results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
out=$(mktemp -d)
target/release/kdtrain reproduce --seeds 0,1,2 --out-dir "$out" --quiet "$@" > "$out/stdout.txt"
root=$(ls -d "$out"/reproduce-*)
mkdir -p docs/results
cp "$root/results.md" "$root/results.json" "$root/comparison.png" docs/results/
python3 scripts/readme_results.py
echo "docs/results/ updated from $root"
