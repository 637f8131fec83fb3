//! TensorBoard event-file writer.
//!
//! This module owns everything needed to produce files that TensorBoard reads
//! (`tensorboard --logdir RUN_DIR`): the file naming, the TFRecord framing
//! (`u64` little-endian length, masked CRC-32C of the length, payload, masked
//! CRC-32C of the payload) and a hand-written protobuf encoder for the few
//! messages of tensorflow's `event.proto` / `summary.proto` / `histogram.proto`
//! that are used here: `Event` (wall time, step, file version, summary),
//! `Summary.Value` with `simple_value` (scalars) and `histo` (`HistogramProto`).
//!
//! It does not depend on tch: callers hand it plain numbers and `&[f32]` slices.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// CRC-32C (Castagnoli, a.k.a. CRC-32/ISCSI), the checksum TFRecord uses.
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Number of equal-width buckets in a histogram (TensorBoard's own v2
/// histogram summaries also default to 30).
const HISTOGRAM_BUCKETS: usize = 30;

/// The `file_version` string that starts every event file.
const FILE_VERSION: &str = "brain.Event:2";

/// Plain CRC-32C of `data`.
fn crc32c(data: &[u8]) -> u32 {
    CRC32C.checksum(data)
}

/// TFRecord's masked CRC-32C: `((crc >> 15) | (crc << 17)) + 0xa282ead8`
/// (wrapping), as in tensorflow `core/lib/hash/crc32c.h`.
fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Frames `data` as one TFRecord and writes it to `out`.
fn write_record(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc32c(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc32c(data).to_le_bytes())
}

/// Minimal protobuf (proto3 wire format) encoder for the messages used here.
mod pb {
    const VARINT: u32 = 0;
    const FIXED64: u32 = 1;
    const LEN: u32 = 2;
    const FIXED32: u32 = 5;

    pub fn varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    fn key(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
        varint(buf, u64::from((field << 3) | wire_type));
    }

    pub fn double(buf: &mut Vec<u8>, field: u32, v: f64) {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn float(buf: &mut Vec<u8>, field: u32, v: f32) {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }

    /// `int64` field: negative values are sign-extended to 10 bytes, as protobuf requires.
    pub fn int64(buf: &mut Vec<u8>, field: u32, v: i64) {
        key(buf, field, VARINT);
        varint(buf, v as u64);
    }

    pub fn bytes(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
        key(buf, field, LEN);
        varint(buf, v.len() as u64);
        buf.extend_from_slice(v);
    }

    /// `repeated double` in packed encoding.
    pub fn packed_doubles(buf: &mut Vec<u8>, field: u32, vs: &[f64]) {
        key(buf, field, LEN);
        varint(buf, (vs.len() * 8) as u64);
        for v in vs {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Field numbers from tensorflow `core/util/event.proto` and
/// `core/framework/summary.proto` / `histogram.proto`.
mod field {
    pub const EVENT_WALL_TIME: u32 = 1;
    pub const EVENT_STEP: u32 = 2;
    pub const EVENT_FILE_VERSION: u32 = 3;
    pub const EVENT_SUMMARY: u32 = 5;
    pub const SUMMARY_VALUE: u32 = 1;
    pub const VALUE_TAG: u32 = 1;
    pub const VALUE_SIMPLE_VALUE: u32 = 2;
    pub const VALUE_HISTO: u32 = 5;
    pub const HISTO_MIN: u32 = 1;
    pub const HISTO_MAX: u32 = 2;
    pub const HISTO_NUM: u32 = 3;
    pub const HISTO_SUM: u32 = 4;
    pub const HISTO_SUM_SQUARES: u32 = 5;
    pub const HISTO_BUCKET_LIMIT: u32 = 6;
    pub const HISTO_BUCKET: u32 = 7;
}

/// Content of a `HistogramProto`.
#[derive(Debug, Clone, PartialEq)]
struct Histogram {
    min: f64,
    max: f64,
    num: f64,
    sum: f64,
    sum_squares: f64,
    /// Right edge of each bucket; bucket 0 starts at `min`, bucket `i > 0`
    /// at `bucket_limit[i - 1]` (TensorBoard's reading of `HistogramProto`).
    bucket_limit: Vec<f64>,
    bucket: Vec<f64>,
}

impl Histogram {
    /// Buckets the finite values of `values` into [`HISTOGRAM_BUCKETS`]
    /// equal-width buckets between their min and max (a single bucket when all
    /// are equal). NaN and ±inf are ignored. `None` when no finite value is left.
    fn from_values(values: &[f32]) -> Option<Self> {
        let finite = || {
            values
                .iter()
                .filter(|v| v.is_finite())
                .map(|&v| f64::from(v))
        };
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut num, mut sum, mut sum_squares) = (0u64, 0.0f64, 0.0f64);
        for v in finite() {
            min = min.min(v);
            max = max.max(v);
            num += 1;
            sum += v;
            sum_squares += v * v;
        }
        if num == 0 {
            return None;
        }
        let (bucket_limit, bucket) = if min < max {
            let n = HISTOGRAM_BUCKETS;
            // f32 inputs widened to f64: `max - min` cannot overflow.
            let width = (max - min) / n as f64;
            let mut counts = vec![0.0f64; n];
            for v in finite() {
                // `as usize` saturates (and maps NaN to 0), so this never panics.
                let i = (((v - min) / width) as usize).min(n - 1);
                counts[i] += 1.0;
            }
            let mut limits: Vec<f64> = (1..n).map(|i| min + width * i as f64).collect();
            limits.push(max);
            (limits, counts)
        } else {
            (vec![max], vec![num as f64])
        };
        Some(Self {
            min,
            max,
            num: num as f64,
            sum,
            sum_squares,
            bucket_limit,
            bucket,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + 16 * self.bucket.len());
        pb::double(&mut b, field::HISTO_MIN, self.min);
        pb::double(&mut b, field::HISTO_MAX, self.max);
        pb::double(&mut b, field::HISTO_NUM, self.num);
        pb::double(&mut b, field::HISTO_SUM, self.sum);
        pb::double(&mut b, field::HISTO_SUM_SQUARES, self.sum_squares);
        pb::packed_doubles(&mut b, field::HISTO_BUCKET_LIMIT, &self.bucket_limit);
        pb::packed_doubles(&mut b, field::HISTO_BUCKET, &self.bucket);
        b
    }
}

/// Encodes an `Event` carrying a `Summary` with one `Value`, whose payload
/// (`simple_value` or `histo`) `value_body` has already appended to the value.
fn summary_event(
    wall_time: f64,
    step: i64,
    tag: &str,
    value_body: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut value = Vec::new();
    pb::bytes(&mut value, field::VALUE_TAG, tag.as_bytes());
    value_body(&mut value);
    let mut summary = Vec::with_capacity(value.len() + 8);
    pb::bytes(&mut summary, field::SUMMARY_VALUE, &value);
    let mut event = Vec::with_capacity(summary.len() + 24);
    pb::double(&mut event, field::EVENT_WALL_TIME, wall_time);
    pb::int64(&mut event, field::EVENT_STEP, step);
    pb::bytes(&mut event, field::EVENT_SUMMARY, &summary);
    event
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The host name for the file name, restricted to `[A-Za-z0-9._-]`.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

/// Writes one TensorBoard event file: a sequence of TFRecord-framed
/// `tensorflow.Event` protobufs (tensorflow `core/util/event.proto`), readable
/// by TensorBoard and by `tensorboard.backend.event_processing.event_accumulator`.
///
/// Output is buffered; it reaches the file on [`EventWriter::flush`] and when the
/// writer is dropped. Call `flush` once per epoch so a live TensorBoard sees
/// the new points.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `<dir>/events.out.tfevents.<unix_secs>.<hostname>.<pid>.kdtrain`
    /// (creating `dir` if needed) and writes the `file_version` event
    /// `"brain.Event:2"`. An existing file is never overwritten: if that name is
    /// taken (two writers in one second), `.1`, `.2`, … is appended.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating TensorBoard log directory {}", dir.display()))?;
        let wall_time = now_secs();
        let base = format!(
            "events.out.tfevents.{}.{}.{}.kdtrain",
            wall_time as u64,
            hostname(),
            std::process::id()
        );
        let mut attempt = 0u32;
        let (path, file) = loop {
            let name = if attempt == 0 {
                base.clone()
            } else {
                format!("{base}.{attempt}")
            };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 1000 => attempt += 1,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("creating TensorBoard event file {}", path.display())
                    });
                }
            }
        };
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
        };
        let mut event = Vec::new();
        pb::double(&mut event, field::EVENT_WALL_TIME, wall_time);
        pb::int64(&mut event, field::EVENT_STEP, 0);
        pb::bytes(
            &mut event,
            field::EVENT_FILE_VERSION,
            FILE_VERSION.as_bytes(),
        );
        writer.write_event(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    /// Path of the event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar at `step` (the epoch number for per-epoch metrics), tagged
    /// `tag` (e.g. `"train/loss"`; `/` groups charts in TensorBoard). The value
    /// is stored as TensorBoard's `simple_value`, an `f32`: values outside the
    /// `f32` range become ±inf, NaN stays NaN. Units are whatever the caller's
    /// metric has; the wall time recorded is seconds since the Unix epoch.
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<()> {
        let event = summary_event(now_secs(), step, tag, |v| {
            pb::float(v, field::VALUE_SIMPLE_VALUE, value as f32)
        });
        self.write_event(&event)
    }

    /// A histogram (`HistogramProto`, tensorflow `core/framework/summary.proto`)
    /// of `values` (e.g. a weight tensor's flattened values) at `step`.
    ///
    /// The finite values are counted into 30 equal-width buckets between their
    /// min and max (one bucket when all are equal); min, max, count, sum and sum
    /// of squares are recorded exactly (in `f64`). NaN and ±inf are ignored; if
    /// no finite value is left (e.g. empty input), nothing is written and `Ok`
    /// is returned.
    pub fn add_histogram(&mut self, tag: &str, values: &[f32], step: i64) -> Result<()> {
        let Some(histogram) = Histogram::from_values(values) else {
            return Ok(());
        };
        let event = summary_event(now_secs(), step, tag, |v| {
            pb::bytes(v, field::VALUE_HISTO, &histogram.encode())
        });
        self.write_event(&event)
    }

    /// Pushes buffered events to the file (OS-level flush, no fsync).
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("flushing TensorBoard event file {}", self.path.display()))
    }

    fn write_event(&mut self, event: &[u8]) -> Result<()> {
        write_record(&mut self.out, event)
            .with_context(|| format!("writing to TensorBoard event file {}", self.path.display()))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            crate::errln!("warning: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(masked: u32) -> u32 {
        masked.wrapping_sub(0xa282_ead8).rotate_left(15)
    }

    /// Splits a TFRecord file into payloads, checking lengths and both CRCs.
    fn read_records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            assert!(rest.len() >= 12, "truncated record header");
            let (len_bytes, tail) = rest.split_at(8);
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(tail[..4].try_into().unwrap());
            assert_eq!(len_crc, masked_crc32c(len_bytes), "length CRC");
            let tail = &tail[4..];
            assert!(tail.len() >= len + 4, "truncated record body");
            let (data, tail) = tail.split_at(len);
            let data_crc = u32::from_le_bytes(tail[..4].try_into().unwrap());
            assert_eq!(data_crc, masked_crc32c(data), "data CRC");
            records.push(data.to_vec());
            rest = &tail[4..];
        }
        records
    }

    #[derive(Debug, PartialEq)]
    enum Field {
        Varint(u64),
        Fixed64([u8; 8]),
        Fixed32([u8; 4]),
        Bytes(Vec<u8>),
    }

    fn read_varint(buf: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = buf[*pos];
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }

    /// Decodes one protobuf message into (field number, value) pairs.
    fn parse(buf: &[u8]) -> Vec<(u32, Field)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < buf.len() {
            let key = read_varint(buf, &mut pos);
            let (num, wt) = ((key >> 3) as u32, key & 7);
            let f = match wt {
                0 => Field::Varint(read_varint(buf, &mut pos)),
                1 => {
                    pos += 8;
                    Field::Fixed64(buf[pos - 8..pos].try_into().unwrap())
                }
                5 => {
                    pos += 4;
                    Field::Fixed32(buf[pos - 4..pos].try_into().unwrap())
                }
                2 => {
                    let len = read_varint(buf, &mut pos) as usize;
                    pos += len;
                    Field::Bytes(buf[pos - len..pos].to_vec())
                }
                _ => panic!("unexpected wire type {wt}"),
            };
            out.push((num, f));
        }
        out
    }

    fn get(fields: &[(u32, Field)], num: u32) -> &Field {
        &fields
            .iter()
            .find(|(n, _)| *n == num)
            .unwrap_or_else(|| panic!("field {num} missing"))
            .1
    }

    fn as_f64(f: &Field) -> f64 {
        match f {
            Field::Fixed64(b) => f64::from_le_bytes(*b),
            other => panic!("not a double: {other:?}"),
        }
    }

    fn as_bytes(f: &Field) -> &[u8] {
        match f {
            Field::Bytes(b) => b,
            other => panic!("not bytes: {other:?}"),
        }
    }

    fn packed(f: &Field) -> Vec<f64> {
        as_bytes(f)
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kdtrain-tb-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn crc32c_known_vector() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn masked_crc_round_trip() {
        for data in [&b""[..], b"a", b"123456789", &[0xffu8; 100]] {
            let masked = masked_crc32c(data);
            assert_eq!(unmask(masked), crc32c(data));
            // The formula exactly as written in tensorflow's crc32c.h.
            let crc = crc32c(data);
            #[expect(clippy::manual_rotate, reason = "spelled as in the TFRecord spec")]
            let spec = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8);
            assert_eq!(masked, spec);
        }
    }

    #[test]
    fn varint_encoding() {
        let enc = |v: u64| {
            let mut b = Vec::new();
            pb::varint(&mut b, v);
            b
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(1), [1]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(-1i64 as u64).len(), 10);
    }

    #[test]
    fn histogram_buckets() {
        let h = Histogram::from_values(&[0.0, 1.0, 2.0, 3.0, f32::NAN, f32::INFINITY]).unwrap();
        assert_eq!(
            (h.min, h.max, h.num, h.sum, h.sum_squares),
            (0.0, 3.0, 4.0, 6.0, 14.0)
        );
        assert_eq!(h.bucket.len(), HISTOGRAM_BUCKETS);
        assert_eq!(h.bucket_limit.len(), HISTOGRAM_BUCKETS);
        assert_eq!(h.bucket.iter().sum::<f64>(), 4.0);
        assert_eq!(h.bucket[0], 1.0);
        assert_eq!(h.bucket[HISTOGRAM_BUCKETS - 1], 1.0);
        assert_eq!(*h.bucket_limit.last().unwrap(), 3.0);
        assert!(h.bucket_limit.windows(2).all(|w| w[0] < w[1]));

        let same = Histogram::from_values(&[2.5; 7]).unwrap();
        assert_eq!(
            (same.bucket_limit.as_slice(), same.bucket.as_slice()),
            (&[2.5][..], &[7.0][..])
        );

        assert_eq!(Histogram::from_values(&[]), None);
        assert_eq!(Histogram::from_values(&[f32::NAN, f32::NEG_INFINITY]), None);

        let extreme =
            Histogram::from_values(&[f32::MAX, f32::MIN, 0.0, f32::MIN_POSITIVE]).unwrap();
        assert_eq!(extreme.bucket.iter().sum::<f64>(), 4.0);
        assert!(extreme.bucket_limit.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn written_file_parses_back() {
        let dir = temp_dir("roundtrip");
        let path = {
            let mut w = EventWriter::create(&dir).unwrap();
            w.add_scalar("train/loss", 0.25, 3).unwrap();
            w.add_scalar("neg/step", -1.5, -7).unwrap();
            w.add_histogram("weights/fc1", &[1.0, 2.0, 2.0, 4.0], 3)
                .unwrap();
            w.add_histogram("weights/empty", &[], 3).unwrap(); // writes nothing
            w.path().to_path_buf()
            // dropped here: must flush
        };
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("events.out.tfevents.") && name.ends_with(".kdtrain"),
            "{name}"
        );

        let records = read_records(&std::fs::read(&path).unwrap());
        assert_eq!(records.len(), 4);

        let ev = parse(&records[0]);
        assert_eq!(
            as_bytes(get(&ev, field::EVENT_FILE_VERSION)),
            b"brain.Event:2"
        );
        assert!(as_f64(get(&ev, field::EVENT_WALL_TIME)) > 1.0e9);

        let scalar = |rec: &[u8]| {
            let ev = parse(rec);
            let step = match get(&ev, field::EVENT_STEP) {
                Field::Varint(v) => *v as i64,
                other => panic!("{other:?}"),
            };
            let summary = parse(as_bytes(get(&ev, field::EVENT_SUMMARY)));
            let value = parse(as_bytes(get(&summary, field::SUMMARY_VALUE)));
            let tag = String::from_utf8(as_bytes(get(&value, field::VALUE_TAG)).to_vec()).unwrap();
            let v = match get(&value, field::VALUE_SIMPLE_VALUE) {
                Field::Fixed32(b) => f32::from_le_bytes(*b),
                other => panic!("{other:?}"),
            };
            (tag, v, step)
        };
        assert_eq!(scalar(&records[1]), ("train/loss".to_string(), 0.25, 3));
        assert_eq!(scalar(&records[2]), ("neg/step".to_string(), -1.5, -7));

        let ev = parse(&records[3]);
        let summary = parse(as_bytes(get(&ev, field::EVENT_SUMMARY)));
        let value = parse(as_bytes(get(&summary, field::SUMMARY_VALUE)));
        assert_eq!(as_bytes(get(&value, field::VALUE_TAG)), b"weights/fc1");
        let histo = parse(as_bytes(get(&value, field::VALUE_HISTO)));
        assert_eq!(as_f64(get(&histo, field::HISTO_MIN)), 1.0);
        assert_eq!(as_f64(get(&histo, field::HISTO_MAX)), 4.0);
        assert_eq!(as_f64(get(&histo, field::HISTO_NUM)), 4.0);
        assert_eq!(as_f64(get(&histo, field::HISTO_SUM)), 9.0);
        assert_eq!(as_f64(get(&histo, field::HISTO_SUM_SQUARES)), 25.0);
        let limits = packed(get(&histo, field::HISTO_BUCKET_LIMIT));
        let counts = packed(get(&histo, field::HISTO_BUCKET));
        assert_eq!(limits.len(), counts.len());
        assert_eq!(counts.iter().sum::<f64>(), 4.0);

        // A second writer in the same second gets a distinct file.
        let other = EventWriter::create(&dir).unwrap();
        assert_ne!(other.path(), path);
        drop(other);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
