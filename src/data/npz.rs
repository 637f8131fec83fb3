//! The `npz` data source (see [`super::Source`]): a NumPy `.npz` archive holding
//! `x_train`, `y_train`, `x_test`, `y_test` (Keras's `mnist.npz` layout) and optionally
//! `x_val`, `y_val` and `class_names`.
//!
//! The `.npy` members are parsed here (the format is a short header and the raw array:
//! <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>), the zip by
//! the `zip` crate. Headers are never trusted: every size is checked before anything is
//! allocated, and an array is read only up to the bytes its header claims.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{DataSpec, Layout, RawData, ReadOptions, Source, Split, pixels};
use crate::error::UsageError;

/// The most classes inferred from the labels alone (without `class_names` or
/// `data.classes`).
pub const MAX_INFERRED_CLASSES: i64 = 1 << 16;

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    /// The dtype string, e.g. `|u1`, `<i8`, `<U7`.
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<u64>,
}

impl NpyHeader {
    /// `(kind, item size in bytes, big-endian)` of [`NpyHeader::descr`], e.g. `('u', 1,
    /// false)`; `None` for a dtype this reader does not know (structured, object).
    fn dtype(&self) -> Option<(char, usize, bool)> {
        let mut ch = self.descr.chars();
        let order = ch.next()?;
        let kind = ch.next()?;
        let size: usize = ch.as_str().parse().ok()?;
        if !matches!(order, '<' | '>' | '|' | '=') || !kind.is_ascii_alphabetic() {
            return None;
        }
        let item = match kind {
            'U' => size.checked_mul(4)?,
            _ => size,
        };
        Some((kind, item, order == '>'))
    }

    /// NumPy's name of the dtype (`uint8`, `float32`, ...), or the descr string.
    fn dtype_name(&self) -> String {
        match self.dtype() {
            Some(('u', n, _)) => format!("uint{}", n * 8),
            Some(('i', n, _)) => format!("int{}", n * 8),
            Some(('f', n, _)) => format!("float{}", n * 8),
            Some(('c', n, _)) => format!("complex{}", n * 8),
            Some(('b', 1, _)) => "bool".into(),
            Some(('U', _, _)) => format!("str ({})", self.descr),
            _ => self.descr.clone(),
        }
    }
}

/// Parses the header of a `.npy` file at the start of `r`, leaving `r` at the data.
///
/// # Errors
/// A message saying what is wrong: not the `.npy` magic, an unknown version, a header
/// too long or not the dict NumPy writes.
pub fn read_npy_header(r: &mut impl Read) -> std::result::Result<NpyHeader, String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|e| format!("too short for an .npy header ({e})"))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(format!(
            "not an .npy array (it starts with {:02x?}, expected \\x93NUMPY)",
            &pre[..6]
        ));
    }
    let len = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(format!(".npy format version {v} is not known (1 to 3 are)")),
    };
    const MAX: usize = 1 << 20;
    if len > MAX {
        return Err(format!(
            "the .npy header claims {len} bytes (at most {MAX})"
        ));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|e| format!("the .npy header is truncated ({e})"))?;
    let text = String::from_utf8(text).map_err(|_| "the .npy header is not text".to_string())?;
    parse_header_dict(&text).ok_or_else(|| {
        format!(
            "the .npy header {:?} is not a plain array's (descr, fortran_order, shape)",
            text.trim_end()
        )
    })
}

/// Parses `{'descr': '<u1', 'fortran_order': False, 'shape': (3, 28, 28), }`.
fn parse_header_dict(text: &str) -> Option<NpyHeader> {
    let mut s = text.trim().strip_prefix('{')?.trim_start();
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let string = |s: &str| -> Option<(String, usize)> {
        let q = s.chars().next().filter(|&c| c == '\'' || c == '"')?;
        let end = s[1..].find(q)? + 1;
        Some((s[1..end].to_string(), end + 1))
    };
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            if !rest.trim().is_empty() {
                return None;
            }
            break;
        }
        let (key, used) = string(s)?;
        s = s[used..].trim_start().strip_prefix(':')?.trim_start();
        match key.as_str() {
            "descr" => {
                let (v, used) = string(s)?;
                descr = Some(v);
                s = &s[used..];
            }
            "fortran_order" => {
                let v = ["True", "False"].into_iter().find(|v| s.starts_with(v))?;
                fortran = Some(v == "True");
                s = &s[v.len()..];
            }
            "shape" => {
                let end = s.find(')')?;
                let inner = s.strip_prefix('(')?.get(..end - 1)?;
                let dims: Option<Vec<u64>> = inner
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(|d| d.trim_end_matches('L').parse().ok())
                    .collect();
                shape = Some(dims?);
                s = &s[end + 1..];
            }
            _ => return None,
        }
        s = s.trim_start();
        s = s.strip_prefix(',').unwrap_or(s).trim_start();
    }
    Some(NpyHeader {
        descr: descr?,
        fortran_order: fortran?,
        shape: shape?,
    })
}

/// The dimensions of an array stored in Fortran order, converted to C order:
/// `data[i0 + d0·(i1 + d1·(...))]` goes to C index `((i0·d1 + i1)·d2 + ...)`.
fn fortran_to_c(data: &[u8], shape: &[usize], item: usize) -> Vec<u8> {
    if shape.len() < 2 || data.is_empty() {
        return data.to_vec();
    }
    let mut out = vec![0u8; data.len()];
    let n = data.len() / item.max(1);
    // Strides in the Fortran layout, in items.
    let mut fstride = vec![1usize; shape.len()];
    for d in 1..shape.len() {
        fstride[d] = fstride[d - 1] * shape[d - 1];
    }
    let mut idx = vec![0usize; shape.len()];
    for c in 0..n {
        let f: usize = idx.iter().zip(&fstride).map(|(i, s)| i * s).sum();
        if let (Some(dst), Some(src)) = (
            out.get_mut(c * item..(c + 1) * item),
            data.get(f * item..(f + 1) * item),
        ) {
            dst.copy_from_slice(src);
        }
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// An array read from the archive: its header and raw data bytes (C order).
struct Array {
    header: NpyHeader,
    data: Vec<u8>,
}

struct Npz<'p> {
    path: &'p Path,
    zip: zip::ZipArchive<std::io::BufReader<std::fs::File>>,
}

impl Npz<'_> {
    fn usage(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        UsageError(format!("{}: {msg}", self.path.display())).into()
    }

    /// The array names (members ending in `.npy`, without it).
    fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .zip
            .file_names()
            .filter_map(|n| n.strip_suffix(".npy"))
            .map(String::from)
            .collect();
        k.sort();
        k
    }

    fn has(&self, key: &str) -> bool {
        let name = format!("{key}.npy");
        self.zip.file_names().any(|n| n == name)
    }

    fn missing(&self, key: &str) -> anyhow::Error {
        let keys = self.keys();
        self.usage(format!(
            "no array {key}; the archive holds {}; a data set .npz holds x_train, y_train, \
             x_test and y_test (optionally x_val, y_val and class_names), as Keras's \
             mnist.npz; save it with np.savez(path, x_train=..., y_train=..., ...)",
            match keys.is_empty() {
                true => "no arrays".to_string(),
                false => keys.join(", "),
            }
        ))
    }

    /// Reads array `key`, at most the bytes its header claims and no more than memory
    /// holds.
    fn read(&mut self, key: &str) -> Result<Array> {
        let path = self.path;
        let bad = |msg: String| -> anyhow::Error {
            UsageError(format!(
                "{}: the array {key} cannot be read: {msg}; save the data again",
                path.display()
            ))
            .into()
        };
        let name = format!("{key}.npy");
        if !self.has(key) {
            return Err(self.missing(key));
        }
        let mut f = self
            .zip
            .by_name(&name)
            .map_err(|e| bad(format!("the archive is corrupt ({e})")))?;
        let claimed = f.size();
        let header = read_npy_header(&mut f).map_err(bad)?;
        let Some((_, item, _)) = header.dtype() else {
            return Err(bad(format!(
                "its dtype {:?} is not a plain number or string type",
                header.descr
            )));
        };
        let need = header
            .shape
            .iter()
            .try_fold(item as u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("its shape {:?} overflows", header.shape)))?;
        if need > claimed {
            return Err(bad(format!(
                "its header claims {need} data bytes (shape {:?}, {}) but the member holds \
                 {claimed} bytes in all; it is truncated",
                header.shape,
                header.dtype_name()
            )));
        }
        if let Some(avail) = crate::device::available_memory_bytes()
            && need > avail
        {
            return Err(UsageError(format!(
                "{}: the array {key} of shape {:?} needs {} of memory, but only {} is \
                 available",
                path.display(),
                header.shape,
                pixels::human_bytes(need as u128),
                pixels::human_bytes(avail as u128)
            ))
            .into());
        }
        let mut data = Vec::new();
        (&mut f)
            .take(need)
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("the archive is corrupt ({e})")))?;
        if (data.len() as u64) < need {
            return Err(bad(format!(
                "its header claims {need} data bytes but only {} follow; it is truncated",
                data.len()
            )));
        }
        if header.fortran_order {
            let shape: Vec<usize> = header.shape.iter().map(|&d| d as usize).collect();
            data = fortran_to_c(&data, &shape, item);
        }
        Ok(Array { header, data })
    }
}

/// An image array's shape as `(n, h, w, c)` and whether it is `nchw`.
fn image_shape(
    npz: &Npz,
    key: &str,
    a: &Array,
    layout: Layout,
) -> Result<(usize, usize, usize, usize, bool)> {
    let h = &a.header;
    match h.dtype() {
        Some(('u', 1, _)) => {}
        Some(('f', _, _)) => {
            return Err(npz.usage(format!(
                "{key} is {}, uint8 expected, found {}; scale the images to 0..255 and save \
                 them as uint8 (x.astype(np.uint8))",
                h.dtype_name(),
                h.dtype_name()
            )));
        }
        _ => {
            return Err(npz.usage(format!(
                "{key} is {}, uint8 expected; save the images as uint8 pixels 0..255",
                h.dtype_name()
            )));
        }
    }
    let d: Vec<usize> = h.shape.iter().map(|&d| d as usize).collect();
    let (n, hh, w, c, nchw) = match (d.as_slice(), layout) {
        (&[n, hh, w], _) => (n, hh, w, 1, false),
        (&[n, a1, a2, a3], Layout::Nchw) => (n, a2, a3, a1, true),
        (&[n, a1, a2, a3], Layout::Nhwc) => (n, a1, a2, a3, false),
        (&[n, a1, a2, a3], Layout::Auto) => {
            let ch = |x: usize| matches!(x, 1 | 3 | 4);
            match ch(a1) && !ch(a3) {
                true => (n, a2, a3, a1, true),
                false => (n, a1, a2, a3, false),
            }
        }
        _ => {
            return Err(npz.usage(format!(
                "{key} has shape {:?}, {}-D; expected [n, height, width] (grey) or \
                 [n, height, width, channels] / [n, channels, height, width]",
                h.shape,
                d.len()
            )));
        }
    };
    if !matches!(c, 1 | 3 | 4) {
        return Err(npz.usage(format!(
            "{key} has shape {:?}, read as {} with {c} channels; expected 1, 3 or 4 \
             channels; set data.layout = \"nhwc\" or \"nchw\" to say which axis holds them",
            h.shape,
            if nchw { "nchw" } else { "nhwc" }
        )));
    }
    if n == 0 || hh == 0 || w == 0 {
        return Err(npz.usage(format!(
            "{key} has shape {:?}; expected at least one image of at least 1x1",
            h.shape
        )));
    }
    Ok((n, hh, w, c, nchw))
}

/// Channel-major `[n, c, h, w]` pixels of an image array; `nhwc` is transposed.
fn channel_major(data: Vec<u8>, n: usize, plane: usize, c: usize, nchw: bool) -> Vec<u8> {
    if nchw || c == 1 {
        return data;
    }
    let mut out = vec![0u8; data.len()];
    for (src, dst) in data
        .chunks_exact(plane * c)
        .zip(out.chunks_exact_mut(plane * c))
    {
        for (i, px) in src.chunks_exact(c).enumerate() {
            for (k, &v) in px.iter().enumerate() {
                dst[k * plane + i] = v;
            }
        }
    }
    debug_assert_eq!(out.len(), n * plane * c);
    out
}

/// Labels of any integer dtype, 1-D (or `[n, 1]`) and `n` long.
fn labels(npz: &Npz, key: &str, a: &Array, n: usize, images: &str) -> Result<Vec<i64>> {
    let h = &a.header;
    let Some((kind @ ('i' | 'u' | 'b'), size @ (1 | 2 | 4 | 8), big)) = h.dtype() else {
        return Err(npz.usage(format!(
            "{key} is {}; labels must be integers (uint8, int32, int64, ...); save them with \
             y.astype(np.int64)",
            h.dtype_name()
        )));
    };
    let len = match h.shape.as_slice() {
        &[len] | &[len, 1] => len as usize,
        s => {
            return Err(npz.usage(format!(
                "{key} has shape {s:?}; labels must be 1-D, one per image"
            )));
        }
    };
    if len != n {
        return Err(npz.usage(format!(
            "{images} holds {n} images but {key} holds {len} labels; they must be the same \
             length"
        )));
    }
    Ok(a.data
        .chunks_exact(size)
        .map(|b| {
            let mut le = [0u8; 8];
            for (i, &v) in b.iter().enumerate() {
                le[if big { size - 1 - i } else { i }] = v;
            }
            // Sign-extend the signed types.
            if kind == 'i' && le[size - 1] & 0x80 != 0 {
                for v in &mut le[size..] {
                    *v = 0xff;
                }
            }
            match kind {
                'u' => i64::try_from(u64::from_le_bytes(le)).unwrap_or(i64::MAX),
                _ => i64::from_le_bytes(le),
            }
        })
        .collect())
}

/// Class names from a 1-D array of strings (`<U..` or `|S..`).
fn class_names(npz: &Npz, a: &Array) -> Result<Vec<String>> {
    let h = &a.header;
    let bad = || {
        npz.usage(format!(
            "class_names is {} of shape {:?}; expected a 1-D array of strings, e.g. \
             np.array([\"cat\", \"dog\"])",
            h.dtype_name(),
            h.shape
        ))
    };
    let (kind, item, big) = h.dtype().ok_or_else(bad)?;
    if h.shape.len() != 1 || item == 0 {
        return Err(bad());
    }
    let names: Option<Vec<String>> = a
        .data
        .chunks_exact(item)
        .map(|b| match kind {
            'U' => b
                .chunks_exact(4)
                .map(|c| {
                    let c = [c[0], c[1], c[2], c[3]];
                    let v = if big {
                        u32::from_be_bytes(c)
                    } else {
                        u32::from_le_bytes(c)
                    };
                    char::from_u32(v)
                })
                .collect::<Option<String>>()
                .map(|s| s.trim_end_matches('\0').to_string()),
            'S' => std::str::from_utf8(b)
                .ok()
                .map(|s| s.trim_end_matches('\0').to_string()),
            _ => None,
        })
        .collect();
    let names = names.ok_or_else(bad)?;
    if names.is_empty() || names.iter().any(String::is_empty) {
        return Err(npz.usage(
            "class_names holds an empty name (or none); give every class a name".to_string(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(n) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(npz.usage(format!("class_names: the name {n:?} appears twice")));
    }
    Ok(names)
}

/// Reads the `.npz` at `path` (see the module's documentation). Images are uint8
/// `[n, h, w]` (grey), `[n, h, w, c]` or `[n, c, h, w]` (`data.layout`; c = 1, 3 or 4, a
/// 4th channel, alpha, dropped); labels any integer type, one per image.
///
/// # Errors
/// A [`UsageError`] naming the file and the array: not a zip, a missing array (listing
/// those present), a dtype or shape not as above, image and label counts that differ,
/// train and test images of different shapes, a label out of range.
pub fn load(path: &Path, o: &ReadOptions) -> Result<RawData> {
    pixels::check_resize(o.resize)?;
    let file = std::fs::File::open(path).map_err(|e| {
        UsageError(format!(
            "{}: cannot open the .npz ({e}); check data.dir",
            path.display()
        ))
    })?;
    let zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        UsageError(format!(
            "{}: not a readable .npz (zip) archive ({e}); save it with np.savez or \
             np.savez_compressed",
            path.display()
        ))
    })?;
    let mut npz = Npz { path, zip };
    let mut splits = vec!["train", "test"];
    match (npz.has("x_val"), npz.has("y_val")) {
        (true, true) => splits.push("val"),
        (false, false) => {}
        (true, false) => return Err(npz.missing("y_val")),
        (false, true) => return Err(npz.missing("x_val")),
    }
    for s in &splits {
        for k in [format!("x_{s}"), format!("y_{s}")] {
            if !npz.has(&k) {
                return Err(npz.missing(&k));
            }
        }
    }
    let mut read = Vec::new();
    let mut first: Option<(String, (usize, usize, usize))> = None;
    for s in &splits {
        let (xk, yk) = (format!("x_{s}"), format!("y_{s}"));
        let x = npz.read(&xk)?;
        let (n, h, w, c, nchw) = image_shape(&npz, &xk, &x, o.layout)?;
        match &first {
            Some((k0, shape)) if *shape != (h, w, c) => {
                return Err(npz.usage(format!(
                    "{xk} holds images of {h}x{w}x{c} (height x width x channels) but {k0} \
                     holds {}x{}x{}; every split must have the same image shape",
                    shape.0, shape.1, shape.2
                )));
            }
            Some(_) => {}
            None => first = Some((xk.clone(), (h, w, c))),
        }
        let y = npz.read(&yk)?;
        let labels = labels(&npz, &yk, &y, n, &xk)?;
        drop(y);
        let plane = h * w;
        let mut px = channel_major(x.data, n, plane, c, nchw);
        let mut c = c;
        if c == 4 {
            px = pixels::convert_split(&px, n, plane, 4, 3);
            c = 3;
        }
        let want = o.channels.count().map_or(c, |k| k as usize);
        px = pixels::convert_split(&px, n, plane, c, want);
        let (nh, nw) = o.resize.unwrap_or((h, w));
        px = pixels::resize_split(&px, n, want, (h, w), (nh, nw));
        read.push((
            Split { pixels: px, labels },
            PathBuf::from(format!("{}:{yk}", path.display())),
            (want, nh, nw),
        ));
    }
    let names_key = PathBuf::from(format!("{}:class_names", path.display()));
    let names = match npz.has("class_names") {
        true => {
            let a = npz.read("class_names")?;
            Some(class_names(&npz, &a)?)
        }
        false => None,
    };
    let checks: Vec<(&Split, &Path)> = read.iter().map(|(s, p, _)| (s, p.as_path())).collect();
    // Without names or data.classes, K is the largest label plus one: a stray huge label
    // (an int64 or uint32 array) would make millions of classes (and their names).
    if names.is_none() && o.classes.is_none() {
        for (s, p) in &checks {
            if let Some((i, &l)) = s
                .labels
                .iter()
                .enumerate()
                .find(|&(_, &l)| l >= MAX_INFERRED_CLASSES)
            {
                return Err(UsageError(format!(
                    "{}: label {l} at index {i} would make {} classes (labels are 0 to \
                     classes - 1, and kdtrain infers at most {MAX_INFERRED_CLASSES} classes); \
                     fix the label, or set data.classes (or save class_names) when that many \
                     classes are meant",
                    p.display(),
                    l as i128 + 1
                ))
                .into());
            }
        }
    }
    let class_names = super::class_names_for(names, o.classes, &checks, &names_key)?;
    let (c, h, w) = read.first().map(|r| r.2).unwrap_or((1, 1, 1));
    let mut it = read.into_iter().map(|r| r.0);
    let (Some(train), Some(test)) = (it.next(), it.next()) else {
        anyhow::bail!("{}: train or test split missing", path.display());
    };
    let val = it.next();
    Ok(RawData {
        path: path.to_path_buf(),
        source: Source::Npz,
        spec: DataSpec {
            channels: c as i64,
            height: h as i64,
            width: w as i64,
            class_names,
        },
        train,
        test,
        val,
        note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Channels;
    use crate::data::usage_err;
    use std::io::Write;

    /// The bytes of an `.npy` file (version 1, header padded to 64 bytes as NumPy does).
    fn npy(descr: &str, shape: &[u64], data: &[u8]) -> Vec<u8> {
        npy_order(descr, false, shape, data)
    }

    fn npy_order(descr: &str, fortran: bool, shape: &[u64], data: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
        let shape = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let f = if fortran { "True" } else { "False" };
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    fn npz(path: &Path, arrays: &[(&str, Vec<u8>)]) {
        let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for (i, (name, bytes)) in arrays.iter().enumerate() {
            let method = match i % 2 {
                0 => zip::CompressionMethod::Stored,
                _ => zip::CompressionMethod::Deflated,
            };
            let o = zip::write::FileOptions::default().compression_method(method);
            z.start_file(format!("{name}.npy"), o).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }

    fn u8s(n: usize, start: u8) -> Vec<u8> {
        (0..n).map(|i| start.wrapping_add(i as u8)).collect()
    }

    /// A Keras-style grey data set: 3 train and 2 test images of 2x3.
    fn grey_arrays() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("x_train", npy("|u1", &[3, 2, 3], &u8s(18, 0))),
            ("y_train", npy("|u1", &[3], &[0, 1, 2])),
            ("x_test", npy("|u1", &[2, 2, 3], &u8s(12, 100))),
            (
                "y_test",
                npy(
                    "<i8",
                    &[2],
                    &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                ),
            ),
        ]
    }

    fn opts() -> ReadOptions {
        ReadOptions {
            source: Source::Npz,
            ..Default::default()
        }
    }

    #[test]
    fn header_parser() {
        let h =
            parse_header_dict("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }").unwrap();
        assert_eq!(
            h,
            NpyHeader {
                descr: "<i8".into(),
                fortran_order: false,
                shape: vec![3]
            }
        );
        let h = parse_header_dict("{\"shape\": (), \"fortran_order\": True, \"descr\": \"|u1\"}")
            .unwrap();
        assert_eq!((h.shape.len(), h.fortran_order), (0, true));
        for bad in [
            "",
            "{",
            "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (3,), }",
            "{'descr': '<i8', 'fortran_order': False}",
            "{'descr': '<i8', 'fortran_order': False, 'shape': (-3,), }",
            "{'descr': '<i8', 'fortran_order': maybe, 'shape': (3,), }",
        ] {
            assert!(parse_header_dict(bad).is_none(), "{bad}");
        }
        let mut r = &b"\x93NUMPY\x09\x00"[..];
        assert!(read_npy_header(&mut r).unwrap_err().contains("version 9"));
    }

    #[test]
    fn grey_and_labels_of_any_integer_type() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.npz");
        npz(&p, &grey_arrays());
        let raw = load(&p, &opts()).unwrap();
        assert_eq!(raw.source, Source::Npz);
        assert_eq!(
            (raw.spec.channels, raw.spec.height, raw.spec.width),
            (1, 2, 3)
        );
        assert_eq!(raw.spec.class_names, ["0", "1", "2"]);
        assert_eq!(raw.train.pixels, u8s(18, 0));
        assert_eq!(raw.train.labels, [0, 1, 2]);
        assert_eq!(raw.test.labels, [2, 1]);
        assert!(raw.val.is_none());
        // Big-endian int16 labels, [n, 1]; Colour repeats grey.
        let mut a = grey_arrays();
        a[1].1 = npy(">i2", &[3, 1], &[0, 2, 0, 1, 0, 0]);
        npz(&p, &a);
        let o = ReadOptions {
            channels: Channels::Colour,
            ..opts()
        };
        let raw = load(&p, &o).unwrap();
        assert_eq!(raw.train.labels, [2, 1, 0]);
        assert_eq!(raw.spec.channels, 3);
        assert_eq!(
            raw.train.pixels[..18],
            [u8s(6, 0), u8s(6, 0), u8s(6, 0)].concat()
        );
    }

    #[test]
    fn colour_layouts_alpha_grey_val_resize_and_names() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.npz");
        // Two 1x2 RGBA images, nhwc: pixel (r, g, b, a).
        let nhwc = [10, 20, 30, 255, 40, 50, 60, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let planar = [10, 40, 20, 50, 30, 60, 1, 5, 2, 6, 3, 7];
        let names = {
            // '<U3': "cat", "dog" as UTF-32.
            let mut b = Vec::new();
            for s in ["cat", "do"] {
                for i in 0..3 {
                    let c = s.chars().nth(i).map_or(0, |c| c as u32);
                    b.extend(c.to_le_bytes());
                }
            }
            b
        };
        let arrays = vec![
            ("x_train", npy("|u1", &[2, 1, 2, 4], &nhwc)),
            ("y_train", npy("|u1", &[2], &[0, 1])),
            ("x_test", npy("|u1", &[2, 1, 2, 4], &nhwc)),
            ("y_test", npy("<u4", &[2], &[1, 0, 0, 0, 0, 0, 0, 0])),
            ("x_val", npy("|u1", &[1, 1, 2, 4], &nhwc[..8])),
            ("y_val", npy("|u1", &[1], &[1])),
            ("class_names", npy("<U3", &[2], &names)),
        ];
        npz(&p, &arrays);
        let raw = load(&p, &opts()).unwrap();
        assert_eq!(raw.spec.channels, 3);
        assert_eq!(raw.spec.class_names, ["cat", "do"]);
        assert_eq!(raw.train.pixels, planar);
        assert_eq!(raw.val.as_ref().unwrap().pixels, planar[..6]);
        assert_eq!(raw.val.unwrap().labels, [1]);
        // The same as nchw, said outright (axis 1 is 1, so Auto would say nchw too).
        let mut a = arrays.clone();
        let nchw: Vec<u8> = [
            planar[..6].to_vec(),
            vec![9, 9],
            planar[6..].to_vec(),
            vec![9, 9],
        ]
        .concat();
        for i in [0, 2] {
            a[i].1 = npy("|u1", &[2, 4, 1, 2], &nchw);
        }
        a[4].1 = npy("|u1", &[1, 4, 1, 2], &nchw[..8]);
        npz(&p, &a);
        let o = ReadOptions {
            layout: Layout::Nchw,
            ..opts()
        };
        assert_eq!(load(&p, &o).unwrap().train.pixels, planar);
        assert_eq!(
            load(&p, &opts()).unwrap().train.pixels,
            planar,
            "auto: nchw"
        );
        // Grey: ITU-R 601 luma; resize to 1x1 averages.
        let o = ReadOptions {
            channels: Channels::Grey,
            resize: Some((1, 1)),
            ..opts()
        };
        let raw = load(&p, &o).unwrap();
        assert_eq!(
            (raw.spec.channels, raw.spec.height, raw.spec.width),
            (1, 1, 1)
        );
        let l = |r, g, b| pixels::luma(r, g, b) as f64;
        let want = ((l(10, 20, 30) + l(40, 50, 60)) / 2.0).round() as u8;
        assert_eq!(raw.train.pixels[0], want);
        // A label beyond the names is refused, naming the key.
        let mut a = arrays.clone();
        a[3].1 = npy("|u1", &[2], &[2, 0]);
        npz(&p, &a);
        let e = usage_err(load(&p, &opts()));
        assert!(e.contains("y_test") && e.contains("label 2"), "{e}");
    }

    #[test]
    fn fortran_order_is_read_in_c_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.npz");
        let mut a = grey_arrays();
        // C order [3, 2, 3] = 0..18; Fortran order stores index (i, j, k) at i + 3j + 6k.
        let mut f = vec![0u8; 18];
        for i in 0..3 {
            for j in 0..2 {
                for k in 0..3 {
                    f[i + 3 * j + 6 * k] = (i * 6 + j * 3 + k) as u8;
                }
            }
        }
        a[0].1 = npy_order("|u1", true, &[3, 2, 3], &f);
        npz(&p, &a);
        assert_eq!(load(&p, &opts()).unwrap().train.pixels, u8s(18, 0));
    }

    #[test]
    fn bad_archives_are_refused_by_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.npz");
        let check = |arrays: Vec<(&str, Vec<u8>)>, want: &[&str]| {
            npz(&p, &arrays);
            let e = usage_err(load(&p, &opts()));
            assert!(e.contains("bad.npz"), "{e}");
            for w in want {
                assert!(e.contains(w), "{w}: {e}");
            }
        };
        let g = grey_arrays;
        check(
            g()[..3].to_vec(),
            &["no array y_test", "x_test, x_train, y_train"],
        );
        let mut a = g();
        a[0].1 = npy("<f4", &[3, 2, 3], &[0; 72]);
        check(a, &["x_train", "uint8 expected, found float32", "scale"]);
        let mut a = g();
        a[0].1 = npy("|u1", &[3, 6], &[0; 18]);
        check(a, &["x_train", "2-D"]);
        let mut a = g();
        a[0].1 = npy("|u1", &[3, 1, 2, 3, 1], &[0; 18]);
        check(a, &["x_train", "5-D"]);
        let mut a = g();
        a[0].1 = npy("|u1", &[1, 2, 3, 9], &[0; 54]);
        check(a, &["x_train", "9 channels", "data.layout"]);
        let mut a = g();
        a[1].1 = npy("|u1", &[2], &[0, 1]);
        check(a, &["x_train holds 3 images but y_train holds 2 labels"]);
        let mut a = g();
        a[1].1 = npy("<f8", &[3], &[0; 24]);
        check(a, &["y_train", "float64", "integers"]);
        let mut a = g();
        a[1].1 = npy("<i4", &[3], &[0, 0, 0, 0, 255, 255, 255, 255, 1, 0, 0, 0]);
        check(a, &["y_train", "label -1 at index 1"]);
        let mut a = g();
        a[3].1 = npy("<u4", &[2], &[0, 0, 0, 0, 255, 255, 255, 255]);
        check(
            a,
            &["y_test", "label 4294967295 at index 1", "data.classes"],
        );
        let mut a = g();
        a[2].1 = npy("|u1", &[2, 3, 2], &[0; 12]);
        check(a, &["x_test", "3x2x1", "x_train", "2x3x1"]);
        let mut a = g();
        let len = a[0].1.len();
        a[0].1.truncate(len - 5);
        check(a, &["x_train", "truncated"]);
        let mut a = g();
        a[0].1 = b"not npy at all".to_vec();
        check(a, &["x_train", "not an .npy"]);
        let mut a = g();
        a.push(("x_val", npy("|u1", &[1, 2, 3], &[0; 6])));
        check(a, &["no array y_val"]);
        // Too big for memory: a header claiming 2^40 images (the zip is small).
        let mut a = g();
        a[0].1 = npy("|u1", &[1 << 40, 1 << 20, 1 << 20], &[0; 8]);
        check(a, &["x_train"]);
        let mut a = g();
        a[0].1 = npy("|u1", &[u64::MAX, 2, 2], &[0; 8]);
        check(a, &["x_train", "overflows"]);
        // Not a zip at all.
        std::fs::write(&p, b"PK\x03\x04 but then nothing").unwrap();
        let e = usage_err(load(&p, &opts()));
        assert!(e.contains("bad.npz") && e.contains("zip"), "{e}");
        // data.classes below the largest label.
        npz(&p, &g());
        let o = ReadOptions {
            classes: Some(2),
            ..opts()
        };
        let e = usage_err(load(&p, &o));
        assert!(
            e.contains("y_train") && e.contains("data.classes = 2"),
            "{e}"
        );
    }

    #[test]
    fn fortran_to_c_of_a_matrix() {
        // [[1, 2, 3], [4, 5, 6]] stored column by column.
        assert_eq!(
            fortran_to_c(&[1, 4, 2, 5, 3, 6], &[2, 3], 1),
            [1, 2, 3, 4, 5, 6]
        );
        // Two-byte items.
        assert_eq!(fortran_to_c(&[1, 0, 2, 0], &[1, 2], 2), [1, 0, 2, 0]);
    }
}
