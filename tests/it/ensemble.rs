//! Several teachers distilled as one ensemble (Hinton et al. 2015, §4): `distill
//! --teacher A --teacher B`, `evaluate` with an ensemble, what `meta.json` records, the
//! cache, and the bad inputs (the same teacher twice, teachers of other splits).

use std::path::PathBuf;

use kdtrain::checkpoint::Checkpoint;

use crate::common::*;

fn sandbox() -> Sandbox {
    let s = Sandbox::new();
    s.write_data(600, 200);
    s.write_config("[model]\nteacher = \"mlp:32\"\nstudent = \"mlp:16\"\n[logging]\nhistograms = false\nplots = false");
    s
}

/// A one-epoch teacher trained with `seed` (and `extra` flags), named `name`.
fn teacher(s: &Sandbox, name: &str, seed: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        "train",
        "teacher",
        "--epochs",
        "1",
        "--seed",
        seed,
        "--run-name",
        name,
        "-q",
    ];
    args.extend(extra);
    assert_ok(&s.kd(&args));
    s.runs().join(name).join("model.safetensors")
}

fn distill(s: &Sandbox, name: &str, teachers: &[&PathBuf], extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = ["distill", "--epochs", "2", "--run-name", name, "-q"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    for t in teachers {
        args.extend(["--teacher".to_string(), t.display().to_string()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.kd(&args)
}

/// An ensemble of two teachers: the run records both (path, SHA-256, architecture) and
/// the combination, its config names both, and the cached and uncached runs (the
/// combination of the cached logits once, or of each member's per batch) give the same
/// weights.
#[test]
fn an_ensemble_is_recorded_and_its_cache_matches_the_forward_passes() {
    let s = sandbox();
    let a = teacher(&s, "ta", "1", &[]);
    let b = teacher(&s, "tb", "2", &[]);
    for (run, extra) in [("cached", vec![]), ("uncached", vec!["--no-teacher-cache"])] {
        let o = distill(&s, run, &[&a, &b], &extra);
        assert_ok(&o);
    }
    let meta = json(&s.runs().join("cached/meta.json"));
    let list = meta["teachers"].as_array().expect("teachers in meta.json");
    assert_eq!(list.len(), 2, "{meta}");
    for (entry, path) in list.iter().zip([&a, &b]) {
        assert_eq!(
            entry["teacher"].as_str().unwrap(),
            std::path::absolute(path).unwrap().display().to_string()
        );
        assert_eq!(
            entry["teacher_sha256"].as_str().unwrap(),
            kdtrain::checkpoint::file_sha256(path).unwrap()
        );
        assert_eq!(entry["teacher_arch"], "mlp:32");
    }
    assert_eq!(meta["ensemble"], "probabilities", "{meta}");
    assert_eq!(meta["ensemble_temperature"], 2.0, "{meta}");
    let config = std::fs::read_to_string(s.runs().join("cached/config.toml")).unwrap();
    assert!(config.contains("teachers = ["), "{config}");
    let x = Checkpoint::read(&s.runs().join("cached/model.safetensors")).unwrap();
    let y = Checkpoint::read(&s.runs().join("uncached/model.safetensors")).unwrap();
    for (k, v) in &x.tensors {
        let d = (v - &y.tensors[k]).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{k} differs by {d} with and without the cache");
    }
    // Another ensemble (b, a: the same members, another order) is the same teacher, and
    // one member alone is another: its student differs.
    assert_ok(&distill(&s, "one", &[&a], &[]));
    let z = Checkpoint::read(&s.runs().join("one/model.safetensors")).unwrap();
    assert!(
        x.tensors.iter().any(|(k, v)| !v.equal(&z.tensors[k])),
        "the ensemble's student equals one teacher's"
    );
}

/// `evaluate` with two teachers reports each member's accuracy and the ensemble's,
/// which is the accuracy of the mean of their probabilities, computed here from the
/// members' logits as PyTorch would (softmax at T, mean, argmax).
#[test]
fn evaluate_reports_the_ensemble_and_each_member() {
    let s = sandbox();
    let a = teacher(&s, "ta", "1", &[]);
    let b = teacher(&s, "tb", "2", &[]);
    let c = teacher(&s, "tc", "3", &[]);
    let o = s.kd(&[
        "evaluate",
        c.to_str().unwrap(),
        "--teacher",
        a.to_str().unwrap(),
        "--teacher",
        b.to_str().unwrap(),
        "--json",
    ]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let members = v["teachers"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    // Each member's test accuracy is what evaluate says of it as the model.
    for (m, path) in members.iter().zip([&a, &b]) {
        let alone = s.kd(&["evaluate", path.to_str().unwrap(), "--json"]);
        assert_ok(&alone);
        let alone: serde_json::Value = serde_json::from_slice(&alone.stdout).unwrap();
        assert_eq!(m["test_acc"], alone["test"]["acc"], "{m}");
    }
    assert!(
        v["ensemble"]
            .as_str()
            .unwrap()
            .contains("probabilities at T=2"),
        "{v}"
    );
    // The ensemble's accuracy from the members' logits (an MLP on pixels / 255).
    let data = kdtrain::data::load(&s.data_dir(), &Default::default()).unwrap();
    let x = kdtrain::data::Examples::from_split(&data.test, tch::Device::Cpu);
    let probs: Vec<tch::Tensor> = [&a, &b]
        .iter()
        .map(|p| {
            let net = Checkpoint::read(p)
                .unwrap()
                .network(tch::Device::Cpu)
                .unwrap();
            (net.forward(&x.images) / 2.0).softmax(1, tch::Kind::Float)
        })
        .collect();
    let mean = (&probs[0] + &probs[1]) / 2.0;
    let acc = mean
        .argmax(1, false)
        .eq_tensor(&x.labels)
        .to_kind(tch::Kind::Double)
        .mean(tch::Kind::Double)
        .double_value(&[]);
    let got = v["test"]["teacher_acc"].as_f64().unwrap();
    assert!(
        (got - acc).abs() < 1e-9,
        "ensemble acc {got}, mean of probabilities {acc}"
    );
}

/// The same file twice (or a copy of it) and teachers trained on different splits are
/// refused before any run folder is made, naming the files.
#[test]
fn the_same_teacher_twice_and_teachers_of_other_splits_are_refused() {
    let s = sandbox();
    let a = teacher(&s, "ta", "1", &[]);
    let copy = s.path().join("copy.safetensors");
    std::fs::copy(&a, &copy).unwrap();
    for (name, other) in [("twice", &a), ("copy", &copy)] {
        let o = distill(&s, name, &[&a, other], &[]);
        assert_fails(&o, 2, &["are the same file", "pass each teacher once"]);
        assert!(!s.runs().join(name).exists());
    }
    let o = s.kd(&[
        "evaluate",
        a.to_str().unwrap(),
        "--teacher",
        a.to_str().unwrap(),
        "--teacher",
        copy.to_str().unwrap(),
    ]);
    assert_fails(&o, 2, &["are the same file"]);
    // A teacher validated on another split.
    let other_split = s.path().join("split.toml");
    std::fs::write(
        &other_split,
        "[data]\nvalidation_size = 100\nsplit_seed = 7\n[model]\nteacher = \"mlp:32\"\n",
    )
    .unwrap();
    let b = teacher(&s, "tb", "2", &["--config", other_split.to_str().unwrap()]);
    let o = distill(&s, "splits", &[&a, &b], &[]);
    assert_fails(&o, 2, &["different validation splits", "ta", "tb"]);
    assert!(!s.runs().join("splits").exists());
    // Setting both keys is refused by name.
    let both = s.path().join("both.toml");
    std::fs::write(
        &both,
        format!(
            "[data]\nvalidation_size = 100\n[distill]\nteacher = {:?}\nteachers = [{:?}]\n",
            a.display().to_string(),
            a.display().to_string()
        ),
    )
    .unwrap();
    let o = s.kd(&[
        "distill",
        "--config",
        both.to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    assert_fails(&o, 2, &["distill.teachers", "not both"]);
}

/// A resumed ensemble run keeps its teachers: resuming with another list is refused.
#[test]
fn resuming_an_ensemble_with_other_teachers_is_refused() {
    let s = sandbox();
    let a = teacher(&s, "ta", "1", &[]);
    let b = teacher(&s, "tb", "2", &[]);
    let c = teacher(&s, "tc", "3", &[]);
    let o = s
        .command(&s.args(&[
            "distill",
            "--teacher",
            a.to_str().unwrap(),
            "--teacher",
            b.to_str().unwrap(),
            "--epochs",
            "3",
            "--run-name",
            "r",
            "-q",
        ]))
        .env(kdtrain::commands::INTERRUPT_HOOK, "epoch:1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let o = s.kd(&[
        "distill",
        "--teacher",
        a.to_str().unwrap(),
        "--teacher",
        c.to_str().unwrap(),
        "--epochs",
        "3",
        "--run-name",
        "r",
        "--resume",
        "-q",
    ]);
    assert_fails(&o, 2, &["--resume", "not the ones this run started with"]);
    // With no --teacher, the recorded ensemble is used, and the run finishes.
    let o = s.kd(&[
        "distill",
        "--epochs",
        "3",
        "--run-name",
        "r",
        "--resume",
        "-q",
    ]);
    assert_ok(&o);
    let state = json(&s.runs().join("r/state.json"));
    assert_eq!(state["finished"], true, "{state}");
}
