//! Fashion-MNIST: finding the four IDX files, parsing them (gzipped or not), and turning
//! them into tensors on the training device.
//!
//! The parser works on bytes and never trusts a header: it checks the magic number,
//! the dimensions and the length before it allocates, so no input makes it panic or
//! allocate more than the input's own size. Validation of the content (images and
//! labels as [`DataSpec::fashion_mnist`] says, matching counts) happens here too, before
//! any training starts. [`DataSpec`] is what the rest of kdtrain knows of the data.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tch::{Device, Kind, Tensor};

use serde::Serialize;

use crate::error::UsageError;

/// Where `--download` fetches from unless `data.download_url` says otherwise.
pub const OFFICIAL_URL: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";

/// Folder `--download` writes to, relative to the working directory.
pub const DOWNLOAD_DIR: &str = "data/fashion-mnist";

/// Where Debian's package `dataset-fashion-mnist` installs the files.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The four files, their gzipped names and the MD5 of each published `.gz` file
/// (Fashion-MNIST README).
pub const FILES: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    (
        "train-labels-idx1-ubyte",
        "25c81989df183df01b3e8a0aad5dffbe",
    ),
    ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
    ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
];

/// Metadata key of a checkpoint's input shape, [`DataSpec::describe`] (`1x28x28`).
pub const META_INPUT: &str = "kdtrain.input";
/// Metadata key of a checkpoint's class names, a JSON array of strings by label.
pub const META_LABEL_NAMES: &str = "kdtrain.classes";

/// What a data set's examples are: images of `channels x height x width` pixels and the
/// names of its classes, by label. The data source makes it ([`DataSpec::fashion_mnist`]
/// for the IDX files read here); networks, augmentation, inputs and exports take their
/// shapes from it. Images are `[n, C·H·W] f32 in [0, 1]`, channel-major (`[C, H, W]`
/// flattened), logits `[n, classes] f32`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataSpec {
    pub channels: i64,
    pub height: i64,
    pub width: i64,
    /// Class names by label; their number is the number of logits.
    pub class_names: Vec<String>,
}

impl DataSpec {
    /// Fashion-MNIST: 1x28x28 grey images of ten kinds of clothing.
    pub fn fashion_mnist() -> DataSpec {
        DataSpec {
            channels: 1,
            height: 28,
            width: 28,
            class_names: [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    /// Input features per example, C·H·W.
    pub fn inputs(&self) -> i64 {
        self.channels * self.height * self.width
    }

    /// Number of classes (logits).
    pub fn classes(&self) -> i64 {
        self.class_names.len() as i64
    }

    /// The name of class `label`, or the label itself when it has none.
    pub fn class_name(&self, label: i64) -> String {
        usize::try_from(label)
            .ok()
            .and_then(|l| self.class_names.get(l))
            .cloned()
            .unwrap_or_else(|| label.to_string())
    }

    /// The input shape as `CxHxW`, e.g. `1x28x28`.
    pub fn describe(&self) -> String {
        format!("{}x{}x{}", self.channels, self.height, self.width)
    }

    /// The shape of one image in the config's order, `[height, width, channels]`
    /// (`data.data_shape`).
    pub fn data_shape(&self) -> Vec<usize> {
        [self.height, self.width, self.channels]
            .iter()
            .map(|&d| d as usize)
            .collect()
    }

    /// The checkpoint metadata entries: [`META_INPUT`] and [`META_LABEL_NAMES`].
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            (META_INPUT.to_string(), self.describe()),
            (
                META_LABEL_NAMES.to_string(),
                serde_json::to_string(&self.class_names).unwrap_or_default(),
            ),
        ]
    }

    /// Reads [`DataSpec::to_metadata`]'s entries back. A key that is missing (a
    /// checkpoint written before they were recorded) is read as Fashion-MNIST's.
    ///
    /// # Errors
    /// A message naming the key whose value is not a shape `CxHxW` of positive numbers,
    /// or not a non-empty JSON array of strings.
    pub fn from_metadata(
        m: &std::collections::HashMap<String, String>,
    ) -> std::result::Result<DataSpec, String> {
        let default = DataSpec::fashion_mnist();
        let (channels, height, width) = match m.get(META_INPUT) {
            None => (default.channels, default.height, default.width),
            Some(v) => {
                let dims: Option<Vec<i64>> = v
                    .split('x')
                    .map(|d| d.trim().parse::<i64>().ok().filter(|&d| d > 0))
                    .collect();
                match dims.as_deref() {
                    Some(&[c, h, w])
                        if c.checked_mul(h).and_then(|x| x.checked_mul(w)).is_some() =>
                    {
                        (c, h, w)
                    }
                    _ => {
                        return Err(format!(
                            "metadata `{META_INPUT}` is {v:?}, expected a shape such as {:?} \
                             (channels x height x width)",
                            default.describe()
                        ));
                    }
                }
            }
        };
        let class_names = match m.get(META_LABEL_NAMES) {
            None => default.class_names,
            Some(v) => match serde_json::from_str::<Vec<String>>(v) {
                Ok(names) if !names.is_empty() => names,
                _ => {
                    return Err(format!(
                        "metadata `{META_LABEL_NAMES}` is {v:?}, expected a non-empty JSON array of \
                         class names"
                    ));
                }
            },
        };
        Ok(DataSpec {
            channels,
            height,
            width,
            class_names,
        })
    }
}

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

/// One split (train or test), validated.
#[derive(Debug, Clone)]
pub struct Split {
    /// `count * C·H·W` u8 pixels, row-major.
    pub pixels: Vec<u8>,
    /// `count` labels in `0..classes`.
    pub labels: Vec<u8>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Reads and checks an images file and a labels file that belong together.
///
/// # Errors
/// Names the file: wrong kind (images and labels swapped), images of another size than
/// [`DataSpec::fashion_mnist`]'s, zero items, counts that differ, or a label of its
/// number of classes or more.
pub fn read_split(images: &Path, labels: &Path) -> Result<Split> {
    let spec = DataSpec::fashion_mnist();
    let (height, width) = (spec.height as usize, spec.width as usize);
    let (count, pixels) = match read_idx(images)? {
        Idx::Images {
            count,
            rows,
            cols,
            pixels,
        } => {
            if (rows, cols) != (height, width) {
                bail!(
                    "{}: images are {rows}x{cols}, expected {height}x{width} (Fashion-MNIST)",
                    images.display()
                );
            }
            (count, pixels)
        }
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
    if labels_v.len() != count {
        bail!(
            "{} holds {count} images but {} holds {} labels; the two files do not belong together",
            images.display(),
            labels.display(),
            labels_v.len()
        );
    }
    if let Some((i, &l)) = labels_v
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as i64 >= spec.classes())
    {
        bail!(
            "{}: label {l} at index {i} is out of range; expected 0 to {}",
            labels.display(),
            spec.classes() - 1
        );
    }
    Ok(Split {
        pixels,
        labels: labels_v,
    })
}

/// The file for `stem` in `dir`: `stem.gz` if present, else `stem`.
fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn has_all_files(dir: &Path) -> bool {
    FILES.iter().all(|(stem, _)| find_file(dir, stem).is_some())
}

/// Environment variable that replaces [`DEBIAN_DIR`] as the system-wide data folder.
/// Meant for tests (and unusual installs): it lets a test see a machine on which the
/// Debian package is not installed.
pub const SYSTEM_DIR_ENV: &str = "KDTRAIN_SYSTEM_DATA_DIR";

/// Finds the data folder. Order: `--data-dir`, then `data.dir` in the config, then the
/// environment variable `FASHION_MNIST_DIR`, then `data/fashion-mnist`, then
/// `/usr/share/datasets/fashion-mnist` (or `$KDTRAIN_SYSTEM_DATA_DIR`, see
/// [`SYSTEM_DIR_ENV`]). A folder the user named (the first three) must hold the data: it
/// is an error, not skipped.
///
/// # Errors
/// A [`UsageError`] that lists where it looked and how to get the data.
pub fn locate(flag_or_config: Option<&Path>) -> Result<PathBuf> {
    let system = std::env::var_os(SYSTEM_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEBIAN_DIR), PathBuf::from);
    let system = system.as_path();
    let how = format!(
        "install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist, \
         into {DEBIAN_DIR}) or rerun with --download (into {DOWNLOAD_DIR})"
    );
    let named = flag_or_config
        .map(|p| (p.to_path_buf(), "--data-dir / data.dir"))
        .or_else(|| {
            std::env::var_os("FASHION_MNIST_DIR")
                .filter(|p| !p.is_empty()) // set but empty counts as unset
                .map(|p| (PathBuf::from(p), "FASHION_MNIST_DIR"))
        });
    if let Some((dir, source)) = named {
        if has_all_files(&dir) {
            return Ok(dir);
        }
        let missing: Vec<&str> = FILES
            .iter()
            .filter(|(s, _)| find_file(&dir, s).is_none())
            .map(|(s, _)| *s)
            .collect();
        return Err(UsageError(format!(
            "{source} names {} but it lacks {} (.gz or not); point it at the folder that holds \
             them, or {}",
            dir.display(),
            missing.join(", "),
            // --download fills data/fashion-mnist only when no folder is named.
            how.replace("rerun with --download", "drop it and rerun with --download")
        ))
        .into());
    }
    for dir in [Path::new(DOWNLOAD_DIR), system] {
        if has_all_files(dir) {
            return Ok(dir.to_path_buf());
        }
    }
    Err(UsageError(format!(
        "Fashion-MNIST not found in {DOWNLOAD_DIR} or {} (and neither --data-dir, data.dir \
         nor FASHION_MNIST_DIR is set); {how}",
        system.display()
    ))
    .into())
}

/// Both splits, as read from disk.
pub struct RawData {
    pub dir: PathBuf,
    /// What the images and labels are.
    pub spec: DataSpec,
    pub train: Split,
    pub test: Split,
}

/// The [`DataSpec`] of the data in `dir`, known before it is read: Fashion-MNIST's, the
/// only source there is.
pub fn spec_of(_dir: &Path) -> DataSpec {
    DataSpec::fashion_mnist()
}

/// Reads and validates the four files in `dir`.
pub fn load_dir(dir: &Path) -> Result<RawData> {
    let f = |i: usize| {
        find_file(dir, FILES[i].0)
            .with_context(|| format!("{} missing in {}", FILES[i].0, dir.display()))
    };
    let train = read_split(&f(0)?, &f(1)?)?;
    let test = read_split(&f(2)?, &f(3)?)?;
    Ok(RawData {
        dir: dir.to_path_buf(),
        spec: spec_of(dir),
        train,
        test,
    })
}

/// Examples on the device.
pub struct Examples {
    /// `[n, C·H·W] f32 in [0, 1]` (pixels / 255).
    pub images: Tensor,
    /// `[n] i64 in [0, classes)`.
    pub labels: Tensor,
}

impl Examples {
    /// Builds the tensors on `device` from the u8 bytes: one host->device copy of u8
    /// (a quarter of the f32 size), then the conversion on the device. Each image is
    /// `split.pixels.len() / n` pixels, C·H·W.
    pub fn from_split(split: &Split, device: Device) -> Examples {
        let n = split.len() as i64;
        let per_image = match n {
            0 => 0,
            n => split.pixels.len() as i64 / n,
        };
        let images = Tensor::from_slice(&split.pixels)
            .to_device(device)
            .view([n, per_image])
            .to_kind(Kind::Float)
            / 255.0;
        let labels = Tensor::from_slice(&split.labels)
            .to_device(device)
            .to_kind(Kind::Int64);
        Examples { images, labels }
    }

    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `index` (`[k] i64` on the same device).
    pub fn select(&self, index: &Tensor) -> Examples {
        Examples {
            images: self.images.index_select(0, index),
            labels: self.labels.index_select(0, index),
        }
    }
}

/// The three sets a run uses.
pub struct Dataset {
    pub train: Examples,
    /// Early stopping and model selection look only at this set.
    pub val: Examples,
    /// Reported, never used to choose anything (unless `validation = "test"`).
    pub test: Examples,
    /// Where the files came from.
    pub dir: PathBuf,
    /// What the images and labels are.
    pub spec: DataSpec,
    /// Indices into the original 60,000 training images of `train`, in order.
    pub train_index: Vec<i64>,
    /// Indices into the original training images of `val` (empty when the test set
    /// validates).
    pub val_index: Vec<i64>,
    /// Which split this is, as recorded in checkpoints and `meta.json`.
    pub split: SplitInfo,
}

/// The validation split, as recorded in `meta.json` and checkpoint metadata, so that a
/// teacher and its students can be checked to share it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitInfo {
    /// `"split"` (held out of the training images) or `"test"` (the test set validates).
    pub validation: String,
    /// The seed that drew the held-out images (`data.split_seed`); `None` for `"test"`.
    pub split_seed: Option<u64>,
    /// Images in the validation set.
    pub validation_size: usize,
    /// SHA-256 of the held-out indices (little-endian i64, in draw order), first 16 hex
    /// digits; `"test"` when the test set validates.
    pub split_hash: String,
}

const META_SPLIT: [&str; 4] = [
    "kdtrain.validation",
    "kdtrain.split_seed",
    "kdtrain.validation_size",
    "kdtrain.split_hash",
];

impl SplitInfo {
    /// The split that held out the training images at `index`, drawn by `seed`.
    pub fn held_out(index: &[i64], seed: u64) -> SplitInfo {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for i in index {
            h.update(i.to_le_bytes());
        }
        let digest = h.finalize();
        let hex = crate::hex(&digest[..8]);
        SplitInfo {
            validation: "split".into(),
            split_seed: Some(seed),
            validation_size: index.len(),
            split_hash: hex,
        }
    }

    /// Validation on the test set of `n` images.
    pub fn test_set(n: usize) -> SplitInfo {
        SplitInfo {
            validation: "test".into(),
            split_seed: None,
            validation_size: n,
            split_hash: "test".into(),
        }
    }

    /// Whether two runs validated on the same images.
    pub fn same_as(&self, other: &SplitInfo) -> bool {
        self.split_hash == other.split_hash
    }

    /// One line for messages: `split_seed 20150309, 5000 images, hash 1a2b...`.
    pub fn describe(&self) -> String {
        match self.split_seed {
            Some(seed) => format!(
                "{} images held out by split_seed {seed} (hash {})",
                self.validation_size, self.split_hash
            ),
            None => format!("the test set ({} images)", self.validation_size),
        }
    }

    /// The checkpoint metadata entries.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let seed = self.split_seed.map(|s| s.to_string()).unwrap_or_default();
        let values = [
            self.validation.clone(),
            seed,
            self.validation_size.to_string(),
            self.split_hash.clone(),
        ];
        META_SPLIT
            .iter()
            .map(|k| k.to_string())
            .zip(values)
            .collect()
    }

    /// Reads [`SplitInfo::to_metadata`]'s entries back; `None` when any is missing.
    pub fn from_metadata(m: &std::collections::HashMap<String, String>) -> Option<SplitInfo> {
        Some(SplitInfo {
            validation: m.get(META_SPLIT[0])?.clone(),
            split_seed: m.get(META_SPLIT[1])?.parse().ok(),
            validation_size: m.get(META_SPLIT[2])?.parse().ok()?,
            split_hash: m.get(META_SPLIT[3])?.clone(),
        })
    }
}

/// Splits off a validation set and moves everything to `device`.
///
/// With `validation_size` `Some(v)` the held-out images are drawn by `split_seed` alone
/// (a permutation from libtorch's CPU generator, seeded just for this), never by the
/// training seed, so every training seed and the teacher hold out the same images (the
/// generator is global: no other thread of the process may draw from it meanwhile, which
/// holds in kdtrain, whose runs load their data on the main thread before training). With
/// `None` the test set doubles as the validation set, as in the Keras reference.
///
/// # Errors
/// A [`UsageError`] when `v` is not smaller than the training set.
pub fn prepare(
    raw: &RawData,
    validation_size: Option<usize>,
    split_seed: u64,
    device: Device,
) -> Result<Dataset> {
    let all = Examples::from_split(&raw.train, device);
    let test = Examples::from_split(&raw.test, device);
    let n = all.len();
    let (train, val, train_index, val_index, split) = match validation_size {
        Some(v) => {
            if v as i64 >= n {
                return Err(UsageError(format!(
                    "data.validation_size = {v} but the training set has only {n} images; use a smaller value"
                ))
                .into());
            }
            tch::manual_seed(split_seed as i64 ^ 0x5eed_5b1d);
            let perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
            let val_idx = perm.narrow(0, 0, v as i64);
            let mut train_idx = perm.narrow(0, v as i64, n - v as i64);
            // Sorted, so the training set keeps the file's order before shuffling.
            train_idx = train_idx.sort(0, false).0;
            let order: Vec<i64> = Vec::try_from(&train_idx)?;
            let held: Vec<i64> = Vec::try_from(&val_idx)?;
            let split = SplitInfo::held_out(&held, split_seed);
            (
                all.select(&train_idx.to_device(device)),
                all.select(&val_idx.to_device(device)),
                order,
                held,
                split,
            )
        }
        None => {
            let val = Examples {
                images: test.images.shallow_clone(),
                labels: test.labels.shallow_clone(),
            };
            let split = SplitInfo::test_set(test.len() as usize);
            (all, val, (0..n).collect(), Vec::new(), split)
        }
    };
    Ok(Dataset {
        train,
        val,
        test,
        dir: raw.dir.clone(),
        spec: raw.spec.clone(),
        train_index,
        val_index,
        split,
    })
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
    fn data_spec_metadata_round_trip_and_default() {
        let fm = DataSpec::fashion_mnist();
        assert_eq!((fm.inputs(), fm.classes()), (784, 10));
        assert_eq!(fm.describe(), "1x28x28");
        assert_eq!(fm.data_shape(), vec![28, 28, 1]);
        let other = DataSpec {
            channels: 3,
            height: 32,
            width: 24,
            class_names: ["a \"quoted\" name", "b", "c", "d", "e"]
                .map(String::from)
                .to_vec(),
        };
        assert_eq!(other.inputs(), 3 * 32 * 24);
        for spec in [&fm, &other] {
            let m: std::collections::HashMap<String, String> =
                spec.to_metadata().into_iter().collect();
            assert_eq!(DataSpec::from_metadata(&m).as_ref(), Ok(spec));
        }
        let m: std::collections::HashMap<String, String> =
            other.to_metadata().into_iter().collect();
        assert_eq!(m[META_INPUT], "3x32x24");
        assert_eq!(
            m[META_LABEL_NAMES],
            r#"["a \"quoted\" name","b","c","d","e"]"#
        );
        // A checkpoint without the keys is Fashion-MNIST's.
        assert_eq!(DataSpec::from_metadata(&Default::default()), Ok(fm.clone()));
        // Unreadable values name their key.
        for (key, value) in [
            (META_INPUT, "28x28"),
            (META_INPUT, "1x28x-28"),
            (META_INPUT, "1x28xz"),
            (META_INPUT, "9999999999x9999999999x9"),
            (META_LABEL_NAMES, "[]"),
            (META_LABEL_NAMES, "T-shirt"),
            (META_LABEL_NAMES, "[1, 2]"),
        ] {
            let m = std::collections::HashMap::from([(key.to_string(), value.to_string())]);
            let e = DataSpec::from_metadata(&m).unwrap_err();
            assert!(e.contains(key), "{key} = {value}: {e}");
        }
        assert_eq!(fm.class_name(9), "Ankle boot");
        assert_eq!(fm.class_name(10), "10");
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
