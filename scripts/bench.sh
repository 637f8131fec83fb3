#!/usr/bin/env bash
# Benchmark kdtrain against a plain-PyTorch twin (scripts/reference_pytorch.py) on this
# machine; prints the tables and writes bench/RESULTS.md.
#
# For each model (teacher, student, distill) and each round, the runs are interleaved:
# kdtrain, [kdtrain --no-teacher-cache for distill,] then the PyTorch twin with each
# Adam implementation (pytorch-memory-fused, -foreach, -single) and torch.compile
# (pytorch-memory-fused-compile), [and for distill the same again with --teacher-cache,
# the same teacher cache kdtrain uses by default: pytorch-memory-fused-cache, ...]. The
# report compares kdtrain with the fastest PyTorch run of each model, like with like.
# Each run's peak RSS is taken with GNU time (or getrusage). The distill runs use the
# teacher that kdtrain trained in round 1 of the teacher runs. Then fp32 matmul GFLOP/s
# is measured through the venv's torch (the same libtorch kdtrain links) and turned into
# a lower bound on seconds per epoch.
#
# Environment:
#   BENCH_ROUNDS    rounds per model (default 3)
#   BENCH_EPOCHS    epochs per run (default 3)
#   BENCH_THREADS   intra-op threads for both sides (default: nproc)
#   BENCH_SEED      seed (default 42)
#   BENCH_MODELS    models to run (default "teacher student distill"); also "cnn" (the
#                   --arch cnn teacher with --augment shift2,flip) and "student-aug" (the
#                   student with and without --augment shift2,flip, interleaved) and
#                   "distill-aug" (distillation from the cnn teacher with --augment
#                   shift2,flip: the teacher cached on 8 views, and --no-teacher-cache)
#   BENCH_PIPELINES PyTorch pipelines to compare with (default "memory"; "dataloader" adds
#                   the idiomatic DataLoader pipeline, slower than "memory" in every run)
#   BENCH_ADAMS     torch.optim.Adam implementations for the twin (default "fused foreach
#                   single": fused=True, foreach=True, the single-tensor loop)
#   BENCH_COMPILE   1 (default) adds a torch.compile run of the twin (memory pipeline, the
#                   first of BENCH_ADAMS); 0 leaves it out
#   BENCH_OUT       output prefix (default bench/RESULTS: bench/RESULTS.md, and the raw
#                   records in bench/results.jsonl and bench/gflops.json; another prefix P
#                   writes P.md, P.jsonl and P-gflops.json)
#   BENCH_IDLE_WAIT before each run, wait up to this many seconds for other processes to
#                   leave the CPUs idle (<= 10% busy); default 120, 0 = don't wait
#   BENCH_BUSY_LIMIT a run during which other processes used more than this percentage of
#                   the CPUs is left out of the medians when the same variant has a run
#                   that stayed under it (default 15; 100 = keep all)
#   BENCH_KEEP=1    keep bench/tmp/run.* (logs, summaries) after the run
#   KDTRAIN_BIN     kdtrain binary (default target/release/kdtrain, built if missing)
#   KDTRAIN_PYTHON  python with torch 2.11.0, numpy and safetensors (default: from
#                   .cargo/config.toml, else the venv scripts/setup.sh creates)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

ROUNDS=${BENCH_ROUNDS:-3}
EPOCHS=${BENCH_EPOCHS:-3}
THREADS=${BENCH_THREADS:-$(nproc)}
SEED=${BENCH_SEED:-42}
MODELS=${BENCH_MODELS:-teacher student distill}
PIPELINES=${BENCH_PIPELINES:-memory}
ADAMS=${BENCH_ADAMS:-fused foreach single}
COMPILE=${BENCH_COMPILE:-1}
IDLE_WAIT=${BENCH_IDLE_WAIT:-120}
BUSY_LIMIT=${BENCH_BUSY_LIMIT:-15}

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- python ----------------------------------------------------------------------------
python=${KDTRAIN_PYTHON:-}
if [ -z "$python" ] && [ -f .cargo/config.toml ]; then
  python=$(sed -n 's/^KDTRAIN_PYTHON *= *"\(.*\)"/\1/p' .cargo/config.toml | head -n1)
fi
if [ -z "$python" ]; then
  python=${KDTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kdtrain}/torch-2.11.0/bin/python
fi
[ -x "$python" ] || die "no python at $python (run scripts/setup.sh or set KDTRAIN_PYTHON)"
"$python" -c 'import torch, safetensors, numpy' 2>/dev/null ||
  die "$python lacks torch, safetensors or numpy (run scripts/setup.sh; or pip install numpy safetensors)"
ref="$repo/scripts/reference_pytorch.py"
report="$repo/scripts/bench_report.py"

# --- kdtrain ---------------------------------------------------------------------------
bin=${KDTRAIN_BIN:-$repo/target/release/kdtrain}
if [ ! -x "$bin" ]; then
  [ -z "${KDTRAIN_BIN:-}" ] || die "KDTRAIN_BIN=$bin is not executable"
  say "building target/release/kdtrain"
  cargo build --release >&2
fi
[ -x "$bin" ] || die "no kdtrain binary at $bin"
if command -v ldd >/dev/null 2>&1 && ldd "$bin" 2>/dev/null | grep -q 'not found'; then
  torchlib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "kdtrain does not find libtorch by itself; LD_LIBRARY_PATH=$torchlib"
fi

# --- peak RSS --------------------------------------------------------------------------
gnu_time=""
if /usr/bin/time -f %M -o /dev/null true 2>/dev/null; then
  gnu_time=/usr/bin/time
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing GNU time"
  if { apt-get install -y -qq time || { apt-get update -qq && apt-get install -y -qq time; }; } >/dev/null 2>&1 &&
     /usr/bin/time -f %M -o /dev/null true 2>/dev/null; then
    gnu_time=/usr/bin/time
  fi
fi
[ -n "$gnu_time" ] || say "GNU time not available: peak RSS from getrusage"

# cpu_jiffies: "busy total" jiffies of all CPUs so far (/proc/stat).
cpu_jiffies() {
  local _c u n s i w q sq st _rest
  read -r _c u n s i w q sq st _rest </proc/stat
  echo "$((u + n + s + q + sq + st)) $((u + n + s + i + w + q + sq + st))"
}
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)

# measure OUTFILE LOG CMD...: runs CMD (output to LOG) and writes
# "peak_rss_kb wall_s other_cpu_pct" to OUTFILE, where other_cpu_pct is the share of all
# CPUs that processes other than CMD used while it ran.
measure() {
  local out=$1 log=$2
  shift 2
  local b0 t0 b1 t1
  read -r b0 t0 < <(cpu_jiffies)
  if [ -n "$gnu_time" ]; then
    "$gnu_time" -f '%M %e %U %S' -o "$out.raw" "$@" >"$log" 2>&1 || { tail -n 20 "$log" >&2; return 1; }
  else
    "$python" - "$out.raw" "$@" >"$log" 2>&1 <<'PY' || { tail -n 20 "$log" >&2; return 1; }
import resource, subprocess, sys, time
t0 = time.time()
rc = subprocess.call(sys.argv[2:])
wall = time.time() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:  # ru_maxrss is in kB on Linux
    f.write(f"{ru.ru_maxrss} {wall:.2f} {ru.ru_utime:.2f} {ru.ru_stime:.2f}\n")
sys.exit(rc)
PY
  fi
  read -r b1 t1 < <(cpu_jiffies)
  tail -n 1 "$out.raw" | awk -v db=$((b1 - b0)) -v dt=$((t1 - t0)) -v hz="$hz" '{
    other = dt > 0 ? 100 * (db / hz - ($3 + $4)) / (dt / hz) : 0
    if (other < 0) other = 0
    printf "%s %s %.0f\n", $1, $2, other }' >"$out"
}

loadavg() { cut -d' ' -f1 /proc/loadavg; }

# cpu_busy and wait_idle (scripts/idle.sh): the share of the CPUs other processes take,
# and a wait of up to BENCH_IDLE_WAIT seconds until it is at most 10%. With one OpenMP
# thread per core, any of it slows a run badly (threads spin at barriers waiting for a
# descheduled sibling).
source "$repo/scripts/idle.sh"
busy_runs=0

# wait_idle, and a warning when the machine stayed busy; prints the last reading.
wait_for_quiet() {
  local b
  b=$(wait_idle)
  [ "$b" -le 10 ] || say "machine still busy ($b% CPU) after ${IDLE_WAIT}s; running anyway"
  echo "$b"
}

# --- work dir --------------------------------------------------------------------------
mkdir -p bench/tmp
tmp=$(mktemp -d "$repo/bench/tmp/run.XXXXXX")
cleanup() {
  if [ "${BENCH_KEEP:-0}" = 1 ]; then say "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
results="$tmp/results.jsonl"
: >"$results"

la_start=$(loadavg)
busy=$(cpu_busy)
if [ "$busy" -gt 10 ]; then
  say "warning: other processes use $busy% of the CPUs; with $THREADS OpenMP threads on a busy machine the timings are not meaningful"
fi

# record MODEL VARIANT ROUND SUMMARY MEASUREFILE LOADAVG
record() {
  [ "${NO_RECORD:-0}" = 1 ] && return 0
  local rss wall other
  read -r rss wall other <"$5"
  "$python" "$report" record --model "$1" --variant "$2" --round "$3" --summary "$4" \
    --rss-kb "$rss" --wall "$wall" --cpu-busy "$6" --cpu-other "$other" >>"$results"
  [ "$other" -le "$BUSY_LIMIT" ] || busy_runs=$((busy_runs + 1))
  "$python" - "$results" <<'PY' >&2
import json, sys
r = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]
print(f"bench:   {r['variant']:<19} {r['median_epoch_seconds']:.3f} s/epoch  "
      f"acc {r['test_acc']:.4f}  startup {r['startup_seconds']:.2f} s  "
      f"rss {r['peak_rss_mb']:.0f} MB  (other processes: {r['cpu_busy_before']:.0f}% CPU before, "
      f"{r['cpu_other_during']:.0f}% during)")
PY
}

# run_ours MODEL ROUND VARIANT [extra args...]
run_ours() {
  local model=$1 round=$2 variant=$3
  shift 3
  local name="$model-$variant-r$round" la
  la=$(wait_for_quiet)
  local cmd
  case $model in
    distill) cmd=("$bin" distill --teacher "$teacher_ckpt" --augment none) ;;
    distill-aug) cmd=("$bin" distill --teacher "$cnn_ckpt" --augment shift2,flip) ;;
    cnn) cmd=("$bin" train teacher --arch cnn --augment shift2,flip) ;;
    student-aug) cmd=("$bin" train student) ;;
    # The reference's MLPs without augmentation, whatever config.toml says.
    *) cmd=("$bin" train "$model" --arch mlp --augment none) ;;
  esac
  # The twin's student has no dropout: the Keras example's, not config.toml's default.
  cmd+=(--config configs/no-student-dropout.toml --epochs "$EPOCHS" --out-dir "$tmp/ours"
        --run-name "$name" --quiet --seed "$SEED" --threads "$THREADS" --device cpu "$@")
  measure "$tmp/$name.measure" "$tmp/$name.log" "${cmd[@]}" || die "kdtrain run $name failed (log: $tmp/$name.log)"
  [ -f "$tmp/ours/$name/summary.json" ] || die "kdtrain wrote no $tmp/ours/$name/summary.json"
  record "$model" "$variant" "$round" "$tmp/ours/$name/summary.json" "$tmp/$name.measure" "$la"
}

# run_ref MODEL ROUND PIPELINE ADAM COMPILE(0|1) [cache]
run_ref() {
  local model=$1 round=$2 pipeline=$3 adam=$4 compile=$5 cache=${6:-}
  local variant="pytorch-$pipeline-$adam"
  [ "$compile" = 1 ] && variant+="-compile"
  variant+="${cache:+-cache}"
  local name="$model-$variant-r$round" la
  la=$(wait_for_quiet)
  local cmd
  case $model in
    cnn) cmd=("$python" "$ref" cnn --augment shift2,flip) ;;
    student-aug) cmd=("$python" "$ref" student --augment shift2,flip) ;;
    *) cmd=("$python" "$ref" "$model") ;;
  esac
  cmd+=(--epochs "$EPOCHS" --pipeline "$pipeline" --adam "$adam" --seed "$SEED"
        --threads "$THREADS" --out "$tmp/$name.json")
  [ "$compile" = 1 ] && cmd+=(--compile)
  [ "$model" = distill ] && cmd+=(--teacher "$teacher_ckpt")
  [ -n "$cache" ] && cmd+=(--teacher-cache)
  measure "$tmp/$name.measure" "$tmp/$name.log" "${cmd[@]}" || die "reference run $name failed (log: $tmp/$name.log)"
  record "$model" "$variant" "$round" "$tmp/$name.json" "$tmp/$name.measure" "$la"
}

notes=()
teacher_ckpt=""
cnn_ckpt=""
for model in $MODELS; do
  if [ "$model" = distill ] && [ -z "$teacher_ckpt" ]; then
    # Distill needs a teacher: kdtrain's round-1 teacher, trained here if the teacher
    # runs were skipped.
    if [ ! -d "$tmp/ours/teacher-kdtrain-r1" ]; then
      say "training a teacher for distill"
      NO_RECORD=1 run_ours teacher 1 kdtrain
      notes+=("Teacher for distill trained by kdtrain (epochs: $EPOCHS) outside the teacher rounds.")
    fi
    teacher_ckpt="$tmp/ours/teacher-kdtrain-r1/model.safetensors"
    if [ ! -f "$teacher_ckpt" ]; then
      teacher_ckpt=$(find "$tmp/ours/teacher-kdtrain-r1" -name '*.safetensors' | head -n1)
    fi
    [ -n "$teacher_ckpt" ] && [ -f "$teacher_ckpt" ] || die "kdtrain's teacher run left no .safetensors"
    notes+=("Distillation (both implementations) uses the teacher kdtrain trained in teacher round 1 (epochs: $EPOCHS, seed $SEED).")
  fi
  if [ "$model" = distill-aug ] && [ -z "$cnn_ckpt" ]; then
    if [ ! -d "$tmp/ours/cnn-kdtrain-r1" ]; then
      say "training a cnn teacher for distill-aug"
      NO_RECORD=1 run_ours cnn 1 kdtrain
      notes+=("CNN teacher for distill-aug trained by kdtrain (epochs: $EPOCHS) outside the cnn rounds.")
    fi
    cnn_ckpt="$tmp/ours/cnn-kdtrain-r1/model.safetensors"
    [ -f "$cnn_ckpt" ] || die "kdtrain's cnn run left no model.safetensors"
  fi
  for round in $(seq 1 "$ROUNDS"); do
    say "[$model round $round/$ROUNDS]"
    if [ "$model" = student-aug ]; then
      run_ours "$model" "$round" kdtrain --augment shift2,flip
      run_ours "$model" "$round" kdtrain-noaug --augment none
    else
      run_ours "$model" "$round" kdtrain
    fi
    case $model in distill | distill-aug)
      run_ours "$model" "$round" kdtrain-nocache --no-teacher-cache ;;
    esac
    # No PyTorch twin of augmented distillation.
    [ "$model" = distill-aug ] && continue
    caches=("")
    [ "$model" = distill ] && caches+=(cache)
    for cache in "${caches[@]}"; do
      for pipeline in $PIPELINES; do
        for adam in $ADAMS; do
          run_ref "$model" "$round" "$pipeline" "$adam" 0 $cache
        done
      done
      if [ "$COMPILE" = 1 ]; then
        run_ref "$model" "$round" memory "${ADAMS%% *}" 1 $cache
      fi
    done
  done
done

say "measuring fp32 matmul GFLOP/s ($THREADS threads)"
gf_busy=$(wait_for_quiet)
[ "$gf_busy" -le 10 ] || notes+=("Other processes used $gf_busy% of the CPUs before the GFLOP/s measurement.")
"$python" "$report" gflops --threads "$THREADS" --repeats 15 --out "$tmp/gflops.json"
la_end=$(loadavg)
if [ "$busy_runs" -gt 0 ]; then
  notes+=("$busy_runs run(s) shared the CPUs with other processes (more than $BUSY_LIMIT% of the CPUs; cpu_other_during in bench/results.jsonl); they are left out of the medians where a variant has other runs.")
fi

# --- header ----------------------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
physical=$( (lscpu -p=core,socket 2>/dev/null | grep -v '^#' | sort -u | wc -l) || echo '?')
kd_version=$("$bin" --version 2>/dev/null || echo '?')
rustc_version=$(rustc --version 2>/dev/null || echo '?')
torch_version=$("$python" -c 'import torch; print(torch.__version__)')
H_DATE=$(date '+%Y-%m-%d %H:%M:%S %Z') H_CPU=$cpu H_NPROC=$(nproc) H_PHYS=$physical \
H_THREADS=$THREADS H_TORCH=$torch_version H_KD=$kd_version H_RUSTC=$rustc_version \
H_EPOCHS=$EPOCHS H_ROUNDS=$ROUNDS H_LA0=$la_start H_LA1=$la_end \
H_NOTES=$(printf '%s\n' "${notes[@]+"${notes[@]}"}") \
"$python" - "$tmp/header.json" <<'PY'
import json, os, sys
e = os.environ
json.dump({
    "date": e["H_DATE"], "cpu": e["H_CPU"], "nproc": e["H_NPROC"],
    "physical_cores": e["H_PHYS"], "threads": e["H_THREADS"], "torch": e["H_TORCH"],
    "kdtrain": e["H_KD"], "rustc": e["H_RUSTC"], "epochs": e["H_EPOCHS"],
    "rounds": e["H_ROUNDS"], "loadavg_start": e["H_LA0"], "loadavg_end": e["H_LA1"],
    "notes": [n for n in e["H_NOTES"].splitlines() if n],
}, open(sys.argv[1], "w"), indent=2)
PY

"$python" "$report" report --results "$results" --gflops "$tmp/gflops.json" \
  --header "$tmp/header.json" --busy-limit "$BUSY_LIMIT" >"$tmp/RESULTS.md"
out=${BENCH_OUT:-bench/RESULTS}
if [ "$out" = bench/RESULTS ]; then
  md=bench/RESULTS.md jsonl=bench/results.jsonl gfl=bench/gflops.json
else
  md=$out.md jsonl=$out.jsonl gfl=$out-gflops.json
fi
mkdir -p "$(dirname "$md")"
cp "$tmp/RESULTS.md" "$md"
cp "$results" "$jsonl"
cp "$tmp/gflops.json" "$gfl"
cat "$md"
say "wrote $md (raw records: $jsonl, $gfl)"
