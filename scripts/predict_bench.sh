#!/usr/bin/env bash
# Times `kdtrain predict` and writes bench/predict.json (medians over ROUNDS rounds).
#   start-up: wall time of `predict CKPT one.png` (process start, libtorch loading,
#             checkpoint, one image, exit);
#   10k:      wall time of `predict CKPT t10k-images-idx3-ubyte.gz` (10,000 images, output
#             to /dev/null);
#   per image: (10k - start-up) / 9,999; also the PNG path: 100 PNGs of 112x112 in a folder.
# predict's own stderr line splits the 10k run into checkpoint, reading, inference, output.
#
# Usage: scripts/predict_bench.sh [CKPT] [DATA_DIR] [ROUNDS]
# Without CKPT a student is trained for 2 epochs into a temporary folder.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
data=${2:-${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}}
rounds=${3:-7}
python=$(sed -n 's/^KDTRAIN_PYTHON = "\(.*\)"$/\1/p' .cargo/config.toml 2>/dev/null || true)
python=${KDTRAIN_PYTHON:-${python:-python3}}
cargo build --release -q
kd=$repo/target/release/kdtrain
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ckpt=${1:-}
if [ -z "$ckpt" ]; then
  "$kd" train student --epochs 2 --data-dir "$data" --out-dir "$tmp" --run-name s --quiet >/dev/null
  ckpt=$tmp/s/model.safetensors
fi
idx=$data/t10k-images-idx3-ubyte.gz
[ -f "$idx" ] || idx=$data/t10k-images-idx3-ubyte
mkdir -p "$tmp/pngs"
"$python" - "$idx" "$tmp/pngs" <<'PY'
import gzip, os, struct, sys, zlib
import numpy as np
idx, out = sys.argv[1:3]
raw = (gzip.open if idx.endswith(".gz") else open)(idx, "rb").read()
imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
for i in range(100):
    a = imgs[i].repeat(4, 0).repeat(4, 1)
    rows = b"".join(b"\0" + r.tobytes() for r in a)
    with open(os.path.join(out, f"{i:03}.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 112, 112, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
PY
one=$tmp/pngs/000.png

wall() { # seconds of wall time of "$@", stdout discarded, stderr to $tmp/err
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>"$tmp/err"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
: > "$tmp/rows"
"$kd" predict "$ckpt" "$idx" >/dev/null 2>&1  # warm the page cache
for r in $(seq "$rounds"); do
  s1=$(wall "$kd" predict "$ckpt" "$one")
  s10k=$(wall "$kd" predict "$ckpt" "$idx")
  parts=$(grep '^predict:' "$tmp/err")
  s100=$(wall "$kd" predict "$ckpt" "$tmp/pngs")
  echo "$s1 $s10k $s100 $parts" >> "$tmp/rows"
  echo "round $r: one image $s1 s, 10,000 IDX images $s10k s, 100 PNGs $s100 s; $parts" >&2
done

"$python" - "$tmp/rows" "$ckpt" "$rounds" <<'PY' > bench/predict.json
import json, platform, re, statistics as st, subprocess, sys
rows = [l.split(None, 3) for l in open(sys.argv[1])]
med = lambda xs: round(st.median(xs), 4)
one = [float(r[0]) for r in rows]; tenk = [float(r[1]) for r in rows]; png = [float(r[2]) for r in rows]
def part(name):
    return med([float(re.search(name + r" ([0-9.]+) s", r[3]).group(1)) for r in rows])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(json.dumps({
    "what": "wall seconds of kdtrain predict, medians over rounds (scripts/predict_bench.sh)",
    "date": subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True,
                           text=True).stdout.strip(),
    "commit": subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True).stdout.strip() or "?",
    "rounds": int(sys.argv[3]),
    "machine": {"cpu": cpu, "cores": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
                "os": platform.platform()},
    "startup_one_png_s": med(one),
    "idx_10000_images_s": med(tenk),
    "idx_10000_after_startup_s": round(med(tenk) - med(one), 4),
    "idx_per_image_us": round((med(tenk) - med(one)) / 9999 * 1e6, 2),
    "png_100_112x112_s": med(png),
    "png_per_image_ms": round((med(png) - med(one)) / 99 * 1e3, 3),
    "idx_10000_inside": {"checkpoint_s": part("checkpoint"), "reading_s": part("reading"),
                          "inference_s": part("inference"), "output_s": part("output")},
    "samples": {"startup_one_png_s": one, "idx_10000_images_s": tenk, "png_100_s": png},
}, indent=2))
PY
cat bench/predict.json
