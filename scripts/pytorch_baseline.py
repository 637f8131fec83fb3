"""Compares the Quick start's student alone, as kdtrain trained it
(docs/results/results.json), with the plain-PyTorch twin's runs of the same recipe
(scripts/pytorch_baseline.sh writes them as seed-N.json), and writes results.json and
results.md beside those.

Test accuracy is compared as two independent samples (each implementation draws its own
initialisation, shuffles and dropout from the seed, so the seeds are not paired): the
difference of means with Welch's 95% t-interval (scipy.stats.ttest_ind, equal_var=False).

Run: python3 scripts/pytorch_baseline.py --dir docs/results/pytorch-student \
         --kdtrain docs/results/results.json
"""
import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys

from scipy import stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True, help="folder of the twin's seed-N.json files")
    ap.add_argument("--kdtrain", required=True, help="kdtrain's results.json (reproduce)")
    args = ap.parse_args()
    out = pathlib.Path(args.dir)
    kd = json.loads(pathlib.Path(args.kdtrain).read_text())
    students = {r["seed"]: r for r in kd["runs"] if r["model"] == "student"}
    twin = {}
    for seed in kd["seeds"]:
        p = out / f"seed-{seed}.json"
        if not p.is_file():
            sys.exit(f"pytorch_baseline: {p} is missing; run scripts/pytorch_baseline.sh")
        twin[seed] = json.loads(p.read_text())
    hashes = {t["split_hash"] for t in twin.values()}
    if len(hashes) != 1 or f"hash {hashes.pop()})" not in kd["validation"]:
        sys.exit(f"pytorch_baseline: the twin's validation split is not kdtrain's "
                 f"({kd['validation']}); both must hold out the same images")
    seeds = kd["seeds"]
    a = [100 * students[s]["test_acc"] for s in seeds]
    b = [100 * twin[s]["test_acc"] for s in seeds]
    av = [100 * students[s]["best_val_acc"] for s in seeds]
    bv = [100 * twin[s]["best_val_acc"] for s in seeds]
    test = stats.ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(0.95)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "scripts/reference_pytorch.py",
         "scripts/pytorch_baseline.sh", "scripts/pytorch_baseline.py"],
        capture_output=True, text=True).stdout.split("\n")
    changed = [line[3:] for line in changed if line.strip()]
    if changed:
        commit += " with uncommitted changes to " + ", ".join(changed)
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ms = lambda xs: (statistics.mean(xs), statistics.stdev(xs))  # noqa: E731
    result = {
        "commit": commit,
        "made": made,
        "torch_version": twin[seeds[0]]["torch_version"],
        "seeds": seeds,
        "validation": kd["validation"],
        "kdtrain_results": args.kdtrain,
        "kdtrain_commit": kd["commit"],
        "kdtrain_test_acc": a,
        "pytorch_test_acc": b,
        "kdtrain_best_val_acc": av,
        "pytorch_best_val_acc": bv,
        "kdtrain_best_epoch": [students[s]["best_epoch"] for s in seeds],
        "pytorch_best_epoch": [twin[s]["best_epoch"] for s in seeds],
        "difference": statistics.mean(a) - statistics.mean(b),
        "welch_95": [ci.low, ci.high],
        "welch_p": test.pvalue,
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / "results.json")
    (ka, ks), (pa, ps) = ms(a), ms(b)
    (kva, kvs), (pva, pvs) = ms(av), ms(bv)
    rows = "\n".join(
        f"| {s} | {a[i]:.2f} | {b[i]:.2f} | {av[i]:.2f} | {bv[i]:.2f} | "
        f"{students[s]['best_epoch']} | {twin[s]['best_epoch']} |"
        for i, s in enumerate(seeds))
    md = f"""The Quick start's student alone (`mlp:128,dropout=0.1`, 200 epochs, the epoch of the best validation accuracy kept; validation: {kd['validation']}), trained by kdtrain and by the plain-PyTorch twin `scripts/reference_pytorch.py` (torch {result['torch_version']}, fused Adam) with the same recipe. Accuracy in percent, mean ± sample sd over seeds {', '.join(map(str, seeds))}; each implementation draws its own initialisation, shuffles and dropout from a seed, so the seeds are not paired.

| | kdtrain | PyTorch twin |
| --- | ---: | ---: |
| test accuracy | {ka:.2f} ± {ks:.2f} | {pa:.2f} ± {ps:.2f} |
| best validation accuracy | {kva:.2f} ± {kvs:.2f} | {pva:.2f} ± {pvs:.2f} |

kdtrain minus PyTorch, test accuracy: {result['difference']:+.2f} points, Welch 95% interval {ci.low:+.2f} to {ci.high:+.2f}.

| seed | kdtrain test | PyTorch test | kdtrain val | PyTorch val | kdtrain best epoch | PyTorch best epoch |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{rows}

kdtrain's runs: {args.kdtrain} (commit {kd['commit']}). The twin's: seed-N.json here, made by scripts/pytorch_baseline.sh at commit {commit} on {made}.
"""
    tmp = out / "results.md.tmp"
    tmp.write_text(md)
    os.replace(tmp, out / "results.md")
    print(md)


if __name__ == "__main__":
    main()
