//! Promises of the training loop that a user relies on without seeing them: the LR
//! schedule's horizon survives a resume with a new epoch budget, the lr column is the
//! cosine formula, the optimizer holds only the student, distill leaves the teacher's
//! file alone, `--no-t-squared` matters, and the reports name the set they cover.

use crate::common::*;
use kdtrain::checkpoint::{Checkpoint, META_EPOCH};

fn sandbox() -> Sandbox {
    let s = Sandbox::new();
    s.write_data(1200, 300);
    s.write_config("[logging]\nhistograms = false\nplots = false\n");
    s
}

/// Marks a finished run as interrupted after its last epoch, as a Ctrl-C right after
/// that epoch's checkpoint would have left it (`finished` is only set at the end).
fn unfinish(dir: &std::path::Path) {
    let p = dir.join("state.json");
    let mut st = json(&p);
    st["finished"] = serde_json::Value::Bool(false);
    std::fs::write(&p, serde_json::to_string(&st).unwrap()).unwrap();
}

/// Keras CosineDecay, as the README states it: lr0 * ((1 - a) * 0.5 * (1 + cos(pi * min(step, D) / D)) + a).
fn cosine(step: f64, d: f64) -> f64 {
    let s = step.min(d);
    1e-3 * (0.9 * 0.5 * (1.0 + (std::f64::consts::PI * s / d).cos()) + 0.1)
}

#[test]
fn resume_with_more_epochs_keeps_the_lr_horizon() {
    let s = sandbox();
    // 1100 training images, batch 256: 5 steps per epoch; "auto" = 2 x 5 = 10 steps.
    assert_ok(&s.kd(&[
        "train",
        "student",
        "--epochs",
        "2",
        "--run-name",
        "r",
        "--quiet",
    ]));
    let dir = s.runs().join("r");
    unfinish(&dir);
    let o = s.kd(&[
        "train",
        "student",
        "--epochs",
        "4",
        "--run-name",
        "r",
        "--resume",
    ]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("cosine over 10 steps"),
        "{}",
        stderr(&o)
    );
    let (header, rows) = read_csv(&dir.join("metrics.csv"));
    let lr = header.iter().position(|h| h == "lr").unwrap();
    assert_eq!(rows.len(), 4);
    for (i, r) in rows.iter().enumerate() {
        // The lr column is the LR of each epoch's last step (step 5 * epoch - 1).
        let want = cosine((5 * (i + 1) - 1) as f64, 10.0);
        assert!(
            (r[lr] - want).abs() < 1e-15,
            "epoch {}: lr {} vs {want}",
            i + 1,
            r[lr]
        );
    }
    assert!(
        rows.windows(2).all(|w| w[1][lr] <= w[0][lr]),
        "the LR rose: {rows:?}"
    );
    assert_eq!(json(&dir.join("state.json"))["decay_steps"], 10);
}

#[test]
fn resume_with_fewer_epochs_still_reports_a_median() {
    let s = sandbox();
    assert_ok(&s.kd(&[
        "train",
        "student",
        "--epochs",
        "3",
        "--run-name",
        "r",
        "--quiet",
    ]));
    let dir = s.runs().join("r");
    unfinish(&dir);
    assert_ok(&s.kd(&[
        "train",
        "student",
        "--epochs",
        "2",
        "--run-name",
        "r",
        "--resume",
        "--quiet",
    ]));
    let summary = json(&dir.join("summary.json"));
    assert!(
        summary["median_epoch_seconds"].as_f64().is_some(),
        "{summary}"
    );
}

#[test]
fn distill_optimises_only_the_student_and_leaves_the_teacher_file_alone() {
    let s = sandbox();
    s.train_teacher_one_epoch("t");
    let teacher = s.runs().join("t/model.safetensors");
    let before = std::fs::read(&teacher).unwrap();
    for (run, extra) in [("a", None), ("b", Some("--no-t-squared"))] {
        let mut args = vec![
            "distill",
            "--teacher",
            teacher.to_str().unwrap(),
            "--epochs",
            "1",
            "--alpha",
            "0.5",
            "--t",
            "4",
            "--run-name",
            run,
            "--quiet",
        ];
        args.extend(extra);
        assert_ok(&s.kd(&args));
    }
    assert!(
        std::fs::read(&teacher).unwrap() == before,
        "distill changed the teacher's file"
    );
    // The optimizer's moments in the resume checkpoint: m, v and vmax for exactly the
    // student's 101,770 parameters, nothing of the teacher.
    let last = Checkpoint::read(&s.runs().join("a/last.safetensors")).unwrap();
    let moments: i64 = last
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("adam."))
        .map(|(_, t)| t.numel() as i64)
        .sum();
    assert_eq!(moments, 3 * 101_770);
    let names: std::collections::BTreeSet<&str> = last
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("adam."))
        .map(|k| k.rsplit_once('.').unwrap().0)
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    );
    // --no-t-squared changes the objective: same KL, loss differs by (1 - alpha)(T^2 - 1) KL.
    let (h, a) = read_csv(&s.runs().join("a/metrics.csv"));
    let (_, b) = read_csv(&s.runs().join("b/metrics.csv"));
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let (loss, ce, kl) = (col("val_loss"), col("val_ce"), col("val_kl"));
    assert!(
        (a[0][loss] - (0.5 * a[0][ce] + 0.5 * 16.0 * a[0][kl])).abs() < 1e-5,
        "{a:?}"
    );
    assert!(
        (b[0][loss] - (0.5 * b[0][ce] + 0.5 * b[0][kl])).abs() < 1e-5,
        "{b:?}"
    );
    assert!(a[0][col("train_loss")] != b[0][col("train_loss")]);
}

#[test]
fn reports_name_the_set_they_cover() {
    let s = sandbox();
    assert_ok(&s.kd(&[
        "train",
        "student",
        "--epochs",
        "1",
        "--run-name",
        "s",
        "--quiet",
    ]));
    let summary = json(&s.runs().join("s/summary.json"));
    assert_eq!(summary["train_examples"], 1100);
    assert!(
        summary["train_set"]
            .as_str()
            .unwrap()
            .contains("training split"),
        "{summary}"
    );
    let model = s.runs().join("s/model.safetensors");
    let o = s.kd(&["evaluate", model.to_str().unwrap(), "--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["train"]["examples"], 1200);
    assert!(
        v["train_set"]
            .as_str()
            .unwrap()
            .contains("all 1200 training images"),
        "{v}"
    );
    let o = s.kd(&["evaluate", model.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("train: all 1200 training images"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn evaluate_refuses_flags_that_do_nothing_there() {
    let s = sandbox();
    assert_ok(&s.kd(&[
        "train",
        "student",
        "--epochs",
        "1",
        "--run-name",
        "s",
        "--quiet",
    ]));
    let model = s.runs().join("s/model.safetensors");
    let m = model.to_str().unwrap();
    for flag in [
        &["--epochs", "3"][..],
        &["--lr", "0.1"],
        &["--resume"],
        &["--run-name", "x"],
        &["--download"],
    ] {
        let mut args = vec!["evaluate", m];
        args.extend_from_slice(flag);
        assert_fails(&s.kd(&args), 2, &["evaluate does not train", flag[0]]);
    }
    // What evaluate uses is accepted.
    assert_ok(&s.kd(&["evaluate", m, "--device", "cpu"]));
}

#[test]
fn validating_on_the_test_set_end_to_end() {
    let s = sandbox();
    let cfg = s.path().join("testval.toml");
    std::fs::write(
        &cfg,
        "[data]\nvalidation = \"test\"\n[logging]\nplots = false\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    assert_ok(&s.kd(&[
        "train",
        "student",
        "--epochs",
        "2",
        "--run-name",
        "s",
        "--quiet",
        "--config",
        c,
    ]));
    let summary = json(&s.runs().join("s/summary.json"));
    // The validation set is the test set: the selected epoch's figures agree exactly.
    assert_eq!(summary["best_val_acc"], summary["test_acc"]);
    assert_eq!(summary["train_examples"], 1200);
    assert_eq!(summary["split"]["validation"], "test");
    assert_eq!(summary["split"]["validation_size"], 300);
}

/// Ctrl-C during the final evaluation: the model is already saved, so `train` finishes
/// cleanly and says so (exit 0); `reproduce` stops before the next run (exit 130) and
/// says which runs did not start.
#[test]
fn ctrl_c_during_the_final_evaluation() {
    let s = sandbox();
    let mut c = s.command(&s.args(&["train", "student", "--epochs", "1", "--run-name", "s"]));
    let o = c
        .env("KDTRAIN_TEST_INTERRUPT", "final-evaluation")
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(
        stderr(&o).contains("interrupt received after the last epoch"),
        "{}",
        stderr(&o)
    );
    assert!(s.runs().join("s/summary.json").is_file());
    assert_eq!(json(&s.runs().join("s/state.json"))["finished"], true);
    let mut c = s.command(&s.args(&["reproduce", "--epochs", "1", "--seeds", "1"]));
    let o = c
        .env("KDTRAIN_TEST_INTERRUPT", "final-evaluation")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let root = run_dir(&s.runs(), "reproduce-");
    assert!(root.join("teacher/summary.json").is_file());
    assert!(!root.join("results.md").exists());
    // It stops before the next run, not in it, and says what did not start: the student
    // alone and the kd student of seed 1.
    let err = stderr(&o);
    assert!(
        err.contains("interrupted between runs")
            && err.contains("had completed 1 of its 3 runs")
            && err.contains("the 2 left did not start"),
        "{err}"
    );
    assert!(!root.join("seed-1/student").exists());
}

/// A run killed after its final model is written but before its summary is not
/// finished: `--resume` evaluates it again, writes the summary and marks it finished,
/// with the figures of a run that was never stopped.
#[test]
fn a_run_killed_before_its_summary_is_completed_by_resume() {
    let s = sandbox();
    let args = |name: &str| s.args(&["train", "student", "--epochs", "2", "--run-name", name]);
    let mut c = s.command(&args("k"));
    let o = c
        .env("KDTRAIN_TEST_INTERRUPT", "die-before-summary")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    let k = s.runs().join("k");
    assert!(k.join("model.safetensors").is_file());
    assert!(!k.join("summary.json").exists());
    assert_eq!(json(&k.join("state.json"))["finished"], false);
    let mut resume = args("k");
    resume.push("--resume".into());
    assert_ok(&s.command(&resume).output().unwrap());
    assert_eq!(json(&k.join("state.json"))["finished"], true);
    assert_ok(&s.command(&args("u")).output().unwrap());
    let (a, b) = (
        json(&k.join("summary.json")),
        json(&s.runs().join("u/summary.json")),
    );
    for key in ["test_acc", "test_loss", "best_epoch", "best_val_acc"] {
        assert_eq!(a[key], b[key], "{key}");
    }
}

/// A kill between an improved epoch's last.safetensors and its model.safetensors, a
/// resume, an epoch that does not improve and another stop: the best weights must still
/// be that epoch's, so the final model is the unstopped run's. (The resume took them
/// from last.safetensors but left model.safetensors stale, and the second resume read
/// the stale file; a random-kill test found it.)
#[test]
fn best_weights_survive_a_kill_before_model_safetensors_and_two_resumes() {
    let s = sandbox();
    // A learning rate so small that epoch 2 does not beat epoch 1 on validation.
    let args = |name: &str, epochs: &str| {
        s.args(&[
            "train",
            "student",
            "--epochs",
            epochs,
            "--lr",
            "1e-9",
            "--run-name",
            name,
        ])
    };
    let run = |a: Vec<String>, hook: Option<&str>| {
        let mut c = s.command(&a);
        if let Some(h) = hook {
            c.env("KDTRAIN_TEST_INTERRUPT", h);
        }
        c.output().unwrap()
    };
    let o = run(args("k", "3"), Some("die-after-last:1"));
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    let mut resume = args("k", "3");
    resume.push("--resume".into());
    let o = run(resume.clone(), Some("epoch:2"));
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert_eq!(json(&s.runs().join("k/state.json"))["best_epoch"], 1);
    assert_ok(&run(resume, None));
    assert_ok(&run(args("u", "3"), None));
    let (a, b) = (
        Checkpoint::read(&s.runs().join("k/model.safetensors")).unwrap(),
        Checkpoint::read(&s.runs().join("u/model.safetensors")).unwrap(),
    );
    assert_eq!(a.metadata[META_EPOCH], b.metadata[META_EPOCH]);
    for (k, t) in &b.tensors {
        assert!(a.tensors[k].equal(t), "{k} differs");
    }
}

/// A resumed distill keeps the teacher it started with, even when a newer teacher is in
/// the out-dir, and refuses a teacher file with other bytes.
#[test]
fn resumed_distill_keeps_its_teacher() {
    let s = sandbox();
    for (name, seed) in [("a", "1"), ("b", "2")] {
        assert_ok(&s.kd(&[
            "train",
            "teacher",
            "--epochs",
            "1",
            "--seed",
            seed,
            "--run-name",
            name,
            "--quiet",
        ]));
    }
    let a = s.runs().join("a/model.safetensors");
    let b = s.runs().join("b/model.safetensors");
    assert_ok(&s.kd(&[
        "distill",
        "--teacher",
        a.to_str().unwrap(),
        "--epochs",
        "1",
        "--run-name",
        "d",
        "--quiet",
    ]));
    let meta = json(&s.runs().join("d/meta.json"));
    assert_eq!(meta["teacher"], a.display().to_string());
    assert_eq!(meta["teacher_sha256"].as_str().unwrap().len(), 64);
    // b is newer, so a plain `distill` would pick it; the resume must not.
    std::fs::write(s.runs().join("b/touch"), "").unwrap();
    let _ = std::fs::File::options()
        .append(true)
        .open(&b)
        .unwrap()
        .set_modified(std::time::SystemTime::now());
    unfinish(&s.runs().join("d"));
    assert_ok(&s.kd(&[
        "distill",
        "--epochs",
        "2",
        "--run-name",
        "d",
        "--resume",
        "--quiet",
    ]));
    let cfg = std::fs::read_to_string(s.runs().join("d/config.toml")).unwrap();
    assert!(
        cfg.contains(&format!("teacher = \"{}\"", a.display())),
        "{cfg}"
    );
    unfinish(&s.runs().join("d"));
    let o = s.kd(&[
        "distill",
        "--teacher",
        b.to_str().unwrap(),
        "--epochs",
        "3",
        "--run-name",
        "d",
        "--resume",
    ]);
    assert_fails(
        &o,
        2,
        &["not the file this run started with", b.to_str().unwrap()],
    );
}

#[test]
fn odd_inputs_get_one_clear_line() {
    let s = sandbox();
    // Duplicate objectives in reproduce are refused before anything trains.
    assert_fails(
        &s.kd(&["reproduce", "--objective", "kd,kd", "--epochs", "1"]),
        2,
        &["distinct objectives"],
    );
    assert!(!s.runs().exists());
    // A zip (TorchScript) file as a checkpoint.
    let zip = s.path().join("model.pt");
    std::fs::write(&zip, b"PK\x03\x04rest of a zip").unwrap();
    assert_fails(
        &s.kd(&["evaluate", zip.to_str().unwrap()]),
        2,
        &["zip archive", "not safetensors"],
    );
    // kd's keys where they used to be.
    let old = s.path().join("old.toml");
    std::fs::write(&old, "[distill]\ntemperature = 3.0\n").unwrap();
    assert_fails(
        &s.kd(&["train", "student", "--config", old.to_str().unwrap()]),
        2,
        &["unknown field `temperature`", "[distill.kd]"],
    );
    // A checkpoint path that is not UTF-8 still gets its JSON report.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        assert_ok(&s.kd(&[
            "train",
            "student",
            "--epochs",
            "1",
            "--run-name",
            "s",
            "--quiet",
        ]));
        let odd = s
            .path()
            .join(std::ffi::OsStr::from_bytes(b"m\xff.safetensors"));
        std::fs::copy(s.runs().join("s/model.safetensors"), &odd).unwrap();
        let mut args: Vec<std::ffi::OsString> =
            vec!["evaluate".into(), odd.into(), "--json".into()];
        args.extend([
            "--data-dir".into(),
            s.data_dir().into(),
            "--threads".into(),
            "1".into(),
        ]);
        let o = s.raw(&args);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert!(
            v["checkpoint"]
                .as_str()
                .unwrap()
                .contains("m\u{fffd}.safetensors"),
            "{v}"
        );
    }
}

/// Architecture and augmentation specs from the config file are saved in their canonical
/// form, as `--arch` and `--augment` are, so the run resumes under the canonical spelling.
#[test]
fn specs_from_the_config_file_are_saved_canonical() {
    let s = sandbox();
    let config = |arch: &str, views: &str| {
        s.write_config(&format!(
            "[logging]\nhistograms = false\nplots = false\n\
             [model]\nstudent = \"{arch}\"\n[augment]\nstudent = \"{views}\"\n"
        ))
    };
    config("mlp: 128, dropout=0.10", "flip, shift1");
    let args = ["train", "student", "--epochs", "2", "--run-name", "c", "-q"];
    s.interrupted(&args, "epoch:1");
    let saved = std::fs::read_to_string(s.runs().join("c/config.toml")).unwrap();
    assert!(
        saved.contains("student = \"mlp:128,dropout=0.1\""),
        "{saved}"
    );
    assert!(saved.contains("student = \"shift1,flip\""), "{saved}");
    config("mlp:128,dropout=0.1", "shift1,flip");
    assert_ok(&s.kd(&[
        "train",
        "student",
        "--epochs",
        "2",
        "--run-name",
        "c",
        "--resume",
        "-q",
    ]));
}
