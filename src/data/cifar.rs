//! The `cifar` data source (see [`super::Source`]): the binary versions of CIFAR-10 and
//! CIFAR-100 (<https://www.cs.toronto.edu/~kriz/cifar.html>).
//!
//! CIFAR-10: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, records of 1
//! label byte and 3072 pixel bytes (the red, green and blue planes of a 32x32 image, so
//! already channel-major); class names in `batches.meta.txt`. CIFAR-100: `train.bin` and
//! `test.bin`, records of a coarse and a fine label byte and the 3072 pixels; the fine
//! label is used, named by `fine_label_names.txt`.

use std::path::Path;

use anyhow::{Context, Result};

use super::{Channels, DataSpec, RawData, ReadOptions, Source, Split, pixels};
use crate::error::UsageError;

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

/// CIFAR-10's class names, by label (as its `batches.meta.txt`), used when that file is
/// absent.
pub const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Reads one batch file: `label_bytes` label bytes (the last one is the label) and the
/// pixels per record.
///
/// # Errors
/// A [`UsageError`] naming the file: unreadable, empty, or a length that is not a whole
/// number of records.
fn read_batch(path: &Path, label_bytes: usize) -> Result<Split> {
    let record = label_bytes + PIXELS;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(UsageError(format!(
            "{}: {} bytes is not a whole number of {record}-byte records ({} label byte{} and \
             {PIXELS} pixels); the file is truncated or not a CIFAR binary batch; get the \
             data again",
            path.display(),
            bytes.len(),
            label_bytes,
            if label_bytes == 1 { "" } else { "s" }
        ))
        .into());
    }
    let n = bytes.len() / record;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for r in bytes.chunks_exact(record) {
        labels.push(i64::from(r[label_bytes - 1]));
        pixels.extend_from_slice(&r[label_bytes..]);
    }
    Ok(Split { pixels, labels })
}

fn concat(parts: Vec<Split>) -> Split {
    let mut out = Split {
        pixels: Vec::with_capacity(parts.iter().map(|p| p.pixels.len()).sum()),
        labels: Vec::with_capacity(parts.iter().map(Split::len).sum()),
    };
    for p in parts {
        out.pixels.extend_from_slice(&p.pixels);
        out.labels.extend_from_slice(&p.labels);
    }
    out
}

/// Reads CIFAR-10 or CIFAR-100 from `dir` (see the module's documentation); the
/// variant is told by `data_batch_1.bin` (10) or `train.bin` (100).
///
/// # Errors
/// A [`UsageError`] naming the file: a missing batch, a length that is not a whole
/// number of records, a label out of range of the class names or `data.classes`.
pub fn load(dir: &Path, o: &ReadOptions) -> Result<RawData> {
    pixels::check_resize(o.resize)?;
    let (train_files, test_file, label_bytes, names_file) =
        if dir.join("data_batch_1.bin").is_file() {
            (
                (1..=5)
                    .map(|i| dir.join(format!("data_batch_{i}.bin")))
                    .collect::<Vec<_>>(),
                dir.join("test_batch.bin"),
                1,
                dir.join("batches.meta.txt"),
            )
        } else if dir.join("train.bin").is_file() {
            (
                vec![dir.join("train.bin")],
                dir.join("test.bin"),
                2,
                dir.join("fine_label_names.txt"),
            )
        } else {
            return Err(UsageError(format!(
                "{} holds neither CIFAR-10's data_batch_1.bin .. data_batch_5.bin and \
             test_batch.bin nor CIFAR-100's train.bin and test.bin (the binary versions); \
             point data.dir at the folder that holds them (cifar-10-batches-bin/ or \
             cifar-100-binary/)",
                dir.display()
            ))
            .into());
        };
    let variant = if label_bytes == 1 {
        "CIFAR-10"
    } else {
        "CIFAR-100"
    };
    if let Some(missing) = train_files
        .iter()
        .chain([&test_file])
        .find(|f| !f.is_file())
    {
        return Err(UsageError(format!(
            "{}: {variant} needs this file but it is missing (the binary version has {}); \
             get the data again",
            missing.display(),
            train_files
                .iter()
                .chain([&test_file])
                .filter_map(|f| f.file_name())
                .map(|f| f.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    let train_parts = train_files
        .iter()
        .map(|f| read_batch(f, label_bytes))
        .collect::<Result<Vec<_>>>()?;
    let test = read_batch(&test_file, label_bytes)?;
    let names = match (names_file.is_file(), label_bytes) {
        (true, _) => Some(super::read_class_names(&names_file)?),
        (false, 1) if o.classes.is_none_or(|k| k == 10) => {
            Some(CIFAR10_NAMES.map(String::from).to_vec())
        }
        (false, _) => None,
    };
    // Label checks per file, so that a message names the batch that holds the label.
    let mut checks: Vec<(&Split, &Path)> = train_parts
        .iter()
        .zip(&train_files)
        .map(|(s, f)| (s, f.as_path()))
        .collect();
    checks.push((&test, test_file.as_path()));
    let class_names = super::class_names_for(names, o.classes, &checks, &names_file)?;
    let mut train = concat(train_parts);
    let mut test = test;
    let c = match o.channels {
        Channels::Grey => 1,
        Channels::Auto | Channels::Colour => 3,
    };
    let (h, w) = o.resize.unwrap_or((SIDE, SIDE));
    for s in [&mut train, &mut test] {
        if c != 3 {
            s.pixels = pixels::convert_split(&s.pixels, s.len(), SIDE * SIDE, 3, c);
        }
        if (h, w) != (SIDE, SIDE) {
            s.pixels = pixels::resize_split(&s.pixels, s.len(), c, (SIDE, SIDE), (h, w));
        }
    }
    Ok(RawData {
        path: dir.to_path_buf(),
        source: Source::Cifar,
        spec: DataSpec {
            channels: c as i64,
            height: h as i64,
            width: w as i64,
            class_names,
        },
        train,
        test,
        val: None,
        note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::usage_err;

    /// `n` records with labels `label(i)` (and coarse label 7 when two label bytes);
    /// image i's red plane is i, green i+1, blue i+2.
    fn records(n: usize, label_bytes: usize, label: impl Fn(usize) -> u8) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            if label_bytes == 2 {
                out.push(7);
            }
            out.push(label(i));
            for c in 0..3 {
                out.extend(std::iter::repeat_n((i + c) as u8, SIDE * SIDE));
            }
        }
        out
    }

    fn cifar10(dir: &Path) {
        for b in 1..=5 {
            let f = dir.join(format!("data_batch_{b}.bin"));
            std::fs::write(f, records(2, 1, |i| (b + i) as u8 % 10)).unwrap();
        }
        std::fs::write(dir.join("test_batch.bin"), records(3, 1, |i| i as u8)).unwrap();
    }

    #[test]
    fn cifar10_batches_in_order() {
        let d = tempfile::tempdir().unwrap();
        cifar10(d.path());
        let raw = load(d.path(), &ReadOptions::default()).unwrap();
        assert_eq!(raw.source, Source::Cifar);
        assert_eq!(
            (raw.spec.channels, raw.spec.height, raw.spec.width),
            (3, 32, 32)
        );
        assert_eq!(raw.spec.class_names, CIFAR10_NAMES);
        assert_eq!(raw.train.labels, [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
        assert_eq!(raw.train.pixels.len(), 10 * PIXELS);
        // Image 1 of a batch: planes 1, 2, 3.
        let img1 = &raw.train.pixels[PIXELS..2 * PIXELS];
        assert_eq!((img1[0], img1[1024], img1[2048], img1[3071]), (1, 2, 3, 3));
        assert_eq!(raw.test.labels, [0, 1, 2]);
        // batches.meta.txt names them (a trailing blank line, as the official file).
        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        std::fs::write(d.path().join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
        assert_eq!(
            load(d.path(), &ReadOptions::default())
                .unwrap()
                .spec
                .class_names,
            names
        );
    }

    #[test]
    fn cifar100_fine_labels_grey_and_resize() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("train.bin"), records(3, 2, |i| 50 + i as u8)).unwrap();
        std::fs::write(d.path().join("test.bin"), records(1, 2, |_| 99)).unwrap();
        let raw = load(d.path(), &ReadOptions::default()).unwrap();
        assert_eq!(raw.train.labels, [50, 51, 52]);
        assert_eq!(raw.spec.class_names.len(), 100);
        let o = ReadOptions {
            channels: Channels::Grey,
            resize: Some((16, 8)),
            ..Default::default()
        };
        let raw = load(d.path(), &o).unwrap();
        assert_eq!(
            (raw.spec.channels, raw.spec.height, raw.spec.width),
            (1, 16, 8)
        );
        assert_eq!(raw.train.pixels.len(), 3 * 16 * 8);
        // Image 2: planes 2, 3, 4.
        assert_eq!(raw.train.pixels[2 * 128], pixels::luma(2, 3, 4));
        let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        std::fs::write(d.path().join("fine_label_names.txt"), names.join("\n")).unwrap();
        let raw = load(d.path(), &ReadOptions::default()).unwrap();
        assert_eq!(raw.spec.class_name(99), "n99");
    }

    #[test]
    fn bad_batches_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let e = usage_err(load(dir, &ReadOptions::default()));
        assert!(
            e.contains("data_batch_1.bin") && e.contains("train.bin"),
            "{e}"
        );
        cifar10(dir);
        std::fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
        let e = usage_err(load(dir, &ReadOptions::default()));
        assert!(
            e.contains("data_batch_4.bin: CIFAR-10 needs this file"),
            "{e}"
        );
        cifar10(dir);
        let mut short = records(2, 1, |_| 0);
        short.pop();
        std::fs::write(dir.join("data_batch_2.bin"), &short).unwrap();
        let e = usage_err(load(dir, &ReadOptions::default()));
        assert!(
            e.contains("data_batch_2.bin: 6145 bytes") && e.contains("3073-byte records"),
            "{e}"
        );
        cifar10(dir);
        std::fs::write(dir.join("data_batch_3.bin"), records(1, 1, |_| 10)).unwrap();
        let e = usage_err(load(dir, &ReadOptions::default()));
        assert!(e.contains("data_batch_3.bin: label 10 at index 0"), "{e}");
        cifar10(dir);
        let o = ReadOptions {
            classes: Some(5),
            ..Default::default()
        };
        let e = usage_err(load(dir, &o));
        assert!(e.contains("data.classes = 5"), "{e}");
        let d2 = tempfile::tempdir().unwrap();
        std::fs::write(d2.path().join("train.bin"), records(1, 2, |_| 0)).unwrap();
        let e = usage_err(load(d2.path(), &ReadOptions::default()));
        assert!(e.contains("test.bin") && e.contains("CIFAR-100"), "{e}");
        std::fs::write(d2.path().join("test.bin"), vec![0; 3073]).unwrap();
        let e = usage_err(load(d2.path(), &ReadOptions::default()));
        assert!(
            e.contains("test.bin: 3073 bytes") && e.contains("3074-byte"),
            "{e}"
        );
    }
}
