#!/usr/bin/env bash
# Regenerates every figure the README quotes, with today's binary, stage by stage, then
# copies the tables into README.md (scripts/readme_results.py). Each stage's files record
# the commit and date they were made with; docs/REGENERATED.md lists, per stage, when it
# last ran, with which commit, and how long it took.
#
# Usage: scripts/regenerate.sh [STAGE ...]      (default: every stage, in this order)
#
# Stages (about how long each takes on this project's 2-core machine, idle):
#   speed     bench/RESULTS.md (MLP teacher, student, distillation) and bench/CNN-TEACHER.md
#             (the CNN teacher), kdtrain against the PyTorch twin with fused, foreach and
#             single-tensor Adam and torch.compile; then bench/SPEED.md, the README's
#             table (scripts/bench_report.py speed)                         ~30 min
#   aug       bench/AUG.md: the student with and without shift2,flip, and distillation
#             from a CNN teacher on 8 cached views or on every batch        ~15 min
#   busy      bench/BUSY.md: teacher epochs idle, busy from the start, busy from
#             mid-run (scripts/busy_bench.sh)                               ~10 min
#   spin      bench/SPIN.md: MLP student and teacher epochs under fixed OpenMP spin counts
#             and kdtrain's own choice (scripts/spin_bench.sh)                ~4 min
#   predict   docs/predict-example.txt (into README.md) and bench/predict.json  ~2 min
#   sweep     docs/sweep/ (the kd T x alpha sweep: teacher, plan, run, collect) ~12 min
#             and bench/sweep.json (local throughput)                       ~5 min
#   results   docs/results/ (the Quick start's reproduce, shipped teacher)  ~15 min
#   baseline  docs/results/pytorch-student/ (the PyTorch twin's student alone, compared
#             with the results stage's; run it after that one)              ~8 min
#   fraction  docs/results/fraction/ (the paper's 3% transfer set)          ~2 min
#   omit      docs/results/omit/ (the paper's class never seen)             ~12 min
#   ensemble  docs/results/ensemble/ (three CNN teachers as one)            ~25 min
#   comparisons  docs/results/teacher15/ (the first comparison: a CNN teacher
#             trained for 15 epochs, three seeds)                         ~15 min
#   (paper: fraction, omit and ensemble)
#   digits    docs/results/digits/                                          ~20 min
#   ensemble-bench  bench/ENSEMBLE.md                                       ~5 min
#   folder    bench/FOLDER.md: the image-folder reader against torchvision  ~10 min
#   readme    README.md's tables from the files above (always run last)
#
# The benchmark stages want a quiet machine: they wait for idle CPUs before each run and
# leave out runs that another process slowed. Stop with Ctrl-C; finished stages stay.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

all=(speed aug busy spin predict sweep results baseline fraction omit ensemble comparisons digits ensemble-bench
  folder readme)
stages=()
for s in "$@"; do
  if [ "$s" = paper ]; then stages+=(fraction omit ensemble); else stages+=("$s"); fi
done
[ ${#stages[@]} -gt 0 ] || stages=("${all[@]}")
for s in "${stages[@]}"; do
  case " ${all[*]} " in *" $s "*) ;; *) echo "regenerate: unknown stage '$s' (one of: ${all[*]} paper)" >&2; exit 2 ;; esac
done

python=$(sed -n 's/^KDTRAIN_PYTHON *= *"\(.*\)"/\1/p' .cargo/config.toml 2>/dev/null | head -n1)
python=${KDTRAIN_PYTHON:-${python:-python3}}
say() { printf 'regenerate: %s\n' "$*" >&2; }

cargo build --release -q
commit=$(git rev-parse --short=12 HEAD)
if [ -n "$(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock)" ]; then
  commit="$commit with uncommitted changes to src/"
fi

log=docs/REGENERATED.md
record() { # STAGE SECONDS
  local line="| $1 | $(date -u '+%Y-%m-%d %H:%M UTC') | $commit | $2 |"
  if [ ! -f "$log" ]; then
    printf '# When each README figure was last regenerated\n\nWritten by `scripts/regenerate.sh`; a row without seconds is a stage whose scripts were run by hand, as the stage runs them. The commit is the one checked out; each file also records its own.\n\n| stage | finished | commit | seconds |\n|---|---|---|---:|\n' >"$log"
  fi
  grep -v "^| $1 |" "$log" >"$log.tmp" || true
  echo "$line" >>"$log.tmp"
  mv "$log.tmp" "$log"
}

shipped=teachers/fashion-mnist-cnn.safetensors
for stage in "${stages[@]}"; do
  say "stage $stage"
  t0=$(date +%s)
  case $stage in
    speed)
      BENCH_MODELS="teacher student distill" BENCH_ROUNDS=3 BENCH_EPOCHS=4 scripts/bench.sh >/dev/null
      BENCH_MODELS=cnn BENCH_ROUNDS=2 BENCH_EPOCHS=3 BENCH_OUT=bench/CNN-TEACHER scripts/bench.sh >/dev/null
      "$python" scripts/bench_report.py speed --results bench/results.jsonl \
        --results bench/CNN-TEACHER.jsonl --out bench/SPEED.md
      ;;
    aug)
      BENCH_MODELS="student-aug distill-aug" BENCH_ROUNDS=2 BENCH_EPOCHS=3 BENCH_OUT=bench/AUG \
        scripts/bench.sh >/dev/null
      ;;
    busy) scripts/busy_bench.sh >/dev/null ;;
    spin) scripts/spin_bench.sh ;;
    predict)
      scripts/predict_example.sh
      scripts/predict_bench.sh
      ;;
    sweep)
      scripts/sweep_example.sh
      scripts/sweep_bench.sh docs/sweep/teacher.safetensors 3 3
      ;;
    results) scripts/reproduce_results.sh ;;
    baseline) scripts/pytorch_baseline.sh ;;
    fraction) RESULTS_DIR=docs/results/fraction scripts/reproduce_results.sh --experiment fraction ;;
    omit) RESULTS_DIR=docs/results/omit scripts/reproduce_results.sh --experiment omit ;;
    ensemble)
      RESULTS_DIR=docs/results/ensemble scripts/reproduce_results.sh --config configs/ensemble.toml
      ;;
    comparisons)
      RESULTS_DIR=docs/results/teacher15 scripts/reproduce_results.sh --config configs/teacher15.toml
      ;;
    digits) scripts/digits_results.sh ;;
    ensemble-bench) "$python" scripts/bench_ensemble.py ;;
    folder) "$python" scripts/bench_folder.py --rounds 5 --epochs 10 --out bench/FOLDER.json ;;
    readme) "$python" scripts/readme_results.py ;;
  esac
  record "$stage" $(($(date +%s) - t0))
done
[ -f "$shipped" ] || say "note: $shipped is missing; the results stages train their own teacher"
say "done: ${stages[*]} (see $log)"
