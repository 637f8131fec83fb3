//! Faults: every bad input and every fault ends in one clear `error:` line, the
//! right exit code (1 runtime, 2 usage/config, 130 interrupted), no panic, and no lost or
//! torn checkpoint. Each test runs the real binary on a tiny synthetic IDX data set.
//!
//! Groups: data files, config and flags, checkpoints, numerical faults, interruption
//! (SIGINT, SIGKILL, `--resume`), two processes on one run folder, and `--download`
//! against an HTTP server on loopback.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::*;
use kdtrain::checkpoint::{Checkpoint, META_EPOCH};
use kdtrain::data::{Idx, encode_idx};
use kdtrain::model::Arch;

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte.gz";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte.gz";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte.gz";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte.gz";

/// A sandbox with `n_train` / `n_test` synthetic examples and the small-validation config
/// plus `extra` config text (appended inside `[data]` unless it opens its own section).
fn sandbox_with(n_train: usize, n_test: usize, extra: &str) -> Sandbox {
    let s = Sandbox::new();
    s.write_data(n_train, n_test);
    s.write_config(extra);
    s
}

fn sandbox() -> Sandbox {
    sandbox_with(200, 50, "")
}

/// A background kdtrain process and the file that collects its stderr.
struct Proc {
    child: Child,
    err: PathBuf,
}

impl Proc {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// Starts the binary in the background as `Sandbox::kd` would, stderr into `<name>.err`.
fn spawn(s: &Sandbox, args: &[&str], name: &str) -> Proc {
    spawn_raw(s, &s.args(args), name)
}

/// Starts the binary in the background with exactly `args`, stderr into `<name>.err`.
fn spawn_raw<S: AsRef<std::ffi::OsStr>>(s: &Sandbox, args: &[S], name: &str) -> Proc {
    let err = s.path().join(format!("{name}.err"));
    let file = std::fs::File::create(&err).unwrap();
    let child = s
        .command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn kdtrain");
    Proc { child, err }
}

fn spawned_stderr(s: &Sandbox, name: &str) -> String {
    std::fs::read_to_string(s.path().join(format!("{name}.err"))).unwrap_or_default()
}

/// Waits for the process at most `limit`; kills it and panics past that.
fn wait(p: &mut Proc, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = p.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > limit {
            let _ = p.kill();
            let _ = p.child.wait();
            panic!("kdtrain still running after {limit:?}:\n{}", p.stderr());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls until `cond` holds; panics after `limit`, or if the process exits first.
fn wait_until(p: &mut Proc, limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        if let Some(st) = p.try_wait().unwrap() {
            panic!("kdtrain exited ({st}) before {what}:\n{}", p.stderr());
        }
        if t0.elapsed() > limit {
            let _ = p.kill();
            let _ = p.child.wait();
            panic!("no {what} after {limit:?}:\n{}", p.stderr());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn sigint(child: &Child) {
    signal(child.id(), "INT");
}

/// The epoch that `state.json` in `dir` records, if it exists and parses.
fn state_epoch(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["epoch"].as_u64().map(|e| e as usize)
}

/// Starts `train student --epochs 500 --run-name NAME` plus `extra` (a run that goes on
/// far longer than any test waits), and returns once its first epoch is on disk.
fn start_long_run(s: &Sandbox, name: &str, extra: &[&str], log: &str) -> (Proc, PathBuf) {
    let dir = s.runs().join(name);
    let args = [
        &["train", "student", "--epochs", "500", "--run-name", name][..],
        extra,
    ]
    .concat();
    let mut child = spawn(s, &args, log);
    wait_until(&mut child, Duration::from_secs(60), "state.json", || {
        state_epoch(&dir).is_some()
    });
    (child, dir)
}

fn state_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap()
}

/// Every regular file in `dir` (not recursive) with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Asserts that the files named in `keep` hold the same bytes in `before` and `after`.
#[track_caller]
fn assert_intact(before: &BTreeMap<String, Vec<u8>>, dir: &Path, keep: &[&str]) {
    let after = files(dir);
    for k in keep {
        let (b, a) = (before.get(*k), after.get(*k));
        assert!(b.is_some(), "{k} was not there before");
        assert!(a == b, "{k} in {} changed or vanished", dir.display());
    }
}

/// Trains a 1-epoch student into `runs/<name>` and returns its folder.
fn trained_student(s: &Sandbox, name: &str) -> PathBuf {
    assert_ok(&s.kd(&[
        "train",
        "student",
        "--epochs",
        "1",
        "--run-name",
        name,
        "-q",
    ]));
    s.runs().join(name)
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn images_idx(count: usize, side: usize) -> Vec<u8> {
    encode_idx(&Idx::Images {
        count,
        rows: side,
        cols: side,
        pixels: vec![9; count * side * side],
    })
}

fn labels_idx(labels: Vec<u8>) -> Vec<u8> {
    encode_idx(&Idx::Labels(labels))
}

/// Replaces data file `name` (a `.gz` name) with `bytes` written as they are.
fn put(s: &Sandbox, name: &str, bytes: &[u8]) -> PathBuf {
    let p = s.data_dir().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Replaces data file `stem.gz` by the plain (not gzipped) file `stem` holding `bytes`.
fn put_plain(s: &Sandbox, gz_name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::remove_file(s.data_dir().join(gz_name)).unwrap();
    let p = s.data_dir().join(gz_name.trim_end_matches(".gz"));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn train_student(s: &Sandbox) -> std::process::Output {
    s.kd(&["train", "student", "--epochs", "1"])
}

// ---------------------------------------------------------------------------------
// Data files
// ---------------------------------------------------------------------------------

#[test]
fn data_missing_folder_says_how_to_get_the_data() {
    let s = sandbox();
    let o = s.kd(&["train", "student", "--data-dir", "no/such/folder"]);
    assert_fails(
        &o,
        2,
        &["no/such/folder", "dataset-fashion-mnist", "--download"],
    );
    assert!(
        !s.runs().exists(),
        "a run folder was made for a failed start"
    );
}

#[test]
fn data_missing_file_is_named_with_how_to_get_it() {
    let s = sandbox();
    std::fs::remove_file(s.data_dir().join(TEST_LABELS)).unwrap();
    assert_fails(
        &train_student(&s),
        2,
        &[
            "lacks t10k-labels-idx1-ubyte",
            "dataset-fashion-mnist",
            "--download",
        ],
    );
}

#[test]
fn data_found_nowhere_says_how_to_get_it() {
    // No --data-dir, no FASHION_MNIST_DIR, no ./data/fashion-mnist, and the Debian
    // folder pointed at an empty one.
    let s = sandbox();
    let empty = s.path().join("empty-system-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let config = s.path().join("test.toml");
    let o = s
        .command(&[
            "train",
            "student",
            "--config",
            config.to_str().unwrap(),
            "--out-dir",
            "runs",
        ])
        .env("KDTRAIN_SYSTEM_DATA_DIR", &empty)
        .output()
        .unwrap();
    assert_fails(
        &o,
        2,
        &[
            "Fashion-MNIST not found",
            "data/fashion-mnist",
            empty.to_str().unwrap(),
            "dataset-fashion-mnist",
            "--download",
        ],
    );
}

#[test]
fn data_empty_file() {
    let s = sandbox();
    put(&s, TRAIN_LABELS, b"");
    assert_fails(&train_student(&s), 1, &[TRAIN_LABELS, "the file is empty"]);
    let s = sandbox();
    put_plain(&s, TEST_IMAGES, b"");
    assert_fails(
        &train_student(&s),
        1,
        &["t10k-images-idx3-ubyte:", "the file is empty"],
    );
}

#[test]
fn data_truncated_gzip_stream() {
    let s = sandbox();
    let full = std::fs::read(s.data_dir().join(TRAIN_IMAGES)).unwrap();
    put(&s, TRAIN_IMAGES, &full[..full.len() / 2]);
    assert_fails(
        &train_student(&s),
        1,
        &[TRAIN_IMAGES, "corrupt or truncated", "get the data again"],
    );
    // Cut inside the 8-byte trailer (CRC and length): the data decompresses completely
    // but the stream is still incomplete.
    let s = sandbox();
    let full = std::fs::read(s.data_dir().join(TEST_LABELS)).unwrap();
    put(&s, TEST_LABELS, &full[..full.len() - 3]);
    assert_fails(
        &train_student(&s),
        1,
        &[TEST_LABELS, "corrupt or truncated"],
    );
}

#[test]
fn data_gz_name_but_not_gzip() {
    let s = sandbox();
    put(&s, TRAIN_IMAGES, b"<html><body>404 Not Found</body></html>");
    assert_fails(
        &train_student(&s),
        1,
        &[TRAIN_IMAGES, "not gzip", "partial download"],
    );
    // An uncompressed IDX file under a .gz name.
    let s = sandbox();
    put(&s, TRAIN_LABELS, &labels_idx(vec![1; 200]));
    assert_fails(&train_student(&s), 1, &[TRAIN_LABELS, "not gzip"]);
}

#[test]
fn data_images_and_labels_swapped() {
    let s = sandbox();
    let d = s.data_dir();
    let (img, lab) = (d.join(TRAIN_IMAGES), d.join(TRAIN_LABELS));
    let tmp = d.join("swap");
    std::fs::rename(&img, &tmp).unwrap();
    std::fs::rename(&lab, &img).unwrap();
    std::fs::rename(&tmp, &lab).unwrap();
    assert_fails(
        &train_student(&s),
        1,
        &[TRAIN_IMAGES, "labels file", "swapped"],
    );
}

#[test]
fn data_wrong_magic_number() {
    let s = sandbox();
    let mut b = images_idx(200, 28);
    b[3] = 0x0d; // 0x0000080d: an IDX file of f64, not u8
    put(&s, TRAIN_IMAGES, &gz(&b));
    assert_fails(
        &train_student(&s),
        1,
        &[TRAIN_IMAGES, "magic number 0x0000080d", "0x00000803"],
    );
    // Labels where images should be in an uncompressed test file.
    let s = sandbox();
    put_plain(&s, TEST_LABELS, &images_idx(50, 28));
    assert_fails(
        &train_student(&s),
        1,
        &["t10k-labels-idx1-ubyte", "images file", "swapped"],
    );
}

#[test]
fn data_test_images_of_another_size_than_the_training_images() {
    let s = sandbox();
    put(&s, TEST_IMAGES, &gz(&images_idx(50, 32)));
    assert_fails(
        &train_student(&s),
        1,
        &[
            TEST_IMAGES,
            "test images are 32x32",
            "are 28x28",
            "do not belong together",
        ],
    );
}

#[test]
fn data_image_and_label_counts_differ() {
    let s = sandbox();
    put(&s, TRAIN_LABELS, &gz(&labels_idx(vec![3; 199])));
    assert_fails(
        &train_student(&s),
        1,
        &["200 images", "199 labels", "do not belong together"],
    );
}

#[test]
fn data_label_out_of_range() {
    let s = sandbox();
    let mut labels = vec![0u8; 50];
    labels[17] = 10;
    put(&s, TEST_LABELS, &gz(&labels_idx(labels)));
    assert_fails(
        &train_student(&s),
        2,
        &[
            TEST_LABELS,
            "label 10 at index 17",
            "expected 0 to 9",
            "classes.txt names 10 classes",
        ],
    );
}

#[test]
fn data_header_claims_more_than_the_file_holds() {
    let s = sandbox();
    let mut b = images_idx(200, 28);
    b.truncate(b.len() - 100);
    put(&s, TRAIN_IMAGES, &gz(&b));
    assert_fails(
        &train_student(&s),
        1,
        &[TRAIN_IMAGES, "header claims", "truncated"],
    );
    // A header claiming 2^32-1 labels in a 20-byte plain file: no huge allocation.
    let s = sandbox();
    let mut b = labels_idx(vec![1; 12]);
    b[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    put_plain(&s, TRAIN_LABELS, &b);
    assert_fails(
        &train_student(&s),
        1,
        &["train-labels-idx1-ubyte:", "4294967295", "truncated"],
    );
}

#[test]
fn data_zero_item_file() {
    let s = sandbox();
    put(&s, TEST_IMAGES, &gz(&images_idx(0, 28)));
    put(&s, TEST_LABELS, &gz(&labels_idx(vec![])));
    assert_fails(&train_student(&s), 1, &[TEST_IMAGES, "holds 0 images"]);
}

// ---------------------------------------------------------------------------------
// Config and flags
// ---------------------------------------------------------------------------------

#[test]
fn config_unknown_key_is_named_with_its_line() {
    let s = sandbox_with(200, 50, "batch_sise = 32");
    assert_fails(
        &train_student(&s),
        2,
        &["test.toml", "line 3", "data.batch_sise", "unknown field"],
    );
    let s = sandbox_with(200, 50, "[trian]\nepochs = 3");
    assert_fails(&train_student(&s), 2, &["line 3", "unknown field `trian`"]);
}

#[test]
fn config_wrong_type_is_named_with_its_line() {
    let s = sandbox_with(200, 50, "[distill.kd]\ntemperature = \"hot\"");
    assert_fails(
        &train_student(&s),
        2,
        &[
            "test.toml",
            "line 4",
            "distill.kd.temperature",
            "invalid type",
            "expected a number",
        ],
    );
    let s = sandbox_with(200, 50, "batch_size = 99999999999999999999");
    let o = train_student(&s);
    assert_fails(
        &o,
        2,
        &["data.batch_size", "`99999999999999999999` is too large"],
    );
    assert!(!stderr(&o).contains("i128"), "{}", stderr(&o));
    let s = sandbox_with(200, 50, "batch_size = -5");
    assert_fails(
        &train_student(&s),
        2,
        &["line 3", "data.batch_size", "expected an integer >= 0"],
    );
    // A missing --config file is a usage error too.
    let s = sandbox();
    let o = s.kd(&["train", "student", "--config", "nope.toml"]);
    assert_fails(&o, 2, &["nope.toml", "cannot read config file"]);
}

/// A value out of range is named with the file it came from; the same value given by its
/// flag is named with the flag alone, and a flag that mends the file's value wins.
#[test]
fn config_value_out_of_range_names_the_file_or_the_flag() {
    let s = sandbox_with(200, 50, "batch_size = 0");
    assert_fails(
        &train_student(&s),
        2,
        &["config file", "test.toml", "data.batch_size", "= 0"],
    );
    let s = sandbox();
    let o = s.kd(&["train", "student", "--batch-size", "0"]);
    assert_fails(&o, 2, &["data.batch_size", "--batch-size"]);
    assert!(!stderr(&o).contains("config file"));
    // An unknown objective in the file, and one in reproduce.objectives, by their keys.
    let s = sandbox_with(200, 50, "[distill]\nobjective = \"foo\"");
    assert_fails(
        &train_student(&s),
        2,
        &["config file", "test.toml", "`distill.objective` = \"foo\""],
    );
    let s = sandbox_with(200, 50, "[reproduce]\nobjectives = [\"kd\", \"foo\"]");
    assert_fails(
        &s.kd(&["reproduce", "--epochs", "1"]),
        2,
        &[
            "config file",
            "test.toml",
            "`reproduce.objectives` = \"foo\"",
        ],
    );
    // A flag sets the file's objective's key: --t is dist's temperature here, so the
    // error is the flag's although the file's value is bad too...
    let s = sandbox_with(
        200,
        50,
        "[distill]\nobjective = \"dist\"\n[distill.dist]\ntemperature = 0.0",
    );
    let o = s.kd(&["distill", "--t", "0", "--teacher", "none.safetensors"]);
    assert_fails(&o, 2, &["distill.dist.temperature", "--t"]);
    assert!(!stderr(&o).contains("config file"), "{}", stderr(&o));
    // ...and a bad key of another objective is the file's, whatever --t says.
    let s = sandbox_with(
        200,
        50,
        "[distill]\nobjective = \"dkd\"\n[distill.kd]\ntemperature = 0.0",
    );
    let o = s.kd(&["distill", "--t", "0", "--teacher", "none.safetensors"]);
    assert_fails(
        &o,
        2,
        &["config file", "test.toml", "distill.kd.temperature"],
    );
    // Bad in the file and by the flag alike: the flag's value is the one used.
    let s = sandbox_with(200, 50, "batch_size = 0");
    let o = s.kd(&["train", "student", "--batch-size", "0"]);
    assert_fails(&o, 2, &["data.batch_size", "--batch-size"]);
    assert!(!stderr(&o).contains("config file"));
    let o = s.kd(&[
        "train",
        "student",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `args` fail with exit 2 and name `key` (and the flag), before any run folder exists.
#[track_caller]
fn rejects(args: &[&str], needles: &[&str]) {
    let s = sandbox();
    let o = s.kd(args);
    assert_fails(&o, 2, needles);
    assert!(!s.runs().exists(), "{args:?} made a run folder");
}

#[test]
fn flags_batch_size_zero() {
    rejects(
        &["train", "student", "--batch-size", "0"],
        &[
            "data.batch_size",
            "--batch-size",
            "expected an integer from 1 to",
        ],
    );
}

#[test]
fn flags_zero_epochs() {
    rejects(
        &["train", "teacher", "--epochs", "0"],
        &["train.epochs", "--epochs", "an integer from 1 to"],
    );
}

#[test]
fn flags_learning_rate_not_positive_or_nan() {
    for lr in ["0", "-0.001", "nan", "inf"] {
        rejects(
            &["train", "student", &format!("--lr={lr}")],
            &["lr_schedule.initial_lr", "--lr", "a finite number > 0"],
        );
    }
    // A negative number that is not attached with `=` is a clap usage error, still exit 2.
    let s = sandbox();
    let o = s.kd(&["train", "student", "--lr", "abc"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--lr"), "{}", stderr(&o));
}

#[test]
fn config_decay_steps_zero() {
    let s = sandbox_with(200, 50, "[lr_schedule]\ndecay_steps = 0");
    assert_fails(
        &train_student(&s),
        2,
        &["lr_schedule.decay_steps", "= 0", "\"auto\""],
    );
    let s = sandbox_with(200, 50, "[lr_schedule]\ndecay_steps = \"never\"");
    assert_fails(
        &train_student(&s),
        2,
        &["lr_schedule.decay_steps", "\"never\""],
    );
}

#[test]
fn flags_temperature_not_positive_or_nan() {
    for t in ["0", "-2", "nan", "inf"] {
        rejects(
            &["distill", &format!("--t={t}")],
            &[
                "distill.kd.temperature",
                "--t",
                "a number from 0.001 to 1000",
            ],
        );
    }
    let s = sandbox_with(200, 50, "[distill.kd]\ntemperature = -1.0");
    assert_fails(&train_student(&s), 2, &["distill.kd.temperature", "-1"]);
    // The chosen objective's temperature is the one checked.
    rejects(
        &["distill", "--objective", "dkd", "--t=0"],
        &["distill.dkd.temperature", "--t"],
    );
}

#[test]
fn flags_alpha_outside_unit_interval() {
    for a in ["1.5", "-0.1", "nan"] {
        rejects(
            &["distill", &format!("--alpha={a}")],
            &["distill.kd.alpha", "--alpha", "[0, 1]"],
        );
    }
}

#[test]
fn flags_device_that_does_not_exist() {
    let gpus = tch::Cuda::device_count();
    if gpus == 0 {
        rejects(
            &["train", "student", "--device", "cuda"],
            &[
                "device cuda (runtime.device, --device)",
                "no CUDA device",
                "--device cpu",
            ],
        );
        assert!(
            !stderr(&sandbox().kd(&["train", "student", "--device", "cuda"]))
                .contains("config file")
        );
        // Named by the file, the file is named.
        let s = sandbox_with(200, 50, "[runtime]\ndevice = \"cuda\"");
        assert_fails(
            &train_student(&s),
            2,
            &[
                "config file",
                "test.toml",
                "device cuda (runtime.device",
                "no CUDA device",
            ],
        );
    }
    rejects(
        &["train", "student", "--device", "cuda:99"],
        &["device cuda:99 (runtime.device, --device)"],
    );
    rejects(
        &["train", "student", "--device", "tpu"],
        &["runtime.device", "\"tpu\""],
    );
}

/// Runs `args` with the sandbox's config and data but `--out-dir out`.
fn kd_out(s: &Sandbox, args: &[&str], out: &Path) -> std::process::Output {
    let mut full: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    full.extend([
        "--config".into(),
        s.path().join("test.toml").display().to_string(),
        "--data-dir".into(),
        s.data_dir().display().to_string(),
        "--out-dir".into(),
        out.display().to_string(),
        "--threads".into(),
        "1".into(),
    ]);
    s.raw(&full)
}

#[test]
fn out_dir_is_a_regular_file() {
    let s = sandbox();
    let f = s.path().join("not-a-dir");
    std::fs::write(&f, b"precious").unwrap();
    let o = kd_out(&s, &["train", "student"], &f);
    assert_fails(&o, 2, &["--out-dir", "not-a-dir", "cannot create it"]);
    assert!(!stderr(&o).contains("data: "), "data was loaded first");
    assert_eq!(std::fs::read(&f).unwrap(), b"precious");
}

#[test]
fn out_dir_under_a_regular_file() {
    let s = sandbox();
    let f = s.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let o = kd_out(&s, &["train", "teacher"], &f.join("runs"));
    assert_fails(&o, 2, &["--out-dir", "file/runs", "Not a directory"]);
    assert!(!stderr(&o).contains("data: "), "data was loaded first");
}

#[test]
fn out_dir_where_no_folder_can_be_made() {
    // /proc refuses new folders even to root (chmod does not stop root).
    let s = sandbox();
    let o = kd_out(&s, &["train", "student"], Path::new("/proc"));
    assert_fails(
        &o,
        2,
        &["cannot create run folder /proc/student-", "--out-dir"],
    );
    let o = kd_out(&s, &["train", "student"], Path::new("/proc/kdtrain-runs"));
    assert_fails(&o, 2, &["--out-dir /proc/kdtrain-runs", "cannot create it"]);
}

// ---------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------

#[test]
fn distill_without_a_teacher_says_to_train_one() {
    let s = sandbox();
    assert_fails(
        &s.kd(&["distill", "--epochs", "1"]),
        2,
        &[
            "no finished teacher checkpoint",
            "run `train teacher` first",
            "--teacher",
        ],
    );
    assert_fails(
        &s.kd(&["distill", "--teacher", "nowhere/model.safetensors"]),
        2,
        &[
            "nowhere/model.safetensors",
            "does not exist",
            "train teacher",
        ],
    );
}

#[test]
fn student_checkpoint_as_teacher_names_tensor_and_shapes() {
    let s = sandbox();
    let student = trained_student(&s, "stud");
    let path = student.join("model.safetensors");
    let before = files(&student);
    let o = s.kd(&[
        "distill",
        "--teacher",
        path.to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    assert_fails(
        &o,
        2,
        &[
            path.to_str().unwrap(),
            "is a student checkpoint",
            "mlp:128",
            "not a teacher",
        ],
    );
    assert_intact(
        &before,
        &student,
        &["model.safetensors", "last.safetensors"],
    );
    // The same through `evaluate --teacher`.
    let o = s.kd(&[
        "evaluate",
        path.to_str().unwrap(),
        "--teacher",
        path.to_str().unwrap(),
    ]);
    assert_fails(
        &o,
        2,
        &["--teacher", "is a student checkpoint", "not a teacher"],
    );
}

#[test]
fn truncated_or_corrupt_checkpoint() {
    let s = sandbox();
    let student = trained_student(&s, "stud");
    let good = std::fs::read(student.join("model.safetensors")).unwrap();
    let bad = s.path().join("bad.safetensors");
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut garbled = good.clone();
    garbled[8 + header_len / 2] = b'\0'; // NUL inside the JSON header
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("4 bytes", good[..4].to_vec()),
        ("header cut", good[..8 + header_len / 2].to_vec()),
        ("data cut", good[..good.len() - 100].to_vec()),
        ("header garbled", garbled),
        ("huge header length", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
    ];
    for (what, bytes) in cases {
        std::fs::write(&bad, &bytes).unwrap();
        let o = s.kd(&["evaluate", bad.to_str().unwrap()]);
        assert_fails(&o, 1, &["bad.safetensors", "truncated or corrupt"]);
        let o = s.kd(&[
            "distill",
            "--teacher",
            bad.to_str().unwrap(),
            "--epochs",
            "1",
        ]);
        assert_fails(&o, 1, &["bad.safetensors", "truncated or corrupt"]);
        let _ = what;
    }
    // A corrupt resume checkpoint: --resume refuses and leaves the run folder alone.
    let (mut child, r) = start_long_run(&s, "resumable", &["-q"], "r");
    sigint(&child);
    assert_eq!(wait(&mut child, Duration::from_secs(60)).code(), Some(130));
    let last = std::fs::read(r.join("last.safetensors")).unwrap();
    std::fs::write(r.join("last.safetensors"), &last[..last.len() / 3]).unwrap();
    let before = files(&r);
    let o = s.kd(&[
        "train",
        "student",
        "--epochs",
        "500",
        "--run-name",
        "resumable",
        "--resume",
    ]);
    assert_fails(&o, 1, &["last.safetensors", "truncated or corrupt"]);
    assert_intact(
        &before,
        &r,
        &[
            "model.safetensors",
            "last.safetensors",
            "state.json",
            "metrics.csv",
        ],
    );
}

#[test]
fn resume_with_a_config_that_disagrees() {
    let s = sandbox();
    let (mut child, r) = start_long_run(&s, "r", &["--seed", "5", "-q"], "r");
    sigint(&child);
    assert_eq!(wait(&mut child, Duration::from_secs(60)).code(), Some(130));
    let before = files(&r);
    let keep = [
        "model.safetensors",
        "last.safetensors",
        "state.json",
        "config.toml",
        "metrics.csv",
    ];
    let base = [
        "train",
        "student",
        "--epochs",
        "500",
        "--run-name",
        "r",
        "--resume",
    ];
    let o = s.kd(&[&base[..], &["--seed", "6"]].concat());
    assert_fails(&o, 2, &["--resume", "disagrees", "`seed` saved 5 vs now 6"]);
    // It points at the saved config, which holds every setting the run started with.
    let saved = format!(
        "`--config {}` holds them all",
        r.join("config.toml").display()
    );
    assert!(stderr(&o).contains(&saved), "{}", stderr(&o));
    assert_intact(&before, &r, &keep);
    let o = s.kd(&[&base[..], &["--seed", "5", "--lr", "0.01"]].concat());
    assert_fails(
        &o,
        2,
        &[
            "disagrees",
            "`lr_schedule.initial_lr` saved 0.001 vs now 0.01",
        ],
    );
    assert_intact(&before, &r, &keep);
    let o = s.kd(&[&base[..], &["--seed", "5", "--batch-size", "64"]].concat());
    assert_fails(
        &o,
        2,
        &["disagrees", "`data.batch_size` saved 256 vs now 64"],
    );
    assert_intact(&before, &r, &keep);
    // A student run resumed as a teacher: the config matches, the tensors do not.
    let o = s.kd(&[
        "train",
        "teacher",
        "--epochs",
        "500",
        "--run-name",
        "r",
        "--resume",
        "--seed",
        "5",
    ]);
    assert_fails(&o, 2, &["holds a student run, not a teacher run"]);
    assert_intact(&before, &r, &keep);
}

#[test]
fn resume_of_a_finished_or_empty_run() {
    let s = sandbox();
    let done = trained_student(&s, "done");
    let before = files(&done);
    let o = s.kd(&[
        "train",
        "student",
        "--epochs",
        "1",
        "--run-name",
        "done",
        "--resume",
    ]);
    assert_fails(&o, 2, &["already finished", "nothing to resume"]);
    assert_intact(
        &before,
        &done,
        &["model.safetensors", "last.safetensors", "state.json"],
    );
    // Without --resume, the finished run is not overwritten.
    // Nor is the user sent to --resume, which would refuse a finished run.
    let o = s.kd(&["train", "student", "--epochs", "1", "--run-name", "done"]);
    assert_fails(
        &o,
        2,
        &["already holds a finished run", "another --run-name"],
    );
    assert!(!stderr(&o).contains("--resume"), "{}", stderr(&o));
    assert_intact(
        &before,
        &done,
        &["model.safetensors", "last.safetensors", "state.json"],
    );
    // Nothing to resume at all.
    let o = s.kd(&["train", "teacher", "--epochs", "1", "--resume"]);
    assert_fails(&o, 2, &["no unfinished teacher run"]);
    let o = s.kd(&[
        "train",
        "teacher",
        "--epochs",
        "1",
        "--resume",
        "--run-name",
        "fresh",
    ]);
    assert_fails(&o, 2, &["holds no completed epoch", "without --resume"]);
}

// ---------------------------------------------------------------------------------
// Numerical faults
// ---------------------------------------------------------------------------------

#[test]
fn loss_that_diverges_stops_the_run_at_that_step() {
    // Adam's first step moves every weight by about the LR: with --lr 1e6 the loss of the
    // second step is astronomically large (finite, log-softmax is stable) or NaN.
    for model in ["teacher", "student"] {
        let s = sandbox();
        let o = s.kd(&[
            "train",
            model,
            "--lr",
            "1e6",
            "--batch-size",
            "16",
            "--epochs",
            "3",
            "--run-name",
            "nan",
        ]);
        assert_fails(
            &o,
            1,
            &[
                "the loss became",
                "at epoch 1, step 2 (global step 1",
                "diverged",
                "no epoch had completed",
                "lower lr_schedule.initial_lr (--lr)",
            ],
        );
        let dir = s.runs().join("nan");
        assert!(
            !dir.join("model.safetensors").exists(),
            "no epoch completed"
        );
        assert!(!dir.join("state.json").exists(), "no epoch completed");
    }
}

#[test]
fn divergence_after_the_first_epoch_keeps_the_best_checkpoint() {
    // One optimizer step per epoch (the batch is larger than the training set); eps = 1
    // makes Adam behave like SGD with LR 20, which is unstable: the validation loss is
    // about 2e2 after epoch 1 and 1e7 after epoch 2 (four orders of magnitude on either
    // side of the 1e6 limit, so float differences between machines cannot move it).
    let s = sandbox_with(
        200,
        50,
        "batch_size = 512\n[optimizer]\neps = 1.0\n[early_stopping]\nenabled = false",
    );
    let dir = s.runs().join("nan");
    let o = s.kd(&[
        "train",
        "teacher",
        "--lr",
        "20",
        "--epochs",
        "50",
        "--run-name",
        "nan",
    ]);
    assert_fails(
        &o,
        1,
        &[
            "the validation loss became",
            "after epoch 2",
            "diverged",
            &format!(
                "the best checkpoint so far (epoch 1) is kept in {}",
                dir.join("model.safetensors").display()
            ),
        ],
    );
    let best = Checkpoint::read(&dir.join("model.safetensors")).unwrap();
    assert_eq!(best.metadata[META_EPOCH], "1");
    for (name, t) in &best.tensors {
        assert!(
            t.isfinite().all().int64_value(&[]) == 1,
            "{name} is not finite in the kept checkpoint"
        );
    }
    let st = state_json(&dir);
    assert_eq!(st["epoch"], 1);
    assert_eq!(st["best_epoch"], 1);
    // The monitored metric is minus the validation accuracy: epoch 1's, a finite value
    // in [-1, 0] (not the diverged epoch's).
    let epoch1 = st["history"][0]["val"]["acc"].as_f64().unwrap();
    assert_eq!(st["best_metric"].as_f64().unwrap(), -epoch1, "{st}");
    assert!((0.0..=1.0).contains(&epoch1), "{st}");
    assert!(!st["finished"].as_bool().unwrap());
    let (_, rows) = read_csv(&dir.join("metrics.csv"));
    assert_eq!(rows.len(), 1);
}

#[test]
fn checkpoint_with_nan_weights_is_refused() {
    let s = sandbox();
    let teacher =
        Arch::teacher().build(&kdtrain::data::DataSpec::fashion_mnist(), tch::Device::Cpu);
    tch::no_grad(|| {
        let _ = teacher.named_parameters()[7].1.fill_(f64::NAN);
    });
    let path = s.path().join("nan-teacher.safetensors");
    kdtrain::checkpoint::save_model(
        &path,
        teacher.as_ref(),
        kdtrain::checkpoint::metadata(&Arch::teacher(), "teacher", "", 3, None),
    )
    .unwrap();
    let o = s.kd(&[
        "distill",
        "--teacher",
        path.to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    assert_fails(
        &o,
        2,
        &["nan-teacher.safetensors", "fc4.bias", "NaN or infinite"],
    );
    let o = s.kd(&["evaluate", path.to_str().unwrap()]);
    assert_fails(
        &o,
        1,
        &["nan-teacher.safetensors", "fc4.bias", "NaN or infinite"],
    );
}

// ---------------------------------------------------------------------------------
// Interruption
// ---------------------------------------------------------------------------------

#[test]
fn sigint_stops_at_a_step_and_keeps_the_last_epoch() {
    let s = sandbox_with(2000, 100, "batch_size = 32");
    let (mut child, r) = start_long_run(&s, "int", &[], "int");
    let t0 = Instant::now();
    sigint(&child);
    let st = wait(&mut child, Duration::from_secs(60));
    let err = spawned_stderr(&s, "int");
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        t0.elapsed()
    );
    assert!(err.contains("interrupt received"), "{err}");
    assert!(
        err.contains("interrupted during epoch")
            && err.contains("--run-name int --epochs 500 --resume"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let epoch = state_epoch(&r).unwrap();
    assert!((1..500).contains(&epoch));
    let last = Checkpoint::read(&r.join("last.safetensors")).unwrap();
    assert_eq!(last.metadata[META_EPOCH], epoch.to_string());
    let best = Checkpoint::read(&r.join("model.safetensors")).unwrap();
    assert_eq!(best.arch(), Arch::parse("mlp:128,dropout=0.1").ok());
    let (_, rows) = read_csv(&r.join("metrics.csv"));
    assert_eq!(rows.len(), epoch);
    assert!(
        !std::fs::read_dir(&r).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "a .tmp file was left after a clean stop"
    );
}

/// `kill`, Slurm's `scancel` and its time limit send SIGTERM; a closed terminal sends
/// SIGHUP. Both stop the run like Ctrl-C: at a step, with the command that resumes it.
#[test]
fn sigterm_and_sighup_stop_at_a_step_with_the_resume_command() {
    let s = sandbox_with(2000, 100, "batch_size = 32");
    for sig in ["TERM", "HUP"] {
        let name = format!("sig{sig}");
        let (mut child, r) = start_long_run(&s, &name, &[], &name);
        signal(child.id(), sig);
        let st = wait(&mut child, Duration::from_secs(60));
        let err = spawned_stderr(&s, &name);
        assert_eq!(st.code(), Some(130), "SIG{sig}: {err}");
        assert!(err.contains("interrupt received"), "SIG{sig}: {err}");
        assert!(
            err.contains("interrupted during epoch")
                && err.contains(&format!("--run-name {name} --epochs 500 --resume")),
            "SIG{sig}: {err}"
        );
        let epoch = state_epoch(&r).unwrap();
        let last = Checkpoint::read(&r.join("last.safetensors")).unwrap();
        assert_eq!(last.metadata[META_EPOCH], epoch.to_string());
    }
}

/// A SIGTERM while the program starts (libtorch's constructors run for about 0.4 s
/// before `main`, twice when the OpenMP wait is tuned and the program runs itself again)
/// exits 130, as one that arrives later does, not with the signal's default 143.
#[test]
fn sigterm_while_starting_exits_130() {
    let s = sandbox_with(2000, 100, "batch_size = 32");
    for ms in [100u64, 250, 400, 550, 700, 900] {
        let name = format!("early{ms}");
        let mut args = s.args(&["train", "student", "--epochs", "500", "--run-name", &name]);
        // Two threads, so that the OpenMP wait is tuned and the program starts twice.
        let last = args.len() - 1;
        assert_eq!(args[last - 1], "--threads");
        args[last] = "2".into();
        let mut child = spawn_raw(&s, &args, &name);
        std::thread::sleep(Duration::from_millis(ms));
        // The dynamic loader's few milliseconds, at the start and again when the program
        // runs itself anew, come before any code of the program's: wait them out (at most
        // 250 ms; libtorch's constructors alone take longer, so a handler installed only
        // in `main` would still be seen missing).
        let t0 = Instant::now();
        while !catches_or_blocks_sigterm(child.id()) {
            assert!(
                t0.elapsed() < Duration::from_millis(250),
                "SIGTERM neither caught nor blocked {} ms after start",
                ms + 250
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        signal(child.id(), "TERM");
        let st = wait(&mut child, Duration::from_secs(60));
        let err = spawned_stderr(&s, &name);
        assert_eq!(st.code(), Some(130), "SIGTERM after {ms} ms: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A signal ignored when kdtrain starts (SIGINT for a shell's `&` job without job
/// control, `nohup`'s SIGHUP) stays ignored once the run's handler is installed; the
/// others still stop the run (exit 130).
#[test]
fn a_signal_ignored_at_start_stays_ignored() {
    use std::os::unix::process::CommandExt;
    let s = sandbox_with(2000, 100, "batch_size = 32");
    let mut args = s.args(&["train", "student", "--epochs", "500", "--run-name", "ign"]);
    let last = args.len() - 1;
    args[last] = "2".into();
    let err = s.path().join("ign.err");
    let mut c = s.command(&args);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()));
    // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = Proc {
        child: c.spawn().unwrap(),
        err,
    };
    // Training has started (the handler is installed before the run folder is made).
    let t0 = Instant::now();
    while !s.runs().join("ign/metrics.csv").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", child.stderr());
        assert!(child.try_wait().unwrap().is_none(), "{}", child.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(child.id(), "INT");
    signal(child.id(), "HUP");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "an ignored SIGINT or SIGHUP stopped the run: {}",
        child.stderr()
    );
    signal(child.id(), "TERM");
    let st = wait(&mut child, Duration::from_secs(60));
    assert_eq!(st.code(), Some(130), "{}", child.stderr());
}

/// Whether process `pid` has a handler for SIGTERM or blocks it (`SigCgt` or `SigBlk` in
/// `/proc/<pid>/status`; bit 14 is signal 15).
fn catches_or_blocks_sigterm(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    ["SigCgt:", "SigBlk:"].iter().any(|key| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << 14) != 0)
    })
}

/// The printed resume command is quoted for a POSIX shell: run as printed (plus the
/// options the run started with), it resumes a run whose out-dir and name hold a space
/// and a quote.
#[test]
fn the_resume_command_is_shell_quoted_and_works_as_printed() {
    let s = sandbox_with(300, 50, "batch_size = 32");
    let out = s.path().join("my runs");
    let config = s.path().join("test.toml");
    let data = s.data_dir();
    let common = [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--threads",
        "1",
        "-q",
    ];
    let start = [
        &["train", "student", "--epochs", "3", "--run-name", "a b'c"][..],
        &["--out-dir", out.to_str().unwrap()],
        &common,
    ]
    .concat();
    // Runs `start`, stopped in epoch 1, and reads the resume command that it prints:
    // its words after `kdtrain`, then `common`.
    let printed_resume = |start: &[&str]| -> Vec<String> {
        let o = s
            .command(start)
            .env(kdtrain::commands::INTERRUPT_HOOK, "epoch:1")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(130), "{err}");
        let printed = err
            .split("continue it with `")
            .nth(1)
            .and_then(|t| t.split('`').next())
            .unwrap_or_else(|| panic!("no resume command in: {err}"));
        let words = shlex::split(printed).unwrap_or_else(|| panic!("not shell words: {printed}"));
        assert_eq!(words[0], "kdtrain", "{printed}");
        words[1..]
            .iter()
            .cloned()
            .chain(common.iter().map(|c| c.to_string()))
            .collect()
    };
    let resume = printed_resume(&start);
    assert_ok(&s.raw(&resume));
    assert_eq!(state_epoch(&out.join("a b'c")), Some(3));

    // A distillation whose --teacher was relative to the folder it started in resumes
    // from another folder: the run records its teacher's absolute path.
    let t = ["train", "teacher", "--epochs", "1", "--run-name", "t"];
    assert_ok(&s.raw(&[&t[..], &["--out-dir", out.to_str().unwrap()], &common].concat()));
    let start = [
        &["distill", "--teacher", "my runs/t/model.safetensors"][..],
        &[
            "--epochs",
            "3",
            "--run-name",
            "d",
            "--out-dir",
            out.to_str().unwrap(),
        ],
        &common,
    ]
    .concat();
    let resume = printed_resume(&start);
    let elsewhere = s.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let o = s.command(&resume).current_dir(&elsewhere).output().unwrap();
    assert_ok(&o);
    assert_eq!(state_epoch(&out.join("d")), Some(3));
}

/// A command without steps to stop at (predict here, blocked reading a FIFO that nobody
/// writes) exits 130 at the first signal instead of waiting for a step that never comes.
#[test]
fn commands_that_do_not_train_exit_at_the_first_signal() {
    let s = sandbox();
    let ckpt = trained_student(&s, "stud").join("model.safetensors");
    let fifo = s.path().join("images.fifo");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo")
        .success();
    assert!(ok, "mkfifo failed");
    for sig in ["TERM", "INT"] {
        let name = format!("predict{sig}");
        let predict = ["predict".as_ref(), ckpt.as_os_str(), fifo.as_os_str()];
        let mut child = spawn_raw(&s, &predict, &name);
        // Signal once predict is blocked reading the FIFO: opening its write end without
        // blocking succeeds only when a reader has it open. The end stays open (no EOF)
        // until the signal has been answered.
        let writer = wait_for_reader(&fifo, Duration::from_secs(20));
        signal(child.id(), sig);
        let st = wait(&mut child, Duration::from_secs(10));
        let err = spawned_stderr(&s, &name);
        assert_eq!(st.code(), Some(130), "SIG{sig}: {err}");
        assert!(err.contains("interrupted; exiting now"), "SIG{sig}: {err}");
        drop(writer);
    }
}

/// Opens `fifo`'s write end as soon as a reader has it open (`O_NONBLOCK`: the open fails
/// with ENXIO until then); panics after `limit`.
fn wait_for_reader(fifo: &Path, limit: Duration) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    let start = Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(fifo)
        {
            Ok(f) => return f,
            Err(_) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("no reader opened {} within {limit:?}: {e}", fifo.display()),
        }
    }
}

#[test]
fn second_sigint_exits_at_once_without_tearing_files() {
    let s = sandbox_with(2000, 100, "batch_size = 32");
    let r = s.runs().join("int2");
    for round in 0..3 {
        let mut args = vec![
            "train",
            "teacher",
            "--epochs",
            "500",
            "--run-name",
            "int2",
            "-q",
        ];
        if round > 0 {
            args.push("--resume");
        }
        let mut child = spawn(&s, &args, "int2");
        let start_epoch = state_epoch(&r).unwrap_or(0);
        wait_until(&mut child, Duration::from_secs(60), "a new epoch", || {
            state_epoch(&r).unwrap_or(0) > start_epoch
        });
        sigint(&child);
        std::thread::sleep(Duration::from_millis(3 * round));
        sigint(&child);
        let st = wait(&mut child, Duration::from_secs(60));
        assert_eq!(st.code(), Some(130), "{}", spawned_stderr(&s, "int2"));
        for f in ["model.safetensors", "last.safetensors"] {
            Checkpoint::read(&r.join(f)).unwrap();
        }
        assert!(state_epoch(&r).unwrap() > start_epoch);
    }
}

/// Largest absolute difference between same-named tensors of two checkpoints.
fn max_diff(a: &Path, b: &Path) -> f64 {
    let (ca, cb) = (Checkpoint::read(a).unwrap(), Checkpoint::read(b).unwrap());
    assert_eq!(ca.tensors.len(), cb.tensors.len());
    ca.tensors
        .iter()
        .map(|(name, t)| (t - &cb.tensors[name]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// SIGKILL at pseudo-random moments of a run whose epochs are mostly checkpoint writes
/// (a teacher, one step per epoch): after every kill the checkpoints parse, and the run
/// resumes from them; at the end it has every epoch in metrics.csv once and the same
/// weights as a run that was never killed. At least one kill must land inside a write
/// (it leaves that write's `.NAME.tmp` behind): 12 kills, then more until one does, at
/// most 60. The moments come from a seed that changes every run and is printed;
/// `KDTRAIN_TEST_SEED=N` repeats one.
#[test]
fn sigkill_at_random_moments_never_tears_a_checkpoint() {
    let s = sandbox_with(
        300,
        50,
        "batch_size = 256\n[lr_schedule]\ndecay_steps = 1000\n\
         [early_stopping]\nenabled = false\n[logging]\nplots = false",
    );
    let r = s.runs().join("teacher-k9");
    let seed: u64 = match std::env::var("KDTRAIN_TEST_SEED") {
        Ok(v) => v.parse().expect("KDTRAIN_TEST_SEED: an integer"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("sigkill test seed {seed} (KDTRAIN_TEST_SEED={seed} repeats it)");
    let mut rng: u64 = seed | 1; // xorshift needs a non-zero state
    let tmp_files = |r: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(r)
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| p.to_string_lossy().ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (mut kills, mut during_write) = (0, 0);
    for round in 0..60 {
        if round >= 12 && during_write > 0 {
            break;
        }
        // A .tmp file left by an earlier kill would be counted again.
        for t in tmp_files(&r) {
            std::fs::remove_file(t).unwrap();
        }
        let mut args = vec![
            "train",
            "teacher",
            "--epochs",
            "100000",
            "--run-name",
            "teacher-k9",
            "-q",
        ];
        // A kill between last.safetensors and state.json of epoch 1 leaves only the former.
        if r.join("last.safetensors").exists() {
            args.push("--resume");
        }
        let before = state_epoch(&r).unwrap_or(0);
        let mut child = spawn(&s, &args, "k9");
        // Once an epoch has completed in this process, kill it within 0-300 ms: epochs
        // here are mostly checkpoint writes, so many kills land inside one.
        wait_until(&mut child, Duration::from_secs(60), "a new epoch", || {
            state_epoch(&r).unwrap_or(0) > before
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 300));
        assert!(child.try_wait().unwrap().is_none(), "{}", child.stderr());
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        if !tmp_files(&r).is_empty() {
            during_write += 1;
        }
        let epoch = state_epoch(&r).expect("state.json parses");
        let last = Checkpoint::read(&r.join("last.safetensors"))
            .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        let last_epoch: usize = last.metadata[META_EPOCH].parse().unwrap();
        // last.safetensors is written before state.json, so it may be one ahead.
        assert!(
            last_epoch == epoch || last_epoch == epoch + 1,
            "round {round}: last.safetensors holds epoch {last_epoch}, state.json {epoch}"
        );
        let best = Checkpoint::read(&r.join("model.safetensors"))
            .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        assert_eq!(best.arch(), Arch::parse("mlp:512,256,128,dropout=0.2").ok());
    }
    // Finish: the epoch budget may change on --resume.
    let done = state_epoch(&r).unwrap() + 3;
    let epochs = done.to_string();
    let finish = ["train", "teacher", "--epochs", &epochs, "-q"];
    assert_ok(&s.kd(&[&finish[..], &["--run-name", "teacher-k9", "--resume"]].concat()));
    let (_, rows) = read_csv(&r.join("metrics.csv"));
    let got: Vec<usize> = rows.iter().map(|row| row[0] as usize).collect();
    assert_eq!(got, (1..=done).collect::<Vec<_>>());
    let st = state_json(&r);
    assert_eq!(st["epoch"], done);
    assert_eq!(st["step"], done);
    assert!(st["finished"].as_bool().unwrap());
    // The same run, never killed.
    assert_ok(&s.kd(&[&finish[..], &["--run-name", "whole"]].concat()));
    let w = s.runs().join("whole");
    let d_model = max_diff(&r.join("model.safetensors"), &w.join("model.safetensors"));
    let d_last = max_diff(&r.join("last.safetensors"), &w.join("last.safetensors"));
    eprintln!(
        "{kills} kills ({during_write} left a .tmp file), {done} epochs; max |diff| against \
         an unkilled run: model {d_model:e}, last (with Adam moments) {d_last:e}"
    );
    assert!(d_model <= 1e-5 && d_last <= 1e-5);
    assert!(
        during_write > 0,
        "seed {seed}: none of {kills} kills landed inside a checkpoint write"
    );
    // Leftover .tmp files are never read as checkpoints: the teacher found for
    // distillation is model.safetensors.
    std::fs::write(r.join(".model.safetensors.tmp"), b"torn").unwrap();
    let o = s.kd(&["distill", "--epochs", "1"]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains(&format!(
            "teacher: {}",
            r.join("model.safetensors").display()
        )),
        "{}",
        stderr(&o)
    );
}

/// A kill between the write of last.safetensors and that of state.json leaves
/// state.json one epoch behind: --resume goes by the state saved inside
/// last.safetensors, so it neither repeats nor skips an epoch.
#[test]
fn resume_trusts_the_checkpoint_over_a_stale_state_json() {
    let s = sandbox_with(200, 50, "[early_stopping]\nenabled = false");
    let r = s.runs().join("stale");
    let args = ["train", "student", "--epochs", "500", "--run-name", "stale"];
    let mut child = spawn(&s, &args, "stale");
    wait_until(&mut child, Duration::from_secs(60), "epoch 3", || {
        state_epoch(&r).unwrap_or(0) >= 3
    });
    sigint(&child);
    assert_eq!(wait(&mut child, Duration::from_secs(60)).code(), Some(130));
    let e = state_epoch(&r).unwrap();
    // Roll state.json back by one epoch, as if the process died before writing it.
    let mut st = state_json(&r);
    st["epoch"] = (e - 1).into();
    st["step"] = (st["step"].as_u64().unwrap() - 1).into();
    st["history"].as_array_mut().unwrap().pop();
    std::fs::write(r.join("state.json"), st.to_string()).unwrap();
    let o = s.kd(&[
        &args[..2],
        &["--epochs", &(e + 1).to_string()],
        &args[4..],
        &["--resume"],
    ]
    .concat());
    assert_ok(&o);
    assert!(
        stderr(&o).contains(&format!("after epoch {e} (step {e},")),
        "{}",
        stderr(&o)
    );
    let (_, rows) = read_csv(&r.join("metrics.csv"));
    let got: Vec<usize> = rows.iter().map(|row| row[0] as usize).collect();
    assert_eq!(got, (1..=e + 1).collect::<Vec<_>>());
}

/// An interrupted then resumed run ends like an uninterrupted one with the same seed:
/// the same epochs in metrics.csv, the same metrics, the same early stop and the same
/// final weights and Adam moments. Training labels are random, so the validation loss
/// soon stops improving and the interruption falls while early stopping is counting.
#[test]
fn resume_continues_exactly_where_the_run_stopped() {
    let s = sandbox_with(
        3000,
        100,
        "batch_size = 32\n[early_stopping]\nenabled = true\nmonitor = \"ce\"\npatience = 4\n[logging]\nplots = false",
    );
    let mut x: u32 = 12345;
    let labels: Vec<u8> = (0..3000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            ((x >> 16) % 10) as u8
        })
        .collect();
    put(&s, TRAIN_LABELS, &gz(&labels_idx(labels)));
    let base = [
        "train", "student", "--epochs", "40", "--seed", "3", "--lr", "0.003",
    ];
    assert_ok(&s.kd(&[&base[..], &["--run-name", "whole", "-q"]].concat()));
    let a = s.runs().join("whole");
    let whole = state_json(&a);
    let epochs_run = whole["epoch"].as_u64().unwrap() as usize;
    assert!(epochs_run < 40, "no early stop: {whole}");
    // The first epoch that did not improve: interrupt right after it.
    let (ha, ra) = read_csv(&a.join("metrics.csv"));
    let val = ha.iter().position(|h| h == "val_loss").unwrap();
    let mut best = f64::INFINITY;
    let first_bad = ra
        .iter()
        .position(|r| {
            let bad = r[val] >= best;
            best = best.min(r[val]);
            bad
        })
        .unwrap()
        + 1;
    assert!(first_bad + 1 < epochs_run, "{first_bad} {epochs_run}");

    let b = s.runs().join("parts");
    let mut child = spawn(&s, &[&base[..], &["--run-name", "parts"]].concat(), "parts");
    wait_until(
        &mut child,
        Duration::from_secs(60),
        "the first bad epoch",
        || state_epoch(&b).unwrap_or(0) >= first_bad,
    );
    sigint(&child);
    let code = wait(&mut child, Duration::from_secs(60)).code();
    assert_eq!(code, Some(130), "{}", child.stderr());
    let stopped_at = state_epoch(&b).unwrap();
    let then = state_json(&b);
    let (bad_then, best_then) = (then["bad_epochs"].as_u64().unwrap(), &then["best_epoch"]);
    assert!(bad_then >= 1, "interrupted while no bad epoch was counted");
    let o = s.kd(&[&base[..], &["--run-name", "parts", "--resume"]].concat());
    assert_ok(&o);
    assert!(
        stderr(&o).contains(&format!(
            "resuming {} after epoch {stopped_at} (step {}, best epoch {}, {bad_then} epoch(s) without improvement)",
            b.display(),
            stopped_at * 91,
            best_then
        )),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("early stopping"), "{}", stderr(&o));

    let (ha, ra) = read_csv(&a.join("metrics.csv"));
    let (hb, rb) = read_csv(&b.join("metrics.csv"));
    assert_eq!(ha, hb);
    assert_eq!(ra.len(), rb.len(), "epochs run differ");
    let time_col = ha.iter().position(|h| h == "time_epoch_seconds").unwrap();
    let mut worst_metric = 0f64;
    for (x, y) in ra.iter().zip(&rb) {
        for (i, (u, v)) in x.iter().zip(y).enumerate() {
            if i != time_col {
                worst_metric = worst_metric.max((u - v).abs());
            }
        }
    }
    let (sa, sb) = (state_json(&a), state_json(&b));
    for k in ["epoch", "step", "best_epoch", "bad_epochs"] {
        assert_eq!(sa[k], sb[k], "{k}");
    }
    let mut worst_weight = 0f64;
    for f in ["model.safetensors", "last.safetensors"] {
        let (ca, cb) = (
            Checkpoint::read(&a.join(f)).unwrap(),
            Checkpoint::read(&b.join(f)).unwrap(),
        );
        assert_eq!(ca.tensors.len(), cb.tensors.len());
        for (name, t) in &ca.tensors {
            let d = (t - &cb.tensors[name]).abs().max().double_value(&[]);
            worst_weight = worst_weight.max(d);
        }
    }
    eprintln!(
        "stopped after epoch {stopped_at}; {} epochs in all (early stop: {}); \
         max |diff| metrics {worst_metric:e}, weights and Adam moments {worst_weight:e}",
        ra.len(),
        ra.len() < 40
    );
    assert!(worst_metric <= 1e-5, "metrics differ by {worst_metric}");
    assert!(worst_weight <= 1e-5, "weights differ by {worst_weight}");
}

/// After an interrupted and resumed run, every figure of state.json's history is exactly
/// (`==`, not to a tolerance) the number metrics.csv prints for it, and the rows written
/// before the interruption come back unchanged: the history saved in the checkpoint is
/// read back without a rounding error (serde_json's `float_roundtrip`).
#[test]
fn resumed_history_is_exactly_what_metrics_csv_says() {
    let s = sandbox_with(
        200,
        50,
        "[early_stopping]\nenabled = false\n[logging]\nplots = false\nhistograms = false",
    );
    let (mut child, r) = start_long_run(&s, "exact", &["-q"], "exact");
    wait_until(&mut child, Duration::from_secs(60), "epoch 12", || {
        state_epoch(&r).unwrap_or(0) >= 12
    });
    sigint(&child);
    assert_eq!(
        wait(&mut child, Duration::from_secs(60)).code(),
        Some(130),
        "{}",
        child.stderr()
    );
    let (_, before) = read_csv(&r.join("metrics.csv"));
    let e = state_epoch(&r).unwrap();
    let epochs = (e + 2).to_string();
    let o = s.kd(&[
        "train",
        "student",
        "--epochs",
        &epochs,
        "--run-name",
        "exact",
        "--resume",
        "-q",
    ]);
    assert_ok(&o);
    let (header, rows) = read_csv(&r.join("metrics.csv"));
    assert_eq!(rows.len(), e + 2);
    let st: kdtrain::run::TrainState =
        serde_json::from_str(&std::fs::read_to_string(r.join("state.json")).unwrap()).unwrap();
    assert_eq!(st.history.len(), rows.len());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mut checked = 0;
    for (h, row) in st.history.iter().zip(&rows) {
        for (name, v) in [
            ("epoch", h.epoch as f64),
            ("train_loss", h.train.loss),
            ("train_acc", h.train.acc),
            ("val_loss", h.val.loss),
            ("val_acc", h.val.acc),
            ("lr", h.lr),
            ("time_epoch_seconds", h.seconds),
        ] {
            let csv = row[col(name)];
            assert!(
                v == csv,
                "epoch {}: {name} is {v:e} in state.json, {csv:e} in metrics.csv",
                h.epoch
            );
            checked += 1;
        }
    }
    // The rows of the epochs before the interruption are read back from the checkpoint
    // by the resumed process and written again: bit for bit the same.
    for (i, (a, b)) in before.iter().zip(&rows).enumerate() {
        for (j, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                x == y,
                "epoch {}: {} was {x:e} before the interruption, {y:e} after",
                i + 1,
                header[j]
            );
        }
    }
    eprintln!(
        "{checked} figures of {} epochs equal; {} rows kept across the resume",
        rows.len(),
        before.len()
    );
}

#[test]
fn second_run_into_the_same_folder_is_refused() {
    let s = sandbox_with(2000, 100, "batch_size = 32");
    let (mut first, r) = start_long_run(&s, "same", &["-q"], "first");
    let config = std::fs::read(r.join("config.toml")).unwrap();
    let meta = std::fs::read(r.join("meta.json")).unwrap();
    for extra in [&[][..], &["--resume"][..]] {
        let o = s.kd(&[
            &[
                "train",
                "student",
                "--epochs",
                "500",
                "--run-name",
                "same",
                "--seed",
                "9",
            ][..],
            extra,
        ]
        .concat());
        assert_fails(&o, 2, &["in use by another kdtrain process", "run.lock"]);
        assert!(!stderr(&o).contains("data: "), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(r.join("config.toml")).unwrap(), config);
    assert_eq!(std::fs::read(r.join("meta.json")).unwrap(), meta);
    assert!(first.try_wait().unwrap().is_none(), "the first run stopped");
    sigint(&first);
    assert_eq!(wait(&mut first, Duration::from_secs(60)).code(), Some(130));
    // Once the first process is gone the lock is free again.
    let o = s.kd(&[
        "train",
        "student",
        "--epochs",
        "500",
        "--run-name",
        "same",
        "--seed",
        "9",
    ]);
    assert_fails(&o, 2, &["already holds a trained model"]);
}

// ---------------------------------------------------------------------------------
// --download against a server on loopback
// ---------------------------------------------------------------------------------

/// What the test server answers for one path.
#[derive(Clone)]
enum Reply {
    /// 200 with these bytes.
    Full(Vec<u8>),
    /// 200 with a Content-Length of the full size, then only the first `n` bytes and a close.
    CutOff(Vec<u8>, usize),
    /// 200 with these bytes, 1 KiB every 50 ms (until the client goes away).
    Slow(Vec<u8>),
}

/// A tiny HTTP/1.1 server on 127.0.0.1: one request per connection, 404 for unknown
/// paths. It stops when told to or after 60 s, whichever comes first.
struct Server {
    url: String,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<String>>>,
}

impl Server {
    fn start(routes: HashMap<String, Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/mirror/", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut seen = Vec::new();
            while !flag.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
                let (mut conn, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                seen.push(path.clone());
                let head = |len: usize| {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                         Content-Length: {len}\r\nConnection: close\r\n\r\n"
                    )
                };
                let _ = match routes.get(&path) {
                    Some(Reply::Full(b)) => conn
                        .write_all(head(b.len()).as_bytes())
                        .and_then(|_| conn.write_all(b)),
                    Some(Reply::CutOff(b, n)) => conn
                        .write_all(head(b.len()).as_bytes())
                        .and_then(|_| conn.write_all(&b[..*n]))
                        .and_then(|_| conn.flush()),
                    Some(Reply::Slow(b)) => conn.write_all(head(b.len()).as_bytes()).and_then(|_| {
                        for c in b.chunks(1024) {
                            conn.write_all(c)?;
                            conn.flush()?;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Ok(())
                    }),
                    None => conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
                    ),
                };
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
            seen
        });
        Server {
            url,
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the server; returns the paths it was asked for.
    fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The four gzipped fixture files (synthetic data) by name, and their MD5s in the
/// order of `kdtrain::data::FILES`.
fn fixtures() -> (HashMap<String, Vec<u8>>, String) {
    use md5::{Digest, Md5};
    let src = Sandbox::new();
    let dir = src.write_data(300, 50);
    let mut by_name = HashMap::new();
    let mut md5s = Vec::new();
    for (stem, _) in kdtrain::data::FILES {
        let name = format!("{stem}.gz");
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        md5s.push(
            Md5::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
        by_name.insert(name, bytes);
    }
    (by_name, md5s.join(","))
}

/// Runs `args` in a sandbox with no data anywhere (the Debian folder pointed at an
/// empty one), `data.download_url` set to `url`, and `env` set.
fn run_download(
    s: &Sandbox,
    url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    download_command(s, url, args, env).output().unwrap()
}

/// The command [`run_download`] runs, to spawn it instead.
fn download_command(
    s: &Sandbox,
    url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Command {
    s.write_config(&format!("download_url = \"{url}\""));
    let empty = s.path().join("no-system-data");
    std::fs::create_dir_all(&empty).unwrap();
    let config = s.path().join("test.toml");
    let mut full: Vec<&str> = args.to_vec();
    full.extend([
        "--config",
        config.to_str().unwrap(),
        "--out-dir",
        "runs",
        "--threads",
        "1",
    ]);
    let mut c = s.command(&full);
    c.env("KDTRAIN_SYSTEM_DATA_DIR", &empty)
        .env_remove("KDTRAIN_DOWNLOAD_MD5S");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Every fixture file served whole under /mirror/.
fn mirror_routes(fx: &HashMap<String, Vec<u8>>) -> HashMap<String, Reply> {
    fx.iter()
        .map(|(n, b)| (format!("/mirror/{n}"), Reply::Full(b.clone())))
        .collect()
}

fn download_dir(s: &Sandbox) -> PathBuf {
    s.path().join("data/fashion-mnist")
}

/// Names in the download folder.
fn downloaded(s: &Sandbox) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(download_dir(s))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn download_from_a_mirror_with_its_checksums() {
    let (fx, md5s) = fixtures();
    let routes = mirror_routes(&fx);
    let server = Server::start(routes);
    let s = Sandbox::new();
    let o = run_download(
        &s,
        &server.url,
        &["train", "student", "--epochs", "1", "--download"],
        &[("KDTRAIN_DOWNLOAD_MD5S", &md5s)],
    );
    assert_ok(&o);
    let mut want: Vec<String> = fx.keys().cloned().collect();
    want.sort();
    assert_eq!(downloaded(&s), want);
    for (n, b) in &fx {
        assert_eq!(&std::fs::read(download_dir(&s).join(n)).unwrap(), b, "{n}");
    }
    assert_eq!(server.stop().len(), 4);
    // A malformed override is a usage error.
    let s = Sandbox::new();
    let o = run_download(
        &s,
        "http://127.0.0.1:9/",
        &["train", "student", "--download"],
        &[("KDTRAIN_DOWNLOAD_MD5S", "abc,def")],
    );
    assert_fails(&o, 2, &["KDTRAIN_DOWNLOAD_MD5S", "four"]);
}

#[test]
fn download_with_a_wrong_checksum_is_rejected_and_removed() {
    let (fx, _) = fixtures();
    let routes = mirror_routes(&fx);
    let server = Server::start(routes);
    let s = Sandbox::new();
    // The official checksums: the synthetic fixtures do not match them.
    let o = run_download(&s, &server.url, &["train", "student", "--download"], &[]);
    assert_fails(
        &o,
        1,
        &[
            TRAIN_IMAGES,
            "MD5",
            "does not match",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "removed",
        ],
    );
    assert_eq!(downloaded(&s), Vec::<String>::new(), "a file was kept");
    server.stop();
}

#[test]
fn download_cut_off_midway_leaves_no_partial_file() {
    let (fx, md5s) = fixtures();
    let mut routes = mirror_routes(&fx);
    let labels = fx[TRAIN_LABELS].clone();
    let half = labels.len() / 2;
    routes.insert(
        format!("/mirror/{TRAIN_LABELS}"),
        Reply::CutOff(labels, half),
    );
    let server = Server::start(routes);
    let s = Sandbox::new();
    let o = run_download(
        &s,
        &server.url,
        &["train", "student", "--download"],
        &[("KDTRAIN_DOWNLOAD_MD5S", &md5s)],
    );
    assert_fails(&o, 1, &[TRAIN_LABELS, "run the command again"]);
    // The first file completed and stays; the cut one is nowhere, not even as .part.
    assert_eq!(downloaded(&s), vec![TRAIN_IMAGES.to_string()]);
    server.stop();
}

/// A SIGTERM during `--download` stops it between chunks (exit 130, the partial file
/// removed), not when training would have started after the slow download.
#[test]
fn sigterm_during_download_stops_it_at_once() {
    let (fx, md5s) = fixtures();
    let mut routes = mirror_routes(&fx);
    let images = fx[TRAIN_IMAGES].clone();
    assert!(
        images.len() > 100 * 1024,
        "{} bytes: too fast to interrupt",
        images.len()
    );
    routes.insert(format!("/mirror/{TRAIN_IMAGES}"), Reply::Slow(images));
    let server = Server::start(routes);
    let s = Sandbox::new();
    let err = s.path().join("dl.err");
    let mut child = download_command(
        &s,
        &server.url,
        &["train", "student", "--download"],
        &[("KDTRAIN_DOWNLOAD_MD5S", &md5s)],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
    .spawn()
    .unwrap();
    let part = download_dir(&s).join(format!("{TRAIN_IMAGES}.part"));
    let t0 = Instant::now();
    while !part.is_file() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before downloading"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no {}",
            part.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    signal(child.id(), "TERM");
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("still downloading 5 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = std::fs::read_to_string(&err).unwrap();
    assert_eq!(st.code(), Some(130), "{text}");
    assert!(
        text.contains("interrupted while downloading") && text.contains(TRAIN_IMAGES),
        "{text}"
    );
    assert_eq!(
        downloaded(&s),
        Vec::<String>::new(),
        "a partial file was left"
    );
    drop(server);
}

#[test]
fn download_errors_name_the_url() {
    // 404 from the mirror.
    let server = Server::start(HashMap::new());
    let s = Sandbox::new();
    let o = run_download(&s, &server.url, &["train", "student", "--download"], &[]);
    assert_fails(&o, 1, &["downloading", TRAIN_IMAGES, "404"]);
    assert_eq!(downloaded(&s), Vec::<String>::new());
    server.stop();
    // Nothing listening.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = Sandbox::new();
    let url = format!("http://127.0.0.1:{port}/");
    let o = run_download(&s, &url, &["train", "student", "--download"], &[]);
    assert_fails(&o, 1, &["downloading", &url]);
    assert_eq!(downloaded(&s), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------
// Found by trying to break it: closed pipes, full disks, extreme values, clap errors
// ---------------------------------------------------------------------------------

/// `| head` closes stdout early and `2>/dev/full` makes every stderr write fail: the run
/// must still finish and save its model, never panic or abort.
#[test]
fn closed_stdout_and_full_stderr_do_not_crash_a_run() {
    let s = sandbox();
    let mut c = s.command(&s.args(&["train", "student", "--epochs", "2", "--run-name", "pipe"]));
    c.stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create("/dev/full").unwrap());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is printed
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(s.runs().join("pipe/model.safetensors").is_file());
}

/// A full disk on standard output is not a success: the results never reached the
/// user. `train` (whose run folder is complete all the same) and `evaluate --json` exit 1
/// saying so; a closed pipe (above) stays a success.
#[test]
fn results_that_cannot_be_written_to_stdout_are_an_error() {
    let s = sandbox();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let o = s
        .command(&s.args(&["train", "student", "--epochs", "1", "--run-name", "full"]))
        .stdout(full())
        .output()
        .unwrap();
    assert_fails(
        &o,
        1,
        &[
            "cannot write the results to standard output",
            "No space left",
        ],
    );
    let ckpt = s.runs().join("full/model.safetensors");
    assert!(ckpt.is_file());
    let o = s
        .command(&s.args(&["evaluate", ckpt.to_str().unwrap(), "--json"]))
        .stdout(full())
        .output()
        .unwrap();
    assert_fails(&o, 1, &["cannot write the results to standard output"]);
    assert_ok(&s.kd(&["evaluate", ckpt.to_str().unwrap(), "--json"]));
    // The help and the version too; a closed pipe stays a success.
    for args in [&["--help"][..], &["--version"], &["train", "--help"]] {
        let o = s.command(args).stdout(full()).output().unwrap();
        assert_fails(&o, 1, &["cannot write the help to standard output"]);
        let mut child = s
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_ok(&o);
    }
}

#[test]
fn huge_batch_size_is_rejected_not_silently_skipped() {
    rejects(
        &["train", "student", "--batch-size", "9223372036854775807"],
        &[
            "data.batch_size",
            "--batch-size",
            "an integer from 1 to 16777216",
        ],
    );
}

#[test]
fn temperatures_that_overflow_are_rejected_before_training() {
    for t in ["1e10", "5e-324"] {
        rejects(
            &["distill", &format!("--t={t}")],
            &["distill.kd.temperature", "from 0.001 to 1000"],
        );
    }
}

#[test]
fn command_line_errors_are_one_line() {
    let s = sandbox();
    for args in [
        &["train", "--epochs", "abc", "student"][..],
        &["evaluate"],
        &["train", "bogus"],
        &["--frob"],
    ] {
        let o = s.raw(args);
        assert_fails(&o, 2, &["see kdtrain --help"]);
        assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    }
}

#[test]
fn a_folder_given_as_checkpoint_says_what_to_pass() {
    let s = sandbox();
    std::fs::create_dir_all(s.path().join("runs/x")).unwrap();
    let o = s.kd(&["evaluate", s.path().join("runs/x").to_str().unwrap()]);
    assert_fails(&o, 2, &["is a folder", "model.safetensors inside it"]);
}

#[test]
fn bad_data_leaves_no_empty_run_folder() {
    let s = sandbox();
    std::fs::write(s.data_dir().join("train-labels-idx1-ubyte.gz"), b"not gzip").unwrap();
    let o = s.kd(&["train", "student", "--epochs", "1"]);
    assert_fails(&o, 1, &["train-labels-idx1-ubyte.gz", "not gzip"]);
    let left: Vec<_> = std::fs::read_dir(s.runs())
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `cat a.gz b.gz` is valid gzip (`gzip -d` reads it); the loader must too.
#[test]
fn multi_member_gzip_is_read() {
    let s = sandbox();
    let (pixels, _) = synthetic(200, 1);
    let raw = kdtrain::data::encode_idx(&kdtrain::data::Idx::Images {
        count: 200,
        rows: 28,
        cols: 28,
        pixels,
    });
    let (a, b) = raw.split_at(1000);
    let path = s.data_dir().join("train-images-idx3-ubyte.gz");
    let mut joined = Vec::new();
    for part in [a, b] {
        write_gz(&path, part);
        joined.extend(std::fs::read(&path).unwrap());
    }
    std::fs::write(&path, joined).unwrap();
    assert_ok(&s.kd(&["train", "student", "--epochs", "1", "--quiet"]));
}

/// A path that is not UTF-8 (`--out-dir`, `--data-dir`, `--teacher`) cannot be recorded in
/// the run's config.toml: it is refused by its flag with exit 2 before any folder is made,
/// never renamed lossily, never refused after the run folder exists.
#[test]
fn a_path_that_is_not_utf8_is_refused_before_any_folder_is_made() {
    use std::ffi::{OsStr, OsString};
    use std::os::unix::ffi::OsStrExt;
    let s = sandbox();
    let odd = |name: &[u8]| s.path().join(OsStr::from_bytes(name));
    let config = s.path().join("test.toml");
    let data = s.data_dir();
    let runs = s.runs();
    let base = |out: &Path| -> Vec<OsString> {
        vec![
            "train".into(),
            "student".into(),
            "--epochs".into(),
            "1".into(),
            "--config".into(),
            config.clone().into(),
            "--out-dir".into(),
            out.into(),
            "--threads".into(),
            "1".into(),
        ]
    };
    let out = odd(b"runs\xff");
    let mut args = base(&out);
    args.extend(["--data-dir".into(), data.clone().into()]);
    assert_fails(&s.raw(&args), 2, &["runtime.out_dir", "--out-dir", "UTF-8"]);
    assert!(!out.exists(), "{} was made", out.display());
    let mut args = base(&runs);
    args.extend(["--data-dir".into(), odd(b"data\xff").into()]);
    assert_fails(&s.raw(&args), 2, &["data.dir", "--data-dir", "UTF-8"]);
    assert!(!runs.exists(), "{} was made", runs.display());
}

/// A `reproduce` stopped as a stage starts (before its first epoch) leaves no empty
/// folder: stopped at the teacher's start, nothing at all; stopped as the distilled
/// student's teacher cache starts, the finished teacher and student stay and the
/// distilled run's folder is gone.
#[test]
fn reproduce_stopped_at_a_stage_start_leaves_no_empty_folder() {
    let s = sandbox();
    let args = [
        "reproduce",
        "--seeds",
        "0,",
        "--epochs",
        "1",
        "--teacher-epochs",
        "1",
    ];
    let o = s.interrupted(&args, "run-start");
    assert!(stderr(&o).contains("interrupt"), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(s.runs())
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    s.interrupted(&args, "cache:0");
    let root = run_dir(&s.runs(), "reproduce-");
    assert!(root.join("teacher/model.safetensors").is_file());
    assert!(root.join("seed-0/student/model.safetensors").is_file());
    assert!(
        !root.join("seed-0/distilled-kd").exists(),
        "{:?}",
        std::fs::read_dir(root.join("seed-0"))
            .unwrap()
            .collect::<Vec<_>>()
    );
}

/// evaluate's objective flags only choose the terms reported against --teacher: without
/// one they would do nothing, and are refused by name.
#[test]
fn evaluate_refuses_objective_flags_without_a_teacher() {
    rejects(
        &["evaluate", "m.safetensors", "--objective", "dkd"],
        &["evaluate takes --objective only with --teacher", "drop it"],
    );
    rejects(
        &["evaluate", "m.safetensors", "--t", "3", "--alpha", "0.2"],
        &["--t, --alpha only with --teacher", "drop them"],
    );
}

/// `data.source = "idx"` with a file as the data folder (an .npz, say) is a usage error
/// that says the path is a file, not "train-images-idx3-ubyte missing in FILE".
#[test]
fn the_idx_source_given_a_file_says_so() {
    let s = sandbox();
    let file = s.path().join("digits.npz");
    std::fs::write(&file, b"PK\x03\x04 not really").unwrap();
    let cfg = s.path().join("idx.toml");
    std::fs::write(&cfg, "[data]\nsource = \"idx\"\n").unwrap();
    let o = s.kd(&[
        "train",
        "student",
        "--epochs",
        "1",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        file.to_str().unwrap(),
    ]);
    assert_fails(&o, 2, &["digits.npz is a file", "data.source = \"npz\""]);
}
