#!/usr/bin/env python3
"""Benchmark of kdtrain's image-folder reader against torchvision's ImageFolder, and of
training on a folder against training on the IDX files it was made from.

    bench_folder.py [--folder /tmp/fmnist-png] [--idx /usr/share/datasets/fashion-mnist]
        [--kdtrain target/release/kdtrain] [--rounds 3] [--epochs 3] [--threads 2]
        [--workers 2] [--device cpu] [--measure imagefolder,cold,cached,train]
        [--out bench/FOLDER.json] [--keep]

The folder is one scripts/data/fashion_mnist_folder.py writes (70,000 grey PNGs). In
each round, in this order (the two training runs alternate which goes first):

  imagefolder  torchvision's ImageFolder with PIL over FOLDER/train and FOLDER/test, read
               once through DataLoader(num_workers=--workers, batch_size=256,
               transform=ToTensor()); wall seconds from before the folders are scanned to
               the last batch.
  cold         `kdtrain train student --data-dir FOLDER --epochs 1` with KDTRAIN_CACHE_DIR a
               new empty folder: the seconds of kdtrain's line `data: ... read as folder
               in S s`, and the whole process's wall seconds and peak RSS.
  cached       the same command again with that cache folder, now filled.
  train        `kdtrain train student --epochs --epochs` on --idx and on FOLDER (with the
               round's filled cache folder, filled by an unrecorded 1-epoch run when cold
               and cached are not measured): summary.json's median_epoch_seconds and the
               process's peak RSS (from wait4).

kdtrain runs with OMP_NUM_THREADS=--threads and --threads, --device, --seed 42,
--out-dir a temporary folder. "Cold" means kdtrain's decoded cache is empty; the
operating system's page cache is not dropped, so every read after the first finds the
PNG files in memory, ImageFolder's as well as kdtrain's.

Writes --out (JSON: every raw figure, the machine, the kdtrain commit, the date) and the
same name with .md (the medians over the rounds and the ratios against their targets:
kdtrain cold / ImageFolder <= 0.5, cached read < 1.5 s, folder / IDX epoch seconds within
5%, folder / IDX peak RSS within 10%). Both files are written under a temporary name and
renamed into place. Each raw record also has the 1-minute load average before it and
the share of the CPUs other processes used during it (/proc/stat's busy time less this
script's and its children's). A kdtrain that refuses the folder, or reads it as something other
than a folder, stops the benchmark with its exit status and the end of its output.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

READ_LINE = re.compile(r"read as (\w+) in ([0-9.]+) s")
PARTS = ("imagefolder", "cold", "cached", "train")


def die(msg):
    sys.exit(f"bench_folder: error: {msg}")


def say(msg):
    print(f"bench_folder: {msg}", file=sys.stderr, flush=True)


def write_atomic(path, text):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def count_images(folder):
    n = 0
    for split in ("train", "test"):
        for _, _, files in os.walk(os.path.join(folder, split)):
            n += len(files)
    return n


class Busy:
    """How much of the machine's CPU time other processes used between start and stop:
    the busy time in /proc/stat less this process's and its reaped children's."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own():
        import resource

        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def others(self):
        """Fraction (0..1) of all CPUs' time used by other processes, or None."""
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        cpus = len(os.sched_getaffinity(0))
        other = (busy - self.busy0) - (self._own() - self.own0)
        return max(0.0, other / (wall * cpus)) if wall > 0 else None


# --- (a) torchvision ------------------------------------------------------------------

def read_imagefolder(folder, workers):
    """Seconds to read every image of FOLDER/train and FOLDER/test once, and the count."""
    import torch
    from torch.utils.data import ConcatDataset, DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    t0 = time.perf_counter()
    data = ConcatDataset(
        [ImageFolder(os.path.join(folder, s), transform=ToTensor()) for s in ("train", "test")]
    )
    loader = DataLoader(data, batch_size=256, num_workers=workers, shuffle=False)
    n = 0
    for x, _ in loader:
        if x.dtype != torch.float32:
            die(f"ImageFolder gave {x.dtype} batches, expected float32")
        n += x.shape[0]
    return time.perf_counter() - t0, n


# --- (b)-(d) kdtrain ------------------------------------------------------------------

def run_kdtrain(a, data_dir, epochs, cache_dir, out_dir, run_name, log_path):
    """Runs one `kdtrain train student`; returns its record (wall, peak RSS, read line,
    summary)."""
    cmd = [
        a.kdtrain, "train", "student",
        "--data-dir", data_dir,
        "--epochs", str(epochs),
        "--out-dir", out_dir,
        "--run-name", run_name,
        "--threads", str(a.threads),
        "--device", a.device,
        "--seed", "42",
    ]
    env = dict(os.environ, KDTRAIN_CACHE_DIR=cache_dir, OMP_NUM_THREADS=str(a.threads))
    load = os.getloadavg()[0]
    busy = Busy()
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 stdin=subprocess.DEVNULL)
        except OSError as e:
            die(f"cannot run {a.kdtrain}: {e}")
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    others = busy.others()
    with open(log_path, "rb") as f:
        output = f.read().decode("utf-8", "replace")
    if p.returncode != 0:
        tail = "\n".join(output.rstrip().splitlines()[-15:])
        die(
            f"kdtrain exited with status {p.returncode} reading {data_dir}\n"
            f"  command: {' '.join(cmd)}\n  KDTRAIN_CACHE_DIR={cache_dir}\n"
            f"  the end of its output ({log_path}):\n{tail}"
        )
    m = READ_LINE.search(output)
    if not m:
        die(f"kdtrain's output has no line 'data: ... read as <source> in <secs> s' "
            f"({' '.join(cmd)}; see {log_path})")
    summary_path = os.path.join(out_dir, run_name, "summary.json")
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        die(f"kdtrain finished but {summary_path} cannot be read: {e}")
    return {
        "data_dir": data_dir,
        "source": m.group(1),
        "read_seconds": float(m.group(2)),
        "wall_seconds": wall,
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mib": usage.ru_maxrss / 1024.0,
        "load_1min_before": load,
        "others_cpu_fraction": others,
        "median_epoch_seconds": summary.get("median_epoch_seconds"),
        "epoch_seconds": summary.get("epoch_seconds"),
        "data_load_seconds": summary.get("data_load_seconds"),
        "startup_seconds": summary.get("startup_seconds"),
        "test_acc": summary.get("test_acc"),
        "train_examples": summary.get("train_examples"),
        "command": cmd,
    }


def expect_folder(rec, what):
    if rec["source"] != "folder":
        die(f"kdtrain read {rec['data_dir']} as {rec['source']}, not as a folder ({what})")


# --- report ---------------------------------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def verdict(ok):
    return "—" if ok is None else ("yes" if ok else "**no**")


def report(result):
    r = result["rounds"]
    pick = lambda part, key: [x[part][key] for x in r if part in x]  # noqa: E731
    imf = median(pick("imagefolder", "seconds"))
    cold = median(pick("cold", "read_seconds"))
    cold_wall = median(pick("cold", "wall_seconds"))
    cold_rss = median(pick("cold", "peak_rss_mib"))
    cached = median(pick("cached", "read_seconds"))
    cached_wall = median(pick("cached", "wall_seconds"))
    ep_idx = median([x["train"]["idx"]["median_epoch_seconds"] for x in r if "train" in x])
    ep_fold = median([x["train"]["folder"]["median_epoch_seconds"] for x in r if "train" in x])
    rss_idx = median([x["train"]["idx"]["peak_rss_mib"] for x in r if "train" in x])
    rss_fold = median([x["train"]["folder"]["peak_rss_mib"] for x in r if "train" in x])
    ratio = lambda p, q: None if p is None or q is None else p / q  # noqa: E731
    cold_ratio = ratio(cold, imf)
    ep_ratio = ratio(ep_fold, ep_idx)
    rss_ratio = ratio(rss_fold, rss_idx)
    m = result["machine"]
    k = result["kdtrain"]
    kd = f"kdtrain {k['commit']} ({k['version']})" if k.get("binary") else "kdtrain not run"
    others = [x[part]["others_cpu_fraction"] for x in r for part in ("imagefolder", "cold", "cached")
              if part in x] + [x["train"][kind]["others_cpu_fraction"] for x in r if "train" in x
                               for kind in ("idx", "folder")]
    others = [o for o in others if o is not None]
    lines = [
        f"# Image-folder benchmark: {result['folder']}",
        "",
        f"{result['images']} images; {kd}, {result['date']}; {m['nproc']} CPUs "
        f"({m['cpu']}), load average at start {m['loadavg_start'][0]:.2f}; "
        f"{result['settings']['rounds']} rounds, medians; kdtrain --threads "
        f"{result['settings']['threads']} --device {result['settings']['device']}, "
        f"ImageFolder with {result['settings']['workers']} DataLoader workers; "
        "the page cache is warm (kdtrain's decoded cache is what 'cold' empties)"
        + (f"; other processes used up to {100 * max(others):.0f}% of the CPUs during a "
           "measured run." if others else "."),
        "",
        "| measure | median | target | met |",
        "|---|---:|---:|:---:|",
        f"| ImageFolder + DataLoader, read every image once (s) | {fmt(imf)} | | |",
        f"| kdtrain first read, decoded cache empty (s) | {fmt(cold)} | | |",
        f"| kdtrain first read / ImageFolder | {fmt(cold_ratio)} | ≤ 0.50 | "
        f"{verdict(None if cold_ratio is None else cold_ratio <= 0.5)} |",
        f"| kdtrain cached read (s) | {fmt(cached)} | < 1.50 | "
        f"{verdict(None if cached is None else cached < 1.5)} |",
        f"| kdtrain process wall, 1 epoch: cold / cached (s) | {fmt(cold_wall)} / "
        f"{fmt(cached_wall)} | | |",
        f"| kdtrain peak RSS, cold run (MiB) | {fmt(cold_rss, 0)} | | |",
        f"| epoch seconds, IDX / folder | {fmt(ep_idx)} / {fmt(ep_fold)} | | |",
        f"| epoch seconds, folder / IDX | {fmt(ep_ratio, 3)} | 0.95–1.05 | "
        f"{verdict(None if ep_ratio is None else abs(ep_ratio - 1) <= 0.05)} |",
        f"| peak RSS of {result['settings']['epochs']}-epoch training, IDX / folder (MiB) | "
        f"{fmt(rss_idx, 0)} / {fmt(rss_fold, 0)} | | |",
        f"| peak RSS, folder / IDX | {fmt(rss_ratio, 3)} | 0.90–1.10 | "
        f"{verdict(None if rss_ratio is None else abs(rss_ratio - 1) <= 0.10)} |",
        "",
    ]
    if result["not_measured"]:
        lines.append(f"Not measured in this run: {', '.join(result['not_measured'])}.")
    lines.append("Raw figures: the .json file of the same name.")
    return "\n".join(lines) + "\n"


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        mem = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem,
        "loadavg_start": list(os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def kdtrain_info(binary):
    info = {"binary": os.path.abspath(binary), "commit": None, "version": None}
    # The binary's repository: target/release/kdtrain -> the folder above target/.
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(binary))))
    for where in (repo, os.getcwd()):
        try:
            commit = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "-uno"],
                                   capture_output=True, text=True, check=True).stdout.strip()
            info["commit"] = commit + ("+dirty" if dirty else "")
            info["repo"] = where
            break
        except (OSError, subprocess.CalledProcessError):
            continue
    try:
        info["version"] = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                         timeout=30).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", default="/tmp/fmnist-png")
    p.add_argument("--idx", default="/usr/share/datasets/fashion-mnist",
                   help="the IDX files the folder was made from (the training comparison)")
    p.add_argument("--kdtrain", default="target/release/kdtrain")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="epochs of the training comparison")
    p.add_argument("--threads", type=int, default=2, help="kdtrain's threads and OMP_NUM_THREADS")
    p.add_argument("--workers", type=int, default=2, help="ImageFolder's DataLoader workers")
    p.add_argument("--device", default="cpu", help="kdtrain's --device (default cpu)")
    p.add_argument("--measure", default=",".join(PARTS),
                   help=f"comma list of {', '.join(PARTS)} (default all)")
    p.add_argument("--out", help="JSON to write (default bench/<folder's name>.json); "
                   "the table goes to the same name with .md")
    p.add_argument("--keep", action="store_true", help="keep the temporary run folders and logs")
    a = p.parse_args()

    parts = [x.strip() for x in a.measure.split(",") if x.strip()]
    for x in parts:
        if x not in PARTS:
            die(f"--measure: unknown part {x!r}; choose from {', '.join(PARTS)}")
    if a.rounds < 1 or a.epochs < 1 or a.threads < 1 or a.workers < 0:
        die("--rounds, --epochs and --threads must be at least 1, --workers at least 0")
    folder = os.path.abspath(a.folder)
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(folder, split)):
            die(f"{folder} has no {split}/ folder; make one with scripts/data/fashion_mnist_folder.py")
    uses_kdtrain = any(x != "imagefolder" for x in parts)
    if uses_kdtrain and not (os.path.isfile(a.kdtrain) and os.access(a.kdtrain, os.X_OK)):
        die(f"kdtrain binary {a.kdtrain} not found; build it with 'cargo build --release' "
            "or pass --kdtrain")
    if "train" in parts and not os.path.isdir(a.idx):
        die(f"--idx {a.idx} is not a folder (the IDX files for the training comparison)")
    out = a.out or os.path.join("bench", os.path.basename(folder.rstrip("/")) + ".json")
    md_path = os.path.splitext(out)[0] + ".md"

    machine = machine_info()
    images = count_images(folder)
    result = {
        "folder": folder,
        "idx": os.path.abspath(a.idx),
        "images": images,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "kdtrain": kdtrain_info(a.kdtrain) if uses_kdtrain else {"commit": None, "version": None},
        "settings": {k: getattr(a, k) for k in ("rounds", "epochs", "threads", "workers", "device")},
        "measured": parts,
        "not_measured": [x for x in PARTS if x not in parts],
        "rounds": [],
    }
    if "imagefolder" in parts:
        import torch
        import torchvision

        result["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    say(f"{images} images in {folder}; {a.rounds} rounds of {', '.join(parts)}; "
        f"load average {machine['loadavg_start'][0]:.2f} on {machine['nproc']} CPUs")

    work = tempfile.mkdtemp(prefix="bench-folder.")
    finished = False
    try:
        for rnd in range(a.rounds):
            rec = {"round": rnd + 1}
            cache = os.path.join(work, f"cache-{rnd + 1}")
            os.makedirs(cache)
            runs = os.path.join(work, "runs")
            logs = os.path.join(work, "logs")
            os.makedirs(logs, exist_ok=True)
            if "imagefolder" in parts:
                load = os.getloadavg()[0]
                busy = Busy()
                secs, n = read_imagefolder(folder, a.workers)
                others = busy.others()
                if n != images:
                    die(f"ImageFolder read {n} images, the folder holds {images} files")
                rec["imagefolder"] = {"seconds": secs, "images": n, "load_1min_before": load,
                                      "others_cpu_fraction": others}
                say(f"round {rnd + 1}: ImageFolder read {n} images in {secs:.2f} s "
                    f"(other processes used {fmt(None if others is None else 100 * others, 0)}% "
                    "of the CPUs)")
            if "cold" in parts or "cached" in parts:
                r = run_kdtrain(a, folder, 1, cache, runs, f"cold-{rnd + 1}",
                                os.path.join(logs, f"cold-{rnd + 1}.log"))
                expect_folder(r, "first read")
                if "cold" in parts:
                    rec["cold"] = r
                say(f"round {rnd + 1}: kdtrain first read {r['read_seconds']:.2f} s "
                    f"(process {r['wall_seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB)")
                if "cached" in parts:
                    r = run_kdtrain(a, folder, 1, cache, runs, f"cached-{rnd + 1}",
                                    os.path.join(logs, f"cached-{rnd + 1}.log"))
                    expect_folder(r, "cached read")
                    rec["cached"] = r
                    say(f"round {rnd + 1}: kdtrain cached read {r['read_seconds']:.2f} s "
                        f"(process {r['wall_seconds']:.1f} s)")
            if "train" in parts:
                if not os.listdir(cache):
                    # Without the cold/cached runs the cache is still empty: fill it first,
                    # so that both training runs start from data ready to use.
                    run_kdtrain(a, folder, 1, cache, runs, f"fill-{rnd + 1}",
                                os.path.join(logs, f"fill-{rnd + 1}.log"))
                order = ["idx", "folder"] if rnd % 2 == 0 else ["folder", "idx"]
                rec["train"] = {"order": order}
                for kind in order:
                    data_dir = folder if kind == "folder" else a.idx
                    r = run_kdtrain(a, data_dir, a.epochs, cache, runs, f"train-{kind}-{rnd + 1}",
                                    os.path.join(logs, f"train-{kind}-{rnd + 1}.log"))
                    if kind == "folder":
                        expect_folder(r, "training")
                    rec["train"][kind] = r
                    say(f"round {rnd + 1}: {a.epochs} epochs on {kind}: median epoch "
                        f"{fmt(r['median_epoch_seconds'])} s, peak RSS {r['peak_rss_mib']:.0f} MiB")
                if not os.listdir(cache):
                    say(f"note: kdtrain left nothing in KDTRAIN_CACHE_DIR ({cache})")
            result["rounds"].append(rec)
            if not a.keep:
                shutil.rmtree(os.path.join(work, "runs"), ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
        finished = True
    finally:
        if a.keep or not finished:
            say(f"kept the run folders, caches and logs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    result["machine"]["loadavg_end"] = list(os.getloadavg())
    table = report(result)
    write_atomic(out, json.dumps(result, indent=2) + "\n")
    write_atomic(md_path, table)
    print(table)
    say(f"wrote {out} and {md_path}")


if __name__ == "__main__":
    main()
