#!/usr/bin/env bash
# Regenerates docs/predict-example.txt, the predict output quoted in README's "Use the
# student", and puts it into README.md. Trains a student for 5 epochs (seed 42) into a
# temporary folder, saves two Fashion-MNIST test images as PNG under docs/examples/ (one
# as it is at 28x28, one as a dark object on white at 4x in colour, as a product photo
# would be), and runs predict on them and on one IDX image.
#
# Usage: scripts/predict_example.sh [DATA_DIR]   (default /usr/share/datasets/fashion-mnist)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
data=${1:-${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}}
python=$(sed -n 's/^KDTRAIN_PYTHON = "\(.*\)"$/\1/p' .cargo/config.toml 2>/dev/null || true)
python=${KDTRAIN_PYTHON:-${python:-python3}}
cargo build --release -q
kd=target/release/kdtrain
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$kd" train student --epochs 5 --seed 42 --data-dir "$data" --out-dir "$tmp" --run-name student --quiet >&2

# Test images 0 (an ankle boot) and 1 (a pullover): numpy and the PNG writer of the
# standard library only, so this needs no imaging package.
"$python" - "$data" docs/examples <<'PY'
import gzip, os, struct, sys, zlib
import numpy as np
data, out = sys.argv[1:3]
path = os.path.join(data, "t10k-images-idx3-ubyte.gz")
raw = gzip.open(path, "rb").read() if os.path.exists(path) else open(path[:-3], "rb").read()
imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)

def png(name, a):
    h, w = a.shape[:2]
    colour = 2 if a.ndim == 3 else 0
    rows = b"".join(b"\0" + a[y].tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    with open(os.path.join(out, name), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))

png("ankle-boot-28x28.png", imgs[0])
# Dark on white, 4x, tinted blue: grey v -> (0.8v, 0.9v, v) of the inverse.
inv = (255 - imgs[1]).repeat(4, 0).repeat(4, 1).astype(np.float32)
png("pullover-dark-on-white-112x112.png", np.stack([inv * 0.8, inv * 0.9, inv], -1).round().astype(np.uint8))
PY

{
  printf '$ kdtrain predict student/model.safetensors docs/examples t10k-images-idx3-ubyte.gz --index 2\n'
  (cd "$data" && "$repo/$kd" predict "$tmp/student/model.safetensors" "$repo/docs/examples" t10k-images-idx3-ubyte.gz --index 2 --quiet) \
    | sed "s|$repo/||"
} > docs/predict-example.txt
cat docs/predict-example.txt

# README: the block after "committed as [`docs/predict-example.txt`]".
"$python" - <<'PY'
import re
readme = open("README.md").read()
example = open("docs/predict-example.txt").read()
new, n = re.subn(r"(committed as \[`docs/predict-example.txt`\]\(docs/predict-example.txt\):\n\n```text\n).*?```",
                 lambda m: m.group(1) + example + "```", readme, flags=re.S)
assert n == 1, "README marker not found"
open("README.md", "w").write(new)
PY
