//! IDX files (LeCun's MNIST format, Fashion-MNIST's): parsing them (gzipped or not)
//! and reading a data set of four of them.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Channels, DataSpec, FILES, RawData, ReadOptions, Source, Split};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// A parsed IDX file.
#[derive(Debug, Clone, PartialEq)]
pub enum Idx {
    /// `count` images of `rows x cols` u8 pixels, row-major.
    Images {
        count: usize,
        rows: usize,
        cols: usize,
        pixels: Vec<u8>,
    },
    /// `count` u8 labels.
    Labels(Vec<u8>),
}

/// Parses the bytes of one IDX file (already decompressed).
///
/// Format (LeCun's MNIST page): a big-endian u32 magic, `0x00000803` for u8 images with
/// 3 dimensions or `0x00000801` for u8 labels with 1, then one big-endian u32 per
/// dimension, then the data.
///
/// # Errors
/// A message saying what was expected and found: a file too short for its header, an
/// unknown magic number, or a header that claims more (or fewer) bytes than follow.
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<Idx, String> {
    let be = |i: usize| -> Option<usize> {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let magic =
        be(0).ok_or_else(|| format!("{} bytes is too short for an IDX header", bytes.len()))?;
    let (dims, magic_kind) = match magic as u32 {
        IMAGES_MAGIC => (3, "images"),
        LABELS_MAGIC => (1, "labels"),
        m => {
            return Err(format!(
                "magic number 0x{m:08x} is not an IDX u8 file (expected 0x{IMAGES_MAGIC:08x} for \
                 images or 0x{LABELS_MAGIC:08x} for labels)"
            ));
        }
    };
    let header = 4 + 4 * dims;
    let shape: Vec<usize> = (0..dims)
        .map(|d| be(4 + 4 * d))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            format!(
                "{} bytes is too short for an IDX {magic_kind} header of {header} bytes",
                bytes.len()
            )
        })?;
    // Checked product: a header can claim up to (2^32)^3 bytes.
    let need = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let have = bytes.len() - header;
    match need {
        Some(n) if n == have => {}
        Some(n) if n > have => {
            return Err(format!(
                "header claims {shape:?} = {n} data bytes but the file holds {have}; it is truncated"
            ));
        }
        Some(n) => {
            return Err(format!(
                "header claims {shape:?} = {n} data bytes but the file holds {have}"
            ));
        }
        None => return Err(format!("header dimensions {shape:?} overflow")),
    }
    let data = bytes[header..].to_vec();
    Ok(match dims {
        3 => Idx::Images {
            count: shape[0],
            rows: shape[1],
            cols: shape[2],
            pixels: data,
        },
        _ => Idx::Labels(data),
    })
}

/// Reads one IDX file, gunzipping it when it starts with the gzip magic bytes.
///
/// The decompressed size is capped at 64 MiB more than the largest Fashion-MNIST file,
/// so a gzip bomb cannot exhaust memory.
///
/// # Errors
/// Names the file: unreadable, empty, `.gz` but not gzip, a truncated gzip stream, or
/// any [`parse_idx`] error.
pub fn read_idx(path: &Path) -> Result<Idx> {
    const LIMIT: u64 = 128 << 20;
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let is_gz = raw.starts_with(&[0x1f, 0x8b]);
    let named_gz = path.extension().is_some_and(|e| e == "gz");
    if raw.is_empty() {
        bail!(
            "{}: the file is empty; delete it and get the data again (see --download)",
            path.display()
        );
    }
    if named_gz && !is_gz {
        bail!(
            "{}: the name ends in .gz but the file is not gzip (it starts with {:02x?}); \
             it may be an error page or a partial download; delete it and get the data again",
            path.display(),
            &raw[..raw.len().min(4)]
        );
    }
    let bytes = if is_gz {
        let mut out = Vec::new();
        // Multi-member streams (`cat a.gz b.gz`) are valid gzip, as `gzip -d` reads them.
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(LIMIT + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: the gzip stream is corrupt or truncated ({e}); delete it and get the data again",
                    path.display()
                )
            })?;
        if out.len() as u64 > LIMIT {
            bail!(
                "{}: decompresses to more than {} MiB; this is not a Fashion-MNIST file",
                path.display(),
                LIMIT >> 20
            );
        }
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads and checks an images file and a labels file that belong together: images of
/// any `rows x cols`, labels as they are (their range is checked by [`load`]).
///
/// # Errors
/// Names the file: wrong kind (images and labels swapped), zero items, or counts that
/// differ.
pub fn read_split(images: &Path, labels: &Path) -> Result<(Split, usize, usize)> {
    let (count, rows, cols, pixels) = match read_idx(images)? {
        Idx::Images {
            count,
            rows,
            cols,
            pixels,
        } => (count, rows, cols, pixels),
        Idx::Labels(_) => bail!(
            "{}: this is an IDX labels file (magic 0x{LABELS_MAGIC:08x}) where images were expected; \
             are the images and labels files swapped?",
            images.display()
        ),
    };
    let labels_v = match read_idx(labels)? {
        Idx::Labels(l) => l,
        Idx::Images { .. } => bail!(
            "{}: this is an IDX images file (magic 0x{IMAGES_MAGIC:08x}) where labels were expected; \
             are the images and labels files swapped?",
            labels.display()
        ),
    };
    if count == 0 {
        bail!(
            "{}: the file holds 0 images; get the data again",
            images.display()
        );
    }
    if rows == 0 || cols == 0 {
        bail!(
            "{}: images are {rows}x{cols}, expected at least 1x1",
            images.display()
        );
    }
    if labels_v.len() != count {
        bail!(
            "{} holds {count} images but {} holds {} labels; the two files do not belong together",
            images.display(),
            labels.display(),
            labels_v.len()
        );
    }
    Ok((
        Split {
            pixels,
            labels: labels_v.into_iter().map(i64::from).collect(),
        },
        rows,
        cols,
    ))
}

/// SHA-256 of Fashion-MNIST's training labels followed by its test labels (the data
/// bytes of the two labels files, decompressed): how the IDX reader knows the official
/// files, whose class names it then gives without a `classes.txt`.
const FASHION_MNIST_LABELS_SHA256: &str =
    "8ab940a680640f36c0bf1d2549cb2f3b3d4068c12547116cc7b1161b1d26663d";

/// Whether these are Fashion-MNIST's splits ([`FASHION_MNIST_LABELS_SHA256`]).
fn is_fashion_mnist(train: &Split, test: &Split) -> bool {
    use sha2::{Digest, Sha256};
    if (train.len(), test.len()) != (60_000, 10_000) {
        return false;
    }
    let mut h = Sha256::new();
    for l in train.labels.iter().chain(&test.labels) {
        h.update([*l as u8]);
    }
    crate::hex(&h.finalize()) == FASHION_MNIST_LABELS_SHA256
}

/// Reads the four IDX files in `dir` (grey images of any size, labels `0..K-1`) and the
/// optional `classes.txt` (one class name per line, by label). Without it the classes
/// are Fashion-MNIST's when the labels are its own, else named by their labels with K
/// = `data.classes`, or the largest label plus one.
///
/// # Errors
/// Names the file: anything [`read_split`] refuses, train and test images of different
/// sizes, a label not below K (naming `classes.txt` or `data.classes` when they set K).
/// `data.resize` area-averages the images and `data.channels = 3` repeats the grey
/// channel, as in the other readers.
pub fn load(dir: &Path, o: &ReadOptions) -> Result<RawData> {
    if dir.is_file() {
        return Err(crate::error::UsageError(format!(
            "data.dir (--data-dir) {} is a file; the idx source reads a folder holding \
             train-images-idx3-ubyte(.gz) and the three other IDX files (for an .npz, set \
             data.source = \"npz\")",
            dir.display()
        ))
        .into());
    }
    let f = |i: usize| {
        find_file(dir, FILES[i].0)
            .with_context(|| format!("{} missing in {}", FILES[i].0, dir.display()))
    };
    let (train, h, w) = read_split(&f(0)?, &f(1)?)?;
    let (test, th, tw) = read_split(&f(2)?, &f(3)?)?;
    if (h, w) != (th, tw) {
        bail!(
            "{}: test images are {th}x{tw} but the training images in {} are {h}x{w}; the files \
             do not belong together",
            f(2)?.display(),
            f(0)?.display()
        );
    }
    let names_file = dir.join("classes.txt");
    let names = match names_file.is_file() {
        true => Some(super::read_class_names(&names_file)?),
        false if is_fashion_mnist(&train, &test) => Some(DataSpec::fashion_mnist().class_names),
        false => None,
    };
    let class_names = super::class_names_for(
        names,
        o.classes,
        &[(&train, f(1)?.as_path()), (&test, f(3)?.as_path())],
        &names_file,
    )?;
    // data.resize and data.channels = 3 apply as in the other readers.
    let (mut train, mut test) = (train, test);
    let (mut h, mut w) = (h, w);
    if let Some((nh, nw)) = o.resize {
        for s in [&mut train, &mut test] {
            s.pixels = super::pixels::resize_split(&s.pixels, s.len(), 1, (h, w), (nh, nw));
        }
        (h, w) = (nh, nw);
    }
    let channels = match o.channels {
        Channels::Colour => {
            for s in [&mut train, &mut test] {
                s.pixels = super::pixels::convert_split(&s.pixels, s.len(), h * w, 1, 3);
            }
            3
        }
        Channels::Auto | Channels::Grey => 1,
    };
    let spec = DataSpec {
        channels,
        height: h as i64,
        width: w as i64,
        class_names,
    };
    Ok(RawData {
        path: dir.to_path_buf(),
        source: Source::Idx,
        spec,
        train,
        test,
        val: None,
        note: None,
    })
}

/// The file for `stem` in `dir`: `stem.gz` if present, else `stem`.
pub(super) fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

pub(super) fn has_all_files(dir: &Path) -> bool {
    FILES.iter().all(|(stem, _)| find_file(dir, stem).is_some())
}

/// Writes an IDX file (for tests and fixtures): images `[count, rows, cols]` or labels.
pub fn encode_idx(idx: &Idx) -> Vec<u8> {
    let mut out = Vec::new();
    match idx {
        Idx::Images {
            count,
            rows,
            cols,
            pixels,
        } => {
            out.extend(IMAGES_MAGIC.to_be_bytes());
            for d in [count, rows, cols] {
                out.extend((*d as u32).to_be_bytes());
            }
            out.extend(pixels);
        }
        Idx::Labels(l) => {
            out.extend(LABELS_MAGIC.to_be_bytes());
            out.extend((l.len() as u32).to_be_bytes());
            out.extend(l);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `data.resize` and `data.channels = 3` apply to IDX images as to the other
    /// sources (they were ignored, and refused); a `classes.txt` saved with a byte-order
    /// mark names its first class without it.
    #[test]
    fn resize_channels_and_names_apply_to_idx() {
        let dir = tempfile::tempdir().unwrap();
        // 4x4 images whose 2x2 blocks hold 0, 40, 80, 120 (plus the image's index).
        let img = |k: u8| -> Vec<u8> {
            (0..16)
                .map(|p| {
                    let (y, x) = (p / 4, p % 4);
                    k + 40 * ((y / 2) * 2 + x / 2) as u8
                })
                .collect()
        };
        for (prefix, n) in [("train", 3usize), ("t10k", 2)] {
            let pixels: Vec<u8> = (0..n).flat_map(|k| img(k as u8)).collect();
            let idx = Idx::Images {
                count: n,
                rows: 4,
                cols: 4,
                pixels,
            };
            std::fs::write(
                dir.path().join(format!("{prefix}-images-idx3-ubyte")),
                encode_idx(&idx),
            )
            .unwrap();
            let labels = Idx::Labels((0..n).map(|k| (k % 2) as u8).collect());
            std::fs::write(
                dir.path().join(format!("{prefix}-labels-idx1-ubyte")),
                encode_idx(&labels),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("classes.txt"), "\u{feff}even\nodd\n").unwrap();
        let o = ReadOptions {
            resize: Some((2, 2)),
            channels: Channels::Colour,
            ..Default::default()
        };
        let raw = load(dir.path(), &o).unwrap();
        assert_eq!(
            (raw.spec.channels, raw.spec.height, raw.spec.width),
            (3, 2, 2)
        );
        assert_eq!(raw.spec.class_names, ["even", "odd"]);
        // Image 1 of the training set: each block's mean, in each of three planes.
        let one = &raw.train.pixels[12..24];
        assert_eq!(one, [1, 41, 81, 121, 1, 41, 81, 121, 1, 41, 81, 121]);
        assert_eq!(raw.test.pixels.len(), 2 * 12);
        let plain = load(dir.path(), &ReadOptions::default()).unwrap();
        assert_eq!(plain.spec.describe(), "1x4x4");
    }

    fn images(count: usize, side: usize) -> Vec<u8> {
        encode_idx(&Idx::Images {
            count,
            rows: side,
            cols: side,
            pixels: vec![7; count * side * side],
        })
    }

    #[test]
    fn round_trip() {
        let b = images(3, 28);
        assert!(matches!(
            parse_idx(&b),
            Ok(Idx::Images {
                count: 3,
                rows: 28,
                cols: 28,
                ..
            })
        ));
        let l = encode_idx(&Idx::Labels(vec![1, 2, 9]));
        assert_eq!(parse_idx(&l), Ok(Idx::Labels(vec![1, 2, 9])));
    }

    #[test]
    fn parser_errors_say_what_is_wrong() {
        assert!(parse_idx(&[]).unwrap_err().contains("empty"));
        assert!(parse_idx(&[0, 0, 8]).unwrap_err().contains("too short"));
        assert!(
            parse_idx(&[0, 0, 9, 3, 0, 0, 0, 0])
                .unwrap_err()
                .contains("magic")
        );
        let mut b = images(3, 28);
        b.truncate(b.len() - 10);
        assert!(parse_idx(&b).unwrap_err().contains("truncated"));
        let mut b = images(3, 28);
        b.push(0);
        assert!(parse_idx(&b).unwrap_err().contains("holds"));
        // A header claiming 2^32-1 images of 2^32-1 x 2^32-1 must not allocate or overflow.
        let mut huge = IMAGES_MAGIC.to_be_bytes().to_vec();
        for _ in 0..3 {
            huge.extend(u32::MAX.to_be_bytes());
        }
        assert!(parse_idx(&huge).is_err());
    }

    #[test]
    fn zero_item_file_parses_but_split_rejects_it() {
        assert!(matches!(
            parse_idx(&images(0, 28)),
            Ok(Idx::Images { count: 0, .. })
        ));
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            /// No input makes the parser panic, and it never returns more data than it was given.
            #[test]
            fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Ok(idx) = parse_idx(&bytes) {
                    let n = match idx { Idx::Images { pixels, .. } => pixels.len(), Idx::Labels(l) => l.len() };
                    prop_assert!(n <= bytes.len());
                }
            }

            /// A valid header with small dimensions followed by a data section that is
            /// either exactly as long as the header claims or off by `delta` bytes: the
            /// parser accepts it exactly when the sizes agree, and then returns that shape
            /// and those bytes.
            #[test]
            fn parser_accepts_exactly_the_sizes_the_header_claims(
                images in any::<bool>(),
                count in 0usize..5,
                rows in 0usize..30,
                cols in 0usize..30,
                labels in 0usize..300,
                exact in any::<bool>(),
                delta in -40isize..=40,
                fill in any::<u8>(),
            ) {
                let shape = if images { vec![count, rows, cols] } else { vec![labels] };
                let need: usize = shape.iter().product();
                let delta = if exact { 0 } else { delta.max(-(need as isize)) };
                let len = need as isize + delta;
                let data: Vec<u8> = (0..len as usize).map(|i| fill.wrapping_add(i as u8)).collect();
                let mut b = if images { IMAGES_MAGIC } else { LABELS_MAGIC }.to_be_bytes().to_vec();
                for d in &shape { b.extend((*d as u32).to_be_bytes()); }
                b.extend(&data);
                let got = parse_idx(&b);
                if delta == 0 {
                    let want = if images {
                        Idx::Images { count, rows, cols, pixels: data }
                    } else {
                        Idx::Labels(data)
                    };
                    prop_assert_eq!(got, Ok(want));
                } else {
                    let e = got.unwrap_err();
                    prop_assert!(e.contains(&format!("= {need} data bytes")), "{}", e);
                    prop_assert!(e.contains(&format!("holds {len}")), "{}", e);
                }
            }

            /// Any data bytes after a valid header parse: the header alone decides the
            /// shape, and the bytes come back unchanged.
            #[test]
            fn data_bytes_never_change_the_verdict(
                images in any::<bool>(),
                count in 1usize..5,
                side in 1usize..30,
                labels in 1usize..300,
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            ) {
                let clean = if images {
                    Idx::Images { count, rows: side, cols: side, pixels: vec![0; count * side * side] }
                } else {
                    Idx::Labels(vec![0; labels])
                };
                let header = if images { 16 } else { 8 };
                let mut b = encode_idx(&clean);
                let n = b.len() - header;
                for (at, v) in &flips {
                    b[header + at.index(n)] = *v;
                }
                let data = b[header..].to_vec();
                let want = match clean {
                    Idx::Images { count, rows, cols, .. } => Idx::Images { count, rows, cols, pixels: data },
                    Idx::Labels(_) => Idx::Labels(data),
                };
                prop_assert_eq!(parse_idx(&b), Ok(want));
            }
        }
    }
}
