#!/usr/bin/env python3
"""A small synthetic colour data set of five shapes as an image folder, and optionally a
PyTorch TorchScript teacher trained on it; kdtrain's tests use both.

    colour_shapes.py [--out DIR] [--train-per-class 200] [--test-per-class 60] [--seed 0]
        [--teacher PATH.pt] [--epochs 20] [--threads 1] [--overwrite]

Writes OUT/train/<class>/<index:04d>.png and OUT/test/<class>/<index:04d>.png, RGB 32x32
8-bit PNGs, for the classes circle, cross, square, stripes and triangle (labels 0-4,
their sorted order, as torchvision's ImageFolder and kdtrain number them). Each image is
a background of one random dark colour (each channel uniform in 0..120) and one shape of
a random light colour (each channel in 140..255), at a random position, size (radius 5 to
11 pixels) and rotation, plus Gaussian noise (sigma 24) on every pixel and channel. The
images of a split are drawn by (seed, split) alone, so --train-per-class does not change
the test images; index is the image's position in its split (classes alternate).

With --teacher, a small CNN (conv 3x3 16-32-64 with ReLU and max-pooling, global max
pooling, linear 64-5; 23,909 parameters) is trained on the training split (Adam, lr 2e-3,
batch 64, --epochs), its test accuracy printed (about 0.93 with the defaults), and it is saved with torch.jit.trace in eval mode.
Its input is [batch, 3, 32, 32] float32 = pixels / 255, channel-major RGB; its output
[batch, 5] logits in the class order above. The training is seeded from --seed and runs
on --threads CPU threads (default 1, the same weights each run).

The folder is built in a temporary folder beside OUT and renamed to OUT; the teacher is
saved under a temporary name beside PATH and renamed.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

CLASSES = ["circle", "cross", "square", "stripes", "triangle"]
SIZE = 32
NOISE = 24.0
R_MIN, R_MAX = 5.0, 11.0  # the shape's radius, pixels


def shape_mask(kind, rng):
    """Boolean [32, 32] mask of one shape of kind `kind` at a random place, size, angle."""
    r = rng.uniform(R_MIN, R_MAX)
    cx, cy = rng.uniform(r, SIZE - r, size=2)
    angle = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # coordinates in the shape's frame
    if kind == "circle":
        return u * u + v * v <= r * r
    if kind == "square":
        h = r / np.sqrt(2.0)  # corners on the circle of radius r
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if kind == "cross":
        w = max(1.5, r * 0.28)
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if kind == "triangle":
        # Equilateral, vertices on the circle of radius r: inside all three edges' half-planes.
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = 2.0 * np.pi * k / 3.0
            inside &= u * np.cos(a) + v * np.sin(a) <= r / 2.0
        return inside
    if kind == "stripes":
        period = rng.uniform(3.5, 5.0)
        h = r / np.sqrt(2.0)
        patch = (np.abs(u) <= h) & (np.abs(v) <= h)
        return patch & (np.mod(u, period) < period / 2.0)
    raise ValueError(kind)


def draw(kind, rng):
    """One image, uint8 [32, 32, 3]."""
    background = rng.uniform(0, 120, size=3)
    colour = rng.uniform(140, 255, size=3)
    mask = shape_mask(kind, rng)
    image = np.where(mask[..., None], colour, background)
    image = image + rng.normal(0.0, NOISE, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_split(seed, split_id, per_class):
    """(images uint8 [n, 32, 32, 3], labels int64 [n]); classes alternate."""
    rng = np.random.default_rng([seed, split_id])
    n = per_class * len(CLASSES)
    labels = np.arange(n) % len(CLASSES)
    images = np.stack([draw(CLASSES[k], rng) for k in labels])
    return images, labels


def write_folder(out, splits):
    from PIL import Image

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folders are 0700
        for split, (images, labels) in splits.items():
            for name in CLASSES:
                os.makedirs(os.path.join(tmp, split, name))
            for i, (image, label) in enumerate(zip(images, labels)):
                Image.fromarray(image).save(os.path.join(tmp, split, CLASSES[label], f"{i:04d}.png"))
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


def train_teacher(splits, path, epochs, seed, threads):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    # kdtrain loads TorchScript (libtorch's torch::jit::load); PyTorch 2.11 calls
    # torch.jit.trace and torch.jit.save deprecated but still writes it.
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    def tensors(split):
        images, labels = splits[split]
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).contiguous()
        return x, torch.from_numpy(labels).long()

    x_train, y_train = tensors("train")
    x_test, y_test = tensors("test")

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16x16
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, len(CLASSES)),
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    t0 = time.monotonic()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=g)
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        train_acc = (model(x_train).argmax(1) == y_train).float().mean().item()
        test_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        traced = torch.jit.trace(model, x_test[:2])
        # The traced module must give the same logits as the model it was traced from.
        if not torch.allclose(traced(x_test), model(x_test), atol=1e-5):
            sys.exit("colour_shapes: the traced teacher's logits differ from the model's")

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        torch.jit.save(traced, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return train_acc, test_acc, time.monotonic() - t0


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/colour-shapes", help="folder to make (default data/colour-shapes)")
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--test-per-class", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", metavar="PATH", help="also train a CNN and save it here (TorchScript)")
    p.add_argument("--epochs", type=int, default=20, help="teacher's epochs (default 20)")
    p.add_argument("--threads", type=int, default=1, help="teacher's CPU threads (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = p.parse_args()
    for name in ("train_per_class", "test_per_class", "epochs", "threads"):
        if getattr(a, name) < 1:
            sys.exit(f"colour_shapes: --{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    out = os.path.abspath(a.out)
    if os.path.lexists(out) and not a.overwrite:
        sys.exit(f"colour_shapes: {out} exists; pass --overwrite to replace it")
    if a.teacher and os.path.isdir(a.teacher):
        sys.exit(f"colour_shapes: --teacher {a.teacher} is a folder; name the .pt file to write")

    t0 = time.monotonic()
    splits = {
        "train": make_split(a.seed, 0, a.train_per_class),
        "test": make_split(a.seed, 1, a.test_per_class),
    }
    write_folder(out, splits)
    n_train, n_test = len(splits["train"][1]), len(splits["test"][1])
    print(
        f"colour_shapes: wrote {n_train} training and {n_test} test images (32x32 RGB, "
        f"{len(CLASSES)} classes: {', '.join(CLASSES)}; seed {a.seed}) to {out} "
        f"in {time.monotonic() - t0:.1f} s"
    )
    if a.teacher:
        train_acc, test_acc, secs = train_teacher(splits, a.teacher, a.epochs, a.seed, a.threads)
        print(
            f"colour_shapes: teacher trained {a.epochs} epochs in {secs:.1f} s: train accuracy "
            f"{train_acc:.4f}, test accuracy {test_acc:.4f} ({n_test} images); saved "
            f"(TorchScript, input [batch, 3, 32, 32] pixels/255, output [batch, 5] logits) to "
            f"{a.teacher}"
        )


if __name__ == "__main__":
    main()
