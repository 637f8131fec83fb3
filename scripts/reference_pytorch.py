#!/usr/bin/env python3
"""Plain-PyTorch twin of kdtrain, for timing and accuracy comparison.

    reference_pytorch.py {teacher,student,distill,cnn} --epochs N --pipeline {dataloader,memory}
        [--teacher PATH.safetensors] [--teacher-cache] [--augment shift2,flip] [--seed S]
        [--threads K] [--data-dir DIR] [--out FILE.json] [--save PATH.safetensors]
        [--adam {fused,foreach,single}] [--compile] [--flush-denormal] [-v]
        [--dropout P] [--split-seed S] [--select]

`cnn` is kdtrain's `--arch cnn` teacher (cnn:32,64,256,dropout=0.3): conv 3x3 (padding 1)
-> batch norm -> ReLU -> max-pool 2 for 32 then 64 channels, linear 3136-256, ReLU,
dropout 0.3, linear 256-10, PyTorch's default initialisation, trained on the labels.
`--augment shift2,flip` draws per example and per batch a shift of -2..2 pixels along
each axis (zero padding) and a left-right flip with probability 1/2, applied to the
batch with one pad and one gather, as kdtrain does.

Everything the training loop does matches kdtrain: Fashion-MNIST pixels/255 as float32
[n,784]; 5000 training images held out for validation (drawn by the seed), training on
the other 55000; batch 256, reshuffled every epoch, last partial batch kept; Glorot-
uniform weights and zero biases; Adam(amsgrad, betas (0.9, 0.999), eps 1e-7) with Keras'
CosineDecay (alpha 0.1, decay_steps = epochs * steps_per_epoch) set before every step;
distillation loss alpha*CE + (1-alpha)*T^2*KL(teacher||student), T=2, alpha=0.9, with the
frozen teacher's forward pass run on every step, or, with --teacher-cache (kdtrain's
default), the teacher's logits computed once over the training set before
the first epoch (outside the epoch times, as kdtrain does; `teacher_cache_seconds`) and
gathered by example index for each batch. No early stopping.

The pipelines: `memory` indexes in-memory tensors with a torch.randperm per epoch;
`dataloader` is the idiomatic DataLoader(TensorDataset(x, y), batch_size=256,
shuffle=True) with num_workers=0 (with --teacher-cache the dataset also yields each
example's index).

For accuracy rather than timing, three options make it kdtrain's recipe for the
README's student alone (`mlp:128,dropout=0.1`, selected on validation accuracy):
`--dropout P` adds dropout P after each hidden ReLU of the MLP (kdtrain's place);
`--split-seed S` holds out kdtrain's validation images (libtorch's randperm seeded with
S ^ 0x5eed5b1d, as kdtrain's src/data/transfer.rs `libtorch_randperm`; the training
images keep the file's order); `--select` keeps the epoch of the highest validation
accuracy (the first of equals, as kdtrain) and reports the test set at its weights.

Writes one JSON object (to --out, else stdout) with the keys of kdtrain's summary.json.
"""
import time

T_SCRIPT = time.time()  # before importing torch

import argparse
import gzip
import json
import math
import os
import statistics
import sys


def process_start_time():
    """Wall-clock time at which this process started (from /proc), else script top."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        # Field 22 (starttime, clock ticks since boot); comm (field 2) may contain spaces.
        fields = stat[stat.rindex(")") + 2:].split()
        start_ticks = int(fields[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        t = btime + start_ticks / os.sysconf("SC_CLK_TCK")
        # btime has 1 s resolution; never claim a start after the script's top or
        # implausibly long before it.
        if t <= T_SCRIPT + 0.01 and T_SCRIPT - t < 60:
            return min(t, T_SCRIPT)
    except (OSError, ValueError, StopIteration, IndexError):
        pass
    return T_SCRIPT


T_START = process_start_time()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

BATCH = 256
VAL_SIZE = 5000
LR0 = 1e-3
COSINE_ALPHA = 0.1
TEMPERATURE = 2.0
KD_ALPHA = 0.9
EVAL_BATCH = 10000
EVAL_REPEATS = 3
DATA_DIRS = ["data", "data/fashion-mnist", os.path.expanduser("~/.cache/kdtrain/fashion-mnist"),
             "/usr/share/datasets/fashion-mnist"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ---------------------------------------------------------------------------- data
def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic >> 8 != 0x08:  # unsigned byte
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8)
    return data.reshape(dims)


def find_file(data_dir, stem):
    dirs = [data_dir] if data_dir else DATA_DIRS
    for d in dirs:
        for name in (stem + ".gz", stem):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(f"{stem}(.gz) not found in {dirs}")


def load_split(data_dir, split):
    img_stem, lbl_stem = FILES[split]
    images = read_idx(find_file(data_dir, img_stem))
    labels = read_idx(find_file(data_dir, lbl_stem))
    x = images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)
    y = labels.to(torch.int64)
    return x, y


# --------------------------------------------------------------------------- models
def mlp(sizes, dropout=0.0):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(n_in, n_out)
        nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers.append((f"fc{i + 1}", lin))
        if i < len(sizes) - 2:
            layers.append((f"relu{i + 1}", nn.ReLU()))
            if dropout > 0:
                layers.append((f"dropout{i + 1}", nn.Dropout(dropout)))
    from collections import OrderedDict
    return nn.Sequential(OrderedDict(layers))


def cnn_model():
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(256, 10))


def augment(x, shift, flip):
    """Random shifts (zero padding) and left-right flips per example: [b, 784] -> [b, 784]."""
    b = x.shape[0]
    side, ps = 28, 28 + 2 * shift
    dx = torch.randint(-shift, shift + 1, (b, 1, 1))
    dy = torch.randint(-shift, shift + 1, (b, 1, 1))
    f = torch.randint(0, 2 if flip else 1, (b, 1, 1))
    r = torch.arange(side).view(1, side, 1)
    c = torch.arange(side).view(1, 1, side)
    c = c + f * (side - 1 - 2 * c)
    idx = (r + dy + shift) * ps + (c + dx + shift)
    padded = F.pad(x.view(b, side, side), (shift, shift, shift, shift)).reshape(b, ps * ps)
    return padded.gather(1, idx.view(b, side * side))


def teacher_model(dropout=0.0):
    return mlp([784, 512, 256, 128, 10], dropout)


def student_model(dropout=0.0):
    return mlp([784, 128, 10], dropout)


def load_teacher(path):
    from safetensors.torch import load_file
    state = load_file(path)
    model = teacher_model()
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return model


# ------------------------------------------------------------------------- training
def cosine_lr(step, decay_steps):
    """Keras CosineDecay (no warm-up)."""
    s = min(step, decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * s / decay_steps))
    return LR0 * ((1.0 - COSINE_ALPHA) * cosine + COSINE_ALPHA)


def kd_loss(z, y, t=None, log_p=None):
    """Distillation loss from the teacher's logits `t`, or from its cached
    log-probabilities at T, `log_p`."""
    ce = F.cross_entropy(z, y)
    if log_p is None:
        log_p = F.log_softmax(t / TEMPERATURE, dim=1)
    kl = F.kl_div(F.log_softmax(z / TEMPERATURE, dim=1), log_p, log_target=True,
                  reduction="batchmean")
    return KD_ALPHA * ce + (1.0 - KD_ALPHA) * TEMPERATURE * TEMPERATURE * kl


@torch.no_grad()
def teacher_logits(teacher, x, batch=EVAL_BATCH):
    """The teacher's logits for every row of x, [n, 10] (what kdtrain's cache holds, so
    that any objective can use it)."""
    return torch.cat([teacher(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


@torch.no_grad()
def evaluate(model, x, y, batch=EVAL_BATCH):
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, x.shape[0], batch):
        logits = model(x[i:i + batch])
        yb = y[i:i + batch]
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    n = x.shape[0]
    return loss_sum / n, correct / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=["teacher", "student", "distill", "cnn"])
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--pipeline", choices=["dataloader", "memory"], required=True)
    ap.add_argument("--teacher", help="teacher checkpoint (.safetensors) for distill")
    ap.add_argument("--teacher-cache", action="store_true",
                    help="distill: compute the teacher's outputs once, gather them per batch")
    ap.add_argument("--augment", default="none",
                    help="none, or shiftN and/or flip, comma-separated (e.g. shift2,flip)")
    ap.add_argument("--adam", choices=["fused", "foreach", "single"], default="fused",
                    help="torch.optim.Adam's implementation: fused=True (one kernel for all "
                         "parameters), foreach=True (multi-tensor ops), or the single-tensor "
                         "loop (PyTorch's CPU default before 2.x fused support); default fused")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (inductor, default mode) before training")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--data-dir")
    ap.add_argument("--out", help="write the JSON here (default: stdout)")
    ap.add_argument("--save", metavar="PATH.safetensors",
                    help="save the trained model's weights (fc1.weight, fc1.bias, ...)")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="torch.set_flush_denormal(True) (off by default, as in a plain script)")
    ap.add_argument("--verbose", "-v", action="store_true", help="per-epoch lines on stderr")
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="dropout after each hidden ReLU of the MLP (default 0)")
    ap.add_argument("--split-seed", type=int,
                    help="hold out kdtrain's validation images for this data.split_seed "
                         "(default: drawn by --seed)")
    ap.add_argument("--select", action="store_true",
                    help="keep the weights of the best validation-accuracy epoch, as kdtrain")
    args = ap.parse_args()
    if args.epochs < 1:
        ap.error("--epochs must be >= 1")
    if args.teacher_cache and args.model != "distill":
        ap.error("--teacher-cache is for distill")

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)

    # Data.
    t0 = time.time()
    x_all, y_all = load_split(args.data_dir, "train")
    x_test, y_test = load_split(args.data_dir, "test")
    if args.split_seed is None:
        g = torch.Generator().manual_seed(args.seed)
        perm = torch.randperm(x_all.shape[0], generator=g)
        val_idx, train_idx = perm[:VAL_SIZE], perm[VAL_SIZE:]
    else:
        g = torch.Generator().manual_seed((args.split_seed ^ 0x5EED5B1D) & 0xFFFFFFFFFFFFFFFF)
        perm = torch.randperm(x_all.shape[0], generator=g)
        val_idx, train_idx = perm[:VAL_SIZE], perm[VAL_SIZE:].sort().values
    # kdtrain's split_hash: the first 8 bytes of SHA-256 over the held-out indices (i64 LE).
    import hashlib
    split_hash = hashlib.sha256(val_idx.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()[:16]
    x_train, y_train = x_all[train_idx].contiguous(), y_all[train_idx].contiguous()
    x_val, y_val = x_all[val_idx].contiguous(), y_all[val_idx].contiguous()
    del x_all, y_all
    data_load_seconds = time.time() - t0
    n_train = x_train.shape[0]

    # Models.
    teacher, teacher_source = None, None
    aug_shift, aug_flip = 0, False
    for part in filter(None, args.augment.split(",")):
        if part == "flip":
            aug_flip = True
        elif part.startswith("shift"):
            aug_shift = int(part[5:])
        elif part != "none":
            ap.error(f"--augment {args.augment!r}: expected none, shiftN, flip")
    if args.model == "teacher":
        model = teacher_model(args.dropout)
    elif args.model == "cnn":
        model = cnn_model()
    else:
        model = student_model(args.dropout)
    if args.model == "distill":
        if args.teacher:
            teacher = load_teacher(args.teacher)
            teacher_source = os.path.abspath(args.teacher)
        else:
            teacher = teacher_model()
            teacher_source = "random-init (no --teacher given; timing is the same, accuracy is not)"
            print(f"reference_pytorch: {teacher_source}", file=sys.stderr)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    adam_impl = {"fused": {"fused": True}, "foreach": {"foreach": True},
                 "single": {"foreach": False, "fused": False}}[args.adam]
    opt = torch.optim.Adam(model.parameters(), lr=LR0, betas=(0.9, 0.999), eps=1e-7, amsgrad=True,
                           **adam_impl)
    # The compiled module shares its parameters with `model` (saved and evaluated as is).
    forward = torch.compile(model) if args.compile else model
    steps_per_epoch = math.ceil(n_train / BATCH)
    decay_steps = args.epochs * steps_per_epoch

    # The teacher cache, before the first epoch and outside the epoch times.
    cache, teacher_cache_seconds = None, None
    if args.teacher_cache:
        t0 = time.perf_counter()
        cache = teacher_logits(teacher, x_train)
        teacher_cache_seconds = time.perf_counter() - t0

    # batches() yields (x, y, index of each row in x_train or None).
    if args.pipeline == "dataloader":
        if cache is not None:
            loader = DataLoader(TensorDataset(x_train, y_train, torch.arange(n_train)),
                                batch_size=BATCH, shuffle=True, num_workers=0)

            def batches():
                return iter(loader)
        else:
            loader = DataLoader(TensorDataset(x_train, y_train), batch_size=BATCH, shuffle=True,
                                num_workers=0)

            def batches():
                return ((xb, yb, None) for xb, yb in loader)
    else:
        def batches():
            order = torch.randperm(n_train)
            for i in range(0, n_train, BATCH):
                idx = order[i:i + BATCH]
                yield x_train[idx], y_train[idx], idx

    step = 0
    epoch_seconds, history = [], []
    best = None  # (val_acc, epoch, weights) with --select
    startup_seconds = None
    for epoch in range(1, args.epochs + 1):
        model.train()
        loss_sum, seen = 0.0, 0
        t_epoch = time.perf_counter()
        for xb, yb, idx in batches():
            if startup_seconds is None:
                startup_seconds = time.time() - T_START
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, decay_steps)
            if aug_shift or aug_flip:
                xb = augment(xb, aug_shift, aug_flip)
            z = forward(xb)
            if cache is not None:
                loss = kd_loss(z, yb, t=cache[idx])
            elif teacher is not None:
                with torch.no_grad():
                    t = teacher(xb)
                loss = kd_loss(z, yb, t)
            else:
                loss = F.cross_entropy(z, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            # Summing a detached tensor keeps the loop free of a per-step .item() sync.
            loss_sum += loss.detach() * xb.shape[0]
            seen += xb.shape[0]
        epoch_seconds.append(time.perf_counter() - t_epoch)
        train_loss = float(loss_sum) / seen
        val_loss, val_acc = evaluate(model, x_val, y_val)
        if args.select and (best is None or val_acc > best[0]):
            best = (val_acc, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "val_acc": val_acc, "seconds": epoch_seconds[-1]})
        if args.verbose:
            print(f"epoch {epoch}: {epoch_seconds[-1]:.3f}s train_loss {train_loss:.4f} "
                  f"val_loss {val_loss:.4f} val_acc {val_acc:.4f}", file=sys.stderr)

    if best is not None:
        model.load_state_dict(best[2])
    eval_times = []
    for _ in range(EVAL_REPEATS):
        t0 = time.perf_counter()
        test_loss, test_acc = evaluate(model, x_test, y_test)
        eval_times.append(time.perf_counter() - t0)

    if args.save:
        from safetensors.torch import save_file
        os.makedirs(os.path.dirname(os.path.abspath(args.save)), exist_ok=True)
        state = {k: v.detach().contiguous()
                 for k, v in model.state_dict().items()}
        save_file(state, args.save)

    summary = {
        "impl": f"pytorch-{args.pipeline}-{args.adam}" + ("-compile" if args.compile else "")
                + ("-cache" if args.teacher_cache else ""),
        "adam": args.adam,
        "compile": args.compile,
        "model": args.model,
        "epochs_run": args.epochs,
        "epoch_seconds": epoch_seconds,
        "median_epoch_seconds": statistics.median(epoch_seconds),
        "eval_test_seconds": statistics.median(eval_times),
        "startup_seconds": startup_seconds,
        "data_load_seconds": data_load_seconds,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "threads": torch.get_num_threads(),
        # Extras (not in kdtrain's summary.json).
        "seed": args.seed,
        "dropout": args.dropout,
        "split_seed": args.split_seed,
        "split_hash": split_hash,
        "best_epoch": best[1] if best else None,
        "best_val_acc": best[0] if best else None,
        "val_acc": history[-1]["val_acc"],
        "val_loss": history[-1]["val_loss"],
        "history": history,
        "torch_version": torch.__version__,
        "teacher": teacher_source,
        "teacher_cache_seconds": teacher_cache_seconds,
    }
    text = json.dumps(summary, indent=2)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
