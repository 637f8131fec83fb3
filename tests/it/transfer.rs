//! The transfer set (`--train-fraction`, `--omit-class`) and the bias correction of
//! omitted classes (Hinton et al. 2015, sections 3 and 6), on the synthetic data.

use crate::common::*;

fn transfer(dir: &std::path::Path) -> serde_json::Value {
    json(&dir.join("meta.json"))["data"]["transfer"].clone()
}

/// The subset is drawn by data.subset_seed alone: students of other training seeds, and a
/// distilled student, train on the same images; another subset_seed draws others.
#[test]
fn student_and_distilled_share_the_subset_whatever_their_seed() {
    let s = Sandbox::new();
    s.write_data(600, 100);
    s.write_config("");
    s.train_teacher_one_epoch("t");
    let teacher = s.runs().join("t/model.safetensors");
    let teacher = teacher.to_str().unwrap();
    let common = ["--epochs", "1", "--train-fraction", "0.5", "-q"];
    for (args, name) in [
        (&["train", "student", "--seed", "1"][..], "s1"),
        (&["train", "student", "--seed", "2"][..], "s2"),
        (&["distill", "--seed", "3", "--teacher", teacher][..], "d3"),
    ] {
        let mut a = args.to_vec();
        a.extend(common);
        a.extend(["--run-name", name]);
        assert_ok(&s.kd(&a));
    }
    let hash = |n: &str| transfer(&s.runs().join(n))["hash"].clone();
    assert_eq!(hash("s1"), hash("s2"));
    assert_eq!(hash("s1"), hash("d3"));
    let t = transfer(&s.runs().join("s1"));
    assert_eq!(t["examples"], 250, "{t}");
    assert_eq!(t["fraction"], 0.5);
    let summary = json(&s.runs().join("d3/summary.json"));
    assert_eq!(summary["train_examples"], 250);
    assert_eq!(summary["data"]["transfer"]["hash"], hash("d3"));
    // The teacher trained on the whole split.
    assert_eq!(transfer(&s.runs().join("t"))["examples"], 500);

    let cfg = s.write_config("subset_seed = 8");
    let cfg = cfg.to_str().unwrap();
    let mut a = vec!["train", "student", "--seed", "1", "--config", cfg];
    a.extend(common);
    a.extend(["--run-name", "other"]);
    assert_ok(&s.kd(&a));
    assert_ne!(hash("other"), hash("s1"));
    assert_eq!(transfer(&s.runs().join("other"))["subset_seed"], 8);
}

/// Each bad value is exit 2 naming its flag, before any run folder is made.
#[test]
fn bad_transfer_inputs_are_usage_errors_naming_the_flag() {
    let s = Sandbox::new();
    s.write_data(300, 50);
    s.write_config("");
    let student = ["train", "student", "--epochs", "1"];
    for (extra, needles) in [
        (
            &["--train-fraction", "0"][..],
            &["--train-fraction", "(0, 1]"][..],
        ),
        (&["--train-fraction", "1.5"], &["--train-fraction", "= 1.5"]),
        (
            &["--train-fraction", "NaN"],
            &["--train-fraction", "= NaN", "(0, 1]"],
        ),
        (
            &["--train-fraction", "0.001"],
            &["--train-fraction", "no image of class(es)", "or more does"],
        ),
        (
            &["--omit-class", "Sock"],
            &["--omit-class", "\"Sock\"", "\"Trouser\"", "\"Ankle boot\""],
        ),
        (
            &["--omit-class", "10"],
            &["--omit-class", "index from 0 to 9"],
        ),
        (
            &["--omit-class", "Trouser", "--omit-class", "1"],
            &["--omit-class", "named twice"],
        ),
        (
            &["--omit-class", "Bag", "--omit-class", "Bag"],
            &["--omit-class", "named twice"],
        ),
    ] {
        let mut a = student.to_vec();
        a.extend(extra);
        assert_fails(&s.kd(&a), 2, needles);
    }
    let mut all = student.to_vec();
    for c in 0..10 {
        all.extend([
            "--omit-class",
            ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"][c],
        ]);
    }
    assert_fails(
        &s.kd(&all),
        2,
        &["--omit-class", "at least one class must remain"],
    );
    // None of them left a run folder behind.
    assert!(!s.runs().exists() || std::fs::read_dir(s.runs()).unwrap().next().is_none());
}

/// A run without Trouser never trains on one, keeps them in validation and test, chooses
/// a shift on validation and stores it (here about 11, which takes Trouser's test
/// accuracy from 0 to about 1); evaluate applies it (the same test accuracy as
/// summary.json), `--bias` replaces it, and an unknown class or a bad value is exit 2.
#[test]
fn an_omitted_class_gets_a_shift_that_evaluate_applies() {
    let s = Sandbox::new();
    s.write_data(600, 200);
    s.write_config("");
    let o = s.kd(&[
        "train",
        "student",
        "--epochs",
        "5",
        "--lr",
        "0.01",
        "--omit-class",
        "Trouser",
        "--run-name",
        "o",
        "-q",
    ]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("bias correction: logit shift"),
        "{}",
        stderr(&o)
    );
    let dir = s.runs().join("o");
    let t = transfer(&dir);
    assert_eq!(t["omitted"], serde_json::json!([1]));
    assert_eq!(t["omitted_names"], serde_json::json!(["Trouser"]));
    let sum = json(&dir.join("summary.json"));
    let bc = &sum["bias_correction"];
    let shift = bc["shift"].as_f64().unwrap();
    assert!(shift > 0.0, "{bc}");
    assert!(
        bc["val_acc_after"].as_f64() >= bc["val_acc_before"].as_f64(),
        "{bc}"
    );
    assert_eq!(bc["test_acc_after"], sum["test_acc"]);
    assert_eq!(bc["per_class"][0]["name"], "Trouser");
    assert_eq!(bc["per_class"][0]["test_acc_before"], 0.0, "{bc}");
    assert!(
        bc["per_class"][0]["test_acc_after"].as_f64().unwrap() > 0.0,
        "{bc}"
    );
    let ckpt = dir.join("model.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let eval_acc = |extra: &[&str]| {
        let mut a = vec!["evaluate", ckpt, "--json"];
        a.extend(extra);
        let o = s.kd(&a);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        (v["test"]["acc"].as_f64().unwrap(), v["logit_bias"].clone())
    };
    let (acc, bias) = eval_acc(&[]);
    assert_eq!(acc, sum["test_acc"].as_f64().unwrap());
    assert_eq!(bias[0]["shift"].as_f64().unwrap(), shift);
    assert_eq!(bias[0]["from"], "checkpoint");
    // --bias replaces the stored shift: 0 gives back the uncorrected model.
    let (acc0, bias0) = eval_acc(&["--bias", "Trouser=0"]);
    assert_eq!(acc0, bc["test_acc_before"].as_f64().unwrap());
    assert_eq!(bias0[0]["from"], "--bias");
    let (_, by_index) = eval_acc(&["--bias", "1=0"]);
    assert_eq!(by_index, bias0);
    assert_fails(
        &s.kd(&["evaluate", ckpt, "--bias", "Sock=1"]),
        2,
        &["--bias", "\"Sock\"", "\"Trouser\""],
    );
    // Not a number, or one whose shifted logits would overflow f32 (NaN loss, every
    // image in class 0), or a class given twice.
    for v in ["Trouser=x", "Trouser=1e300", "Trouser=-2e4", "Trouser=inf"] {
        assert_fails(
            &s.kd(&["evaluate", ckpt, "--bias", v]),
            2,
            &["--bias", "not a number from -10000 to 10000"],
        );
    }
    assert_fails(
        &s.kd(&["evaluate", ckpt, "--bias", "Trouser=1", "--bias", "1=2"]),
        2,
        &["--bias", "given a shift twice"],
    );
    assert_fails(
        &s.kd(&["evaluate", ckpt, "--bias", "Trouser"]),
        2,
        &["--bias", "CLASS=VALUE"],
    );
}
