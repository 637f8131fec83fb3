#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: matmul GFLOP/s, result records, and the RESULTS.md tables.

    bench_report.py gflops --threads K [--out FILE.json]
    bench_report.py record --summary S.json --model M --variant V --round R [--rss-kb N] [--wall S]
    bench_report.py report --results RESULTS.jsonl --gflops G.json --header H.json [--epochs E]

`record` prints one JSON line (append it to a .jsonl file); `report` prints Markdown.
Only `gflops` imports torch.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

TRAIN_SAMPLES = 55_000
LAYERS = {
    "teacher": [784, 512, 256, 128, 10],
    "student": [784, 128, 10],
}
# Matmul shapes timed for the bound: (M, K, N) of [M,K] x [K,N]. The first three are the
# ones named in the brief; the fourth is the student's first layer.
TRAIN_SHAPES = [(256, 784, 512), (256, 512, 256), (256, 256, 128), (256, 784, 128)]
SQUARE = (2048, 2048, 2048)
VARIANTS = ["kdtrain", "kdtrain-nocache", "kdtrain-noaug", "pytorch-memory",
            "pytorch-dataloader", "pytorch-memory-cache", "pytorch-dataloader-cache"]
# `cnn`: the --arch cnn teacher with shift2,flip augmentation; `student-aug`: the student
# with shift2,flip augmentation (its `kdtrain-noaug` variant: the same run without).
MODELS = ("teacher", "student", "distill", "cnn", "student-aug", "distill-aug")
# MACs of one forward pass of cnn:32,64,256: conv 28x28x1x32x9, conv 14x14x32x64x9,
# linear 3136x256 and 256x10 (batch norm, ReLU and pooling are not MACs).
CNN_MACS = 28 * 28 * 1 * 32 * 9 + 14 * 14 * 32 * 64 * 9 + 3136 * 256 + 256 * 10


def reference_of(model, variant, pipeline):
    """The PyTorch variant a kdtrain variant is compared with: like with like, so kdtrain's
    distillation with its teacher cache against PyTorch with the same cache."""
    if model == "distill" and variant == "kdtrain":
        return f"pytorch-{pipeline}-cache"
    return f"pytorch-{pipeline}"


# ----------------------------------------------------------------------------- gflops
def cmd_gflops(args):
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for (m, k, n) in TRAIN_SHAPES + [SQUARE]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        c = torch.empty(m, n)
        flop = 2.0 * m * k * n
        # Warm up, then size an inner loop to ~args.target seconds.
        t0 = time.perf_counter()
        iters = 0
        while iters < 5 or time.perf_counter() - t0 < 0.2:
            torch.mm(a, b, out=c)
            iters += 1
        per_call = (time.perf_counter() - t0) / iters
        inner = max(1, int(args.target / per_call))
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b, out=c)
            dt = time.perf_counter() - t0
            rates.append(flop * inner / dt / 1e9)
        results.append({
            "shape": f"[{m},{k}]x[{k},{n}]", "m": m, "k": k, "n": n,
            "square": (m, k, n) == SQUARE,
            "gflops_median": statistics.median(rates), "gflops_max": max(rates),
            "gflops_min": min(rates), "repeats": args.repeats, "calls_per_repeat": inner,
        })
    out = {"threads": torch.get_num_threads(), "torch_version": torch.__version__,
           "shapes": results}
    text = json.dumps(out, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


# ----------------------------------------------------------------------------- record
def cmd_record(args):
    with open(args.summary) as f:
        s = json.load(f)
    rec = {
        "model": args.model, "variant": args.variant, "round": args.round,
        "impl": s.get("impl"),
        "median_epoch_seconds": s.get("median_epoch_seconds"),
        "epoch_seconds": s.get("epoch_seconds"),
        "epochs_run": s.get("epochs_run"),
        "eval_test_seconds": s.get("eval_test_seconds"),
        "startup_seconds": s.get("startup_seconds"),
        "data_load_seconds": s.get("data_load_seconds"),
        "test_acc": s.get("test_acc"),
        "test_loss": s.get("test_loss"),
        "threads": s.get("threads"),
        "teacher_cache_seconds": s.get("teacher_cache_seconds"),
        "peak_rss_mb": args.rss_kb / 1024.0 if args.rss_kb is not None else None,
        "wall_seconds": args.wall,
        "cpu_busy_before": args.cpu_busy,
        "cpu_other_during": args.cpu_other,
    }
    if rec["median_epoch_seconds"] is None and rec["epoch_seconds"]:
        rec["median_epoch_seconds"] = statistics.median(rec["epoch_seconds"])
    print(json.dumps(rec))


# ----------------------------------------------------------------------------- report
def macs(sizes):
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def epoch_gflop(model, exact=False):
    """FLOPs of one training epoch (GFLOP).

    Convention (the brief's): forward = 2*MACs per sample, training = 3x forward.
    exact=True drops the input gradient of the first layer, which nobody computes
    (training = 3x forward - 1x first-layer forward).
    """
    def train_flop(sizes):
        f = 3 * 2 * macs(sizes)
        if exact:
            f -= 2 * sizes[0] * sizes[1]
        return f

    if model == "teacher":
        per_sample = train_flop(LAYERS["teacher"])
    elif model == "cnn":
        per_sample = 3 * 2 * CNN_MACS - (2 * 28 * 28 * 32 * 9 if exact else 0)
    elif model in ("student", "distill-cached", "student-aug"):
        per_sample = train_flop(LAYERS["student"])
    elif model == "distill":  # teacher forward every step
        per_sample = train_flop(LAYERS["student"]) + 2 * macs(LAYERS["teacher"])
    else:
        raise ValueError(model)
    return per_sample * TRAIN_SAMPLES / 1e9


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def cmd_report(args):
    recs = []
    with open(args.results) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    with open(args.gflops) as f:
        gf = json.load(f)
    with open(args.header) as f:
        hdr = json.load(f)

    # Aggregate: median over rounds of each run's figures.
    agg = {}
    for model in MODELS:
        for variant in VARIANTS:
            all_rs = [r for r in recs if r["model"] == model and r["variant"] == variant]
            if not all_rs:
                continue
            clean = [r for r in all_rs if (r.get("cpu_other_during") or 0) <= args.busy_limit]
            rs = clean or all_rs
            ep = [r["median_epoch_seconds"] for r in rs if r["median_epoch_seconds"] is not None]
            agg[(model, variant)] = {
                "n": f"{len(clean)}/{len(all_rs)}",
                "epoch": med(ep),
                "epoch_min": min(ep) if ep else None,
                "epoch_max": max(ep) if ep else None,
                "best": min((e for r in rs for e in (r["epoch_seconds"] or [])), default=None),
                "eval": med([r["eval_test_seconds"] for r in rs]),
                "startup": med([r["startup_seconds"] for r in rs]),
                "data": med([r["data_load_seconds"] for r in rs]),
                "rss": med([r["peak_rss_mb"] for r in rs]),
                "acc": med([r["test_acc"] for r in rs]),
                "wall": med([r.get("wall_seconds") for r in rs]),
                "threads": med([r["threads"] for r in rs]),
                "cache": med([r.get("teacher_cache_seconds") for r in rs]),
            }

    out = []
    w = out.append
    w("# kdtrain benchmark results")
    w("")
    w(f"- Date: {hdr.get('date', '?')}")
    w(f"- CPU: {hdr.get('cpu', '?')}")
    w(f"- Cores: {hdr.get('nproc', '?')} logical (nproc), {hdr.get('physical_cores', '?')} physical")
    w(f"- Threads used (kdtrain and PyTorch): {hdr.get('threads', '?')}")
    w(f"- torch (PyTorch reference and libtorch): {hdr.get('torch', '?')}")
    w(f"- kdtrain: {hdr.get('kdtrain', '?')}")
    w(f"- rustc: {hdr.get('rustc', '?')}")
    w(f"- Epochs per run: {hdr.get('epochs', '?')}; rounds: {hdr.get('rounds', '?')} "
      "(runs interleaved kdtrain, pytorch-memory, pytorch-dataloader within each round)")
    w(f"- Load average (1 min) at start / end: {hdr.get('loadavg_start', '?')} / {hdr.get('loadavg_end', '?')} "
      "(includes the benchmark's own runs)")
    w("")
    w("Every figure is the median over rounds of one run's figure; a run's seconds per epoch "
      "is the median of its epochs' training-loop times (evaluation excluded); (min–max) is "
      "the range of those run medians and 'best epoch' the fastest single epoch of all rounds. "
      "Ratios are kdtrain / PyTorch (below 1 = kdtrain faster). Peak RSS is the maximum "
      "resident set of the whole process (GNU time %M or getrusage). A run is 'clean' when "
      f"other processes used at most {args.busy_limit:g}% of the CPUs while it ran; only "
      "clean runs enter the medians unless a variant has none.")
    w("")

    for model in MODELS:
        rows = [(v, agg[(model, v)]) for v in VARIANTS if (model, v) in agg]
        if not rows:
            continue
        w(f"## {model}")
        w("")
        if model == "distill":
            w("Ratios compare like with like: kdtrain with its teacher cache against PyTorch with "
              "the same cache (`-cache` rows), `--no-teacher-cache` against PyTorch running the "
              "teacher on every batch.")
            w("")
        w("| implementation | s/epoch | (min–max) | best epoch s | vs pytorch-memory | vs pytorch-dataloader "
          "| eval test s | startup s | data load s | peak RSS MB | test acc | clean runs |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for v, a in rows:
            is_ours = v.startswith("kdtrain")
            mem = agg.get((model, reference_of(model, v, "memory")), {}).get("epoch")
            dl = agg.get((model, reference_of(model, v, "dataloader")), {}).get("epoch")
            # kdtrain-noaug is compared with kdtrain, not with the augmented twin.
            compared = is_ours and v != "kdtrain-noaug"
            r_mem = fmt(ratio(a["epoch"], mem), ".2f") if compared else ""
            r_dl = fmt(ratio(a["epoch"], dl), ".2f") if compared else ""
            name = v
            if v == "kdtrain" and model == "distill":
                name = "kdtrain (teacher cache)"
            elif v == "kdtrain-nocache":
                name = "kdtrain (--no-teacher-cache)"
            elif v == "kdtrain-noaug":
                name = "kdtrain (no augmentation)"
            elif model == "student-aug" and v == "kdtrain":
                name = "kdtrain (--augment shift2,flip)"
            elif v.endswith("-cache"):
                name = f"{v[:-len('-cache')]} (teacher cache)"
            w(f"| {name} | {fmt(a['epoch'], '.3f')} | {fmt(a['epoch_min'], '.3f')}–"
              f"{fmt(a['epoch_max'], '.3f')} | {fmt(a['best'], '.3f')} | {r_mem} | {r_dl} | {fmt(a['eval'], '.4f')} "
              f"| {fmt(a['startup'], '.2f')} | {fmt(a['data'], '.3f')} | {fmt(a['rss'], '.0f')} "
              f"| {fmt(a['acc'], '.4f')} | {a['n']} |")
        w("")

    # Distillation overhead relative to our student.
    st = agg.get(("student", "kdtrain"), {}).get("epoch")
    dc = agg.get(("distill", "kdtrain"), {}).get("epoch")
    dn = agg.get(("distill", "kdtrain-nocache"), {}).get("epoch")
    if st:
        w("## Distillation overhead (kdtrain)")
        w("")
        w("| | s/epoch | / kdtrain student s/epoch |")
        w("|---|---:|---:|")
        w(f"| kdtrain student | {fmt(st, '.3f')} | 1.00 |")
        if dc is not None:
            w(f"| kdtrain distill, teacher cache | {fmt(dc, '.3f')} | {fmt(ratio(dc, st), '.2f')} |")
        if dn is not None:
            w(f"| kdtrain distill, --no-teacher-cache | {fmt(dn, '.3f')} | {fmt(ratio(dn, st), '.2f')} |")
        w("")

    # Augmentation overhead: the same student with and without shift2,flip, interleaved.
    sa = agg.get(("student-aug", "kdtrain"), {}).get("epoch")
    sn = agg.get(("student-aug", "kdtrain-noaug"), {}).get("epoch")
    if sa and sn:
        w("## Augmentation overhead (kdtrain student)")
        w("")
        w("| | s/epoch | / without augmentation |")
        w("|---|---:|---:|")
        w(f"| train student | {fmt(sn, '.3f')} | 1.00 |")
        w(f"| train student --augment shift2,flip | {fmt(sa, '.3f')} | {fmt(ratio(sa, sn), '.2f')} |")
        w("")

    # Consistent teaching: the teacher cached on K views, or run on every batch.
    dac = agg.get(("distill-aug", "kdtrain"))
    dan = agg.get(("distill-aug", "kdtrain-nocache"))
    if dac and dan and dac["epoch"] and dan["epoch"]:
        w("## Consistent teaching with augmentation (kdtrain, cnn teacher, shift2,flip)")
        w("")
        w("| teacher's logits | cache s (once) | s/epoch | seconds for 60 epochs |")
        w("|---|---:|---:|---:|")
        c = dac["cache"] or 0.0
        w(f"| cached on 8 views per example | {fmt(dac['cache'], '.2f')} | {fmt(dac['epoch'], '.3f')} "
          f"| {c + 60 * dac['epoch']:.0f} |")
        w(f"| teacher on every batch (--no-teacher-cache) | – | {fmt(dan['epoch'], '.3f')} "
          f"| {60 * dan['epoch']:.0f} |")
        w("")

    # Matmul throughput and the physical bound.
    shapes = gf["shapes"]
    train = [s for s in shapes if not s["square"]]
    best = max(train, key=lambda s: s["gflops_median"])
    w(f"## fp32 matmul throughput (torch {gf.get('torch_version', '?')}, {gf.get('threads', '?')} threads)")
    w("")
    w("| shape | GFLOP/s (median) | min | max |")
    w("|---|---:|---:|---:|")
    for s in shapes:
        tag = " (square)" if s["square"] else ""
        w(f"| {s['shape']}{tag} | {s['gflops_median']:.1f} | {s['gflops_min']:.1f} | {s['gflops_max']:.1f} |")
    w("")
    g = best["gflops_median"]
    w(f"## Physical bound (best training shape: {best['shape']}, {g:.1f} GFLOP/s)")
    w("")
    w(f"FLOPs per epoch = {TRAIN_SAMPLES:,} samples x 3 x forward (forward = 2 x MACs); "
      "distill without cache adds one teacher forward, with the cache only the student trains. "
      "'exact' skips the first layer's input gradient, which is never computed. "
      "The bound counts matmuls only, at the best training-shape rate.")
    w("")
    w("| run | GFLOP/epoch | bound s/epoch | kdtrain s/epoch | kdtrain / bound "
      "| pytorch-memory / bound | GFLOP/epoch (exact) | bound s (exact) | kdtrain / bound (exact) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    bound_rows = [
        ("teacher", "teacher", ("teacher", "kdtrain"), ("teacher", "pytorch-memory")),
        ("student", "student", ("student", "kdtrain"), ("student", "pytorch-memory")),
        ("distill (teacher cache)", "distill-cached", ("distill", "kdtrain"),
         ("distill", "pytorch-memory-cache")),
        ("distill (no cache)", "distill", ("distill", "kdtrain-nocache"), ("distill", "pytorch-memory")),
    ]
    bound_rows.append(("cnn teacher, shift2,flip", "cnn", ("cnn", "kdtrain"), ("cnn", "pytorch-memory")))
    bound_rows = [r for r in bound_rows if r[2] in agg]
    for label, key, ours_key, pt_key in bound_rows:
        fl = epoch_gflop(key)
        fle = epoch_gflop(key, exact=True)
        b, be = fl / g, fle / g
        ours = agg.get(ours_key, {}).get("epoch")
        pt = agg.get(pt_key, {}).get("epoch") if pt_key else None
        w(f"| {label} | {fl:.2f} | {b:.3f} | {fmt(ours, '.3f')} | {fmt(ratio(ours, b), '.2f')} "
          f"| {fmt(ratio(pt, b), '.2f') if pt_key else ''} | {fle:.2f} | {be:.3f} "
          f"| {fmt(ratio(ours, be), '.2f')} |")
    w("")
    notes = hdr.get("notes") or []
    if notes:
        w("## Notes")
        w("")
        for n in notes:
            w(f"- {n}")
        w("")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("gflops")
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--target", type=float, default=0.1, help="seconds per timed repeat")
    p.add_argument("--out")
    p = sub.add_parser("record")
    p.add_argument("--summary", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--rss-kb", type=float)
    p.add_argument("--wall", type=float)
    p.add_argument("--cpu-busy", type=float, help="percent CPU other processes used just before")
    p.add_argument("--cpu-other", type=float, help="percent CPU other processes used during the run")
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--gflops", required=True)
    p.add_argument("--header", required=True)
    p.add_argument("--busy-limit", type=float, default=100.0,
                   help="drop runs with cpu_other_during above this when the variant has others")
    args = ap.parse_args()
    {"gflops": cmd_gflops, "record": cmd_record, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
