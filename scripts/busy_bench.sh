#!/usr/bin/env bash
# Teacher epochs on an idle and on a busy machine, for three ways of running kdtrain:
#
#   old  the previous default: 2 (nproc) threads, libgomp's own spin count
#        (GOMP_SPINCOUNT=300000, what libgomp uses when OMP_WAIT_POLICY is unset)
#   new  the current default: nproc threads, the spin count src/main.rs chooses from
#        the load at start (0 when other processes keep the CPUs busy, else 10,000)
#   t1   --threads 1
#
# "busy" runs one other CPU-bound process (`yes > /dev/null`, not pinned; BUSY_PIN=1 pins
# it to CPU 0) for the length of each run; "late" starts the same process BUSY_LATE
# seconds (default 1.5) after kdtrain, once it has chosen how its OpenMP workers wait
# and its first epoch is under way, and keeps it to the end of the run. Conditions and variants are interleaved round
# by round. Each run is `train teacher --epochs BUSY_EPOCHS --quiet` on the real data;
# the figure is the median of its summary.json `epoch_seconds`. Every run starts on an
# idle machine (it waits for one), and the CPU time that processes other than kdtrain and
# the busy process took while it ran is recorded; a run where that exceeded
# BUSY_OTHER_LIMIT percent of the CPUs is repeated (up to BUSY_RETRIES times) and left
# out of the medians when its variant has clean runs. The medians over rounds go to
# bench/busy.json, every run to bench/busy.jsonl, and a table to bench/BUSY.md.
#
# Targets: busy `new` <= 1.5x idle `t1`; idle `new` <= 1.1x idle `old`. For "late" the
# same 1.5x bound is reported (late `new` / idle `t1`).
#
# Environment:
#   BUSY_ROUNDS   rounds (default 3)
#   BUSY_EPOCHS   epochs per run (default 3)
#   BUSY_SPINS    extra variants "spin-N" with GOMP_SPINCOUNT=N, e.g. "0 1000 100000"
#   BUSY_PIN=1    pin the busy process to CPU 0
#   BUSY_CONDITIONS conditions to run (default "idle busy late")
#   BUSY_LATE     seconds after kdtrain starts that "late" starts the busy process
#   BUSY_IDLE_WAIT before each run, wait up to this many seconds for other processes
#                 to leave the CPUs idle (<= 10% busy); default 600
#   BUSY_OTHER_LIMIT, BUSY_RETRIES  see above (default 10 and 3)
#   KDTRAIN_BIN   kdtrain binary (default target/release/kdtrain)
#   KDTRAIN_DATA  data folder (default: kdtrain's search)
#   BUSY_OUT      output folder (default bench)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
ROUNDS=${BUSY_ROUNDS:-3}
EPOCHS=${BUSY_EPOCHS:-3}
IDLE_WAIT=${BUSY_IDLE_WAIT:-600}
OTHER_LIMIT=${BUSY_OTHER_LIMIT:-10}
RETRIES=${BUSY_RETRIES:-3}
OUT=${BUSY_OUT:-bench}
bin=${KDTRAIN_BIN:-$repo/target/release/kdtrain}
say() { printf 'busy_bench: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
[ -x "$bin" ] || die "no kdtrain binary at $bin (cargo build --release)"
command -v python3 >/dev/null || die "python3 is needed for the report"
/usr/bin/time -f %U -o /dev/null true 2>/dev/null || die "GNU time (/usr/bin/time) is needed"
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
data_args=()
[ -n "${KDTRAIN_DATA:-}" ] && data_args=(--data-dir "$KDTRAIN_DATA")

# cpu_busy and wait_idle (up to BUSY_IDLE_WAIT seconds): scripts/idle.sh.
source "$repo/scripts/idle.sh"

tmp=$(mktemp -d)
hog=""
cleanup() {
  [ -n "$hog" ] && kill "$hog" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$OUT"
jsonl="$tmp/busy.jsonl"
: >"$jsonl"

variants=(old new t1)
for n in ${BUSY_SPINS:-}; do variants+=("spin-$n"); done

# jiffies: "busy total" jiffies of all CPUs so far.
jiffies() {
  local _c u n s i w q sq st _rest
  read -r _c u n s i w q sq st _rest </proc/stat
  echo "$((u + n + s + q + sq + st)) $((u + n + s + i + w + q + sq + st))"
}

# run VARIANT CONDITION ROUND: run_once until a clean run or out of retries.
run() {
  local try
  for try in $(seq 0 "$RETRIES"); do
    run_once "$@" "$try" && return 0
    say "others used the CPUs during $1-$2-r$3 (try $try); repeating it"
  done
}

# run_once VARIANT CONDITION ROUND TRY: one run, recorded; fails if it was not clean.
run_once() {
  local variant=$1 cond=$2 round=$3 try=$4 name="$1-$2-r$3-t$4" before b0 t0 b1 t1 hogcpu=0
  local envs=(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT) args=()
  case $variant in
    old) envs+=(GOMP_SPINCOUNT=300000) ;;
    new) ;;
    t1) args+=(--threads 1) ;;
    spin-*) envs+=("GOMP_SPINCOUNT=${variant#spin-}") ;;
  esac
  before=$(wait_idle)
  read -r b0 t0 < <(jiffies)
  local delay=0
  [ "$cond" = late ] && delay=${BUSY_LATE:-1.5}
  if [ "$cond" = busy ] || [ "$cond" = late ]; then
    if [ "${BUSY_PIN:-0}" = 1 ]; then
      (sleep "$delay"; exec taskset -c 0 yes >/dev/null) &
    else
      (sleep "$delay"; exec yes >/dev/null) &
    fi
    hog=$!
  fi
  /usr/bin/time -f '%U %S' -o "$tmp/$name.cpu" \
    "${envs[@]}" "$bin" train teacher --epochs "$EPOCHS" --quiet --device cpu --seed 42 \
    --out-dir "$tmp/runs" --run-name "$name" "${args[@]}" "${data_args[@]}" \
    >"$tmp/$name.log" 2>&1 || { tail -n 20 "$tmp/$name.log" >&2; die "run $name failed"; }
  if [ -n "$hog" ]; then
    # utime + stime of the busy process (fields 14 and 15; its name has no spaces)
    hogcpu=$(awk '{ print $14 + $15 }' "/proc/$hog/stat")
    kill "$hog"; wait "$hog" 2>/dev/null || true; hog=""
  fi
  read -r b1 t1 < <(jiffies)
  python3 - "$tmp/runs/$name/summary.json" "$variant" "$cond" "$round" "$try" "$before" \
    "$tmp/$name.cpu" "$((b1 - b0))" "$((t1 - t0))" "$hogcpu" "$hz" "$OTHER_LIMIT" >>"$jsonl" <<'PY'
import json, statistics, sys
(summary, variant, cond, rnd, tr, before, cpu, db, dt, hog, hz, limit) = sys.argv[1:]
s = json.load(open(summary))
secs = s["epoch_seconds"]
kd = sum(float(x) for x in open(cpu).read().split()[-2:])
db, dt, hog, hz = int(db), int(dt), int(hog), float(hz)
other = max(0.0, 100 * (db - hog - kd * hz) / dt) if dt > 0 else 0.0
print(json.dumps({"variant": variant, "condition": cond, "round": int(rnd), "try": int(tr),
                  "cpu_busy_before_pct": int(before), "cpu_other_during_pct": round(other, 1),
                  "clean": other <= float(limit), "epoch_seconds": secs,
                  "median_epoch_seconds": statistics.median(secs)}))
PY
  say "$(tail -n1 "$jsonl")"
  rm -rf "$tmp/runs/$name"
  tail -n1 "$jsonl" | grep -q '"clean": true'
}

say "load before: $(cut -d' ' -f1-3 /proc/loadavg); variants: ${variants[*]}; $ROUNDS rounds of $EPOCHS epochs"
CONDITIONS=${BUSY_CONDITIONS:-idle busy late}
for round in $(seq 1 "$ROUNDS"); do
  for cond in $CONDITIONS; do
    for v in "${variants[@]}"; do run "$v" "$cond" "$round"; done
  done
done

cp "$jsonl" "$OUT/busy.jsonl"
H_DATE=$(date '+%Y-%m-%d %H:%M:%S %Z') H_LATE=${BUSY_LATE:-1.5} \
H_COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo '?')$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' with uncommitted changes')" \
H_CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1) \
H_NPROC=$(nproc) H_KD=$("$bin" --version 2>/dev/null || echo '?') H_EPOCHS=$EPOCHS \
H_ROUNDS=$ROUNDS H_PIN=${BUSY_PIN:-0} H_LIMIT=$OTHER_LIMIT \
python3 - "$OUT/busy.jsonl" "$OUT/busy.json" "$OUT/BUSY.md" <<'PY'
import json, os, statistics, sys
e = os.environ
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
variants = list(dict.fromkeys(r["variant"] for r in rows))
med, n_clean = {}, {}
conds = [c for c in ("idle", "busy", "late") if any(r["condition"] == c for r in rows)]
for v in variants:
    for c in conds:
        rs = [r for r in rows if r["variant"] == v and r["condition"] == c]
        rs = [r for r in rs if r["clean"]] or rs
        xs = [r["median_epoch_seconds"] for r in rs]
        med[(v, c)] = (statistics.median(xs), min(xs), max(xs)) if xs else None
        n_clean[(v, c)] = sum(r["clean"] for r in rows if r["variant"] == v and r["condition"] == c)
def m(v, c):
    return med[(v, c)][0] if med.get((v, c)) else float("nan")
targets = {
    "busy new / idle t1 (target <= 1.5)": m("new", "busy") / m("t1", "idle"),
    "idle new / idle old (target <= 1.1)": m("new", "idle") / m("old", "idle"),
    "busy old / idle old": m("old", "busy") / m("old", "idle"),
}
if "late" in conds:
    targets["late new / idle t1 (target <= 1.5)"] = m("new", "late") / m("t1", "idle")
    targets["late new / busy new"] = m("new", "late") / m("new", "busy")
out = {
    "date": e["H_DATE"], "commit": e["H_COMMIT"], "cpu": e["H_CPU"], "nproc": int(e["H_NPROC"]), "kdtrain": e["H_KD"],
    "epochs_per_run": int(e["H_EPOCHS"]), "rounds": int(e["H_ROUNDS"]),
    "busy_process": "yes > /dev/null" + (" pinned to CPU 0" if e["H_PIN"] == "1" else ""),
    "median_epoch_seconds": {f"{v}/{c}": med[(v, c)][0] for (v, c) in med if med[(v, c)]},
    "ratios": targets,
}
json.dump(out, open(sys.argv[2], "w"), indent=2)
desc = {
    "old": "previous default: nproc threads, GOMP_SPINCOUNT=300000 (libgomp's default)",
    "new": "current default: nproc threads, spin count chosen by src/main.rs from the load at start",
    "t1": "--threads 1",
}
with open(sys.argv[3], "w") as f:
    f.write("# Teacher epochs on an idle and a busy machine\n\n")
    f.write(f"Written by `scripts/busy_bench.sh` on {e['H_DATE']} (commit {e['H_COMMIT']}): "
            f"{e['H_CPU']}, {e['H_NPROC']} CPUs, "
            f"{e['H_KD']}. {e['H_ROUNDS']} interleaved rounds of `train teacher --epochs {e['H_EPOCHS']} "
            f"--quiet`; each figure is the median over rounds of a run's median epoch seconds "
            f"(min-max in brackets). Busy: one `{out['busy_process']}` running alongside; "
            f"late: the same, started {e['H_LATE']} s after kdtrain. "
            "Raw runs: `bench/busy.jsonl`. Each run started on an idle machine; runs during "
            f"which other processes took more than {e['H_LIMIT']}% of the CPUs "
            "(`cpu_other_during_pct`) were repeated and are left out here.\n\n")
    f.write("| variant | " + " | ".join(f"{c} s/epoch" for c in conds)
            + " | busy / idle |\n|" + " --- |" * (len(conds) + 2) + "\n")
    for v in variants:
        cells = []
        for c in conds:
            x = med.get((v, c))
            cells.append(f"{x[0]:.3f} ({x[1]:.3f}-{x[2]:.3f})" if x else "")
        f.write(f"| {v}: {desc.get(v, 'GOMP_SPINCOUNT=' + v[5:] if v.startswith('spin-') else v)} | "
                + " | ".join(cells) + f" | {m(v, 'busy') / m(v, 'idle'):.2f} |\n")
    f.write("\n")
    for k, x in targets.items():
        f.write(f"- {k}: {x:.2f}\n")
    f.write(f"\nClean runs per variant ({', '.join(conds)}): " + ", ".join(
        f"{v} " + "/".join(str(n_clean.get((v, c), 0)) for c in conds) for v in variants) + ".\n")
print(open(sys.argv[3]).read())
PY
say "wrote $OUT/busy.json, $OUT/busy.jsonl, $OUT/BUSY.md"
