//! End-to-end runs of the real binary on a small synthetic IDX data set: train teacher,
//! train student, distill, evaluate and reproduce, with their artifacts. One test runs a
//! teacher epoch on the real Fashion-MNIST.

use crate::common::*;
use kdtrain::checkpoint::Checkpoint;
use kdtrain::model::Arch;

fn sandbox() -> Sandbox {
    let s = Sandbox::new();
    s.write_data(1200, 300);
    s.write_config("[logging]\nhistograms = true\n");
    s
}

#[test]
fn train_teacher_then_student_then_distill_then_evaluate() {
    let s = sandbox();
    let o = s.kd(&["train", "teacher", "--epochs", "3"]);
    assert_ok(&o);
    let teacher = run_dir(&s.runs(), "teacher-");
    for f in [
        "model.safetensors",
        "last.safetensors",
        "state.json",
        "config.toml",
        "meta.json",
        "metrics.csv",
        "summary.json",
        "curves.png",
    ] {
        assert!(
            teacher.join(f).is_file(),
            "{f} missing in {}",
            teacher.display()
        );
    }
    assert!(std::fs::read_dir(&teacher).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
    }));
    // The loss falls.
    let (header, rows) = read_csv(&teacher.join("metrics.csv"));
    let col = header.iter().position(|h| h == "train_loss").unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows[2][col] < rows[0][col],
        "train loss did not fall: {rows:?}"
    );
    let ckpt = Checkpoint::read(&teacher.join("model.safetensors")).unwrap();
    // The default teacher: the reference's MLP with dropout 0.2 (the same parameters).
    assert_eq!(ckpt.arch(), Arch::parse("mlp:512,256,128,dropout=0.2").ok());
    assert_eq!(ckpt.tensors["fc1.weight"].size(), vec![512, 784]);
    // Both checkpoints record the data they take (the best one and the resumable last one).
    for file in ["model.safetensors", "last.safetensors"] {
        let c = Checkpoint::read(&teacher.join(file)).unwrap();
        assert_eq!(c.metadata["kdtrain.input"], "1x28x28", "{file}");
        assert_eq!(
            c.data_spec().unwrap(),
            kdtrain::data::DataSpec::fashion_mnist(),
            "{file}"
        );
    }
    assert!(stdout(&o).contains("teacher: train loss"), "{}", stdout(&o));

    assert_ok(&s.kd(&["train", "student", "--epochs", "2"]));
    let student = run_dir(&s.runs(), "student-");
    // The default student: the reference's 784-128-10 with dropout 0.1 (the same parameters).
    assert_eq!(
        Checkpoint::read(&student.join("model.safetensors"))
            .unwrap()
            .arch(),
        Arch::parse("mlp:128,dropout=0.1").ok()
    );

    // distill finds the newest teacher by itself.
    let o = s.kd(&["distill", "--t", "4", "--alpha", "0.5", "--epochs", "2"]);
    assert_ok(&o);
    let distilled = run_dir(&s.runs(), "distilled-");
    let (header, rows) = read_csv(&distilled.join("metrics.csv"));
    for h in [
        "train_loss",
        "train_ce",
        "train_kl",
        "train_acc",
        "val_loss",
        "val_ce",
        "val_kl",
        "val_acc",
        "lr",
    ] {
        assert!(header.iter().any(|x| x == h), "{h} missing in {header:?}");
    }
    // Each epoch's loss is the kd objective of its terms (Hinton et al. 2015, section 2):
    // alpha * CE + (1 - alpha) * T^2 * KL, with T 4 and alpha 0.5 as given below; the
    // terms are logged unscaled. Means over the same batches, so equal to rounding.
    let col = |h: &str| header.iter().position(|x| x == h).unwrap();
    for set in ["train", "val"] {
        let (loss, ce, kl) = (
            col(&format!("{set}_loss")),
            col(&format!("{set}_ce")),
            col(&format!("{set}_kl")),
        );
        for r in &rows {
            let want = 0.5 * r[ce] + 0.5 * 16.0 * r[kl];
            assert!(
                r[kl] > 0.0 && (r[loss] - want).abs() <= 1e-4 * want,
                "{set}: loss {} vs 0.5 ce + 8 kl = {want} ({r:?})",
                r[loss]
            );
        }
    }
    let cfg = std::fs::read_to_string(distilled.join("config.toml")).unwrap();
    assert!(
        cfg.contains("temperature = 4.0") && cfg.contains("alpha = 0.5"),
        "{cfg}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(distilled.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["model"], "distilled");
    assert!(summary["test_acc"].as_f64().unwrap() > 0.5, "{summary}");

    // evaluate, human and JSON, with the teacher.
    let model = distilled.join("model.safetensors");
    let teacher_ckpt = teacher.join("model.safetensors");
    let o = s.kd(&[
        "evaluate",
        model.to_str().unwrap(),
        "--teacher",
        teacher_ckpt.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    for needle in [
        "train: loss",
        "test: loss",
        "ECE",
        "teacher agreement",
        "Ankle boot",
        "confusion matrix",
        // Confusion-matrix rows carry the whole class name and its index.
        "T-shirt/top  0",
        " Ankle boot  9",
    ] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
    let o = s.kd(&["evaluate", model.to_str().unwrap(), "--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["test"]["confusion"].as_array().unwrap().len(), 10);
    assert_eq!(v["test"]["examples"], 300);
    let png = std::fs::read(distilled.join("confusion.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn reproduce_writes_the_table_and_the_comparison() {
    let s = sandbox();
    let o = s.kd(&["reproduce", "--epochs", "2", "--seeds", "0,1", "--quiet"]);
    assert_ok(&o);
    let root = run_dir(&s.runs(), "reproduce-");
    let table = std::fs::read_to_string(root.join("results.md")).unwrap();
    for needle in [
        "| teacher |",
        "| student |",
        "| distilled (kd) | mlp:128,dropout=0.1 | kd (T=2, alpha=0.5, KL scaling T^2) |",
        // reproduce's trained teacher (--train-teacher) has the shipped teacher's recipe:
        // the deeper CNN.
        "| teacher | cnn:32,64,128,256,dropout=0.3 | cross-entropy on the labels | 390858 |",
        "101770",
        "chosen on validation accuracy",
        "ECE",
        "95% interval",
    ] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }
    assert!(stdout(&o).contains("| model |"));
    for sub in [
        "teacher",
        "seed-0/student",
        "seed-0/distilled-kd",
        "seed-1/student",
        "seed-1/distilled-kd",
    ] {
        assert!(root.join(sub).join("model.safetensors").is_file(), "{sub}");
    }
    assert_eq!(
        &std::fs::read(root.join("comparison.png")).unwrap()[..4],
        b"\x89PNG"
    );
    // --quiet: no per-epoch lines.
    assert!(!stderr(&o).contains("epoch   1/2"), "{}", stderr(&o));
    // distill finds the teacher that reproduce trained, and records which one it used.
    assert_ok(&s.kd(&["distill", "--epochs", "1", "--run-name", "after", "--quiet"]));
    let cfg = std::fs::read_to_string(s.runs().join("after/config.toml")).unwrap();
    let used = root.join("teacher/model.safetensors").display().to_string();
    assert!(cfg.contains(&format!("teacher = \"{used}\"")), "{cfg}");
}

#[test]
fn same_seed_same_result() {
    let s = sandbox();
    for name in ["a", "b"] {
        assert_ok(&s.kd(&[
            "train",
            "student",
            "--epochs",
            "2",
            "--seed",
            "7",
            "--run-name",
            name,
            "--quiet",
        ]));
    }
    let a = Checkpoint::read(&s.runs().join("a/model.safetensors")).unwrap();
    let b = Checkpoint::read(&s.runs().join("b/model.safetensors")).unwrap();
    for (name, t) in &a.tensors {
        assert!(
            t.equal(&b.tensors[name]),
            "{name} differs between two runs with seed 7"
        );
    }
}

#[test]
fn flags_override_the_config_file() {
    let s = sandbox();
    let p = s.path().join("test.toml");
    std::fs::write(
        &p,
        "[train]\nepochs = 1\n[data]\nvalidation_size = 100\nbatch_size = 100\n",
    )
    .unwrap();
    assert_ok(&s.kd(&[
        "train",
        "student",
        "--batch-size",
        "64",
        "--run-name",
        "x",
        "--quiet",
    ]));
    let cfg = std::fs::read_to_string(s.runs().join("x/config.toml")).unwrap();
    assert!(
        cfg.contains("batch_size = 64") && cfg.contains("epochs = 1"),
        "{cfg}"
    );
    let (_, rows) = read_csv(&s.runs().join("x/metrics.csv"));
    assert_eq!(rows.len(), 1);
}

#[test]
fn early_stopping_restores_the_best_epoch() {
    let s = sandbox();
    // A constant, high LR (alpha = 1) and patience 1: the validation loss soon stops
    // improving, and the saved model is the best epoch's. With a constant LR the
    // schedule does not depend on --epochs, so a same-seed run of exactly `best` epochs
    // must end with the same weights, bit for bit.
    let p = s.path().join("test.toml");
    std::fs::write(&p, "[data]\nvalidation_size = 100\n[early_stopping]\nenabled = true\nmonitor = \"ce\"\npatience = 1\n[lr_schedule]\ninitial_lr = 0.2\nalpha = 1.0\n").unwrap();
    let o = s.kd(&["train", "student", "--epochs", "30", "--run-name", "es"]);
    assert_ok(&o);
    let dir = s.runs().join("es");
    let (header, rows) = read_csv(&dir.join("metrics.csv"));
    let v = header.iter().position(|h| h == "val_loss").unwrap();
    let best = rows
        .iter()
        .enumerate()
        .min_by(|a, b| a.1[v].total_cmp(&b.1[v]))
        .unwrap()
        .0
        + 1;
    assert!(
        rows.len() < 30,
        "never stopped early: {:?}",
        rows.iter().map(|r| r[v]).collect::<Vec<_>>()
    );
    assert_eq!(
        rows.len(),
        best + 1,
        "stopped {} epochs after the best ({best})",
        rows.len() - best
    );
    let ckpt = Checkpoint::read(&dir.join("model.safetensors")).unwrap();
    assert_eq!(ckpt.metadata["kdtrain.epoch"], best.to_string());
    assert!(stderr(&o).contains("early stopping"));
    // The same seed stopped at the best epoch: its last epoch's weights are the ones
    // early stopping restored.
    let epochs = best.to_string();
    let o = s.kd(&[
        "train",
        "student",
        "--epochs",
        &epochs,
        "--run-name",
        "cut",
        "--quiet",
    ]);
    assert_ok(&o);
    let cut = Checkpoint::read(&s.runs().join("cut/last.safetensors")).unwrap();
    assert_eq!(cut.metadata["kdtrain.epoch"], epochs);
    for (name, t) in &ckpt.tensors {
        assert!(
            t.equal(&cut.tensors[name]),
            "{name}: restored weights differ from epoch {best}'s"
        );
    }
}

/// One epoch of the teacher on the real Fashion-MNIST reaches test accuracy >= 0.80.
/// Needs the data (Debian's dataset-fashion-mnist, or FASHION_MNIST_DIR); .ci/run
/// installs it. Without it the test fails rather than passing silently.
#[test]
fn real_data_one_teacher_epoch() {
    let s = Sandbox::new();
    let dir = std::env::var("FASHION_MNIST_DIR")
        .unwrap_or_else(|_| kdtrain::data::DEBIAN_DIR.to_string());
    let o = s.raw(&[
        "train",
        "teacher",
        "--epochs",
        "1",
        "--data-dir",
        &dir,
        "--out-dir",
        s.runs().to_str().unwrap(),
        "--run-name",
        "real",
        "--quiet",
    ]);
    assert_ok(&o);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.runs().join("real/summary.json")).unwrap())
            .unwrap();
    let acc = summary["test_acc"].as_f64().unwrap();
    assert!(acc >= 0.80, "test accuracy after one teacher epoch: {acc}");
    assert_eq!(summary["params"], 567434);
}

/// `distill` without `--teacher` takes the newest *finished* teacher: a newer run that
/// was interrupted (or is still training) holds only its best epoch so far.
#[test]
fn distill_skips_an_unfinished_teacher_run() {
    let s = sandbox();
    s.train_teacher_one_epoch("teacher-done");
    s.interrupted(
        &[
            "train",
            "teacher",
            "--epochs",
            "2",
            "--run-name",
            "teacher-cut",
            "-q",
        ],
        "epoch:1",
    );
    assert!(s.runs().join("teacher-cut/model.safetensors").is_file());
    let teacher_used = |name: &str| {
        let o = s.kd(&["distill", "--epochs", "1", "--run-name", name]);
        assert_ok(&o);
        let err = stderr(&o);
        err.lines()
            .find(|l| l.starts_with("teacher: "))
            .unwrap_or_else(|| panic!("no teacher line in:\n{err}"))
            .to_string()
    };
    let line = teacher_used("d1");
    assert!(line.contains("teacher-done/model.safetensors"), "{line}");
    // A state.json lost to a kill, or unreadable, does not make the run count as done.
    let state = s.runs().join("teacher-cut/state.json");
    std::fs::write(&state, "{garbage").unwrap();
    let line = teacher_used("d2");
    assert!(line.contains("teacher-done/model.safetensors"), "{line}");
    std::fs::remove_file(&state).unwrap();
    let line = teacher_used("d3");
    assert!(line.contains("teacher-done/model.safetensors"), "{line}");
}

/// A teacher whose (finite) weights make its logits overflow to infinity or NaN is
/// refused (exit 2) before the student trains, not reported as the student's
/// divergence. (NaN or infinite weights are refused when the checkpoint is read.)
#[test]
fn a_teacher_whose_logits_overflow_is_refused() {
    let s = sandbox();
    s.train_teacher_one_epoch("t");
    // Every value of the first layer's bias becomes f32::MAX: finite, but the next
    // layer's sums overflow.
    let path = s.runs().join("t/model.safetensors");
    edit_tensor(&path, "fc1.bias", |_, _| f32::MAX);
    let teacher = path.display().to_string();
    let o = s.kd(&["distill", "--teacher", &teacher, "--epochs", "1"]);
    assert_fails(&o, 2, &["teacher's logits are not finite"]);
    // Finite but huge logits (the last layer's weights times 1e6): mse's loss diverges,
    // and the message names the teacher instead of the learning rate.
    s.train_teacher_one_epoch("big");
    let path = s.runs().join("big/model.safetensors");
    edit_tensor(&path, "fc4.weight", |_, w| w * 1e6);
    let teacher = path.display().to_string();
    let o = s.kd(&[
        "distill",
        "--teacher",
        &teacher,
        "--objective",
        "mse",
        "--epochs",
        "1",
    ]);
    assert_fails(&o, 1, &["diverged", "the teacher is the likely cause"]);
}
