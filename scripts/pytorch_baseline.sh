#!/usr/bin/env bash
# The Quick start's student alone, trained again by the plain-PyTorch twin
# (scripts/reference_pytorch.py) with kdtrain's recipe: the same 784-128-10 MLP with
# dropout 0.1 after the hidden ReLU, Glorot-uniform weights, Adam (amsgrad, eps 1e-7,
# fused), Keras' cosine decay from 1e-3 to 1e-4 over 200 epochs of batch 256, kdtrain's
# validation split (split_seed 20150309; the twin checks its hash), and the epoch of the
# best validation accuracy kept. The seeds are those of docs/results/results.json, whose
# student runs it is compared with (scripts/pytorch_baseline.py): does kdtrain's baseline
# train as well as PyTorch's, so that the distillation gain is not a weak baseline's?
#
# Usage: scripts/pytorch_baseline.sh            (about 8 min on 2 cores)
# Writes docs/results/pytorch-student/ (seed-N.json, results.json, results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(sed -n 's/^KDTRAIN_PYTHON *= *"\(.*\)"/\1/p' .cargo/config.toml 2>/dev/null | head -n1)
python=${KDTRAIN_PYTHON:-${python:-python3}}
dest=docs/results/pytorch-student
mkdir -p "$dest"
seeds=$("$python" -c 'import json; print(" ".join(str(s) for s in json.load(open("docs/results/results.json"))["seeds"]))')
for seed in $seeds; do
  "$python" scripts/reference_pytorch.py student --epochs 200 --pipeline memory --adam fused \
    --dropout 0.1 --split-seed 20150309 --select --seed "$seed" --threads 2 \
    --out "$dest/seed-$seed.json.tmp"
  mv "$dest/seed-$seed.json.tmp" "$dest/seed-$seed.json"
  echo "pytorch_baseline: seed $seed done" >&2
done
"$python" scripts/pytorch_baseline.py --dir "$dest" --kdtrain docs/results/results.json
