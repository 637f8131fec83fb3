//! Trust: what a run writes can be read back exactly, and runs started together do not
//! trip over each other.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use kdtrain::eval::Metrics;
use kdtrain::run::{EpochRecord, TrainState};

/// Every f64 of a state, in a fixed order.
fn floats(s: &TrainState) -> Vec<f64> {
    let mut out = vec![s.best_metric];
    for r in &s.history {
        out.extend([r.lr, r.seconds]);
        for m in [&r.train, &r.val] {
            out.extend([m.loss, m.acc]);
        }
    }
    out
}

/// f64 values that a parser without correct rounding reads back one ULP off
/// (serde_json without `float_roundtrip` missed about 1 in 10 random f64s in [0, 1)),
/// next to values that are awkward in other ways: subnormal, tiny, the largest, sums
/// that are not what they look like, and a cosine-decay LR as the schedule computes it.
#[test]
fn state_survives_json_with_every_float_exact() {
    let lr = |k: f64| 1e-3 * (0.9 * 0.5 * (1.0 + (std::f64::consts::PI * k / 2000.0).cos()) + 0.1);
    let awkward = [
        0.1 + 0.2,
        1e-300,
        5e-324,
        f64::MIN_POSITIVE,
        f64::MAX,
        0.001 * 0.869,
        1.0 - 0.999f64.powi(3),
        0.9238829120510785,
        0.20599677708342345,
        0.43463921546936035, // an f32 value widened to f64, as the losses are
        lr(1.0),             // 0.0009999994448348665
        lr(5.0),
        lr(10.0),
        1.0 / 3.0,
    ];
    let m = |i: usize| Metrics {
        loss: awkward[i % awkward.len()],
        acc: awkward[(i + 1) % awkward.len()],
        ..Default::default()
    };
    let state = TrainState {
        epoch: awkward.len(),
        step: 17,
        best_metric: lr(18.0),
        best_epoch: 3,
        bad_epochs: 1,
        history: (0..awkward.len())
            .map(|i| EpochRecord {
                epoch: i + 1,
                lr: awkward[(i + 2) % awkward.len()],
                seconds: awkward[(i + 3) % awkward.len()],
                train: m(i),
                val: m(i + 4),
            })
            .collect(),
        ..Default::default()
    };
    let text = serde_json::to_string(&state).unwrap();
    let back: TrainState = serde_json::from_str(&text).unwrap();
    let (a, b) = (floats(&state), floats(&back));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x == y, "{x:e} came back as {y:e}");
    }
    assert_eq!(back.history, state.history);
}

/// Twelve runs with the default folder name started at once into one out-dir (most of
/// them in the same second, so with the same `student-<date>-<time>` name): each claims
/// a folder of its own and finishes.
#[test]
fn runs_started_together_get_their_own_folders() {
    const N: usize = 12;
    let s = Sandbox::new();
    s.write_data(300, 30);
    s.write_config("[logging]\nplots = false\nhistograms = false");
    let mut children: Vec<_> = (0..N)
        .map(|i| {
            let err = std::fs::File::create(s.path().join(format!("p{i}.err"))).unwrap();
            s.command(&s.args(&["train", "student", "--epochs", "1", "-q"]))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(err))
                .spawn()
                .expect("spawn kdtrain")
        })
        .collect();
    let t0 = Instant::now();
    let mut failed = Vec::new();
    for (i, c) in children.iter_mut().enumerate() {
        let st = loop {
            if let Some(st) = c.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(300) {
                let _ = c.kill();
                break c.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !st.success() {
            let err = std::fs::read_to_string(s.path().join(format!("p{i}.err"))).unwrap();
            failed.push(format!("process {i}: {st}: {err}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let dirs: BTreeSet<String> = std::fs::read_dir(s.runs())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("model.safetensors").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs.len(), N, "run folders with a model: {dirs:?}");
    assert!(dirs.iter().all(|d| d.starts_with("student-")), "{dirs:?}");
}

/// The spin count libgomp ends up with (the last `GOMP_SPINCOUNT` its `OMP_DISPLAY_ENV`
/// report prints) for `kdtrain --version` plus `args`, with `env` set and no other OpenMP
/// variables.
fn gomp_spincount(args: &[&str], env: &[(&str, &str)]) -> String {
    let s = Sandbox::new();
    let mut c = s.command(&[&["--version"], args].concat());
    c.env_remove("OMP_WAIT_POLICY")
        .env_remove("GOMP_SPINCOUNT")
        .env("OMP_DISPLAY_ENV", "verbose");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert_ok(&o);
    stderr(&o)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("GOMP_SPINCOUNT = "))
        .next_back()
        .unwrap_or_else(|| panic!("no GOMP_SPINCOUNT in {}", stderr(&o)))
        .trim_matches('\'')
        .to_string()
}

/// libgomp sees the spin count src/main.rs chooses before libtorch starts for the
/// commands that train, unless the user set `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` (theirs
/// wins), and `--threads 1` is left alone (no workers to wait).
#[test]
fn openmp_workers_spin_briefly_unless_the_user_says_otherwise() {
    // Commands that do not train start once, with libgomp's own spin count.
    assert_eq!(gomp_spincount(&[], &[]), "300000");
    assert_eq!(gomp_spincount(&["predict", "train"], &[]), "300000");
    // A command that trains samples the other processes' load first: workers sleep at
    // once when the CPUs are taken, and spin briefly when they are free.
    let load = |l: &'static str| [("KDTRAIN_TEST_OTHER_LOAD", l)];
    assert_eq!(gomp_spincount(&["train", "--help"], &load("0")), "10000");
    assert_eq!(gomp_spincount(&["train", "--help"], &load("4096")), "0");
    assert_eq!(
        gomp_spincount(&["distill", "--help", "--threads=2"], &load("4096")),
        "0"
    );
    assert_eq!(
        gomp_spincount(&["train", "--help", "--threads", "1"], &load("4096")),
        "300000"
    );
    // libgomp's own values for these settings.
    assert_eq!(
        gomp_spincount(&[], &[("OMP_WAIT_POLICY", "active")]),
        "30000000000"
    );
    assert_eq!(gomp_spincount(&[], &[("OMP_WAIT_POLICY", "passive")]), "0");
    assert_eq!(gomp_spincount(&[], &[("GOMP_SPINCOUNT", "123")]), "123");
    assert_eq!(gomp_spincount(&["--threads", "1"], &[]), "300000");
}

/// `train student --epochs N -q` with two threads (the sandbox's usual arguments add
/// --threads 1, which skips the spin-count choice: the data, config and out-dir are given
/// here instead), without the user's OpenMP settings and with `env`; checks it succeeds.
fn train_two_threads(
    s: &Sandbox,
    name: &str,
    epochs: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let (config, data, runs) = (s.path().join("test.toml"), s.data_dir(), s.runs());
    let mut c = s.command(&[
        "train".as_ref(),
        "student".as_ref(),
        "--epochs".as_ref(),
        epochs.as_ref(),
        "--threads".as_ref(),
        "2".as_ref(),
        "--run-name".as_ref(),
        name.as_ref(),
        "-q".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--out-dir".as_ref(),
        runs.as_os_str(),
    ] as &[&std::ffi::OsStr]);
    c.env_remove("OMP_WAIT_POLICY").env_remove("GOMP_SPINCOUNT");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert_ok(&o);
    o
}

/// A run's meta.json records the spin count its workers waited with, and who chose it.
#[test]
fn meta_json_records_the_openmp_spin_count() {
    let s = Sandbox::new();
    s.write_data(300, 30);
    s.write_config("batch_size = 64");
    let run = |name: &str, env: &[(&str, &str)]| -> serde_json::Value {
        train_two_threads(&s, name, "1", env);
        json(&s.runs().join(name).join("meta.json"))
    };
    let busy = run("busy", &[("KDTRAIN_TEST_OTHER_LOAD", "4096")]);
    assert_eq!(busy["openmp_spincount"], "0");
    assert_eq!(
        busy["openmp_spincount_chosen_by"],
        "kdtrain, from the load at start"
    );
    let user = run("user", &[("GOMP_SPINCOUNT", "123")]);
    assert_eq!(user["openmp_spincount"], "123");
    assert_eq!(user["openmp_spincount_chosen_by"], "the user");
}

/// A load that arrives after kdtrain chose to let its workers spin (free CPUs at start)
/// is said once, after the epoch it slowed, even with `-q`; not when the workers already
/// sleep (busy at start), and not when the CPUs stay free.
#[test]
fn a_load_that_arrives_mid_run_is_said_once() {
    let s = Sandbox::new();
    s.write_data(300, 30);
    s.write_config("batch_size = 64");
    let run = |name: &str, env: &[(&str, &str)]| stderr(&train_two_threads(&s, name, "3", env));
    let note = "other processes took";
    let late = run(
        "late",
        &[
            ("KDTRAIN_TEST_OTHER_LOAD", "0"),
            ("KDTRAIN_TEST_EPOCH_LOAD", "1.0"),
        ],
    );
    assert_eq!(late.matches(note).count(), 1, "{late}");
    for want in [
        "1.0 of the",
        "during epoch 1",
        "2 OpenMP workers spin",
        "resume command",
        "GOMP_SPINCOUNT=0",
    ] {
        assert!(late.contains(want), "lacks {want:?}: {late}");
    }
    let free = run(
        "free",
        &[
            ("KDTRAIN_TEST_OTHER_LOAD", "0"),
            ("KDTRAIN_TEST_EPOCH_LOAD", "0.3"),
        ],
    );
    assert!(!free.contains(note), "{free}");
    let busy = run(
        "busy",
        &[
            ("KDTRAIN_TEST_OTHER_LOAD", "4096"),
            ("KDTRAIN_TEST_EPOCH_LOAD", "1.0"),
        ],
    );
    assert!(!busy.contains(note), "{busy}");
}
