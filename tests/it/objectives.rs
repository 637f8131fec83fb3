//! The distillation objectives, the shared validation split and the multi-seed
//! `reproduce`, end to end through the real binary on small synthetic data.

use crate::common::*;
use kdtrain::checkpoint::Checkpoint;

fn sandbox() -> Sandbox {
    let s = Sandbox::new();
    s.write_data(1200, 300);
    s.write_config("[logging]\nhistograms = false\nplots = false\n");
    s
}

fn teacher(s: &Sandbox, extra: &[&str]) -> std::path::PathBuf {
    let mut args = vec![
        "train",
        "teacher",
        "--epochs",
        "2",
        "--run-name",
        "t",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    assert_ok(&s.kd(&args));
    s.runs().join("t/model.safetensors")
}

/// A teacher trained with seed 7 and a student with seed 42 share the validation split:
/// both record the same split, and distill accepts it.
#[test]
fn every_seed_shares_the_teachers_split() {
    let s = sandbox();
    let t = teacher(&s, &["--seed", "7"]);
    let o = s.kd(&[
        "distill",
        "--teacher",
        t.to_str().unwrap(),
        "--seed",
        "42",
        "--epochs",
        "1",
        "--run-name",
        "d",
        "--quiet",
    ]);
    assert_ok(&o);
    let a = json(&s.runs().join("t/meta.json"));
    let b = json(&s.runs().join("d/meta.json"));
    for key in ["split_seed", "validation", "validation_size", "split_hash"] {
        assert!(!a[key].is_null(), "{key} missing in {a}");
        assert_eq!(a[key], b[key], "{key}");
    }
    assert_eq!(a["validation_size"], 100);
    // The checkpoints carry it too.
    let c = Checkpoint::read(&s.runs().join("d/model.safetensors")).unwrap();
    assert_eq!(
        c.metadata["kdtrain.split_hash"],
        a["split_hash"].as_str().unwrap()
    );
    assert_eq!(c.role(), Some("distilled"));
    assert_eq!(c.metadata["kdtrain.arch"], "mlp:128,dropout=0.1");
}

/// Another split (seed or size) is refused, naming both, unless overridden.
#[test]
fn a_teacher_with_another_split_is_refused() {
    let s = sandbox();
    let t = teacher(&s, &[]);
    let other = s.path().join("other.toml");
    std::fs::write(&other, "[data]\nvalidation_size = 100\nsplit_seed = 5\n").unwrap();
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "distill",
            "--teacher",
            t.to_str().unwrap(),
            "--epochs",
            "1",
            "--quiet",
            "--config",
            other.to_str().unwrap(),
            "--run-name",
            "d",
        ];
        a.extend_from_slice(extra);
        a
    };
    let o = s.kd(&args(&[]));
    assert_fails(
        &o,
        2,
        &[
            t.to_str().unwrap(),
            "split_seed 20150309",
            "split_seed 5",
            "--allow-split-mismatch",
        ],
    );
    assert!(
        !s.runs().join("d").exists(),
        "a refused run left its folder"
    );
    let o = s.kd(&args(&["--allow-split-mismatch"]));
    assert_ok(&o);
    assert!(stderr(&o).contains("warning"), "{}", stderr(&o));
    // Validating on the test set on both sides is the same split.
    let test_cfg = s.path().join("testval.toml");
    std::fs::write(&test_cfg, "[data]\nvalidation = \"test\"\n").unwrap();
    let tc = test_cfg.to_str().unwrap();
    assert_ok(&s.kd(&[
        "train",
        "teacher",
        "--epochs",
        "1",
        "--run-name",
        "tt",
        "--quiet",
        "--config",
        tc,
    ]));
    let tt = s.runs().join("tt/model.safetensors");
    assert_ok(&s.kd(&[
        "distill",
        "--teacher",
        tt.to_str().unwrap(),
        "--epochs",
        "1",
        "--quiet",
        "--config",
        tc,
    ]));
    let o = s.kd(&[
        "distill",
        "--teacher",
        tt.to_str().unwrap(),
        "--epochs",
        "1",
        "--quiet",
    ]);
    assert_fails(
        &o,
        2,
        &[
            "the test set",
            "split_seed 20150309",
            "data.validation = \"test\"",
        ],
    );
}

/// Each objective trains, logs its own terms by name, and `evaluate` reports them.
#[test]
fn every_objective_trains_and_logs_its_terms() {
    let s = sandbox();
    let t = teacher(&s, &[]);
    let teacher_acc = json(&s.runs().join("t/summary.json"))["test_acc"]
        .as_f64()
        .unwrap();
    for (name, terms) in [
        ("kd", &["ce", "kl"][..]),
        ("dkd", &["ce", "tckd", "nckd"][..]),
        ("lskd", &["ce", "kl"][..]),
        ("dist", &["ce", "inter", "intra"][..]),
        ("mse", &["ce", "mse"][..]),
    ] {
        let run = format!("d-{name}");
        let o = s.kd(&[
            "distill",
            "--objective",
            name,
            "--teacher",
            t.to_str().unwrap(),
            "--epochs",
            "2",
            "--run-name",
            &run,
        ]);
        assert_ok(&o);
        let (header, rows) = read_csv(&s.runs().join(&run).join("metrics.csv"));
        for term in terms {
            for set in ["train", "val"] {
                let col = format!("{set}_{term}");
                let i = header
                    .iter()
                    .position(|h| *h == col)
                    .unwrap_or_else(|| panic!("{col} missing in {header:?}"));
                assert!(
                    rows.iter().all(|r| r[i].is_finite() && r[i] >= 0.0),
                    "{name} {col}: {rows:?}"
                );
            }
            assert!(
                stderr(&o).contains(&format!(" {term} ")),
                "{name}: epoch line lacks {term}"
            );
        }
        let summary = json(&s.runs().join(&run).join("summary.json"));
        assert_eq!(summary["objective"], name);
        // evaluate with the same objective reports its terms on the test set, unscaled.
        let model = s.runs().join(&run).join("model.safetensors");
        let o = s.kd(&[
            "evaluate",
            model.to_str().unwrap(),
            "--teacher",
            t.to_str().unwrap(),
            "--objective",
            name,
            "--json",
        ]);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        for term in terms {
            assert!(
                v["test"][term].as_f64().is_some(),
                "{name}: test.{term} missing in {v}"
            );
        }
        // test.ce is the plain cross-entropy, i.e. the test loss.
        let (ce, loss) = (
            v["test"]["ce"].as_f64().unwrap(),
            v["test"]["loss"].as_f64().unwrap(),
        );
        assert!((ce - loss).abs() < 1e-5, "{ce} vs {loss}");
        // The teacher's accuracy is its own run's test accuracy (the same test set).
        let ta = v["test"]["teacher_acc"].as_f64().unwrap();
        assert!(
            (ta - teacher_acc).abs() < 1e-9,
            "{name}: {ta} vs {teacher_acc}"
        );
    }
}

/// Objective errors: an unknown name lists the valid ones, a flag the objective lacks
/// is named, a bad value names its key; none makes a run folder.
#[test]
fn objective_errors_name_what_is_wrong() {
    let s = sandbox();
    let t = teacher(&s, &[]);
    let ts = t.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--objective", "kdd"],
            &["--objective = \"kdd\"", "kd, dkd, lskd, dist, mse"],
        ),
        (
            &["--objective", "mse", "--t", "2"],
            &[
                "--t is not a parameter of objective mse",
                "mse takes --alpha",
            ],
        ),
        (
            &["--gamma", "1"],
            &["--gamma is not a parameter of objective kd"],
        ),
        (
            &["--objective", "dkd", "--beta=-1"],
            &["distill.dkd.beta", "--beta", "-1"],
        ),
        (&["--objective", "kd,dkd"], &["takes one objective"]),
        // A trailing comma is not dropped silently.
        (
            &["--objective", "kd,"],
            &["--objective kd,", "takes one objective"],
        ),
    ];
    for (extra, needles) in cases {
        let mut args = vec![
            "distill",
            "--teacher",
            ts,
            "--epochs",
            "1",
            "--run-name",
            "bad",
        ];
        args.extend_from_slice(extra);
        assert_fails(&s.kd(&args), 2, needles);
        assert!(
            !s.runs().join("bad").exists(),
            "{extra:?} made a run folder"
        );
    }
    // An empty objective in reproduce's list is named, not dropped.
    assert_fails(
        &s.kd(&["reproduce", "--objective", "kd,,dkd", "--epochs", "1"]),
        2,
        &["--objective = \"\"", "expected one of kd"],
    );
    for bad in ["0,x", ",", "0", "1,1", "0,,1", ",1"] {
        assert_fails(
            &s.kd(&["reproduce", "--seeds", bad, "--epochs", "1"]),
            2,
            &["seeds"],
        );
    }
}

/// The teacher cache holds logits, so every objective can use it: cached and uncached
/// distillation give the same weights (for kd, and for dkd with its warm-up).
#[test]
fn cached_and_uncached_teacher_give_the_same_weights() {
    let s = sandbox();
    let t = teacher(&s, &[]);
    for name in ["kd", "dkd"] {
        for (run, extra) in [("c", None), ("u", Some("--no-teacher-cache"))] {
            let run = format!("{name}-{run}");
            let mut args = vec![
                "distill",
                "--objective",
                name,
                "--teacher",
                t.to_str().unwrap(),
                "--epochs",
                "2",
                "--run-name",
                &run,
                "--quiet",
            ];
            args.extend(extra);
            assert_ok(&s.kd(&args));
        }
        let a = Checkpoint::read(&s.runs().join(format!("{name}-c/model.safetensors"))).unwrap();
        let b = Checkpoint::read(&s.runs().join(format!("{name}-u/model.safetensors"))).unwrap();
        for (k, v) in &a.tensors {
            assert!(
                v.equal(&b.tensors[k]),
                "{name}: {k} differs with and without the cache"
            );
        }
    }
}

/// reproduce over two seeds and two objectives: one teacher, a student and two distilled
/// students per seed, per-seed rows, mean ± sd, and the paired gain with its interval.
#[test]
fn reproduce_over_seeds_reports_the_paired_gain() {
    let s = sandbox();
    let o = s.kd(&[
        "reproduce",
        "--epochs",
        "2",
        "--seeds",
        "3,5",
        "--objective",
        "kd,dkd",
        "--quiet",
    ]);
    assert_ok(&o);
    let root = run_dir(&s.runs(), "reproduce-");
    let r = json(&root.join("results.json"));
    let runs = r["runs"].as_array().unwrap();
    // One teacher (seed 3), then per seed: student, distilled kd, distilled dkd.
    assert_eq!(runs.len(), 1 + 2 * 3);
    assert_eq!(runs[0]["model"], "teacher");
    assert_eq!(runs[0]["seed"], 3);
    assert!(!root.join("seed-5/teacher").exists());
    for seed in [3, 5] {
        for sub in ["student", "distilled-kd", "distilled-dkd"] {
            assert!(
                root.join(format!("seed-{seed}/{sub}/model.safetensors"))
                    .is_file()
            );
        }
        let n = runs.iter().filter(|x| x["seed"] == seed).count();
        assert_eq!(n, if seed == 3 { 4 } else { 3 });
    }
    // Every run of a reproduce validates on the same images.
    let hashes: std::collections::BTreeSet<String> = runs
        .iter()
        .map(|x| x["split"]["split_hash"].to_string())
        .collect();
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    // The paired gains, recomputed from the per-seed rows.
    let acc = |model: &str, obj: &str, seed: u64| {
        runs.iter()
            .find(|x| x["model"] == model && x["objective"] == obj && x["seed"] == seed)
            .unwrap()["test_acc"]
            .as_f64()
            .unwrap()
    };
    for g in r["gains"].as_array().unwrap() {
        let obj = g["objective"].as_str().unwrap();
        let d: Vec<f64> = [3, 5]
            .iter()
            .map(|&s| (acc("distilled", obj, s) - acc("student", "ce", s)) * 100.0)
            .collect();
        let mean = (d[0] + d[1]) / 2.0;
        assert!(
            (g["mean_points"].as_f64().unwrap() - mean).abs() < 1e-9,
            "{g}"
        );
        let sd = (d[0] - d[1]).abs() / 2f64.sqrt();
        // t(0.975, 1) = 12.706205
        let half = 12.706_205 * sd / 2f64.sqrt();
        let iv = g["interval_95_points"].as_array().unwrap();
        assert!(
            (iv[0].as_f64().unwrap() - (mean - half)).abs() < 1e-4,
            "{g}"
        );
        assert!(
            (iv[1].as_f64().unwrap() - (mean + half)).abs() < 1e-4,
            "{g}"
        );
    }
    let md = std::fs::read_to_string(root.join("results.md")).unwrap();
    for needle in [
        "2 seeds (3, 5)",
        "| distilled (dkd) |",
        "95% interval",
        "± ",
    ] {
        assert!(md.contains(needle), "{needle} missing:\n{md}");
    }
    // One seed: no interval, and the table says so.
    let o = s.kd(&["reproduce", "--epochs", "1", "--seeds", "4,", "--quiet"]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("one seed gives no interval"),
        "{}",
        stdout(&o)
    );
}

/// `reproduce.teacher_per_seed = true`: each seed trains and uses its own teacher.
#[test]
fn reproduce_can_train_a_teacher_per_seed() {
    let s = sandbox();
    let cfg = s.path().join("per-seed.toml");
    std::fs::write(
        &cfg,
        "[data]\nvalidation_size = 100\n[logging]\nplots = false\nhistograms = false\n[reproduce]\nteacher_per_seed = true\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let o = s.kd(&[
        "reproduce",
        "--epochs",
        "1",
        "--seeds",
        "1,2",
        "--quiet",
        "--config",
        c,
    ]);
    assert_ok(&o);
    let root = run_dir(&s.runs(), "reproduce-");
    assert!(!root.join("teacher").exists());
    for seed in [1, 2] {
        let t = root.join(format!("seed-{seed}/teacher/model.safetensors"));
        assert!(t.is_file(), "{}", t.display());
        let used =
            std::fs::read_to_string(root.join(format!("seed-{seed}/distilled-kd/config.toml")))
                .unwrap();
        assert!(
            used.contains(&format!("teacher = \"{}\"", t.display())),
            "{used}"
        );
    }
    let r = json(&root.join("results.json"));
    assert_eq!(r["teacher_per_seed"], true);
    let teachers = r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["model"] == "teacher")
        .count();
    assert_eq!(teachers, 2);
}
