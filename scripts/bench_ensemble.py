#!/usr/bin/env python3
"""Benchmark of distillation from a cached ensemble of teachers against one teacher, on
Fashion-MNIST (issue target: an ensemble-of-3 epoch costs at most 1.1x a one-teacher
epoch; the cache costs one teacher pass per member, once).

    bench_ensemble.py [--kdtrain target/release/kdtrain] [--rounds 3] [--epochs 5]
        [--threads 2] [--out bench/ENSEMBLE.json]

Trains three MLP teachers (mlp:512,256,128, 1 epoch, seeds 1, 2, 3; their quality does
not matter for speed), then in each round distils the default student for --epochs
epochs from the first teacher alone and from the three as an ensemble (the order
alternating between rounds), with the teacher cache on. Records summary.json's
median_epoch_seconds and teacher_cache_seconds of each run, and the 1-minute load
average before it. Writes --out (JSON, every raw figure, the commit and the date) and
the same name with .md (medians over the rounds and the ratios), each atomically.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench_ensemble: {' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kdtrain", default="target/release/kdtrain")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/ENSEMBLE.json")
    a = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    out = tempfile.mkdtemp(prefix="bench-ensemble-")
    common = ["--out-dir", out, "--threads", str(a.threads), "--quiet"]
    teachers = []
    for k in (1, 2, 3):
        name = f"t{k}"
        run([a.kdtrain, "train", "teacher", "--epochs", "1", "--seed", str(k),
             "--run-name", name] + common, env)
        teachers.append(os.path.join(out, name, "model.safetensors"))
    records = []
    for r in range(a.rounds):
        arms = [("one", teachers[:1]), ("ensemble", teachers)]
        if r % 2:
            arms.reverse()
        for arm, ts in arms:
            name = f"{arm}-{r}"
            flags = [x for t in ts for x in ("--teacher", t)]
            load = os.getloadavg()[0]
            run([a.kdtrain, "distill", "--epochs", str(a.epochs), "--run-name", name]
                + flags + common, env)
            with open(os.path.join(out, name, "summary.json")) as f:
                s = json.load(f)
            records.append({
                "round": r, "arm": arm, "teachers": len(ts), "load_1min_before": load,
                "median_epoch_seconds": s["median_epoch_seconds"],
                "epoch_seconds": s["epoch_seconds"],
                "teacher_cache_seconds": s["teacher_cache_seconds"],
            })
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    made = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    med = lambda arm, key: statistics.median(x[key] for x in records if x["arm"] == arm)
    one, ens = med("one", "median_epoch_seconds"), med("ensemble", "median_epoch_seconds")
    c1, c3 = med("one", "teacher_cache_seconds"), med("ensemble", "teacher_cache_seconds")
    result = {"commit": commit + ("-dirty" if dirty else ""), "made": made, "rounds": a.rounds,
              "epochs": a.epochs, "threads": a.threads, "records": records,
              "median_epoch_seconds": {"one": one, "ensemble": ens},
              "teacher_cache_seconds": {"one": c1, "ensemble": c3}}
    write_atomic(a.out, json.dumps(result, indent=2) + "\n")
    loads = ", ".join(f"{x['load_1min_before']:.2f}" for x in records)
    md = (
        f"# Distillation from a cached ensemble of 3 teachers against one teacher\n\n"
        f"Made by scripts/bench_ensemble.py at commit {result['commit']} on {made}: "
        f"{a.rounds} rounds, order alternating, {a.epochs} epochs each, {a.threads} threads, "
        f"Fashion-MNIST, default student, teachers mlp:512,256,128. Medians over the rounds "
        f"(1-minute load averages before the runs: "
        f"{loads}).\n\n"
        f"| measure | one teacher | ensemble of 3 | ratio | target |\n| --- | --- | --- | --- | --- |\n"
        f"| distill epoch (s) | {one:.3f} | {ens:.3f} | {ens / one:.3f}x | <= 1.1x |\n"
        f"| teacher cache, once (s) | {c1:.2f} | {c3:.2f} | {c3 / c1:.2f}x | one pass per member |\n"
    )
    write_atomic(a.out[:-5] + ".md" if a.out.endswith(".json") else a.out + ".md", md)
    print(md)


if __name__ == "__main__":
    main()
