#!/usr/bin/env bash
# Epoch seconds of the MLP student and teacher under fixed OpenMP spin counts
# (GOMP_SPINCOUNT: how long libgomp's workers spin between parallel regions before they
# sleep) and under the one kdtrain chooses at start (src/main.rs), interleaved, on an
# otherwise idle machine. Writes bench/spin.jsonl (one line per run, with every epoch's
# seconds and the spin count the run's meta.json records) and bench/SPIN.md.
#
# Usage: scripts/spin_bench.sh                 (scripts/regenerate.sh spin)
#   SPIN_ROUNDS   rounds (default 4)
#   SPIN_EPOCHS   epochs per run (default 4)
#   SPIN_COUNTS   fixed spin counts (default "0 10000 100000 300000"; 300000 is libgomp's
#                 own default)
#   SPIN_MODELS   roles to train (default "student teacher"), the Keras example's MLPs
#                 without dropout, as in bench/SPEED.md
#   SPIN_IDLE_WAIT  before each run, wait up to this many seconds for other processes to
#                 use at most 10% of the CPUs (default 60)
#   KDTRAIN_BIN   kdtrain binary (default target/release/kdtrain)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=$(sed -n 's/^KDTRAIN_PYTHON *= *"\(.*\)"/\1/p' .cargo/config.toml 2>/dev/null | head -n1)
python=${KDTRAIN_PYTHON:-${python:-python3}}
rounds=${SPIN_ROUNDS:-4}
epochs=${SPIN_EPOCHS:-4}
counts=${SPIN_COUNTS:-0 10000 100000 300000}
models=${SPIN_MODELS:-student teacher}
bin=${KDTRAIN_BIN:-target/release/kdtrain}
[ -x "$bin" ] || cargo build --release -q
say() { printf 'spin_bench: %s\n' "$*" >&2; }

commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo '?')"
if [ -n "$(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  commit="$commit with uncommitted changes to src/"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=bench/spin.jsonl
: >"$tmp/runs.jsonl"

# cpu_busy and wait_idle (up to SPIN_IDLE_WAIT seconds, default 60): scripts/idle.sh.
IDLE_WAIT=${SPIN_IDLE_WAIT:-60}
source "$repo/scripts/idle.sh"

for round in $(seq "$rounds"); do
  for model in $models; do
    for spin in chosen $counts; do
      name="$model-$spin-r$round"
      env=()
      [ "$spin" = chosen ] || env=(GOMP_SPINCOUNT="$spin")
      busy=$(wait_idle)
      [ "$busy" -le 10 ] || say "other processes still use $busy% of the CPUs after ${IDLE_WAIT}s; measuring anyway"
      env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "${env[@]}" "$bin" train "$model" --arch mlp --augment none \
        --config configs/no-student-dropout.toml --epochs "$epochs" --out-dir "$tmp/runs" \
        --run-name "$name" --quiet --seed 0 --threads 2 --device cpu >"$tmp/$name.log" 2>&1 ||
        { tail -n 20 "$tmp/$name.log" >&2; exit 1; }
      "$python" - "$tmp/runs/$name" "$model" "$spin" "$round" >>"$tmp/runs.jsonl" <<'PY'
import json, statistics, sys
run, model, spin, rnd = sys.argv[1:5]
with open(f"{run}/summary.json") as f:
    summary = json.load(f)
with open(f"{run}/meta.json") as f:
    meta = json.load(f)
epochs = [float(e) for e in summary["epoch_seconds"]]
print(json.dumps({
    "model": model, "variant": spin, "round": int(rnd),
    "openmp_spincount": meta.get("openmp_spincount"),
    "chosen_by": meta.get("openmp_spincount_chosen_by"),
    "epoch_seconds": epochs,
    "median_after_first": statistics.median(epochs[1:] or epochs),
    "test_acc": summary.get("test_acc"),
}))
PY
      say "$(tail -n 1 "$tmp/runs.jsonl")"
    done
  done
done
cp "$tmp/runs.jsonl" "$out.tmp" && mv "$out.tmp" "$out"

"$python" - "$out" "$commit" "$rounds" "$epochs" <<'PY' >bench/SPIN.md.tmp
import json, statistics, sys, datetime, platform
path, commit, rounds, epochs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
runs = [json.loads(l) for l in open(path)]
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print("# Epoch seconds against the OpenMP spin count\n")
print(f"Written by `scripts/spin_bench.sh` on {date} (commit {commit}), {platform.machine()}, "
      f"2 threads; {rounds} interleaved rounds of `train ROLE --arch mlp --augment none "
      f"--epochs {epochs}` (the Keras example's MLPs without dropout); `chosen` is kdtrain's "
      "own choice at start (its `meta.json` records the value). Each run's figure is the "
      "median of its epochs after the first; every epoch's seconds are in `bench/spin.jsonl`. "
      "An epoch is counted slow when it takes more than 1.5 times the fastest epoch of its "
      "role in this file.\n")
print("| role | GOMP_SPINCOUNT | run medians (s) | median (s) | slow epochs |")
print("|---|---|---|---:|---:|")
for model in dict.fromkeys(r["model"] for r in runs):
    rows = [r for r in runs if r["model"] == model]
    fastest = min(e for r in rows for e in r["epoch_seconds"])
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        label = variant
        if variant == "chosen":
            label = "chosen (" + ", ".join(sorted({str(r["openmp_spincount"]) for r in rs})) + ")"
        meds = [r["median_after_first"] for r in rs]
        eps = [e for r in rs for e in r["epoch_seconds"]]
        slow = sum(e > 1.5 * fastest for e in eps)
        print(f"| {model} | {label} | {', '.join(f'{m:.3f}' for m in meds)} | "
              f"{statistics.median(meds):.3f} | {slow} of {len(eps)} |")
PY
mv bench/SPIN.md.tmp bench/SPIN.md
say "wrote bench/SPIN.md and $out"
