#!/usr/bin/env python3
"""Check that a kdtrain run's TensorBoard event files agree with its metrics.csv.

Usage: python scripts/check_tensorboard.py RUN_DIR [RUN_DIR...]

For each RUN_DIR:
  * every event file (``*tfevents*``, directly in RUN_DIR, or else in the one
    subdirectory holding them) is read record by record and each TFRecord's
    length and masked CRC-32C are verified (TensorBoard itself silently stops
    at a bad record, logging only at DEBUG level);
  * the files are loaded with TensorBoard's own
    ``tensorboard.backend.event_processing.event_accumulator.EventAccumulator``
    (size_guidance 0 = keep everything); any warning or "Truncated record"
    message it logs is an error;
  * ``RUN_DIR/metrics.csv`` (header row, one row per epoch, an ``epoch``
    column) is read; every other column is a metric, matched to the scalar tag
    whose name with '/' replaced by '_' equals the column name (``train/loss``
    -> ``train_loss``). That tag must have exactly one value at step = epoch for
    each row whose cell is non-empty, and no other steps; values must equal the
    CSV within 1e-5 relative (or equal the CSV value rounded to float32, which
    is how TensorBoard stores scalars; NaN matches NaN);
  * every histogram event must have num > 0.

Prints "ok RUN_DIR: N scalar tags, M histogram tags, E epochs" per run, and
exits 1 with one line per problem otherwise (2 on bad usage).
Needs the ``tensorboard`` pip package (TensorFlow is not needed).
"""

import csv
import logging
import math
import os
import re
import struct
import sys

RELATIVE_TOLERANCE = 1e-5


# What TensorBoard's record reader logs (at DEBUG only) before it stops reading a file.
_BAD_RECORD = re.compile(r"truncated record|crc32 check|DataLossError", re.IGNORECASE)


class CheckError(Exception):
    pass


class _Capture(logging.Handler):
    """Collects log records that signal unreadable or skipped data."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.problems = []

    def emit(self, record):
        msg = record.getMessage()
        if record.levelno >= logging.WARNING or _BAD_RECORD.search(msg):
            self.problems.append(f"tensorboard logged {record.levelname}: {msg}")


def find_event_dir(run_dir):
    """The directory holding the run's event files: RUN_DIR or its one subdirectory that has them."""
    def has_events(d):
        return any("tfevents" in f and os.path.isfile(os.path.join(d, f)) for f in os.listdir(d))

    if has_events(run_dir):
        return run_dir
    found = sorted(root for root, _dirs, _files in os.walk(run_dir) if has_events(root))
    if not found:
        raise CheckError(f"no TensorBoard event files (*tfevents*) under {run_dir}")
    if len(found) > 1:
        raise CheckError(f"event files in several directories under {run_dir}: {', '.join(found)}")
    return found[0]


def check_records(path):
    """Verifies TFRecord framing and CRCs of one event file; returns the record count."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    with open(path, "rb") as f:
        data = f.read()
    pos, count = 0, 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise CheckError(f"{path}: truncated record header at byte {pos}")
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        if masked_crc32c(header) != length_crc:
            raise CheckError(f"{path}: bad length CRC in record {count} at byte {pos}")
        body_end = pos + 12 + length
        if body_end + 4 > len(data):
            raise CheckError(f"{path}: truncated record {count} at byte {pos} (length {length})")
        (data_crc,) = struct.unpack("<I", data[body_end : body_end + 4])
        if masked_crc32c(data[pos + 12 : body_end]) != data_crc:
            raise CheckError(f"{path}: bad data CRC in record {count} at byte {pos}")
        pos = body_end + 4
        count += 1
    if count == 0:
        raise CheckError(f"{path}: empty event file")
    return count


def load_accumulator(event_dir):
    from tensorboard.backend.event_processing import event_accumulator as ea

    guidance = {key: 0 for key in ea.DEFAULT_SIZE_GUIDANCE}
    acc = ea.EventAccumulator(event_dir, size_guidance=guidance)
    capture = _Capture()
    logger = logging.getLogger("tensorboard")
    old_level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        acc.Reload()
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    return acc, capture.problems


def read_csv(path):
    if not os.path.isfile(path):
        raise CheckError(f"missing {path}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise CheckError(f"{path}: empty file") from None
        rows = [r for r in reader if any(cell.strip() for cell in r)]
    if "epoch" not in header:
        raise CheckError(f"{path}: no 'epoch' column in header {header}")
    if len(set(header)) != len(header):
        raise CheckError(f"{path}: duplicate column names in header {header}")
    if not rows:
        raise CheckError(f"{path}: no data rows")
    table = []
    for line_no, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise CheckError(f"{path}:{line_no}: {len(row)} cells, header has {len(header)}")
        table.append(dict(zip(header, (c.strip() for c in row))))
    return header, table


def parse_int(text, where):
    try:
        value = float(text)
    except ValueError:
        raise CheckError(f"{where}: epoch {text!r} is not a number") from None
    if not value.is_integer():
        raise CheckError(f"{where}: epoch {text!r} is not an integer")
    return int(value)


def values_match(tb_value, csv_value):
    import numpy as np

    if math.isnan(csv_value) or math.isnan(tb_value):
        return math.isnan(csv_value) and math.isnan(tb_value)
    if tb_value == float(np.float32(csv_value)):
        return True
    return math.isclose(tb_value, csv_value, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0)


def check_run(run_dir):
    """Returns (n_scalar_tags, n_histogram_tags, n_epochs); raises CheckError listing all problems."""
    if not os.path.isdir(run_dir):
        raise CheckError(f"{run_dir} is not a directory")
    event_dir = find_event_dir(run_dir)
    problems = []
    for name in sorted(os.listdir(event_dir)):
        path = os.path.join(event_dir, name)
        if "tfevents" in name and os.path.isfile(path):
            try:
                check_records(path)
            except CheckError as e:
                problems.append(str(e))

    acc, log_problems = load_accumulator(event_dir)
    problems += log_problems
    tags = acc.Tags()
    scalar_tags = sorted(tags.get("scalars", []))
    histogram_tags = sorted(tags.get("histograms", []))

    csv_path = os.path.join(run_dir, "metrics.csv")
    header, table = read_csv(csv_path)
    epochs = [parse_int(row["epoch"], f"{csv_path} row {i + 1}") for i, row in enumerate(table)]
    if len(set(epochs)) != len(epochs):
        problems.append(f"{csv_path}: repeated epochs {sorted(e for e in set(epochs) if epochs.count(e) > 1)}")

    by_column = {}
    for tag in scalar_tags:
        by_column.setdefault(tag.replace("/", "_"), []).append(tag)

    for column in header:
        if column == "epoch":
            continue
        matching = by_column.get(column)
        if not matching:
            problems.append(f"CSV column {column!r} has no scalar tag (tags: {scalar_tags})")
            continue
        if len(matching) > 1:
            problems.append(f"CSV column {column!r} matches several scalar tags: {matching}")
            continue
        tag = matching[0]
        events = {}
        for ev in acc.Scalars(tag):
            events.setdefault(ev.step, []).append(ev.value)
        expected = {}
        for epoch, row in zip(epochs, table):
            cell = row[column]
            if cell == "":
                continue
            try:
                expected[epoch] = float(cell)
            except ValueError:
                problems.append(f"{csv_path}: column {column!r} epoch {epoch}: {cell!r} is not a number")
        for epoch, want in sorted(expected.items()):
            got = events.get(epoch)
            if got is None:
                problems.append(f"tag {tag!r}: no value at step {epoch} (CSV {column}={want!r})")
            elif len(got) != 1:
                problems.append(f"tag {tag!r}: {len(got)} values at step {epoch}: {got}")
            elif not values_match(got[0], want):
                problems.append(f"tag {tag!r} step {epoch}: TensorBoard has {got[0]!r}, CSV {column} has {want!r}")
        extra = sorted(set(events) - set(expected))
        if extra:
            problems.append(f"tag {tag!r}: values at steps {extra} that have no {column!r} value in the CSV")

    for tag in histogram_tags:
        for ev in acc.Histograms(tag):
            h = ev.histogram_value
            if not h.num > 0:
                problems.append(f"histogram {tag!r} step {ev.step}: num = {h.num}")
            elif len(h.bucket) != len(h.bucket_limit) or not math.isclose(sum(h.bucket), h.num, rel_tol=1e-9):
                problems.append(
                    f"histogram {tag!r} step {ev.step}: {len(h.bucket)} counts / {len(h.bucket_limit)} limits, "
                    f"counts sum to {sum(h.bucket)} but num = {h.num}"
                )

    if problems:
        raise CheckError("\n".join(f"FAIL {run_dir}: {p}" for p in problems))
    return len(scalar_tags), len(histogram_tags), len(epochs)


def main(argv):
    if len(argv) < 2 or any(a in ("-h", "--help") for a in argv[1:]):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("error: the 'tensorboard' Python package is not installed (pip install tensorboard)", file=sys.stderr)
        return 2
    failed = False
    for run_dir in argv[1:]:
        try:
            n_scalars, n_histograms, n_epochs = check_run(run_dir)
        except CheckError as e:
            msg = str(e)
            print(msg if msg.startswith("FAIL ") else f"FAIL {run_dir}: {msg}", file=sys.stderr)
            failed = True
            continue
        print(f"ok {run_dir}: {n_scalars} scalar tags, {n_histograms} histogram tags, {n_epochs} epochs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
