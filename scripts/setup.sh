#!/usr/bin/env bash
# One-time set-up, safe to run again: libtorch (PyTorch 2.11.0 from PyPI, in a virtual
# environment shared by every clone on this machine), the Fashion-MNIST data where apt
# is available, and a .cargo/config.toml that points cargo at that libtorch.
#
# Environment:
#   KDTRAIN_CACHE   where the shared virtual environment lives
#                   (default: ${XDG_CACHE_HOME:-$HOME/.cache}/kdtrain)
#   LIBTORCH        if set, cargo builds against your own libtorch instead
#   PYTHON          the python used to create the environment (default: python3)
set -euo pipefail

TORCH_VERSION=2.11.0
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${KDTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kdtrain}
venv="$cache/torch-$TORCH_VERSION"
python=${PYTHON:-python3}

say() { printf 'setup: %s\n' "$*" >&2; }

# 1. The data. Debian's package installs the four gzipped IDX files into
#    /usr/share/datasets/fashion-mnist, the last folder the program searches.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo=sudo
    say "installing Debian package dataset-fashion-mnist"
    if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; } >&2; then
      say "could not install dataset-fashion-mnist; use 'kdtrain --download' later"
    fi
  else
    say "apt-get not found: fetch the data later with '--download'"
  fi
else
  say "Fashion-MNIST found in /usr/share/datasets/fashion-mnist"
fi

# 2. libtorch: PyTorch from PyPI in a virtual environment shared by all clones. The
#    same environment holds the Python tools the tests and the benchmark use, so it is
#    made even when your own LIBTORCH is set (then only cargo's pointer differs).
#    torchvision 0.26 is the release paired with torch 2.11 (scripts/bench_folder.py's
#    ImageFolder); scikit-learn and pillow make the small data sets in scripts/data/.
packages="torch==$TORCH_VERSION torchvision==0.26.0 numpy safetensors tensorboard onnx onnxscript onnxruntime scikit-learn pillow"
marker="$venv/.complete-$(printf '%s' "$packages" | md5sum | cut -c1-8)"
if [ ! -f "$marker" ]; then
  say "installing $packages into $venv (about 4.7 GB, once per machine)"
  mkdir -p "$cache"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $packages
  touch "$marker"
else
  say "torch $TORCH_VERSION and the test tools already in $venv"
fi
if [ -n "${LIBTORCH:-}" ]; then
  say "LIBTORCH is set: building against $LIBTORCH"
  libtorch=$LIBTORCH
else
  libtorch=$("$venv/bin/python" -W ignore -c 'import os, torch; print(os.path.dirname(torch.__file__))')
fi

# 3. Point cargo at it. Cargo's [env] never overrides a variable already set, so a
#    LIBTORCH exported by the user still wins.
mkdir -p "$repo/.cargo"
cat > "$repo/.cargo/config.toml" <<TOML
# Written by scripts/setup.sh; not tracked by git. A LIBTORCH in your environment wins.
[env]
LIBTORCH = "$libtorch"
# The tests (TensorBoard's reader) and scripts/bench.sh (the PyTorch reference) use this python.
KDTRAIN_PYTHON = "$venv/bin/python"
TOML
say "wrote .cargo/config.toml (LIBTORCH=$libtorch)"
say "done: now 'cargo run --release -- reproduce' or 'cargo test --release'"
