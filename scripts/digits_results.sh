#!/usr/bin/env bash
# The committed digits results: scikit-learn's bundled digits written as an .npz
# (scripts/data/digits.py), then `reproduce --config configs/digits.toml` (a CNN teacher,
# an MLP student alone and distilled, ten seeds), copied to docs/results/digits/.
# results.md records the commit and date of the binary that made it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${KDTRAIN_PYTHON:-${XDG_CACHE_HOME:-$HOME/.cache}/kdtrain/torch-2.11.0/bin/python}
"$python" scripts/data/digits.py --out data/digits
cargo build --release --quiet
out=$(mktemp -d)
target/release/kdtrain reproduce --config configs/digits.toml --out-dir "$out" --quiet > "$out/stdout.txt"
root=$(ls -d "$out"/reproduce-*)
dest=docs/results/digits
mkdir -p "$dest"
cp "$root/results.md" "$root/results.json" "$root/comparison.png" "$dest/"
echo "$dest/ updated from $root"
