//! The `folder` data source (see [`super::Source`]): torchvision's ImageFolder layout,
//! `DIR/train/<class>/*`, `DIR/test/<class>/*` and optionally `DIR/val/<class>/*`.
//!
//! Class names are the train sub-folder names in byte order; a split's images are in
//! class order, then by file name. PNG, JPEG, BMP, GIF and WebP files are decoded in
//! parallel (rayon's global pool: one thread per core, or `RAYON_NUM_THREADS`), their
//! EXIF orientation applied. Colour becomes luma by ITU-R 601 (as PIL's `convert("L")`),
//! grey is repeated for RGB, alpha is dropped; `data.resize` is an area average
//! ([`super::pixels::resize_area`]).
//!
//! The decoded images are cached (see [`cache_dir`] and the `cache` functions below), so
//! that a second run reads one file instead of decoding every image again.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{Channels, DataSpec, RawData, ReadOptions, Source, Split, pixels};
use crate::error::UsageError;

pub use crate::image_input::IMAGE_EXTENSIONS;

/// The splits, in the order they are listed, keyed and cached.
const SPLITS: [&str; 3] = ["train", "test", "val"];

/// One image file of the listing.
#[derive(Debug, Clone)]
struct Entry {
    /// Relative to the data folder, e.g. `train/cat/001.png`.
    rel: PathBuf,
    label: usize,
    size: u64,
    /// Modification time, ns since the Unix epoch (negative before it).
    mtime_ns: i128,
}

/// What is in the folder, before any image is decoded.
struct Listing {
    class_names: Vec<String>,
    /// `(split name, its images in order)`; train, test, then val when present.
    splits: Vec<(&'static str, Vec<Entry>)>,
    skipped: usize,
    skipped_example: Option<PathBuf>,
}

fn is_hidden(name: &OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

fn is_image(name: &OsStr) -> bool {
    Path::new(name)
        .extension()
        .and_then(OsStr::to_str)
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    match m.modified() {
        Ok(t) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        },
        Err(_) => 0,
    }
}

/// The class folders of `root/split`, sorted by name (bytes), and the plain files found
/// beside them (skipped). Hidden entries are skipped silently.
fn class_folders(root: &Path, split: &str) -> Result<(Vec<String>, Vec<PathBuf>)> {
    let dir = root.join(split);
    let mut classes = Vec::new();
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name();
        if is_hidden(&name) {
            continue;
        }
        // Follows symbolic links: a linked class folder is a class folder.
        if e.path().is_dir() {
            let Some(s) = name.to_str() else {
                return Err(UsageError(format!(
                    "{}: the class folder name {:?} is not UTF-8; class names must be text, \
                     rename the folder",
                    dir.display(),
                    name
                ))
                .into());
            };
            classes.push(s.to_string());
        } else {
            files.push(Path::new(split).join(&name));
        }
    }
    classes.sort();
    files.sort();
    Ok((classes, files))
}

/// The images of one class folder, sorted by file name, and the other files (skipped).
fn class_files(root: &Path, rel_dir: &Path, label: usize) -> Result<(Vec<Entry>, Vec<PathBuf>)> {
    let dir = root.join(rel_dir);
    let mut images = Vec::new();
    let mut other = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name();
        if is_hidden(&name) {
            continue;
        }
        let rel = rel_dir.join(&name);
        if !is_image(&name) {
            other.push(rel);
            continue;
        }
        // Symbolic links are followed: the key is of the file the image is read from.
        let meta = match e.file_type() {
            Ok(t) if !t.is_symlink() => e.metadata(),
            _ => std::fs::metadata(e.path()),
        }
        .with_context(|| format!("cannot read the metadata of {}", dir.join(&name).display()))?;
        if meta.is_dir() {
            other.push(rel);
            continue;
        }
        images.push(Entry {
            rel,
            label,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
        });
    }
    images.sort_by(|a, b| a.rel.as_os_str().cmp(b.rel.as_os_str()));
    other.sort();
    Ok((images, other))
}

/// Lists the folder: its splits, classes and image files, with sizes and times.
fn list(root: &Path) -> Result<Listing> {
    for split in ["train", "test"] {
        if !root.join(split).is_dir() {
            return Err(UsageError(format!(
                "{} has no {split}/ folder; an image folder holds train/<class>/ and \
                 test/<class>/ (and optionally val/<class>/) with the images of each class; \
                 add it, or set data.source to the data set's format",
                root.display()
            ))
            .into());
        }
    }
    let (class_names, mut skipped_files) = class_folders(root, "train")?;
    if class_names.is_empty() {
        return Err(UsageError(format!(
            "{}: no class folders; put the images of each class in train/<class>/",
            root.join("train").display()
        ))
        .into());
    }
    let mut splits = Vec::new();
    for split in SPLITS {
        if split == "val" && !root.join(split).is_dir() {
            continue;
        }
        let (names, files) = match split {
            "train" => (class_names.clone(), Vec::new()),
            _ => class_folders(root, split)?,
        };
        skipped_files.extend(files);
        if let Some(extra) = names.iter().find(|n| class_names.binary_search(n).is_err()) {
            return Err(UsageError(format!(
                "{}: train/ has no class folder {extra:?}; every class of {split}/ must be a \
                 class of train/ (train/ has {}); rename or remove the folder, or add \
                 train/{extra}/",
                root.join(split).join(extra).display(),
                super::names_preview(&class_names)
            ))
            .into());
        }
        if let Some(missing) = class_names.iter().find(|n| names.binary_search(n).is_err()) {
            return Err(UsageError(format!(
                "{}: {split}/ has no class folder {missing:?}, which train/ has; every class \
                 needs images in each split, so add {split}/{missing}/ with images of it, or \
                 remove train/{missing}/",
                root.join(split).display()
            ))
            .into());
        }
        let per_class: Vec<Result<(Vec<Entry>, Vec<PathBuf>)>> = class_names
            .par_iter()
            .enumerate()
            .map(|(label, c)| class_files(root, &Path::new(split).join(c), label))
            .collect();
        let mut entries = Vec::new();
        for (c, r) in class_names.iter().zip(per_class) {
            let (images, other) = r?;
            if images.is_empty() {
                return Err(UsageError(format!(
                    "{}: the class folder holds no images (.{}); add images of {c:?} or \
                     remove the folder",
                    root.join(split).join(c).display(),
                    IMAGE_EXTENSIONS.join(", .")
                ))
                .into());
            }
            entries.extend(images);
            skipped_files.extend(other);
        }
        splits.push((split, entries));
    }
    Ok(Listing {
        class_names,
        splits,
        skipped: skipped_files.len(),
        skipped_example: skipped_files.into_iter().next(),
    })
}

/// The cache key: the format version, the options that shape the result, and the
/// listing (names, sizes, modification times).
fn cache_key(listing: &Listing, o: &ReadOptions) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(format!("kdtrain folder cache {CACHE_VERSION}\n").as_bytes());
    h.update(format!("channels {:?}\nresize {:?}\n", o.channels, o.resize).as_bytes());
    for name in &listing.class_names {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
    }
    for (split, entries) in &listing.splits {
        h.update(format!("split {split} {}\n", entries.len()).as_bytes());
        for e in entries {
            let b = e.rel.as_os_str().as_encoded_bytes();
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
            h.update((e.label as u64).to_le_bytes());
            h.update(e.size.to_le_bytes());
            h.update(e.mtime_ns.to_le_bytes());
        }
    }
    h.finalize().into()
}

/// One decoded image: channel-major pixels of `c` channels, `h x w`.
struct Decoded {
    c: usize,
    h: usize,
    w: usize,
    pixels: Vec<u8>,
}

fn decode_error(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(format!(
        "{}: cannot decode the image ({e}); replace or remove the file",
        path.display()
    ))
    .into()
}

/// Opens an image's decoder, its format guessed from its first bytes.
fn decoder(path: &Path) -> Result<impl image::ImageDecoder> {
    image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?
        .into_decoder()
        .map_err(|e| decode_error(path, e))
}

/// Decodes one image, applies its EXIF orientation and converts it to `channels`
/// (Auto: 1 for grey images, 3 for colour), then area-resizes it to `resize`.
fn decode(path: &Path, channels: Channels, resize: Option<(usize, usize)>) -> Result<Decoded> {
    use image::ImageDecoder as _;
    if crate::error::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(crate::error::Interrupted::new(format!(
            "interrupted while decoding the image folder (at {}); nothing was cached",
            path.display()
        ))
        .into());
    }
    let mut dec = decoder(path)?;
    // The header's size, checked before a byte is decoded: a 100-byte file may claim
    // 100000 x 100000 pixels, which the decoder would try to allocate.
    let (hw, hh) = dec.dimensions();
    let claimed = u64::from(hw) * u64::from(hh);
    if claimed > crate::image_input::MAX_PIXELS {
        return Err(UsageError(format!(
            "{}: the header says {hw}x{hh} = {:.1} megapixels, over the limit of {} \
             megapixels for one image; replace or remove the file",
            path.display(),
            claimed as f64 / 1e6,
            crate::image_input::MAX_PIXELS / 1_000_000
        ))
        .into());
    }
    let orientation = dec.orientation().map_err(|e| decode_error(path, e))?;
    let mut img = image::DynamicImage::from_decoder(dec).map_err(|e| decode_error(path, e))?;
    img.apply_orientation(orientation);
    let colour = img.color().has_color();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let want = match channels {
        Channels::Auto if colour => 3,
        Channels::Auto | Channels::Grey => 1,
        Channels::Colour => 3,
    };
    let pixels = if colour {
        let rgb = img.into_rgb8().into_raw();
        let px = rgb.chunks_exact(3);
        match want {
            1 => px.map(|p| pixels::luma(p[0], p[1], p[2])).collect(),
            _ => {
                let mut planar = vec![0u8; 3 * h * w];
                let (r, gb) = planar.split_at_mut(h * w);
                let (g, b) = gb.split_at_mut(h * w);
                for (i, p) in px.enumerate() {
                    r[i] = p[0];
                    g[i] = p[1];
                    b[i] = p[2];
                }
                planar
            }
        }
    } else {
        let grey = img.into_luma8().into_raw();
        match want {
            1 => grey,
            _ => grey.repeat(3),
        }
    };
    Ok(match resize {
        Some((nh, nw)) => Decoded {
            c: want,
            h: nh,
            w: nw,
            pixels: pixels::resize_area(&pixels, want, h, w, nh, nw),
        },
        None => Decoded {
            c: want,
            h,
            w,
            pixels,
        },
    })
}

/// Refuses a folder whose decoded images would not fit in memory, estimated from the
/// first image's header: `n x C x H x W` bytes.
fn check_memory(root: &Path, listing: &Listing, o: &ReadOptions, avail: Option<u64>) -> Result<()> {
    use image::ImageDecoder as _;
    let n: usize = listing.splits.iter().map(|(_, e)| e.len()).sum();
    let Some(first) = listing.splits.first().and_then(|(_, e)| e.first()) else {
        return Ok(());
    };
    let path = root.join(&first.rel);
    let dec = decoder(&path)?;
    let (w, h) = dec.dimensions();
    let c: u128 = match o.channels {
        Channels::Grey => 1,
        Channels::Colour => 3,
        Channels::Auto => match dec.color_type().has_color() {
            true => 3,
            false => 1,
        },
    };
    let (h, w) = o
        .resize
        .map_or((h as u128, w as u128), |(h, w)| (h as u128, w as u128));
    let need = n as u128 * c * h * w;
    if let Some(avail) = avail
        && need > avail as u128
    {
        return Err(UsageError(format!(
            "{}: {n} images of {c}x{h}x{w} (channels x height x width, as {}) need {} once \
             decoded, but only {} of memory is available; set a smaller data.resize = [h, w], \
             data.channels = 1, or use fewer images",
            root.display(),
            first.rel.display(),
            pixels::human_bytes(need),
            pixels::human_bytes(avail as u128)
        ))
        .into());
    }
    Ok(())
}

/// Decodes every image of the listing, in parallel, into one [`Split`] per split, and
/// the spec's channels, height and width.
fn decode_all(
    root: &Path,
    listing: &Listing,
    o: &ReadOptions,
) -> Result<(Vec<Split>, (usize, usize, usize))> {
    let all: Vec<&Entry> = listing.splits.iter().flat_map(|(_, e)| e).collect();
    // Test hook: `decode` acts as a Ctrl-C as decoding starts.
    if crate::error::hook_is("decode") {
        crate::error::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let decoded: Vec<Result<Decoded>> = all
        .par_iter()
        .map(|e| decode(&root.join(&e.rel), o.channels, o.resize))
        .collect();
    let mut images = Vec::with_capacity(decoded.len());
    for d in decoded {
        images.push(d?);
    }
    let Some(first) = images.first() else {
        anyhow::bail!("{}: no images", root.display());
    };
    let (h, w) = (first.h, first.w);
    if let Some(i) = images.iter().position(|d| (d.h, d.w) != (h, w)) {
        return Err(UsageError(format!(
            "{}: images differ in size: {} is {h}x{w} (height x width) but {} is {}x{}; set \
             data.resize = [{h}, {w}] (or another [height, width]) to resize them all",
            root.display(),
            all[0].rel.display(),
            all[i].rel.display(),
            images[i].h,
            images[i].w
        ))
        .into());
    }
    let c = images.iter().map(|d| d.c).max().unwrap_or(1);
    let plane = h * w;
    let mut splits = Vec::new();
    let mut rest = images.into_iter();
    for (_, entries) in &listing.splits {
        let mut pixels = Vec::with_capacity(entries.len() * c * plane);
        for d in rest.by_ref().take(entries.len()) {
            match d.c == c {
                true => pixels.extend_from_slice(&d.pixels),
                false => pixels.extend(pixels::convert_channels(&d.pixels, plane, d.c, c)),
            }
        }
        let labels = entries.iter().map(|e| e.label as i64).collect();
        splits.push(Split { pixels, labels });
    }
    Ok((splits, (c, h, w)))
}

/// Reads the image folder at `path` (see the module's documentation), from the decoded
/// cache in [`cache_dir`] when it holds this listing.
///
/// # Errors
/// A [`UsageError`] naming the folder or file: no train/ or test/, a class folder in one
/// split but not the other, an empty class folder, an image that does not decode, images
/// of different sizes without `data.resize`, more pixels than memory holds.
pub fn load(path: &Path, o: &ReadOptions) -> Result<RawData> {
    load_cached(path, o, cache_dir().as_deref())
}

/// [`load`] with the cache in `cache`, or none.
pub fn load_cached(path: &Path, o: &ReadOptions, cache: Option<&Path>) -> Result<RawData> {
    load_with(path, o, cache, crate::device::available_memory_bytes())
}

/// [`load_cached`] with `avail` bytes of memory.
fn load_with(
    path: &Path,
    o: &ReadOptions,
    cache: Option<&Path>,
    avail: Option<u64>,
) -> Result<RawData> {
    pixels::check_resize(o.resize)?;
    let listing = list(path)?;
    let mut notes = Vec::new();
    if let Some(example) = &listing.skipped_example {
        notes.push(match listing.skipped {
            1 => format!(
                "skipped 1 file that is not an image ({})",
                example.display()
            ),
            n => format!(
                "skipped {n} files that are not images (e.g. {})",
                example.display()
            ),
        });
    }
    let key = cache_key(&listing, o);
    let cache_file = cache.map(|d| d.join(crate::hex(&key)));
    let hit = cache_file.as_deref().and_then(|f| read_cache(f, &key));
    let (spec, splits) = match hit {
        Some((spec, splits)) if spec.class_names == listing.class_names => {
            notes.push("decoded cache hit".to_string());
            (spec, splits)
        }
        _ => {
            check_memory(path, &listing, o, avail)?;
            let (splits, (c, h, w)) = decode_all(path, &listing, o)?;
            let spec = DataSpec {
                channels: c as i64,
                height: h as i64,
                width: w as i64,
                class_names: listing.class_names.clone(),
            };
            let n: usize = splits.iter().map(Split::len).sum();
            match cache_file
                .as_deref()
                .map(|f| write_cache(f, &key, &spec, &splits))
            {
                Some(Ok(())) => notes.push(format!(
                    "decoded {n} images, cached in {}",
                    cache_file
                        .as_deref()
                        .map(Path::display)
                        .map_or(String::new(), |d| d.to_string())
                )),
                Some(Err(e)) => {
                    crate::errln!(
                        "warning: cannot write the decoded-image cache {}: {e}; the images \
                         will be decoded again next time",
                        cache_file
                            .as_deref()
                            .map(Path::display)
                            .map_or(String::new(), |d| d.to_string())
                    );
                    notes.push(format!("decoded {n} images (not cached)"));
                }
                None => notes.push(format!("decoded {n} images")),
            }
            (spec, splits)
        }
    };
    let mut splits = splits.into_iter();
    let (Some(train), Some(test)) = (splits.next(), splits.next()) else {
        anyhow::bail!("{}: train or test split missing", path.display());
    };
    let val = splits.next();
    let train_dir = path.join("train");
    let mut checks = vec![(&train, train_dir.as_path())];
    let test_dir = path.join("test");
    checks.push((&test, test_dir.as_path()));
    let val_dir = path.join("val");
    if let Some(v) = &val {
        checks.push((v, val_dir.as_path()));
    }
    let class_names = super::class_names_for(
        Some(spec.class_names.clone()),
        o.classes,
        &checks,
        &train_dir,
    )?;
    Ok(RawData {
        path: path.to_path_buf(),
        source: Source::Folder,
        spec: DataSpec {
            class_names,
            ..spec
        },
        train,
        test,
        val,
        note: Some(notes.join("; ")),
    })
}

/// Where decoded image folders are cached: `$KDTRAIN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/kdtrain/data`, else `$HOME/.cache/kdtrain/data` (an empty variable
/// counts as unset); `None` when none is set.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("KDTRAIN_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kdtrain").join("data")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("kdtrain").join("data")))
}

// The cache file, all integers little-endian:
//   magic "KDTRDCCH" (8 bytes), version u32, the key's SHA-256 (32 bytes),
//   JSON length u64, the JSON {"channels", "height", "width", "class_names",
//   "splits": [{"name", "count"}, ...]},
//   per split in order: count·C·H·W pixel bytes, then count labels as i64,
//   CRC-32 (ISO-HDLC) of everything after the magic, u32.
// A file of another length, version, key or checksum is ignored and rebuilt.
const CACHE_MAGIC: &[u8; 8] = b"KDTRDCCH";
const CACHE_VERSION: u32 = 1;
const CACHE_HEADER: usize = 8 + 4 + 32 + 8;
/// The JSON is small (class names); a larger claim is a corrupt file.
const CACHE_JSON_MAX: u64 = 64 << 20;
const CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

fn write_cache(file: &Path, key: &[u8; 32], spec: &DataSpec, splits: &[Split]) -> Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::json!({
        "channels": spec.channels,
        "height": spec.height,
        "width": spec.width,
        "class_names": spec.class_names,
        "splits": splits.iter().zip(SPLITS).map(|(s, name)| serde_json::json!({
            "name": name, "count": s.len()
        })).collect::<Vec<_>>(),
    })
    .to_string();
    let name = file.file_name().unwrap_or(OsStr::new("cache"));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut crc = CRC.digest();
        let mut put = |w: &mut std::io::BufWriter<std::fs::File>, b: &[u8]| {
            crc.update(b);
            w.write_all(b)
        };
        w.write_all(CACHE_MAGIC)?;
        put(&mut w, &CACHE_VERSION.to_le_bytes())?;
        put(&mut w, key)?;
        put(&mut w, &(json.len() as u64).to_le_bytes())?;
        put(&mut w, json.as_bytes())?;
        for s in splits {
            put(&mut w, &s.pixels)?;
            let labels: Vec<u8> = s.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
            put(&mut w, &labels)?;
        }
        w.write_all(&crc.finalize().to_le_bytes())?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", file.display()))
}

/// Reads a cache file written by [`write_cache`] for `key`; `None` when it is missing,
/// unreadable, truncated, of another version or key, or fails its checksum.
fn read_cache(file: &Path, key: &[u8; 32]) -> Option<(DataSpec, Vec<Split>)> {
    #[derive(serde::Deserialize)]
    struct Head {
        channels: i64,
        height: i64,
        width: i64,
        class_names: Vec<String>,
        splits: Vec<SplitHead>,
    }
    #[derive(serde::Deserialize)]
    struct SplitHead {
        name: String,
        count: u64,
    }
    let mut f = std::fs::File::open(file).ok()?;
    let len = f.metadata().ok()?.len();
    let mut head = [0u8; CACHE_HEADER];
    f.read_exact(&mut head).ok()?;
    if &head[..8] != CACHE_MAGIC
        || head[8..12] != CACHE_VERSION.to_le_bytes()
        || &head[12..44] != key
    {
        return None;
    }
    let json_len = u64::from_le_bytes(head[44..52].try_into().ok()?);
    if json_len > CACHE_JSON_MAX || json_len > len {
        return None;
    }
    let mut json = vec![0u8; json_len as usize];
    f.read_exact(&mut json).ok()?;
    let h: Head = serde_json::from_slice(&json).ok()?;
    let per = [h.channels, h.height, h.width]
        .iter()
        .try_fold(1u64, |a, &d| {
            a.checked_mul(u64::try_from(d).ok().filter(|&d| d > 0)?)
        })?;
    let names_ok = h.splits.len() >= 2
        && h.splits.len() <= SPLITS.len()
        && h.splits.iter().zip(SPLITS).all(|(s, n)| s.name == n);
    if !names_ok || h.class_names.is_empty() {
        return None;
    }
    // The whole length is checked before anything is allocated for the data.
    let mut want = CACHE_HEADER as u64 + json_len + 4;
    for s in &h.splits {
        want = want.checked_add(s.count.checked_mul(per.checked_add(8)?)?)?;
    }
    if want != len {
        return None;
    }
    let mut crc = CRC.digest();
    crc.update(&head[8..]);
    crc.update(&json);
    let k = h.class_names.len() as i64;
    let mut splits = Vec::new();
    for s in &h.splits {
        let n = usize::try_from(s.count).ok()?;
        let mut pixels = vec![0u8; n.checked_mul(usize::try_from(per).ok()?)?];
        f.read_exact(&mut pixels).ok()?;
        let mut raw = vec![0u8; n.checked_mul(8)?];
        f.read_exact(&mut raw).ok()?;
        crc.update(&pixels);
        crc.update(&raw);
        let labels: Vec<i64> = raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
        if labels.iter().any(|&l| !(0..k).contains(&l)) {
            return None;
        }
        splits.push(Split { pixels, labels });
    }
    let mut tail = [0u8; 4];
    f.read_exact(&mut tail).ok()?;
    if crc.finalize() != u32::from_le_bytes(tail) {
        return None;
    }
    let spec = DataSpec {
        channels: h.channels,
        height: h.height,
        width: h.width,
        class_names: h.class_names,
    };
    Some((spec, splits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::usage_err;
    use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};

    fn rgb(w: u32, h: u32, p: [u8; 3]) -> DynamicImage {
        DynamicImage::ImageRgb8(ImageBuffer::from_pixel(w, h, Rgb(p)))
    }

    fn grey(w: u32, h: u32, v: u8) -> DynamicImage {
        DynamicImage::ImageLuma8(ImageBuffer::from_pixel(w, h, Luma([v])))
    }

    fn save(root: &Path, rel: &str, img: &DynamicImage) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        img.save(&p).unwrap();
    }

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn opts(channels: Channels, resize: Option<(usize, usize)>) -> ReadOptions {
        ReadOptions {
            source: Source::Folder,
            channels,
            resize,
            ..Default::default()
        }
    }

    fn read(root: &Path, o: &ReadOptions) -> Result<RawData> {
        load_cached(root, o, None)
    }

    /// The message of a usage error; panics on success or another error.
    /// A small grey folder: two classes, train 2+1, test 1+1 images of 4x4.
    fn grey_folder(root: &Path) {
        save(root, "train/cat/1.png", &grey(4, 4, 10));
        save(root, "train/cat/0.png", &grey(4, 4, 20));
        save(root, "train/dog/x.png", &grey(4, 4, 30));
        save(root, "test/cat/a.png", &grey(4, 4, 40));
        save(root, "test/dog/b.png", &grey(4, 4, 50));
    }

    #[test]
    fn every_format_in_class_then_name_order() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let c = [200, 100, 50];
        save(r, "train/cat/a.png", &rgb(4, 4, c));
        save(r, "train/cat/b.bmp", &rgb(4, 4, c));
        save(
            r,
            "train/cat/c.gif",
            &DynamicImage::ImageRgba8(ImageBuffer::from_pixel(4, 4, Rgba([200, 100, 50, 255]))),
        );
        save(r, "train/cat/d.webp", &rgb(4, 4, c));
        save(r, "train/cat/E.PNG", &rgb(4, 4, [1, 2, 3]));
        write(r, "train/cat/notes.txt", b"hello");
        write(r, "train/cat/.hidden.png", b"not an image, but hidden");
        write(r, "train/.DS_Store", b"x");
        save(r, "train/bird/z.png", &rgb(4, 4, [9, 9, 9]));
        save(r, "test/cat/e.jpg", &rgb(4, 4, c));
        save(r, "test/bird/f.png", &grey(4, 4, 7));
        let raw = read(r, &opts(Channels::Auto, None)).unwrap();
        assert_eq!(raw.spec.class_names, ["bird", "cat"]);
        assert_eq!(
            (raw.spec.channels, raw.spec.height, raw.spec.width),
            (3, 4, 4)
        );
        // bird/z, then cat/E.PNG (upper case sorts first), a, b, c, d.
        assert_eq!(raw.train.labels, [0, 1, 1, 1, 1, 1]);
        assert_eq!(raw.train.pixels.len(), 6 * 48);
        let img = |s: &Split, i: usize| s.pixels[i * 48..(i + 1) * 48].to_vec();
        let planes = |p: [u8; 3]| [[p[0]; 16], [p[1]; 16], [p[2]; 16]].concat();
        assert_eq!(img(&raw.train, 0), planes([9, 9, 9]));
        assert_eq!(img(&raw.train, 1), planes([1, 2, 3]));
        for i in 2..5 {
            assert_eq!(img(&raw.train, i), planes(c), "lossless image {i}");
        }
        // GIF is palette-quantised, JPEG lossy: close.
        let near = |a: &[u8], b: &[u8]| a.iter().zip(b).all(|(x, y)| x.abs_diff(*y) <= 4);
        assert!(
            near(&img(&raw.train, 5), &planes(c)),
            "{:?}",
            img(&raw.train, 5)
        );
        assert_eq!(raw.test.labels, [0, 1]);
        // The grey image is repeated to three channels.
        assert_eq!(img(&raw.test, 0), vec![7; 48]);
        assert!(near(&img(&raw.test, 1), &planes(c)));
        assert!(raw.val.is_none());
        let note = raw.note.unwrap();
        assert!(
            note.contains("skipped 1 file that is not an image (train/cat/notes.txt)"),
            "{note}"
        );
    }

    #[test]
    fn grey_sixteen_bit_palette_and_channel_choices() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let g16 = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(2, 2, Luma([100u16 * 257])));
        save(r, "train/a/g16.png", &g16);
        save(r, "train/b/g.png", &grey(2, 2, 60));
        save(r, "test/a/g.png", &grey(2, 2, 61));
        save(r, "test/b/g.png", &grey(2, 2, 62));
        let raw = read(r, &opts(Channels::Auto, None)).unwrap();
        assert_eq!(raw.spec.channels, 1, "all grey: one channel");
        assert_eq!(raw.train.pixels, [[100; 4], [60; 4]].concat());
        let raw = read(r, &opts(Channels::Colour, None)).unwrap();
        assert_eq!(raw.spec.channels, 3);
        assert_eq!(raw.train.pixels[..12], [100; 12]);

        // A palette PNG: red and blue.
        let mut buf = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut buf, 2, 2);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette(vec![255u8, 0, 0, 0, 0, 255]);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&[0, 1, 1, 0]).unwrap();
        }
        write(r, "train/a/pal.png", &buf);
        let raw = read(r, &opts(Channels::Auto, None)).unwrap();
        assert_eq!(raw.spec.channels, 3, "one colour image makes all RGB");
        // train/a: g16.png, pal.png; train/b: g.png.
        assert_eq!(raw.train.pixels[..12], [100; 12]);
        assert_eq!(
            raw.train.pixels[12..24],
            [255, 0, 0, 255, 0, 0, 0, 0, 0, 255, 255, 0]
        );
        let raw = read(r, &opts(Channels::Grey, None)).unwrap();
        assert_eq!(raw.spec.channels, 1);
        // ITU-R 601 luma of red and blue.
        assert_eq!(raw.train.pixels[4..8], [76, 29, 29, 76]);
    }

    /// A JPEG whose EXIF says "rotate 90 degrees clockwise" (orientation 6).
    fn jpeg_with_orientation(img: &DynamicImage, orientation: u8) -> Vec<u8> {
        let mut jpg = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut jpg), ImageFormat::Jpeg)
            .unwrap();
        let mut tiff = b"Exif\0\0II\x2a\0\x08\0\0\0".to_vec();
        tiff.extend([1, 0]); // one entry
        tiff.extend([0x12, 0x01, 3, 0, 1, 0, 0, 0, orientation, 0, 0, 0]);
        tiff.extend([0, 0, 0, 0]); // no next IFD
        let mut out = jpg[..2].to_vec(); // SOI
        out.extend([0xff, 0xe1]);
        out.extend(((tiff.len() + 2) as u16).to_be_bytes());
        out.extend(tiff);
        out.extend(&jpg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        // 16 wide, 8 tall: left half black, right half white.
        let img = DynamicImage::ImageLuma8(ImageBuffer::from_fn(16, 8, |x, _| {
            Luma([if x < 8 { 0 } else { 255 }])
        }));
        write(r, "train/a/rot.jpg", &jpeg_with_orientation(&img, 6));
        // Only the rotated size, 8 wide and 16 tall, matches the test image.
        save(r, "test/a/t.png", &grey(8, 16, 0));
        let raw = read(r, &opts(Channels::Grey, None)).unwrap();
        assert_eq!((raw.spec.height, raw.spec.width), (16, 8));
        // Rotated clockwise, the left (black) half is on top.
        let top: u32 = raw.train.pixels[..64].iter().map(|&p| p as u32).sum();
        let bottom: u32 = raw.train.pixels[64..128].iter().map(|&p| p as u32).sum();
        assert!(
            top < 64 * 30 && bottom > 64 * 220,
            "top {top}, bottom {bottom}"
        );
    }

    #[test]
    fn mixed_sizes_need_resize_which_averages_areas() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        save(r, "train/a/small.png", &grey(2, 2, 10));
        let big = DynamicImage::ImageLuma8(ImageBuffer::from_fn(4, 4, |x, y| {
            Luma([(10 * (x + 4 * y)) as u8])
        }));
        save(r, "train/a/zbig.png", &big);
        save(r, "test/a/t.png", &grey(2, 2, 5));
        let e = usage_err(read(r, &opts(Channels::Auto, None)));
        for want in [
            "train/a/small.png",
            "train/a/zbig.png",
            "2x2",
            "4x4",
            "data.resize",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let raw = read(r, &opts(Channels::Auto, Some((2, 2)))).unwrap();
        assert_eq!((raw.spec.height, raw.spec.width), (2, 2));
        // The 4x4 image becomes the means of its 2x2 blocks.
        assert_eq!(raw.train.pixels, [10, 10, 10, 10, 25, 45, 105, 125]);
        assert_eq!(raw.test.pixels, [5; 4]);
        // data.resize = [0, 2] is refused by key.
        assert!(usage_err(read(r, &opts(Channels::Auto, Some((0, 2))))).contains("data.resize"));
    }

    #[test]
    fn val_split_and_class_count() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        grey_folder(r);
        save(r, "val/cat/v.png", &grey(4, 4, 60));
        save(r, "val/dog/w.png", &grey(4, 4, 70));
        let raw = read(r, &opts(Channels::Auto, None)).unwrap();
        assert_eq!(raw.train.labels, [0, 0, 1]);
        // Sorted by name: 0.png (20) before 1.png (10).
        assert_eq!(raw.train.pixels[..16], [20; 16]);
        let val = raw.val.unwrap();
        assert_eq!(val.labels, [0, 1]);
        assert_eq!(val.pixels, [[60; 16], [70; 16]].concat());
        let o = ReadOptions {
            classes: Some(3),
            ..opts(Channels::Auto, None)
        };
        assert!(usage_err(read(r, &o)).contains("data.classes = 3"));
    }

    #[test]
    fn bad_folders_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        save(r, "train/cat/a.png", &grey(4, 4, 1));
        let e = usage_err(read(r, &opts(Channels::Auto, None)));
        assert!(e.contains("no test/ folder"), "{e}");
        save(r, "test/cat/a.png", &grey(4, 4, 1));
        save(r, "test/zebra/a.png", &grey(4, 4, 1));
        let e = usage_err(read(r, &opts(Channels::Auto, None)));
        assert!(e.contains("zebra") && e.contains("train/"), "{e}");
        std::fs::remove_dir_all(r.join("test/zebra")).unwrap();
        save(r, "train/dog/a.png", &grey(4, 4, 1));
        let e = usage_err(read(r, &opts(Channels::Auto, None)));
        assert!(e.contains("\"dog\"") && e.contains("test"), "{e}");
        write(r, "test/dog/readme.md", b"no images here");
        let e = usage_err(read(r, &opts(Channels::Auto, None)));
        assert!(e.contains("test/dog") && e.contains("no images"), "{e}");
        save(r, "test/dog/a.png", &grey(4, 4, 1));
        assert!(read(r, &opts(Channels::Auto, None)).is_ok());
        write(r, "train/dog/broken.jpg", b"\xff\xd8\xff garbage");
        let e = usage_err(read(r, &opts(Channels::Auto, None)));
        assert!(
            e.contains("train/dog/broken.jpg") && e.contains("cannot decode"),
            "{e}"
        );
        std::fs::remove_file(r.join("train/dog/broken.jpg")).unwrap();
        // No train/ at all.
        let e2 = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(e2.path().join("test/a")).unwrap();
        assert!(usage_err(read(e2.path(), &opts(Channels::Auto, None))).contains("no train/"));
    }

    /// A file whose header claims more pixels than one image may have is refused by
    /// name before the decoder allocates them (a 100-byte PNG claiming 100000 x 100000
    /// aborted the process).
    #[test]
    fn a_header_claiming_a_huge_image_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        grey_folder(root);
        let mut png = Vec::new();
        grey(2, 2, 9)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        // IHDR's data: bytes 16..24 (width, height), its CRC over bytes 12..29.
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        write(root, "train/dog/huge.png", &png);
        let e = usage_err(read(root, &opts(Channels::Auto, None)));
        assert!(
            e.contains("huge.png") && e.contains("100000x100000") && e.contains("megapixels"),
            "{e}"
        );
    }

    #[test]
    fn more_pixels_than_memory_are_refused_before_decoding() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        grey_folder(r);
        let o = opts(Channels::Auto, None);
        // 5 images of 1x4x4 = 80 bytes.
        assert!(load_with(r, &o, None, Some(80)).is_ok());
        let e = usage_err(load_with(r, &o, None, Some(79)));
        assert!(e.contains("5 images of 1x4x4") && e.contains("80 B"), "{e}");
        let o = opts(Channels::Colour, Some((8, 8)));
        let e = usage_err(load_with(r, &o, None, Some(79)));
        assert!(e.contains("5 images of 3x8x8"), "{e}");
    }

    fn same(a: &RawData, b: &RawData) {
        assert_eq!(a.spec, b.spec);
        assert_eq!(a.train.pixels, b.train.pixels);
        assert_eq!(a.train.labels, b.train.labels);
        assert_eq!(a.test.pixels, b.test.pixels);
        assert_eq!(a.test.labels, b.test.labels);
        assert_eq!(a.val.is_some(), b.val.is_some());
    }

    #[test]
    fn decoded_cache_hits_rebuilds_and_survives_damage() {
        let d = tempfile::tempdir().unwrap();
        let r = &d.path().join("data");
        grey_folder(r);
        save(r, "val/cat/v.png", &grey(4, 4, 60));
        save(r, "val/dog/w.png", &grey(4, 4, 70));
        let cache = d.path().join("cache");
        let o = opts(Channels::Auto, None);
        let load = |o: &ReadOptions| load_cached(r, o, Some(&cache)).unwrap();
        let first = load(&o);
        assert!(
            first
                .note
                .as_deref()
                .unwrap()
                .contains("decoded 7 images, cached in")
        );
        let files: Vec<PathBuf> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "one file, no temporary left: {files:?}");
        let file = files[0].clone();
        assert_eq!(file.file_name().unwrap().len(), 64, "hex SHA-256");
        let second = load(&o);
        assert_eq!(second.note.as_deref(), Some("decoded cache hit"));
        same(&first, &second);
        assert_eq!(
            second.val.unwrap().pixels,
            first.val.as_ref().unwrap().pixels
        );

        // Other options are another key.
        let colour = load(&opts(Channels::Colour, None));
        assert!(colour.note.unwrap().contains("cached in"));
        assert_eq!(colour.spec.channels, 3);

        // A touched file (same bytes, new time) rebuilds.
        let f = std::fs::File::options()
            .write(true)
            .open(r.join("train/cat/0.png"))
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
        drop(f);
        assert!(load(&o).note.unwrap().contains("cached in"));
        assert_eq!(load(&o).note.as_deref(), Some("decoded cache hit"));
        // A changed image rebuilds, with its new pixels.
        save(r, "train/dog/x.png", &grey(4, 4, 33));
        let changed = load(&o);
        assert!(changed.note.unwrap().contains("cached in"));
        assert_eq!(changed.train.pixels[32..48], [33; 16]);

        // Damage: a flipped pixel byte, a truncated file, another version, garbage.
        let files: Vec<PathBuf> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let before = load(&o);
        let file = files
            .into_iter()
            .max_by_key(|f| f.metadata().unwrap().modified().unwrap())
            .unwrap();
        let good = std::fs::read(&file).unwrap();
        let mut flipped = good.clone();
        let at = good.len() - 100;
        flipped[at] ^= 0x55;
        let mut version = good.clone();
        version[8] = 99;
        for bad in [
            flipped,
            good[..good.len() - 9].to_vec(),
            version,
            b"garbage".to_vec(),
            Vec::new(),
        ] {
            std::fs::write(&file, &bad).unwrap();
            let again = load(&o);
            assert!(
                again.note.as_deref().unwrap().contains("cached in"),
                "{:?}",
                again.note
            );
            same(&before, &again);
            assert_eq!(std::fs::read(&file).unwrap(), good, "rebuilt the same");
        }
    }

    #[test]
    fn an_unwritable_cache_is_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let r = &d.path().join("data");
        grey_folder(r);
        // A file where the cache folder should be: it cannot be created.
        let blocked = d.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let raw = load_cached(r, &opts(Channels::Auto, None), Some(&blocked.join("sub"))).unwrap();
        assert_eq!(raw.note.as_deref(), Some("decoded 5 images (not cached)"));
        assert_eq!(raw.train.len(), 3);
    }
}
