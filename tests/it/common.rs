//! Helpers shared by the integration tests: a temporary folder with a small synthetic
//! Fashion-MNIST-shaped IDX data set, and a runner for the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flate2::Compression;
use flate2::write::GzEncoder;
use kdtrain::data::{Idx, encode_idx};

/// A temporary working folder, removed on drop.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    pub fn runs(&self) -> PathBuf {
        self.path().join("runs")
    }

    /// Writes a learnable synthetic data set (gzipped): class c lights a 6x6 block at a
    /// position set by c, plus uniform noise. `n_train` and `n_test` examples. A
    /// `classes.txt` gives Fashion-MNIST's class names, so that it stands in for it.
    pub fn write_data(&self, n_train: usize, n_test: usize) -> PathBuf {
        let dir = self.data_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let names = kdtrain::data::DataSpec::fashion_mnist()
            .class_names
            .join("\n");
        std::fs::write(dir.join("classes.txt"), names + "\n").unwrap();
        for (prefix, n, seed) in [("train", n_train, 1u64), ("t10k", n_test, 2u64)] {
            let (pixels, labels) = synthetic(n, seed);
            write_gz(
                &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
                &encode_idx(&Idx::Images {
                    count: n,
                    rows: 28,
                    cols: 28,
                    pixels,
                }),
            );
            write_gz(
                &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
                &encode_idx(&Idx::Labels(labels)),
            );
        }
        dir
    }

    /// Writes a config file for the synthetic data (small validation split) and returns its path.
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let p = self.path().join("test.toml");
        std::fs::write(&p, format!("[data]\nvalidation_size = 100\n{extra}\n")).unwrap();
        p
    }

    /// `args` plus the synthetic config and data (unless given), `--out-dir runs` and
    /// `--threads 1`, and for `reproduce` `--train-teacher` (unless the pseudo-flag
    /// `--shipped-teacher` is given, which is dropped): what [`Sandbox::kd`] runs.
    pub fn args(&self, args: &[&str]) -> Vec<String> {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if !args.contains(&"--config") {
            full.extend([
                "--config".into(),
                self.path().join("test.toml").display().to_string(),
            ]);
        }
        if !args.contains(&"--data-dir") {
            full.extend(["--data-dir".into(), self.data_dir().display().to_string()]);
        }
        // evaluate writes next to the checkpoint and refuses --out-dir.
        if args.first() != Some(&"evaluate") {
            full.extend(["--out-dir".into(), self.runs().display().to_string()]);
        }
        full.extend(["--threads".into(), "1".into()]);
        // reproduce's default teacher is the shipped Fashion-MNIST one, which the
        // synthetic data's split does not fit: the tests train theirs.
        if args.first() == Some(&"reproduce") && !args.contains(&"--shipped-teacher") {
            full.push("--train-teacher".into());
        }
        full.retain(|a| a != "--shipped-teacher");
        full
    }

    /// Runs the binary in the sandbox with [`Sandbox::args`].
    pub fn kd(&self, args: &[&str]) -> Output {
        self.raw(&self.args(args))
    }

    /// `train teacher --epochs 1 --run-name <name> -q`, which must succeed.
    pub fn train_teacher_one_epoch(&self, name: &str) {
        assert_ok(&self.kd(&[
            "train",
            "teacher",
            "--epochs",
            "1",
            "--run-name",
            name,
            "-q",
        ]));
    }

    /// Runs the binary in the sandbox with exactly `args`.
    pub fn raw<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        self.command(args).output().expect("run kdtrain")
    }

    /// Runs `args` (as [`Sandbox::kd`]) with a Ctrl-C simulated by the test hook `hook`
    /// (`epoch:N`, `cache:K`, `final-evaluation`), and checks that it exits 130.
    pub fn interrupted(&self, args: &[&str], hook: &str) -> Output {
        let o = self
            .command(&self.args(args))
            .env(kdtrain::commands::INTERRUPT_HOOK, hook)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
        o
    }

    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kdtrain"));
        c.args(args)
            .current_dir(self.path())
            .env_remove("FASHION_MNIST_DIR")
            // Image folders' decoded caches stay in the sandbox, not in ~/.cache.
            .env("KDTRAIN_CACHE_DIR", self.path().join("decoded-cache"))
            .env("RUST_BACKTRACE", "1");
        c
    }
}

pub fn write_gz(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    std::fs::write(path, e.finish().unwrap()).unwrap();
}

/// A xorshift generator seeded by `seed`: the synthetic data sets' noise and classes.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// `n` images (u8, 784 each) and labels of the synthetic task.
pub fn synthetic(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rnd = xorshift(seed);
    let mut pixels = vec![0u8; n * 784];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let c = (rnd() % 10) as usize;
        labels[i] = c as u8;
        let img = &mut pixels[i * 784..(i + 1) * 784];
        for p in img.iter_mut() {
            *p = (rnd() % 100) as u8;
        }
        let (r0, c0) = (2 + (c / 5) * 12, 2 + (c % 5) * 5);
        for r in r0..r0 + 6 {
            for col in c0..(c0 + 6).min(28) {
                img[r * 28 + col] = 200 + (rnd() % 56) as u8;
            }
        }
    }
    (pixels, labels)
}

/// Rewrites every f32 of tensor `name` in the safetensors file at `path` with
/// `f(index, value)` (a checkpoint damaged on purpose). Layout: an 8-byte little-endian header length, the
/// JSON header, then the tensors' bytes at the header's `data_offsets`.
pub fn edit_tensor(path: &Path, name: &str, f: impl Fn(usize, f32) -> f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let offsets = &header[name]["data_offsets"];
    let (from, to) = (
        offsets[0].as_u64().unwrap() as usize,
        offsets[1].as_u64().unwrap() as usize,
    );
    for (i, at) in (8 + len + from..8 + len + to).step_by(4).enumerate() {
        let v = f(i, f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()));
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, &bytes).unwrap();
}

/// A JSON file (summary.json, meta.json, state.json, results.json) parsed.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The python of the project's venv (`KDTRAIN_PYTHON`, set for cargo by
/// `.cargo/config.toml`).
pub fn python() -> String {
    std::env::var("KDTRAIN_PYTHON").expect("KDTRAIN_PYTHON is not set: run scripts/setup.sh first")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code and that stderr contains every one of `needles`; also that
/// nothing panicked or printed a backtrace.
#[track_caller]
pub fn assert_fails(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    assert!(
        !err.contains("panicked")
            && !err.contains("stack backtrace")
            && !err.contains("internal error"),
        "panic:\n{err}"
    );
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "one error line:\n{err}"
    );
}

#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// The only run folder in `runs` whose name starts with `prefix`.
pub fn run_dir(runs: &Path, prefix: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no {prefix}* in {}", runs.display()))
}

/// Rows of a metrics.csv as (header, rows of f64).
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    (header, rows)
}

/// Sends SIG`name` (INT, TERM, HUP) to process `pid` with `kill(1)`.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{name} {pid} failed");
}

/// The command in backquotes in `text` (a message or a report) that starts with
/// `prefix`, such as `kdtrain sweep run `; panics, showing `text`, when there is none.
pub fn quoted_command<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.split('`')
        .find(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}...` command in:\n{text}"))
}
