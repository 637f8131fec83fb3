//! The CNN teacher and augmentation with consistent teaching, end to end on small
//! synthetic data: the CNN's checkpoint carries its architecture and batch-norm
//! statistics and is rebuilt from them by `evaluate` and `distill`; an augmented run
//! resumes bit for bit; the teacher's logits during augmented distillation are those of
//! the view the student sees, whether cached per view or computed per batch.

use std::path::{Path, PathBuf};

use crate::common::*;
use kdtrain::checkpoint::{Checkpoint, META_ARCH};
use kdtrain::model::Arch;

const CNN: &str = "cnn:4,8,16,dropout=0.2";

fn sandbox(extra: &str) -> Sandbox {
    let s = Sandbox::new();
    s.write_data(600, 200);
    s.write_config(&format!("batch_size = 64\n{extra}"));
    s
}

fn train_cnn_teacher(s: &Sandbox, name: &str, epochs: &str) -> PathBuf {
    let o = s.kd(&[
        "train",
        "teacher",
        "--arch",
        CNN,
        "--augment",
        "shift1,flip",
        "--epochs",
        epochs,
        "--run-name",
        name,
        "-q",
    ]);
    assert_ok(&o);
    s.runs().join(name)
}

/// Runs `args` with a Ctrl-C arriving right after epoch 1 is saved (the test hook), and
/// checks that it exits 130.
fn stopped_after_epoch_1(s: &Sandbox, args: &[&str]) -> std::process::Output {
    s.interrupted(args, "epoch:1")
}

/// Largest absolute difference between same-named tensors; the names must agree.
fn max_diff(a: &Path, b: &Path) -> f64 {
    let (ca, cb) = (Checkpoint::read(a).unwrap(), Checkpoint::read(b).unwrap());
    let mut na: Vec<_> = ca.tensors.keys().collect();
    let mut nb: Vec<_> = cb.tensors.keys().collect();
    na.sort();
    nb.sort();
    assert_eq!(na, nb);
    ca.tensors
        .iter()
        .map(|(n, t)| (t - &cb.tensors[n]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn a_cnn_teacher_is_saved_with_its_arch_and_statistics_and_rebuilt_from_them() {
    let s = sandbox("");
    let dir = train_cnn_teacher(&s, "cnn", "2");
    let summary = json(&dir.join("summary.json"));
    let arch = Arch::parse(CNN).unwrap();
    assert_eq!(summary["arch"], CNN);
    assert_eq!(
        summary["params"].as_i64(),
        Some(arch.num_params(&kdtrain::data::DataSpec::fashion_mnist()))
    );
    let ckpt = Checkpoint::read(&dir.join("model.safetensors")).unwrap();
    assert_eq!(ckpt.metadata[META_ARCH], CNN);
    // Batch norm's running statistics are saved and have moved from their start (0, 1).
    let mean = &ckpt.tensors["bn1.running_mean"];
    assert_eq!(mean.size(), vec![4]);
    assert!(mean.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0);
    assert!(ckpt.tensors.contains_key("bn2.running_var"));
    // evaluate rebuilds it from the metadata and reproduces the summary's accuracy.
    let model = dir.join("model.safetensors");
    let o = s.kd(&["evaluate", model.to_str().unwrap(), "--json"]);
    assert_ok(&o);
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["test"]["acc"], summary["test_acc"], "{report}");
    // distill takes it as a teacher, and records its architecture.
    let o = s.kd(&[
        "distill",
        "--teacher",
        model.to_str().unwrap(),
        "--epochs",
        "1",
        "--run-name",
        "d",
        "-q",
    ]);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    let o = s.kd(&[
        "evaluate",
        s.runs().join("d/model.safetensors").to_str().unwrap(),
        "--teacher",
        model.to_str().unwrap(),
        "--json",
    ]);
    assert_ok(&o);
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        report["test"]["teacher_acc"], summary["test_acc"],
        "{report}"
    );
}

#[test]
fn an_augmented_cnn_run_resumes_bit_for_bit() {
    let s = sandbox("");
    let whole = train_cnn_teacher(&s, "whole", "3");
    let args = [
        "train",
        "teacher",
        "--arch",
        CNN,
        "--augment",
        "shift1,flip",
        "--epochs",
        "3",
        "--run-name",
        "cut",
        "-q",
    ];
    stopped_after_epoch_1(&s, &args);
    let mut resumed = args.to_vec();
    resumed.push("--resume");
    assert_ok(&s.kd(&resumed));
    let cut = s.runs().join("cut");
    for f in ["model.safetensors", "last.safetensors"] {
        assert_eq!(max_diff(&whole.join(f), &cut.join(f)), 0.0, "{f}");
    }
}

#[test]
fn augmentation_changes_training_and_the_teacher_sees_the_students_view() {
    let s = sandbox("[augment]\nstudent = \"shift1,flip\"\nviews = 3");
    let teacher = train_cnn_teacher(&s, "t", "2").join("model.safetensors");
    let t = teacher.to_str().unwrap();
    let distil = |name: &str, extra: &[&str]| {
        let mut a = vec![
            "distill",
            "--teacher",
            t,
            "--t",
            "4",
            "--alpha",
            "0.1",
            "--epochs",
            "2",
            "--run-name",
            name,
        ];
        a.extend_from_slice(extra);
        let o = s.kd(&a);
        assert_ok(&o);
        (s.runs().join(name).join("model.safetensors"), stderr(&o))
    };
    let (cached, err) = distil("cached", &[]);
    // The run records the teacher it used, not the MLP that `model.teacher` names.
    let meta = json(&s.runs().join("cached/meta.json"));
    assert_eq!(meta["teacher_arch"], CNN, "{meta}");
    assert!(
        err.contains("cached the teacher's logits on 3 views of 500 examples"),
        "{err}"
    );
    // The distillation that the Ctrl-C checks below interrupt.
    let cut = [
        "distill",
        "--teacher",
        t,
        "--epochs",
        "2",
        "--run-name",
        "cut",
    ];
    // A Ctrl-C while the views are cached stops after the view in progress (hook:
    // right after view 1), exit 130, without waiting for the other views.
    let o = s.interrupted(&cut, "cache:1");
    assert!(stderr(&o).contains("(view 2 of 3)"), "{}", stderr(&o));
    let (per_batch, _) = distil("per-batch", &["--no-teacher-cache"]);
    // The same views, so the same teacher logits: the cache holds each view's logits,
    // the per-batch path runs the teacher on the augmented batch. (A cache of the
    // unaugmented images gives other weights; see the last check.)
    let d = max_diff(&cached, &per_batch);
    assert!(d < 1e-5, "cached views and per-batch teacher differ by {d}");
    // Without augmentation the weights differ: the augmentation is applied.
    let plain = Sandbox::new();
    plain.write_data(600, 200);
    plain.write_config("batch_size = 64");
    let o = plain.kd(&[
        "distill",
        "--teacher",
        t,
        "--t",
        "4",
        "--alpha",
        "0.1",
        "--epochs",
        "2",
        "--run-name",
        "plain",
        "-q",
    ]);
    assert_ok(&o);
    // Without augmentation too, a Ctrl-C or SIGTERM while the teacher's logits are
    // cached is answered between chunks (hook: as the pass starts), before any step.
    let o = plain.interrupted(&cut, "cache:0");
    let err = stderr(&o);
    assert!(
        err.contains(
            "interrupted while caching the teacher's logits, before this run's first step"
        ),
        "{err}"
    );
    assert!(!plain.runs().join("cut/model.safetensors").exists());
    let d = max_diff(&cached, &plain.runs().join("plain/model.safetensors"));
    assert!(
        d > 1e-3,
        "augmented and plain distillation differ by only {d}"
    );
    // A fresh view every epoch (views = 0) cannot be cached: the teacher runs per batch.
    let fresh = sandbox("[augment]\nstudent = \"shift1,flip\"\nviews = 0");
    let o = fresh.kd(&[
        "distill",
        "--teacher",
        t,
        "--epochs",
        "1",
        "--run-name",
        "f",
    ]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("the teacher runs on every batch"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_arch_and_augment_values_are_refused_by_name() {
    let s = sandbox("");
    let o = s.kd(&["train", "teacher", "--arch", "cnn:64", "--epochs", "1"]);
    assert_fails(&o, 2, &["--arch \"cnn:64\"", "cnn:32,64,256"]);
    let o = s.kd(&["train", "student", "--augment", "rotate", "--epochs", "1"]);
    assert_fails(&o, 2, &["--augment \"rotate\"", "shiftN"]);
    let bad = sandbox("[augment]\nteacher = \"shift9\"");
    let o = bad.kd(&["train", "teacher", "--epochs", "1"]);
    assert_fails(&o, 2, &["augment.teacher", "\"shift9\""]);
    let bad = sandbox("[early_stopping]\nmonitor = \"loss\"");
    let o = bad.kd(&["train", "teacher", "--epochs", "1"]);
    assert_fails(&o, 2, &["monitor"]);
}

#[test]
fn an_interrupted_reproduce_teacher_resumes_with_the_printed_command() {
    // Epochs from the config, not --epochs: the teacher's run records
    // train.teacher_epochs = 2 (from reproduce.teacher_epochs), which the printed
    // command's --epochs must be allowed to restate.
    let s = sandbox("[train]\nepochs = 2\n[reproduce]\nteacher_epochs = 2");
    let o = stopped_after_epoch_1(&s, &["reproduce", "--seeds", "0,", "-q"]);
    let err = stderr(&o);
    // What reproduce left: the teacher was its first run of three.
    assert!(
        err.contains(
            "had completed 0 of its 3 runs before this one, and the 2 after it did not start"
        ),
        "{err}"
    );
    // reproduce's teacher recipe ([reproduce] teacher, teacher_augment) is in the hint.
    let hint = quoted_command(&err, "kdtrain train teacher");
    assert!(
        hint.contains("--run-name teacher --epochs 2")
            && hint.contains("--arch cnn:32,64,128,256,dropout=0.3 --augment shift1,flip"),
        "{hint}"
    );
    // The config file reproduce was given is part of the command.
    let config = s.path().join("test.toml");
    assert!(
        hint.contains(&format!("--config {} ", config.display())),
        "{hint}"
    );
    let mut args: Vec<String> = hint.split_whitespace().skip(1).map(String::from).collect();
    args.extend(["--data-dir", "data", "--threads", "1", "-q"].map(String::from));
    let o = s.raw(&args);
    assert_ok(&o);
    // The same architecture written differently (`cnn` for its full spec, views in
    // another order) resumes too: specs are saved in their canonical form.
    let args = [
        "train",
        "teacher",
        "--arch",
        "cnn",
        "--augment",
        "flip,shift1",
        "--epochs",
        "2",
        "--run-name",
        "alias",
        "-q",
    ];
    stopped_after_epoch_1(&s, &args);
    let resumed = [
        "train",
        "teacher",
        "--arch",
        "cnn:32,64,256,dropout=0.3",
        "--augment",
        "shift1,flip",
        "--epochs",
        "2",
        "--run-name",
        "alias",
        "--resume",
        "-q",
    ];
    assert_ok(&s.kd(&resumed));
}

/// A student of `reproduce --epochs N` interrupted mid-run resumes for N epochs with the
/// printed command: the command names --epochs, which a resume may otherwise change.
#[test]
fn an_interrupted_reproduce_student_resumes_for_its_own_epochs() {
    let s = sandbox("");
    let args = [
        "reproduce",
        "--seeds",
        "0,",
        "--epochs",
        "3",
        "--teacher-epochs",
        "1",
        "-q",
    ];
    // The teacher's single epoch never reaches the hook; the student stops after epoch 2.
    let o = s.interrupted(&args, "epoch:2");
    let err = stderr(&o);
    let hint = quoted_command(&err, "kdtrain train student");
    assert!(
        hint.contains("--run-name student --epochs 3") && hint.contains("--seed 0"),
        "{hint}"
    );
    let mut args: Vec<String> = hint.split_whitespace().skip(1).map(String::from).collect();
    args.extend(["--data-dir", "data", "--threads", "1", "-q"].map(String::from));
    assert_ok(&s.raw(&args));
    let dir =
        std::path::PathBuf::from(&args[args.iter().position(|a| a == "--out-dir").unwrap() + 1])
            .join("student");
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 1 + 3, "{metrics}");
}

/// `reproduce --teacher-epochs N` trains its teacher for N epochs, after `--epochs` set
/// every model's; 0 is refused by name.
#[test]
fn reproduce_teacher_epochs_sets_the_teachers_epochs_alone() {
    let s = sandbox("");
    let o = s.kd(&[
        "reproduce",
        "--seeds",
        "0,",
        "--epochs",
        "1",
        "--teacher-epochs",
        "2",
        "-q",
    ]);
    assert_ok(&o);
    let root = std::fs::read_dir(s.runs())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("results.json").is_file())
        .expect("a reproduce folder with results.json");
    let json = json(&root.join("results.json"));
    let epochs = |model: &str| {
        json["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == model)
            .unwrap_or_else(|| panic!("no {model} in {json}"))["epochs_run_mean"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(epochs("teacher"), 2.0);
    assert_eq!(epochs("student"), 1.0);
    for bad in ["0", "1000001"] {
        let o = s.kd(&["reproduce", "--seeds", "0,", "--teacher-epochs", bad]);
        assert_fails(
            &o,
            2,
            &[&format!("--teacher-epochs {bad}: expected 1 to 1000000")],
        );
    }
}

/// A CNN checkpoint whose batch-norm running variance went negative (NaN logits for
/// every image) is refused by name when read, by evaluate and by distill alike.
#[test]
fn a_negative_batch_norm_variance_is_refused() {
    let s = sandbox("");
    let path = train_cnn_teacher(&s, "t", "1").join("model.safetensors");
    // One variance, the first, goes negative.
    edit_tensor(
        &path,
        "bn1.running_var",
        |i, v| if i == 0 { -1e-5 } else { v },
    );
    let p = path.to_str().unwrap();
    for args in [
        vec!["evaluate", p],
        vec!["distill", "--teacher", p, "--epochs", "1"],
    ] {
        let o = s.kd(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&o).contains("`bn1.running_var` holds negative variances"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}
