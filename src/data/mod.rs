//! Fashion-MNIST: finding the four IDX files, parsing them (gzipped or not), and turning
//! them into tensors on the training device.
//!
//! The parser works on bytes and never trusts a header: it checks the magic number,
//! the dimensions and the length before it allocates, so no input makes it panic or
//! allocate more than the input's own size. Validation of the content (images and
//! labels as [`DataSpec::fashion_mnist`] says, matching counts) happens here too, before
//! any training starts. [`DataSpec`] is what the rest of kdtrain knows of the data.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tch::{Device, Kind, Tensor};

use serde::{Deserialize, Serialize};

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod npz;
pub mod pixels;
pub mod transfer;

pub use idx::{Idx, encode_idx, parse_idx, read_idx, read_split};
pub use transfer::{TransferSet, TransferSpec};

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

    /// The label a user names: `given` as a class name, else as an index in range.
    pub fn label_of(&self, given: &str) -> Option<i64> {
        match self.class_names.iter().position(|n| n == given) {
            Some(i) => Some(i as i64),
            None => given
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|i| (0..self.classes()).contains(i)),
        }
    }

    /// The class names, quoted and comma-separated, for the messages that list them.
    pub fn quoted_names(&self) -> String {
        self.class_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
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

/// One split (train or test), validated.
#[derive(Debug, Clone)]
pub struct Split {
    /// `count * C·H·W` u8 pixels, channel-major per image (`[C, H, W]` flattened).
    pub pixels: Vec<u8>,
    /// `count` labels in `0..classes`.
    pub labels: Vec<i64>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
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
        // Another data set: a file, or a folder of another layout, is the reader's to
        // check; only a folder that looks like none falls through to the IDX message.
        if dir.is_file() || idx::has_all_files(&dir) || detect(&dir).is_ok() {
            return Ok(dir);
        }
        if !dir.exists() {
            return Err(UsageError(format!(
                "{source} names {}, which does not exist; point it at the data set's folder \
                 (or .npz file), or for Fashion-MNIST {}",
                dir.display(),
                how.replace("rerun with --download", "drop it and rerun with --download")
            ))
            .into());
        }
        let missing: Vec<&str> = FILES
            .iter()
            .filter(|(s, _)| idx::find_file(&dir, s).is_none())
            .map(|(s, _)| *s)
            .collect();
        return Err(UsageError(format!(
            "{source} names {} but it lacks {} (.gz or not), and it is not an image folder \
             (train/<class>/), CIFAR's batches or an .npz; point it at the folder that holds \
             them, or {}",
            dir.display(),
            missing.join(", "),
            // --download fills data/fashion-mnist only when no folder is named.
            how.replace("rerun with --download", "drop it and rerun with --download")
        ))
        .into());
    }
    for dir in [Path::new(DOWNLOAD_DIR), system] {
        if idx::has_all_files(dir) {
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

/// Which reader a data set needs (`data.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Detected from the content of `data.dir` ([`detect`]).
    #[default]
    Auto,
    /// Four IDX files, any image size ([`idx::load`]).
    Idx,
    /// `train/<class>/*`, `test/<class>/*` and optionally `val/<class>/*` ([`folder::load`]).
    Folder,
    /// A NumPy `.npz` with `x_train`, `y_train`, `x_test`, `y_test` ([`npz::load`]).
    Npz,
    /// CIFAR-10 or CIFAR-100 binary batches ([`cifar::load`]).
    Cifar,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Auto => "auto",
            Source::Idx => "idx",
            Source::Folder => "folder",
            Source::Npz => "npz",
            Source::Cifar => "cifar",
        }
    }
}

/// Image channels asked for (`data.channels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Channels {
    /// Grey when every image is grey, else RGB; alpha is dropped.
    #[default]
    Auto,
    /// One channel (colour images converted to luma).
    Grey,
    /// Three channels, RGB (grey images repeated).
    Colour,
}

impl Channels {
    /// The number asked for; `None` for [`Channels::Auto`].
    pub fn count(self) -> Option<i64> {
        match self {
            Channels::Auto => None,
            Channels::Grey => Some(1),
            Channels::Colour => Some(3),
        }
    }
}

impl Serialize for Channels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.count() {
            None => s.serialize_str("auto"),
            Some(n) => s.serialize_i64(n),
        }
    }
}

impl<'de> Deserialize<'de> for Channels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            N(i64),
            S(String),
        }
        let bad = |found: String| {
            serde::de::Error::custom(format!("expected \"auto\", 1 or 3, found {found}"))
        };
        match V::deserialize(d)? {
            V::N(1) => Ok(Channels::Grey),
            V::N(3) => Ok(Channels::Colour),
            V::S(s) if s == "auto" => Ok(Channels::Auto),
            V::N(n) => Err(bad(n.to_string())),
            V::S(s) => Err(bad(format!("{s:?}"))),
        }
    }
}

/// How an `.npz`'s image arrays are laid out (`data.layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[n, h, w]` is grey; a 4-D array is `nchw` when its second axis is 1 or 3 and the
    /// last is not, else `nhwc`.
    #[default]
    Auto,
    Nhwc,
    Nchw,
}

/// The `[data]` keys that choose a reader and shape what it returns.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub source: Source,
    pub channels: Channels,
    /// `data.resize`, `(height, width)`: area-average every image to this size.
    pub resize: Option<(usize, usize)>,
    pub layout: Layout,
    /// `data.classes`: the number of classes K; `None` = from the names or the labels.
    pub classes: Option<usize>,
}

/// The splits of a data set, as read from disk: u8 pixels and their [`DataSpec`].
pub struct RawData {
    /// The folder or file read.
    pub path: PathBuf,
    /// The reader that read it (never [`Source::Auto`]).
    pub source: Source,
    /// What the images and labels are.
    pub spec: DataSpec,
    pub train: Split,
    pub test: Split,
    /// A validation split the data set brings (`DIR/val/` of a folder); used instead of
    /// holding images out of `train`.
    pub val: Option<Split>,
    /// A line for the user, e.g. files skipped for their extension.
    pub note: Option<String>,
}

/// The reader for `path`: a file ending in `.npz` is [`Source::Npz`]; a folder with the
/// four IDX files is [`Source::Idx`], with `data_batch_1.bin` or `train.bin` CIFAR's,
/// with a `train/` sub-folder an image folder.
///
/// # Errors
/// A [`UsageError`] naming `path`, what it holds, and `data.source`, when none fits.
pub fn detect(path: &Path) -> Result<Source> {
    if path.is_file() {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
        {
            return Ok(Source::Npz);
        }
        return Err(UsageError(format!(
            "data.dir / --data-dir names the file {}, but only an .npz file can be read as a \
             data set; name the folder that holds the data, or an .npz",
            path.display()
        ))
        .into());
    }
    if idx::has_all_files(path) {
        return Ok(Source::Idx);
    }
    if path.join("data_batch_1.bin").is_file()
        || (path.join("train.bin").is_file() && path.join("test.bin").is_file())
    {
        return Ok(Source::Cifar);
    }
    if path.join("train").is_dir() {
        return Ok(Source::Folder);
    }
    Err(UsageError(format!(
        "{} holds no data set kdtrain can read: expected the four IDX files ({}), \
         CIFAR's binary batches, an image folder with train/<class>/ and test/<class>/, \
         or an .npz file; set data.source to say which",
        path.display(),
        FILES.map(|f| f.0).join(", ")
    ))
    .into())
}

/// Reads the data set at `path` with the reader `o.source` names (detected when
/// [`Source::Auto`]).
///
/// # Errors
/// Whatever the reader returns, naming the file; [`detect`]'s.
pub fn load(path: &Path, o: &ReadOptions) -> Result<RawData> {
    let source = match o.source {
        Source::Auto => detect(path)?,
        s => s,
    };
    let raw = match source {
        Source::Idx | Source::Auto => idx::load(path, o)?,
        Source::Folder => folder::load(path, o)?,
        Source::Npz => npz::load(path, o)?,
        Source::Cifar => cifar::load(path, o)?,
    };
    debug_assert_eq!(raw.source, source);
    Ok(raw)
}

/// Reads the four IDX files in `dir` with the default options.
pub fn load_dir(dir: &Path) -> Result<RawData> {
    idx::load(dir, &ReadOptions::default())
}

/// Why a network for data of `have` cannot serve on data of `want`, naming `what` (a
/// flag and a file): `None` when they are the same.
pub fn spec_mismatch(what: &str, have: &DataSpec, want: &DataSpec) -> Option<String> {
    (have != want).then(|| {
        format!(
            "{what} takes {} images of {} classes ({}) but the data are {} images of {} \
             classes ({}); use a model trained on this data",
            have.describe(),
            have.classes(),
            have.class_names.join(", "),
            want.describe(),
            want.classes(),
            want.class_names.join(", ")
        )
    })
}

/// The message of a reader's error, which must be a [`UsageError`] (the readers' tests).
#[cfg(test)]
pub(crate) fn usage_err(r: Result<RawData>) -> String {
    let e = r.err().expect("expected an error");
    assert!(
        e.downcast_ref::<UsageError>().is_some(),
        "not a usage error: {e:#}"
    );
    e.to_string()
}

/// Up to five class names and a count of the rest, for messages.
pub fn names_preview(names: &[String]) -> String {
    match names.len() {
        0..=5 => names.join(", "),
        n => format!("{}, ... and {} more", names[..5].join(", "), n - 5),
    }
}

/// Reads `classes.txt`-style names: one per line, blank lines at the end ignored.
///
/// # Errors
/// Names the file: unreadable, empty, a blank or repeated name.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // A byte-order mark (Notepad's UTF-8) is not part of the first name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let names: Vec<String> = text
        .trim_end()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    if names.is_empty() || names == [""] {
        bail!(
            "{}: no class names; write one per line, or delete the file",
            path.display()
        );
    }
    if let Some(i) = names.iter().position(String::is_empty) {
        bail!(
            "{}: line {} is blank; write one class name per line",
            path.display(),
            i + 1
        );
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(n) = names.iter().find(|n| !seen.insert(n.as_str())) {
        bail!("{}: the class name {n:?} appears twice", path.display());
    }
    Ok(names)
}

/// The class names of a data set whose labels are numbers: `names` when given (K = their
/// number), else `"0"`..`"K-1"` with K = `data.classes` or the largest label plus one.
/// Every label of every split must be in `0..K`.
///
/// # Errors
/// [`UsageError`]s naming the labels file and the first label out of range, and what set
/// K (`names_from` or `data.classes`); a K that differs between `names` and
/// `data.classes`.
pub fn class_names_for(
    names: Option<Vec<String>>,
    classes: Option<usize>,
    splits: &[(&Split, &Path)],
    names_from: &Path,
) -> Result<Vec<String>> {
    if let (Some(n), Some(k)) = (&names, classes)
        && n.len() != k
    {
        return Err(UsageError(format!(
            "data.classes = {k} but {} names {} classes; make them agree or drop data.classes",
            names_from.display(),
            n.len()
        ))
        .into());
    }
    let max = splits
        .iter()
        .flat_map(|(s, _)| s.labels.iter().copied())
        .max()
        .unwrap_or(0);
    let k = names
        .as_ref()
        .map(Vec::len)
        .or(classes)
        .unwrap_or(max.max(0) as usize + 1);
    let why = match (&names, classes) {
        (Some(_), _) => format!("{} names {k} classes", names_from.display()),
        (None, Some(_)) => format!("data.classes = {k}"),
        (None, None) => String::new(),
    };
    for (split, file) in splits {
        if let Some((i, &l)) = split
            .labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l < 0 || l as usize >= k)
        {
            let fix = match why.is_empty() {
                true => "labels must be 0 or more".to_string(),
                false => format!("{why}; raise it or fix the label"),
            };
            return Err(UsageError(format!(
                "{}: label {l} at index {i} is out of range; expected 0 to {} ({fix})",
                file.display(),
                k as i64 - 1
            ))
            .into());
        }
    }
    Ok(names.unwrap_or_else(|| (0..k).map(|i| i.to_string()).collect()))
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

    /// The same examples with their images normalised by `n` ([`Normalize::apply`]).
    pub fn normalized(self, n: &Normalize) -> Examples {
        Examples {
            images: n.apply(&self.images),
            labels: self.labels,
        }
    }

    /// The examples at `index` (`[k] i64` on the same device).
    pub fn select(&self, index: &Tensor) -> Examples {
        Examples {
            images: self.images.index_select(0, index),
            labels: self.labels.index_select(0, index),
        }
    }
}

/// What a run's data were, as `meta.json` and `summary.json` record them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// The folder or file read.
    pub path: PathBuf,
    pub source: Source,
    /// `CxHxW`, [`DataSpec::describe`].
    pub input: String,
    pub classes: i64,
    pub class_names: Vec<String>,
    pub normalize: Normalize,
    /// The transfer set: the training images the run trained on.
    pub transfer: TransferSet,
}

impl Dataset {
    /// The record of these data.
    pub fn record(&self) -> DataRecord {
        DataRecord {
            path: self.dir.clone(),
            source: self.source,
            input: self.spec.describe(),
            classes: self.spec.classes(),
            class_names: self.spec.class_names.clone(),
            normalize: self.normalize.clone(),
            transfer: self.transfer.clone(),
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
    /// The reader that read them.
    pub source: Source,
    /// What the images and labels are.
    pub spec: DataSpec,
    /// How pixels became inputs.
    pub normalize: Normalize,
    /// Indices into the original training images of `train`, in order (after the
    /// transfer set's subset and omitted classes).
    pub train_index: Vec<i64>,
    /// Indices into the original training images of `val` (empty when the test set
    /// validates).
    pub val_index: Vec<i64>,
    /// Which split this is, as recorded in checkpoints and `meta.json`.
    pub split: SplitInfo,
    /// The transfer set `train` is: its fraction, seed, omitted classes and hash.
    pub transfer: TransferSet,
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

    /// Validation on a split the data set brings (an image folder's `val/`); its hash is
    /// of the split's labels and pixels.
    pub fn folder(v: &Split) -> SplitInfo {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for l in &v.labels {
            h.update(l.to_le_bytes());
        }
        h.update(&v.pixels);
        SplitInfo {
            validation: "folder".into(),
            split_seed: None,
            validation_size: v.len(),
            split_hash: crate::hex(&h.finalize()[..8]),
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
            None if self.validation == "folder" => format!(
                "the data set's val/ split ({} images, hash {})",
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

/// Metadata key of a checkpoint's normalisation, [`Normalize::to_json`].
pub const META_NORMALIZE: &str = "kdtrain.normalize";

/// How a run turns u8 pixels into inputs (`data.normalize`): `x = p / 255`, then, when
/// standardised, `(x - mean[c]) / sd[c]` per channel c with the mean and sd of the
/// training images (after the validation split is held out). Recorded in every
/// checkpoint ([`META_NORMALIZE`]) so that `evaluate`, `predict` and `export` apply the
/// same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Normalize {
    /// Pixels / 255, in [0, 1]: the Keras reference's, and the default.
    #[default]
    Unit,
    /// Per channel, of the pixels / 255: `mean[c]` and `sd[c]` (f64; sd > 0).
    Standardize { mean: Vec<f64>, sd: Vec<f64> },
}

/// `data.normalize`, before the statistics are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormalizeKind {
    #[default]
    Unit,
    Standardize,
}

impl Normalize {
    /// The per-channel mean and sd of `images` (`[n, C·H·W] f32 in [0, 1]`); an sd of 0
    /// (a constant channel) is taken as 1.
    pub fn fit(images: &Tensor, channels: i64) -> Normalize {
        let n = images.size()[0];
        let x = images.view([n, channels, -1]).to_kind(Kind::Double);
        let mean: Vec<f64> =
            Vec::try_from(x.mean_dim(&[0i64, 2][..], false, Kind::Double)).unwrap_or_default();
        let sd: Vec<f64> = Vec::try_from(x.var_dim(&[0i64, 2][..], false, false).sqrt())
            .unwrap_or_default()
            .into_iter()
            .map(|v: f64| if v > 0.0 && v.is_finite() { v } else { 1.0 })
            .collect();
        Normalize::Standardize { mean, sd }
    }

    /// `images` (`[n, C·H·W] f32 in [0, 1]`) normalised; unchanged when [`Normalize::Unit`].
    pub fn apply(&self, images: &Tensor) -> Tensor {
        match self.tensors(images.device()) {
            None => images.shallow_clone(),
            Some(ms) => Normalize::apply_tensors(&ms, images),
        }
    }

    /// The mean and sd as `[1, C, 1] f32` tensors on `device`; `None` for
    /// [`Normalize::Unit`]. For a traced forward pass, which must capture tensors that
    /// outlive the trace.
    pub fn tensors(&self, device: Device) -> Option<(Tensor, Tensor)> {
        match self {
            Normalize::Unit => None,
            Normalize::Standardize { mean, sd } => {
                let t = |v: &[f64]| {
                    Tensor::from_slice(v)
                        .to_kind(Kind::Float)
                        .to_device(device)
                        .view([1, -1, 1])
                };
                Some((t(mean), t(sd)))
            }
        }
    }

    /// `(images - mean) / sd` per channel with [`Normalize::tensors`]; the batch stays
    /// symbolic (-1), so that a traced export keeps it free.
    pub fn apply_tensors((mean, sd): &(Tensor, Tensor), images: &Tensor) -> Tensor {
        let c = mean.size()[1];
        let inputs = images.size().last().copied().unwrap_or(0);
        ((images.view([-1, c, inputs / c]) - mean) / sd).view([-1, inputs])
    }

    /// One line: `unit (pixels / 255)` or `standardize (mean [..], sd [..])`.
    pub fn describe(&self) -> String {
        match self {
            Normalize::Unit => "unit (pixels / 255)".into(),
            Normalize::Standardize { mean, sd } => {
                let f = |v: &[f64]| {
                    v.iter()
                        .map(|x| format!("{x:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!(
                    "standardize (mean [{}], sd [{}] of pixels / 255)",
                    f(mean),
                    f(sd)
                )
            }
        }
    }

    /// The JSON stored under [`META_NORMALIZE`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads [`META_NORMALIZE`]; a checkpoint without it (older ones) is [`Normalize::Unit`].
    ///
    /// # Errors
    /// A message naming the key when its value is not such JSON, or its mean and sd do
    /// not have `channels` entries each with positive sd.
    pub fn from_metadata(
        m: &std::collections::HashMap<String, String>,
        channels: i64,
    ) -> std::result::Result<Normalize, String> {
        let Some(v) = m.get(META_NORMALIZE) else {
            return Ok(Normalize::Unit);
        };
        let n: Normalize = serde_json::from_str(v).map_err(|e| {
            format!("metadata `{META_NORMALIZE}` is {v:?}, not a normalisation ({e})")
        })?;
        if let Normalize::Standardize { mean, sd } = &n
            && (mean.len() as i64 != channels
                || sd.len() as i64 != channels
                || sd.iter().any(|s| !(*s > 0.0 && s.is_finite()))
                || mean.iter().any(|m| !m.is_finite()))
        {
            return Err(format!(
                "metadata `{META_NORMALIZE}` is {v:?}: expected {channels} means and \
                 {channels} positive sds"
            ));
        }
        Ok(n)
    }
}

/// Splits off a validation set, normalises, and moves everything to `device`.
///
/// With a validation split in the data (`raw.val`, an image folder's `val/`), that split
/// validates. Else, with `validation_size` `Some(v)`, the held-out images are drawn by
/// `split_seed` alone ([`transfer::libtorch_randperm`]: libtorch's CPU `randperm` from a
/// generator of its own, so libtorch's global generator is neither read nor moved), never
/// by the training seed, so every training seed and the teacher hold out the same
/// images. With `None` the test set doubles as the validation set, as
/// in the Keras reference. `normalize` = [`NormalizeKind::Standardize`] takes its
/// statistics from the training images that remain.
///
/// Then the training images are reduced to the transfer set ([`transfer`]): a fraction
/// drawn by `transfer.subset_seed`, less the omitted classes. Normalisation statistics
/// are those of the whole training split, so a teacher and its students on a subset
/// share them. The default `transfer` (fraction 1, nothing omitted) changes nothing.
///
/// # Errors
/// A [`UsageError`] when `v` is not smaller than the training set; [`transfer`]'s
/// (an unknown or repeated class, every class omitted, a class left without images).
pub fn prepare(
    raw: &RawData,
    validation_size: Option<usize>,
    split_seed: u64,
    normalize: NormalizeKind,
    transfer: &TransferSpec,
    device: Device,
) -> Result<Dataset> {
    let omitted = transfer::resolve_omitted(&transfer.omit, &raw.spec)?;
    let all = Examples::from_split(&raw.train, device);
    let test = Examples::from_split(&raw.test, device);
    let n = all.len();
    let (train, val, train_index, val_index, split) = match (&raw.val, validation_size) {
        (Some(v), _) => {
            let val = Examples::from_split(v, device);
            let split = SplitInfo::folder(v);
            (all, val, (0..n).collect(), Vec::new(), split)
        }
        (None, Some(v)) => {
            if v as i64 >= n {
                return Err(UsageError(format!(
                    "data.validation_size = {v} but the training set has only {n} images; \
                     set a smaller data.validation_size in a --config file (configs/digits.toml \
                     sets one for the digits)"
                ))
                .into());
            }
            // The permutation `randperm` drew from libtorch's global generator before;
            // the same one, from a generator of the split's own.
            let perm = transfer::libtorch_randperm(n as usize, split_seed ^ 0x5eed_5b1d);
            let perm = Tensor::from_slice(&perm);
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
        (None, None) => {
            let val = Examples {
                images: test.images.shallow_clone(),
                labels: test.labels.shallow_clone(),
            };
            let split = SplitInfo::test_set(test.len() as usize);
            (all, val, (0..n).collect(), Vec::new(), split)
        }
    };
    let norm = match normalize {
        NormalizeKind::Unit => Normalize::Unit,
        NormalizeKind::Standardize => Normalize::fit(&train.images, raw.spec.channels),
    };
    let (train, train_index) = if transfer.fraction >= 1.0 && omitted.is_empty() {
        (train, train_index)
    } else {
        let labels: Vec<i64> = train_index
            .iter()
            .map(|&i| raw.train.labels[i as usize])
            .collect();
        let keep = transfer::select(&labels, transfer, &omitted, &raw.spec)?;
        let rows: Vec<i64> = keep.iter().map(|&p| p as i64).collect();
        let index: Vec<i64> = keep.iter().map(|&p| train_index[p]).collect();
        (
            train.select(&Tensor::from_slice(&rows).to_device(device)),
            index,
        )
    };
    let transfer = TransferSet::new(transfer, omitted, &raw.spec, &train_index);
    let (train, val, test) = (
        train.normalized(&norm),
        val.normalized(&norm),
        test.normalized(&norm),
    );
    Ok(Dataset {
        train,
        val,
        test,
        dir: raw.path.clone(),
        source: raw.source,
        spec: raw.spec.clone(),
        normalize: norm,
        train_index,
        val_index,
        split,
        transfer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The normalisation recorded in a checkpoint reads back as it was; a checkpoint
    /// without it is pixels / 255; a value that is not one, or has the wrong number of
    /// channels or an sd of 0, names the key.
    #[test]
    fn normalize_metadata_round_trip() {
        let st = Normalize::Standardize {
            mean: vec![0.25, 0.5, 0.125],
            sd: vec![0.3, 0.2, 0.1],
        };
        for n in [Normalize::Unit, st.clone()] {
            let m = std::collections::HashMap::from([(META_NORMALIZE.to_string(), n.to_json())]);
            assert_eq!(Normalize::from_metadata(&m, 3), Ok(n));
        }
        assert_eq!(
            Normalize::from_metadata(&Default::default(), 1),
            Ok(Normalize::Unit)
        );
        for bad in [
            "standardize".to_string(),
            st.to_json().replace("0.3", "0.0"),
            r#"{"kind":"standardize","mean":[0.1],"sd":[0.2]}"#.to_string(),
        ] {
            let m = std::collections::HashMap::from([(META_NORMALIZE.to_string(), bad.clone())]);
            let e = Normalize::from_metadata(&m, 3).unwrap_err();
            assert!(e.contains(META_NORMALIZE), "{bad}: {e}");
        }
        // apply: (x - mean[c]) / sd[c] per channel of [n, C·H·W].
        let x = Tensor::from_slice(&[0.25f32, 0.55, 0.5, 0.5, 0.125, 0.325]).view([1, 6]);
        let y: Vec<f32> = Vec::try_from(st.apply(&x).view([-1])).unwrap();
        let want = [0.0, 1.0, 0.0, 0.0, 0.0, 2.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
    }

    /// `class_names_for`: names from a file set K; without them K is `data.classes` or
    /// the largest label + 1; a label out of range names its file and what set K.
    #[test]
    fn class_count_comes_from_names_or_labels() {
        let split = |labels: Vec<i64>| Split {
            pixels: vec![0; labels.len()],
            labels,
        };
        let (a, b) = (split(vec![0, 3, 25]), split(vec![1, 2]));
        let f = Path::new("train-labels");
        let names = class_names_for(None, None, &[(&a, f), (&b, f)], Path::new("c.txt")).unwrap();
        assert_eq!(names.len(), 26);
        assert_eq!(names[25], "25");
        // K = 25 leaves label 25 out: 0 to 24.
        let e = class_names_for(None, Some(25), &[(&a, f)], Path::new("c.txt")).unwrap_err();
        assert!(format!("{e:#}").contains("expected 0 to 24"), "{e:#}");
        let e = class_names_for(None, Some(10), &[(&a, f)], Path::new("c.txt")).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("label 25 at index 2") && e.contains("data.classes = 10"),
            "{e}"
        );
        let named: Vec<String> = (0..26).map(|i| format!("letter {i}")).collect();
        let got = class_names_for(Some(named.clone()), None, &[(&a, f)], Path::new("c.txt"));
        assert_eq!(got.unwrap(), named);
        let e = class_names_for(
            Some(named[..5].to_vec()),
            None,
            &[(&a, f)],
            Path::new("c.txt"),
        );
        let e = format!("{:#}", e.unwrap_err());
        assert!(e.contains("c.txt names 5 classes"), "{e}");
        let e = class_names_for(Some(named), Some(3), &[(&a, f)], Path::new("c.txt"));
        assert!(format!("{:#}", e.unwrap_err()).contains("data.classes = 3"));
        let neg = split(vec![-1]);
        assert!(class_names_for(None, None, &[(&neg, f)], Path::new("c.txt")).is_err());
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
}
