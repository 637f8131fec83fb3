#!/usr/bin/env python3
"""scikit-learn's bundled digits as a data set kdtrain reads: 1,797 grey 8x8 images of
the digits 0-9, split into 1,297 training and 500 test images.

    digits.py [--format {npz,folder,idx}] [--out DIR] [--test-size 500] [--seed 0]

The images come from the copy of UCI's optical digits inside the scikit-learn wheel
(sklearn.datasets.load_digits, no download). Their values 0..16 become 8-bit pixels by
round(v * 255 / 16) (0, 16, 32, ..., 128 for 8, ..., 255). The split is stratified by
label and drawn by --seed (sklearn's train_test_split); it depends on nothing else, so
every format holds the same pixels and labels in the same order.

  npz     OUT/digits.npz: x_train [1297, 8, 8], y_train [1297], x_test [500, 8, 8],
          y_test [500], all uint8 (np.savez's layout, uncompressed; the same
          bytes on every run)
  folder  OUT/train/<digit>/NNNN.png and OUT/test/<digit>/NNNN.png, 8-bit grey PNGs,
          NNNN the image's index in its split (so sorting the names restores the order)
  idx     OUT/train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
          t10k-labels-idx1-ubyte (uncompressed IDX) and classes.txt (0 to 9, one a line)

kdtrain reads a folder holding the four IDX files as IDX even when it has train/ too, so
the folder and idx formats are refused in a folder that already holds the other one.
Every file is written under a temporary name in its folder and renamed into place; the
folder format's train/ and test/ are built in a temporary folder inside OUT and renamed.
"""
import argparse
import os
import shutil
import struct
import sys
import tempfile

import numpy as np

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_split(test_size, seed):
    """(x_train, y_train, x_test, y_test): uint8 images [n, 8, 8] and uint8 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    values = d.images.astype(np.int64)  # [1797, 8, 8], 0..16
    if values.min() < 0 or values.max() > 16:
        sys.exit(f"digits: expected values 0..16, found {values.min()}..{values.max()}")
    # round(v * 255 / 16) in integers; v = 8 (127.5) is the only half and goes up.
    pixels = ((values * 255 + 8) // 16).astype(np.uint8)
    labels = d.target.astype(np.uint8)
    n = len(labels)
    if not 0 < test_size < n:
        sys.exit(f"digits: --test-size must be 1..{n - 1}, got {test_size}")
    idx_train, idx_test = train_test_split(
        np.arange(n), test_size=test_size, random_state=seed, stratify=labels
    )
    return pixels[idx_train], labels[idx_train], pixels[idx_test], labels[idx_test]


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, data):
    """Writes bytes to `path` through a temporary file in the same folder."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's files are 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def idx_bytes(array):
    """An IDX file of uint8 `array`: labels [n] (magic 2049) or images [n, rows, cols]."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    return header + array.tobytes()


def npz_bytes(arrays):
    """np.savez's layout (stored, uncompressed .npy members) with a fixed timestamp, so
    that the same arrays give the same bytes."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def write_npz(out, split):
    x_train, y_train, x_test, y_test = split
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    path = os.path.join(out, "digits.npz")
    write_atomic(path, npz_bytes(arrays))
    return path


def write_idx(out, split):
    x_train, y_train, x_test, y_test = split
    for name, array in [
        (IDX_FILES["train"][0], x_train),
        (IDX_FILES["train"][1], y_train),
        (IDX_FILES["test"][0], x_test),
        (IDX_FILES["test"][1], y_test),
    ]:
        write_atomic(os.path.join(out, name), idx_bytes(array))
    write_atomic(os.path.join(out, "classes.txt"), "".join(f"{k}\n" for k in range(10)).encode())
    return out


def write_folder(out, split):
    from PIL import Image

    x_train, y_train, x_test, y_test = split
    tmp = tempfile.mkdtemp(prefix=".digits-folder.", dir=out)
    try:
        for name, x, y in [("train", x_train, y_train), ("test", x_test, y_test)]:
            for k in range(10):
                os.makedirs(os.path.join(tmp, name, str(k)))
            for i, (image, label) in enumerate(zip(x, y)):
                Image.fromarray(image).save(
                    os.path.join(tmp, name, str(label), f"{i:04d}.png")
                )
        for name in ("train", "test"):
            target = os.path.join(out, name)
            if os.path.lexists(target):
                # A directory cannot be replaced by rename; move the old one aside first.
                old = tempfile.mkdtemp(prefix=f".{name}-old.", dir=out)
                os.replace(target, os.path.join(old, name))
                os.replace(os.path.join(tmp, name), target)
                shutil.rmtree(old)
            else:
                os.replace(os.path.join(tmp, name), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--format", choices=["npz", "folder", "idx"], default="npz")
    p.add_argument("--out", default="data/digits", help="folder to write into (default data/digits)")
    p.add_argument("--test-size", type=int, default=500, help="test images (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    a = p.parse_args()

    if os.path.exists(a.out) and not os.path.isdir(a.out):
        sys.exit(f"digits: --out {a.out} exists and is not a folder")
    os.makedirs(a.out, exist_ok=True)
    has_idx = any(os.path.exists(os.path.join(a.out, f)) for f in IDX_FILES["train"])
    has_folder = os.path.isdir(os.path.join(a.out, "train"))
    if a.format == "folder" and has_idx:
        sys.exit(
            f"digits: {a.out} holds IDX files, and kdtrain would read it as IDX, not as an "
            "image folder; give the folder format another --out"
        )
    if a.format == "idx" and has_folder:
        sys.exit(
            f"digits: {a.out} holds an image folder (train/), and kdtrain would read it as "
            "IDX once the IDX files are there; give the idx format another --out"
        )

    split = load_split(a.test_size, a.seed)
    where = {"npz": write_npz, "folder": write_folder, "idx": write_idx}[a.format](a.out, split)
    x_train, _, x_test, _ = split
    print(
        f"digits: wrote {len(x_train)} training and {len(x_test)} test images (8x8 grey, "
        f"10 classes, split seed {a.seed}) as {a.format} to {where}"
    )


if __name__ == "__main__":
    main()
