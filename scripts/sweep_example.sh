#!/usr/bin/env bash
# Regenerates docs/sweep/, the sweep in the README's "A sweep on Fashion-MNIST": a teacher
# from `kdtrain train teacher --epochs 15 --threads 1`, then docs/sweep/grid.toml planned
# against it, run with `sweep run --jobs 2` and collected. Copies summary.md, sweep.csv and
# heatmap.png into docs/sweep/ and writes docs/sweep/run.log (the commands, the teacher's
# last lines, the sweep's progress lines, the commit and date). The teacher's weights go
# to docs/sweep/teacher.safetensors (ignored by git) for scripts/sweep_bench.sh.
#
# Usage: scripts/sweep_example.sh [DATA_DIR]   (default: kdtrain's own search)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cargo build --release -q
kd=$repo/target/release/kdtrain
data=()
[ -n "${1:-}" ] && data=(--data-dir "$1")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log=$tmp/run.log
commit=$(git rev-parse --short=12 HEAD)
[ -z "$(git status --porcelain --untracked-files=no -- src)" ] || commit="$commit with uncommitted changes to src/"
{
  echo "# scripts/sweep_example.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit, $(nproc) CPUs"
  echo
  echo "# kdtrain train teacher --epochs 15 --threads 1 --run-name teacher (last lines)"
} >"$log"
"$kd" train teacher --epochs 15 --threads 1 --out-dir "$tmp/runs" --run-name teacher --quiet \
  "${data[@]}" 2>&1 | tail -n 2 | tee -a "$log"
teacher=$tmp/runs/teacher/model.safetensors
{
  echo
  echo "# kdtrain sweep plan docs/sweep/grid.toml --teacher .../teacher/model.safetensors"
} >>"$log"
"$kd" sweep plan docs/sweep/grid.toml --teacher "$teacher" --out-dir "$tmp/sweeps" \
  "${data[@]}" 2>&1 | tee -a "$log"
sweep=$(ls -d "$tmp"/sweeps/sweep-* | head -n1)
{
  echo
  echo "# time kdtrain sweep run <sweep> --jobs 2"
} >>"$log"
t0=$(date +%s)
"$kd" sweep run "$sweep" --jobs 2 2>&1 | tee -a "$log"
echo "wall: $(($(date +%s) - t0)) s" | tee -a "$log"
{
  echo
  echo "# kdtrain sweep collect <sweep>"
} >>"$log"
"$kd" sweep collect "$sweep" 2>&1 | tee -a "$log"
for f in summary.md sweep.csv heatmap.png; do
  cp "$sweep/$f" "docs/sweep/$f.tmp" && mv "docs/sweep/$f.tmp" "docs/sweep/$f"
done
cp "$log" docs/sweep/run.log.tmp && mv docs/sweep/run.log.tmp docs/sweep/run.log
cp "$teacher" docs/sweep/teacher.safetensors
echo "wrote docs/sweep/{summary.md,sweep.csv,heatmap.png,run.log}" >&2
