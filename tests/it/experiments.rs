//! `reproduce --experiment`: the paper's experiments on small synthetic data (a small
//! transfer set, a class never seen, an ensemble of teachers, the four together), and
//! a teacher read from a file instead of trained (the shipped teacher's path).

use std::path::{Path, PathBuf};

use crate::common::*;

fn sandbox(extra: &str) -> Sandbox {
    let s = Sandbox::new();
    s.write_data(600, 200);
    s.write_config(&format!(
        "[model]\nteacher = \"mlp:32\"\nstudent = \"mlp:16\"\n[logging]\nhistograms = \
         false\nplots = false\n[reproduce]\nteacher = \"mlp:32\"\nteacher_augment = \
         \"none\"\n{extra}"
    ));
    s
}

/// The one reproduce folder in the sandbox's runs.
fn root(s: &Sandbox) -> PathBuf {
    run_dir(&s.runs(), "reproduce-")
}

fn summary(dir: &Path) -> serde_json::Value {
    json(&dir.join("summary.json"))
}

/// The fraction experiment: the students (alone and distilled, every seed) train on the
/// same subset of the training split, the teacher on all of it; the table says so and
/// the gains chart is written.
#[test]
fn fraction_trains_the_students_on_one_subset_and_the_teacher_on_all() {
    let s = sandbox("fraction = 0.5");
    let o = s.kd(&[
        "reproduce",
        "--experiment",
        "fraction",
        "--seeds",
        "0,1",
        "--epochs",
        "1",
        "-q",
    ]);
    assert_ok(&o);
    let r = root(&s);
    let teacher = summary(&r.join("teacher"));
    let n = teacher["train_examples"].as_i64().unwrap();
    assert_eq!(n, 500, "the teacher trains on the whole training split");
    let mut hashes = Vec::new();
    for seed in [0, 1] {
        for run in ["student", "distilled-kd"] {
            let sm = summary(&r.join(format!("seed-{seed}/{run}")));
            assert_eq!(sm["train_examples"].as_i64().unwrap(), 250, "{run} {seed}");
            hashes.push(sm["data"]["transfer"]["hash"].as_str().unwrap().to_string());
        }
    }
    hashes.dedup();
    assert_eq!(
        hashes.len(),
        1,
        "every student sees the same images: {hashes:?}"
    );
    let results = json(&r.join("results.json"));
    assert_eq!(results["experiment"], "fraction");
    let md = std::fs::read_to_string(r.join("results.md")).unwrap();
    assert!(
        md.contains("experiment fraction") && md.contains("250 images: a fraction 0.5"),
        "{md}"
    );
    assert!(r.join("gains.png").is_file() && r.join("comparison.png").is_file());
    let g = &results["gains"][0];
    assert_eq!(g["baseline"], "student", "{g}");
    assert_eq!(g["gains_points"].as_array().unwrap().len(), 2);
}

/// The omit experiment: class 1 never reaches the students' training, the teacher sees
/// it, and every student's shift is chosen on validation and tabled before and after.
#[test]
fn omit_leaves_a_class_out_of_the_students_and_tables_the_shift() {
    let s = sandbox("");
    let o = s.kd(&[
        "reproduce",
        "--experiment",
        "omit",
        "--seeds",
        "0,",
        "--epochs",
        "2",
        "-q",
    ]);
    assert_ok(&o);
    let r = root(&s);
    let teacher = summary(&r.join("teacher"));
    assert_eq!(
        teacher["data"]["transfer"]["omitted"],
        serde_json::json!([])
    );
    for run in ["student", "distilled-kd"] {
        let sm = summary(&r.join(format!("seed-0/{run}")));
        assert_eq!(
            sm["data"]["transfer"]["omitted"],
            serde_json::json!([1]),
            "{run}"
        );
        let bc = &sm["bias_correction"];
        assert!(bc["shift"].is_number(), "{run}: {sm}");
        assert_eq!(bc["class_names"], serde_json::json!(["Trouser"]));
    }
    let md = std::fs::read_to_string(r.join("results.md")).unwrap();
    assert!(
        md.contains("Omitted classes") && md.contains("| student | Trouser |"),
        "{md}"
    );
    assert!(md.contains("without class Trouser"), "{md}");
}

/// The ensemble experiment: three teachers (seeds 0, 1, 2), and per seed the student
/// alone, distilled from the first teacher and from the ensemble; the gains include the
/// ensemble's student over the one-teacher student, and the teachers' table the
/// ensemble's accuracy.
#[test]
fn ensemble_compares_one_teacher_with_three() {
    let s = sandbox("");
    let o = s.kd(&[
        "reproduce",
        "--experiment",
        "ensemble",
        "--seeds",
        "0,1",
        "--epochs",
        "1",
        "-q",
    ]);
    assert_ok(&o);
    let r = root(&s);
    for k in 1..=3 {
        assert_eq!(summary(&r.join(format!("teacher-{k}")))["seed"], k - 1);
    }
    let meta = json(&r.join("seed-0/distilled-kd/meta.json"));
    assert_eq!(meta["teachers"].as_array().unwrap().len(), 3, "{meta}");
    let meta = json(&r.join("seed-0/distilled-kd-teacher-1/meta.json"));
    assert_eq!(meta["teachers"].as_array().unwrap().len(), 1, "{meta}");
    let results = json(&r.join("results.json"));
    let gains: Vec<(String, String)> = results["gains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["objective"].as_str().unwrap().into(),
                g["baseline"].as_str().unwrap().into(),
            )
        })
        .collect();
    let ens = "distilled (kd, ensemble of 3)".to_string();
    assert!(
        gains.contains(&("kd".into(), "student".into())),
        "{gains:?}"
    );
    assert!(
        gains.contains(&(ens.clone(), "student".into())),
        "{gains:?}"
    );
    assert!(gains.contains(&(ens, "distilled (kd)".into())), "{gains:?}");
    let teachers = results["teachers"].as_array().unwrap();
    assert_eq!(
        teachers.len(),
        4,
        "three members and the ensemble: {teachers:?}"
    );
    assert!(
        teachers[3]["teacher"]
            .as_str()
            .unwrap()
            .starts_with("ensemble of 3")
    );
    // Trained teachers are named by their place in the reproduce folder.
    assert_eq!(teachers[0]["teacher"], "teacher-1/model.safetensors");
}

/// A teacher file instead of a trained teacher: its SHA-256 is checked (a wrong one is
/// exit 2 naming the key, before any folder is made), and with the right one no teacher
/// is trained and the table names the file.
#[test]
fn a_teacher_file_is_checked_and_used_instead_of_training() {
    let s = sandbox("");
    s.train_teacher_one_epoch("t");
    let t = s.runs().join("t/model.safetensors");
    let sha = kdtrain::checkpoint::file_sha256(&t).unwrap();
    let config = |sha: &str| {
        let p = s.path().join("file.toml");
        std::fs::write(
            &p,
            format!(
                "[data]\nvalidation_size = 100\n[model]\nstudent = \"mlp:16\"\n[reproduce]\n\
                 teacher_file = {:?}\nteacher_sha256 = {sha:?}\n",
                t.display().to_string()
            ),
        )
        .unwrap();
        p
    };
    let wrong = "0".repeat(64);
    let c = config(&wrong);
    let args = [
        "reproduce",
        "--shipped-teacher",
        "--config",
        c.to_str().unwrap(),
        "--seeds",
        "0,",
        "--epochs",
        "1",
        "-q",
    ];
    let o = s.kd(&args);
    assert_fails(
        &o,
        2,
        &["is not the recorded teacher", "reproduce.teacher_sha256"],
    );
    assert!(std::fs::read_dir(s.runs()).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("reproduce-")
    }));
    config(&sha);
    assert_ok(&s.kd(&args));
    let r = root(&s);
    assert!(!r.join("teacher").exists(), "no teacher is trained");
    let results = json(&r.join("results.json"));
    assert_eq!(results["teachers"][0]["from_file"], true, "{results}");
    assert_eq!(results["teachers"][0]["sha256"], sha.as_str());
    let md = std::fs::read_to_string(r.join("results.md")).unwrap();
    assert!(md.contains("(not trained by this run)"), "{md}");
    // A missing file says how to train one instead.
    std::fs::remove_file(&t).unwrap();
    let o = s.kd(&args);
    assert_fails(&o, 2, &["reproduce.teacher_file", "--train-teacher"]);
}

/// The paper experiment runs the four, each in its folder, and writes paper.md with the
/// paper's figures beside ours.
#[test]
fn paper_runs_the_four_and_puts_the_papers_figures_beside() {
    let s = sandbox("fraction = 0.5");
    let o = s.kd(&[
        "reproduce",
        "--experiment",
        "paper",
        "--seeds",
        "0,1",
        "--epochs",
        "1",
        "-q",
    ]);
    assert_ok(&o);
    let r = root(&s);
    for e in ["fraction", "omit", "ensemble", "full"] {
        assert!(r.join(e).join("results.json").is_file(), "{e}");
    }
    let paper = std::fs::read_to_string(r.join("paper.md")).unwrap();
    for needle in [
        "| fraction | speech",
        "| omit | MNIST",
        "| ensemble | speech",
        "| full | MNIST",
        "57.0",
        "61.1",
    ] {
        assert!(
            paper.contains(needle),
            "paper.md lacks {needle:?}:\n{paper}"
        );
    }
}

/// A teacher per seed cannot be read from one file: refused by name, before any folder.
#[test]
fn a_teacher_per_seed_with_a_teacher_file_is_refused() {
    let s = sandbox("teacher_per_seed = true");
    let o = s.kd(&[
        "reproduce",
        "--shipped-teacher",
        "--seeds",
        "0,",
        "--epochs",
        "1",
    ]);
    assert_fails(&o, 2, &["reproduce.teacher_per_seed", "--train-teacher"]);
    assert!(!s.runs().exists() || std::fs::read_dir(s.runs()).unwrap().next().is_none());
}
