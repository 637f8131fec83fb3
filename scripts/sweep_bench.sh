#!/usr/bin/env bash
# Local sweep throughput: the same 8 short distillation jobs (kd, 2 T x 2 alpha x 2 seeds,
# no student jobs) run
#   serial:   one job after another, 2 intra-op threads each (sweep run --jobs 1, --threads 2)
#   parallel: two jobs at a time, 1 thread each             (sweep run --jobs 2, --threads 1)
# interleaved over ROUNDS rounds (the order alternates), on the real Fashion-MNIST.
# Writes bench/sweep.json: wall seconds per round, medians, the ratio parallel / serial,
# the per-job overhead (startup_seconds, data_load_seconds from sweep.csv), the peak
# resident memory of one job, and the load average before each run.
#
# Usage: scripts/sweep_bench.sh TEACHER [EPOCHS] [ROUNDS]
# TEACHER: a model.safetensors from `kdtrain train teacher`. EPOCHS per job (default 3).
# Refuses to start unless the CPUs are at least 90% idle over 2 s, and before each run
# waits until they are again (the share is recorded per sample, with the load average);
# FORCE=1 measures anyway and says so in the JSON.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
teacher=$(realpath "${1:?usage: scripts/sweep_bench.sh TEACHER [EPOCHS] [ROUNDS]}")
epochs=${2:-3}
rounds=${3:-2}
data=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
python=$(sed -n 's/^KDTRAIN_PYTHON = "\(.*\)"$/\1/p' .cargo/config.toml 2>/dev/null || true)
python=${KDTRAIN_PYTHON:-${python:-python3}}
load() { cut -d' ' -f1 /proc/loadavg; }
# Share of CPU time idle over the next 2 s (from /proc/stat: idle + iowait over all).
idle() {
  local a b
  a=($(head -1 /proc/stat)); sleep 2; b=($(head -1 /proc/stat))
  local ta=0 tb=0 i
  for i in 1 2 3 4 5 6 7 8; do ta=$((ta + a[i])); tb=$((tb + b[i])); done
  echo "scale=3; ((${b[4]} + ${b[5]}) - (${a[4]} + ${a[5]})) / ($tb - $ta)" | bc -l
}
# Waits (up to 10 minutes) until the machine is at least 90% idle, so that another
# program's burst does not land in one side of the comparison; prints the idle share.
wait_idle() {
  local i share
  for i in $(seq 300); do
    share=$(idle)
    [ "$(echo "$share >= 0.9" | bc -l)" = 1 ] && { echo "$share"; return; }
  done
  echo "$share"
}
if [ "${FORCE:-0}" != 1 ] && [ "$(echo "$(idle) < 0.9" | bc -l)" = 1 ]; then
  echo "sweep_bench: the CPUs are less than 90% idle (load average $(load) on $(nproc) cores): too busy to measure; rerun when quiet (or FORCE=1)" >&2
  exit 1
fi
cargo build --release -q
kd=$repo/target/release/kdtrain
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/grid.toml" <<EOF
[data]
dir = "$data"
[early_stopping]
enabled = false
[logging]
histograms = false
plots = false
[sweep]
t = [2, 4]
alpha = [0.5, 0.9]
seeds = [0, 1]
student = false
EOF

: >"$tmp/rows"
for r in $(seq "$rounds"); do
  order="serial parallel"
  [ $((r % 2)) = 0 ] && order="parallel serial"
  for mode in $order; do
    if [ "$mode" = serial ]; then threads=2 jobs=1; else threads=1 jobs=2; fi
    dir=$("$kd" sweep plan "$tmp/grid.toml" --teacher "$teacher" --out-dir "$tmp/$mode-$r" \
      --epochs "$epochs" --threads "$threads" --quiet | tail -1)
    l=$(load)
    [ "${FORCE:-0}" = 1 ] || l="$l/$(wait_idle)"
    t0=$(date +%s.%N)
    "$kd" sweep run "$dir" --jobs "$jobs" --quiet >/dev/null
    t1=$(date +%s.%N)
    "$kd" sweep collect "$dir" --quiet >/dev/null
    s=$(echo "$t1 - $t0" | bc -l)
    echo "$mode $r $s $l $dir/sweep.csv" >>"$tmp/rows"
    echo "round $r $mode (--jobs $jobs, --threads $threads): $s s, load before $l" >&2
  done
done
# Peak resident memory of one job (what `sweep submit` asks Slurm for per task).
dir=$(awk '$1 == "parallel" {print $5; exit}' "$tmp/rows" | xargs dirname)
/usr/bin/time -f '%M' -o "$tmp/rss" "$kd" sweep run-one "$dir" --index 0 --quiet >/dev/null 2>&1 || true
rm -rf "$dir/runs/$(head -1 "$dir/jobs.txt" | cut -f1)"
/usr/bin/time -f '%M' -o "$tmp/rss" "$kd" sweep run-one "$dir" --index 0 --quiet >/dev/null

"$python" - "$tmp/rows" "$epochs" "$rounds" "$(tail -1 "$tmp/rss")" "${FORCE:-0}" <<'PY' >bench/sweep.json
import csv, json, platform, statistics as st, subprocess, sys
rows = [l.split() for l in open(sys.argv[1])]
epochs, rounds, rss_kb, forced = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
med = lambda xs: round(st.median(xs), 3)
secs = {m: [float(r[2]) for r in rows if r[0] == m] for m in ("serial", "parallel")}
over = {"startup_seconds": [], "data_load_seconds": []}
for r in rows:
    for row in csv.DictReader(open(r[4])):
        for k in over:
            over[k].append(float(row[k]))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(json.dumps({
    "what": "wall seconds of `kdtrain sweep run` over 8 kd jobs (2 T x 2 alpha x 2 seeds) on Fashion-MNIST (scripts/sweep_bench.sh)",
    "date": subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True).stdout.strip(),
    "commit": subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip() or "?",
    "epochs_per_job": epochs, "rounds": rounds, "forced_on_busy_machine": forced,
    "machine": {"cpu": cpu, "cores": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
                "os": platform.platform()},
    "serial_jobs1_threads2_s": med(secs["serial"]),
    "parallel_jobs2_threads1_s": med(secs["parallel"]),
    "ratio_parallel_over_serial": round(med(secs["parallel"]) / med(secs["serial"]), 3),
    "per_job_overhead_median_s": {k: med(v) for k, v in over.items()},
    "per_job_overhead_max_s": {k: round(max(v), 3) for k, v in over.items()},
    "peak_rss_one_job_mb": round(rss_kb / 1024, 1),
    "samples": [{"mode": r[0], "round": int(r[1]), "seconds": float(r[2]),
                 "load_before": float(r[3].split("/")[0]),
                 "idle_share_before": float(r[3].split("/")[1]) if "/" in r[3] else None} for r in rows],
}, indent=2))
PY
cat bench/sweep.json
