#!/usr/bin/env python3
"""Fashion-MNIST's four IDX files written out as an image folder of 8-bit grey PNGs, the
data set kdtrain's folder reader and scripts/bench_folder.py use.

    fashion_mnist_folder.py [--from DIR] [--out DIR] [--workers 2] [--overwrite]

  --from       folder with train-images-idx3-ubyte, train-labels-idx1-ubyte,
               t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each gzipped (.gz) or not
               (default /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist)
  --out        the folder to make (default /tmp/fmnist-png)
  --workers    processes writing PNGs (default 2)
  --overwrite  replace an existing --out (else it is refused)

Writes OUT/train/<k>-<name>/<index:05d>.png (60,000) and OUT/test/<k>-<name>/<index:05d>.png
(10,000): k is the label, name the class's name with '/' as '_' (0-T-shirt_top,
1-Trouser, ..., 9-Ankle boot), so the folders sorted as torchvision's ImageFolder sorts
them give the IDX labels; index is the image's position in its IDX file. The pixels are
the IDX bytes unchanged (PIL, mode L, default compression). Everything is written into a
temporary folder beside OUT, which is then renamed to OUT.
"""
import argparse
import gzip
import multiprocessing
import os
import shutil
import struct
import sys
import tempfile
import time

import numpy as np

CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def folder_name(k):
    return f"{k}-{CLASSES[k].replace('/', '_')}"


def read_idx(folder, stem):
    """The uint8 array of IDX file `stem` (or `stem`.gz) in `folder`."""
    for name in (stem + ".gz", stem):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            break
    else:
        sys.exit(f"fashion_mnist_folder: {stem}(.gz) missing in {folder}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        sys.exit(f"fashion_mnist_folder: {path}: {e}")
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        sys.exit(f"fashion_mnist_folder: {path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        sys.exit(f"fashion_mnist_folder: {path}: header says {shape}, {len(body)} bytes follow")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape), path


# Filled by main before the workers fork; the workers read them without copying.
JOBS = {}


def write_chunk(job):
    from PIL import Image

    split, start, end = job
    images, labels, root = JOBS[split]
    for i in range(start, end):
        Image.fromarray(images[i]).save(
            os.path.join(root, split, folder_name(labels[i]), f"{i:05d}.png")
        )
    return end - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="src", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default="/tmp/fmnist-png")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args()
    if a.workers < 1:
        sys.exit(f"fashion_mnist_folder: --workers must be at least 1, got {a.workers}")
    out = os.path.abspath(a.out)
    if os.path.lexists(out) and not a.overwrite:
        sys.exit(f"fashion_mnist_folder: {out} exists; pass --overwrite to replace it")

    t0 = time.monotonic()
    for split, (images_stem, labels_stem) in SPLITS.items():
        images, ipath = read_idx(a.src, images_stem)
        labels, lpath = read_idx(a.src, labels_stem)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            sys.exit(
                f"fashion_mnist_folder: {ipath} {images.shape} and {lpath} {labels.shape} "
                "are not images [n, rows, cols] and their n labels"
            )
        if labels.max() >= len(CLASSES):
            sys.exit(f"fashion_mnist_folder: {lpath} has label {labels.max()}, Fashion-MNIST has 10")
        JOBS[split] = (images, labels, None)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folders are 0700
        jobs = []
        for split, (images, labels, _) in JOBS.items():
            JOBS[split] = (images, labels, tmp)
            for k in range(len(CLASSES)):
                os.makedirs(os.path.join(tmp, split, folder_name(k)))
            step = 2000
            jobs += [(split, s, min(s + step, len(labels))) for s in range(0, len(labels), step)]
        if a.workers == 1:
            written = sum(map(write_chunk, jobs))
        else:
            with multiprocessing.get_context("fork").Pool(a.workers) as pool:
                written = sum(pool.imap_unordered(write_chunk, jobs))
        if os.path.lexists(out):
            old = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".old.", dir=parent)
            os.replace(out, os.path.join(old, "x"))
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    counts = ", ".join(f"{len(JOBS[s][1])} {s}" for s in SPLITS)
    print(
        f"fashion_mnist_folder: wrote {written} PNGs ({counts}) from {a.src} to {out} "
        f"in {time.monotonic() - t0:.1f} s with {a.workers} worker(s)"
    )


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


if __name__ == "__main__":
    main()
