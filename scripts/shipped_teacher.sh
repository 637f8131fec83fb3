#!/usr/bin/env bash
# Retrains the teacher shipped in teachers/ with its recorded command
# (teachers/fashion-mnist-cnn.toml: 60 epochs, about 27 minutes on 2 cores) and says
# whether its weights are the shipped file's. EPOCHS=1 runs the shortened command, whose
# weights teachers/fashion-mnist-cnn.epoch1.sha256 records (what the test
# shipped_teacher::the_recorded_command_shortened_gives_the_recorded_weights checks).
# Weights are compared, not files: a checkpoint's metadata also holds the run's folder.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
out=$(mktemp -d)
epochs=()
if [ -n "${EPOCHS:-}" ]; then epochs=(--epochs "$EPOCHS"); fi
target/release/kdtrain train teacher --config teachers/fashion-mnist-cnn.toml "${epochs[@]}" \
  --out-dir "$out" --run-name teacher --quiet
weights() {
  python3 - "$1" <<'PY'
import hashlib, json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
header = json.loads(b[8:8 + n])
h = hashlib.sha256()
for name in sorted(k for k in header if k != "__metadata__"):
    t = header[name]
    lo, hi = t["data_offsets"]
    h.update(name.encode())
    h.update(f"{t['dtype']}{t['shape']}".encode())
    h.update(b[8 + n + lo:8 + n + hi])
print(h.hexdigest())
PY
}
got=$(weights "$out/teacher/model.safetensors")
if [ -n "${EPOCHS:-}" ]; then want=$(cat teachers/fashion-mnist-cnn.epoch1.sha256); else want=$(weights teachers/fashion-mnist-cnn.safetensors); fi
echo "retrained: $got"
echo "recorded:  $want"
if [ "$got" = "$want" ]; then echo "the same weights"; else echo "different weights"; exit 1; fi
