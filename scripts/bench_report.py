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
import re
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
# kdtrain's variants, in table order; the PyTorch twin's are `pytorch-<pipeline>-<adam>`
# with `-compile` and `-cache` suffixes (see scripts/bench.sh), listed fastest first.
OURS = ["kdtrain", "kdtrain-nocache", "kdtrain-noaug"]
VARIANT_RE = re.compile(r"^(kdtrain(-nocache|-noaug)?|pytorch-(memory|dataloader)"
                        r"(-(fused|foreach|single))?(-compile)?(-cache)?)$")
# `cnn`: the --arch cnn teacher with shift2,flip augmentation; `student-aug`: the student
# with shift2,flip augmentation (its `kdtrain-noaug` variant: the same run without).
MODELS = ("teacher", "student", "distill", "cnn", "student-aug", "distill-aug")
# MACs of one forward pass of cnn:32,64,256: conv 28x28x1x32x9, conv 14x14x32x64x9,
# linear 3136x256 and 256x10 (batch norm, ReLU and pooling are not MACs).
CNN_MACS = 28 * 28 * 1 * 32 * 9 + 14 * 14 * 32 * 64 * 9 + 3136 * 256 + 256 * 10


def fastest_reference(agg, model, variant):
    """The PyTorch variant a kdtrain variant is compared with: the fastest twin run of the
    model, like with like (kdtrain's distillation with its teacher cache against PyTorch
    with the same cache, --no-teacher-cache against PyTorch running the teacher on every
    batch). None for kdtrain-noaug (compared with kdtrain) or when there is none."""
    if variant == "kdtrain-noaug":
        return None
    want_cache = model in ("distill", "distill-aug") and variant == "kdtrain"
    rows = [(a["epoch"], v) for (m, v), a in agg.items()
            if m == model and v.startswith("pytorch-") and v.endswith("-cache") == want_cache
            and a["epoch"] is not None]
    return min(rows)[1] if rows else None


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
def steady_median(epochs):
    """A run's seconds per epoch: the median of its epochs after the first (the first
    pays for warm-up: torch.compile's compilation, the allocator's first pages, libgomp's
    threads), or of all of them when there is only one."""
    if not epochs:
        return None
    return statistics.median(epochs[1:] if len(epochs) > 1 else epochs)


def cmd_record(args):
    if not VARIANT_RE.match(args.variant):
        sys.exit(f"bench_report.py record: unknown --variant {args.variant!r}")
    with open(args.summary) as f:
        s = json.load(f)
    rec = {
        "model": args.model, "variant": args.variant, "round": args.round,
        "impl": s.get("impl"),
        "median_epoch_seconds": steady_median(s.get("epoch_seconds")),
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


def git_commit():
    """The checkout's commit, and the tracked files that differ from it (the code the
    benchmark ran may include them), as one line; '?' outside a git checkout."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True,
                               check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "?"
    files = sorted(line[3:] for line in dirty if line.strip())
    return head + (f" with uncommitted changes to {', '.join(files)}" if files else "")


def aggregate(recs, busy_limit):
    """{(model, variant): medians over rounds of each run's figures}, from clean runs
    (other processes used at most `busy_limit`% of the CPUs) unless a variant has none."""
    agg = {}
    variants = OURS + sorted({r["variant"] for r in recs} - set(OURS))
    for model in MODELS:
        for variant in variants:
            all_rs = [r for r in recs if r["model"] == model and r["variant"] == variant]
            if not all_rs:
                continue
            clean = [r for r in all_rs if (r.get("cpu_other_during") or 0) <= busy_limit]
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

    return agg


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


SPEED_ROWS = [
    ("MLP teacher (784-512-256-128-10)", "teacher", "kdtrain"),
    ("student (784-128-10)", "student", "kdtrain"),
    ("distill, teacher cache on both sides", "distill", "kdtrain"),
    ("distill, teacher on every batch", "distill", "kdtrain-nocache"),
    ("CNN teacher, shift2,flip", "cnn", "kdtrain"),
]


def cmd_speed(args):
    """The README's speed table: each model's kdtrain run against the fastest PyTorch run
    of the same benchmark file, like with like, with time and peak memory ratios."""
    out = ["| model | kdtrain s/epoch | fastest PyTorch run | its s/epoch | kdtrain / PyTorch "
           "| kdtrain peak RSS MB | PyTorch peak RSS MB | kdtrain / PyTorch |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
    sources = []
    for path in args.results:
        agg = aggregate(read_jsonl(path), args.busy_limit)
        md = os.path.splitext(path)[0]
        md = os.path.join(os.path.dirname(path), os.path.basename(md).upper() + ".md") \
            if os.path.basename(md) == "results" else md + ".md"
        head = {}
        if os.path.exists(md):
            for line in open(md):
                for key in ("Date", "Commit"):
                    if line.startswith(f"- {key}: "):
                        head[key] = line[len(key) + 4:].strip()
        sources.append(f"`{os.path.relpath(md, args.root)}` (made {head.get('Date', '?')}, "
                       f"commit {head.get('Commit', '?')})")
        for label, model, ours in SPEED_ROWS:
            a = agg.get((model, ours))
            if not a:
                continue
            ref = fastest_reference(agg, model, ours)
            b = agg.get((model, ref), {})
            out.append(f"| {label} | {fmt(a['epoch'], '.3f')} | {ref or '–'} "
                       f"| {fmt(b.get('epoch'), '.3f')} | {fmt(ratio(a['epoch'], b.get('epoch')), '.2f')} "
                       f"| {fmt(a['rss'], '.0f')} | {fmt(b.get('rss'), '.0f')} "
                       f"| {fmt(ratio(a['rss'], b.get('rss')), '.2f')} |")
    text = "\n".join(out) + "\n\nFrom " + " and ".join(sources) + ".\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


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

    agg = aggregate(recs, args.busy_limit)

    out = []
    w = out.append
    w("# kdtrain benchmark results")
    w("")
    w(f"- Date: {hdr.get('date', '?')}")
    w(f"- Commit: {hdr.get('commit') or git_commit()}")
    w(f"- CPU: {hdr.get('cpu', '?')}")
    w(f"- Cores: {hdr.get('nproc', '?')} logical (nproc), {hdr.get('physical_cores', '?')} physical")
    w(f"- Threads used (kdtrain and PyTorch): {hdr.get('threads', '?')}")
    w(f"- torch (PyTorch reference and libtorch): {hdr.get('torch', '?')}")
    w(f"- kdtrain: {hdr.get('kdtrain', '?')}")
    w(f"- rustc: {hdr.get('rustc', '?')}")
    w(f"- Epochs per run: {hdr.get('epochs', '?')}; rounds: {hdr.get('rounds', '?')} "
      "(within each round the runs are interleaved: kdtrain, then each PyTorch variant)")
    w(f"- Load average (1 min) at start / end: {hdr.get('loadavg_start', '?')} / {hdr.get('loadavg_end', '?')} "
      "(includes the benchmark's own runs)")
    w("")
    w("Every figure is the median over rounds of one run's figure; a run's seconds per epoch "
      "is the median of its epochs' training-loop times after the first (the first pays for "
      "warm-up and torch.compile's compilation; evaluation excluded); (min–max) is "
      "the range of those run medians and 'best epoch' the fastest single epoch of all rounds. "
      "Ratios are kdtrain / the fastest PyTorch row of the same model, like with like "
      "(below 1 = kdtrain faster, or smaller). PyTorch rows are named "
      "pytorch-<pipeline>-<Adam> (fused=True, foreach=True, or the single-tensor loop), "
      "-compile for torch.compile, -cache for the teacher cache. Peak RSS is the maximum "
      "resident set of the whole process (GNU time %M or getrusage). A run is 'clean' when "
      f"other processes used at most {args.busy_limit:g}% of the CPUs while it ran; only "
      "clean runs enter the medians unless a variant has none.")
    w("")

    for model in MODELS:
        ours = [(v, agg[(model, v)]) for v in OURS if (model, v) in agg]
        theirs = sorted(((v, a) for (m, v), a in agg.items() if m == model and v not in OURS),
                        key=lambda va: (va[0].endswith("-cache"), va[1]["epoch"] or 1e9))
        rows = ours + theirs
        if not rows:
            continue
        w(f"## {model}")
        w("")
        if model == "distill":
            w("Like with like: kdtrain with its teacher cache against the fastest PyTorch row "
              "with the same cache (`-cache` rows), `--no-teacher-cache` against the fastest "
              "PyTorch row running the teacher on every batch.")
            w("")
        w("| implementation | s/epoch | (min–max) | best epoch s | compared with | time ratio "
          "| peak RSS ratio | eval test s | startup s | data load s | peak RSS MB | test acc "
          "| clean runs |")
        w("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for v, a in rows:
            ref = fastest_reference(agg, model, v) if v in OURS else None
            ra = agg.get((model, ref), {})
            r_t = fmt(ratio(a["epoch"], ra.get("epoch")), ".2f") if ref else ""
            r_m = fmt(ratio(a["rss"], ra.get("rss")), ".2f") if ref else ""
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
              f"{fmt(a['epoch_max'], '.3f')} | {fmt(a['best'], '.3f')} | {ref or ''} | {r_t} "
              f"| {r_m} | {fmt(a['eval'], '.4f')} "
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
      "| fastest PyTorch / bound | GFLOP/epoch (exact) | bound s (exact) | kdtrain / bound (exact) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    bound_rows = [
        ("teacher", "teacher", ("teacher", "kdtrain")),
        ("student", "student", ("student", "kdtrain")),
        ("distill (teacher cache)", "distill-cached", ("distill", "kdtrain")),
        ("distill (no cache)", "distill", ("distill", "kdtrain-nocache")),
        ("cnn teacher, shift2,flip", "cnn", ("cnn", "kdtrain")),
    ]
    bound_rows = [(label, key, ours, (ours[0], fastest_reference(agg, *ours)))
                  for label, key, ours in bound_rows]
    bound_rows = [r for r in bound_rows if r[2] in agg]
    for label, key, ours_key, pt_key in bound_rows:
        fl = epoch_gflop(key)
        fle = epoch_gflop(key, exact=True)
        b, be = fl / g, fle / g
        ours = agg.get(ours_key, {}).get("epoch")
        pt = agg.get(pt_key, {}).get("epoch") if pt_key[1] else None
        w(f"| {label} | {fl:.2f} | {b:.3f} | {fmt(ours, '.3f')} | {fmt(ratio(ours, b), '.2f')} "
          f"| {fmt(ratio(pt, b), '.2f') if pt_key[1] else ''} | {fle:.2f} | {be:.3f} "
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
    p.add_argument("--variant", required=True)
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
    p = sub.add_parser("speed", help="the README's speed table (bench/SPEED.md)")
    p.add_argument("--results", action="append", required=True,
                   help="a benchmark's raw runs (bench/results.jsonl; repeat for more)")
    p.add_argument("--busy-limit", type=float, default=15.0)
    p.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--out")
    args = ap.parse_args()
    {"gflops": cmd_gflops, "record": cmd_record, "report": cmd_report,
     "speed": cmd_speed}[args.cmd](args)


if __name__ == "__main__":
    main()
