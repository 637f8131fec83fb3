//! The event files, read back by TensorBoard's own `EventAccumulator`
//! (scripts/check_tensorboard.py), must hold every metrics.csv column per epoch, and the
//! weight histograms. Needs the python that scripts/setup.sh installs (KDTRAIN_PYTHON,
//! set for cargo by .cargo/config.toml).

use crate::common::*;

#[test]
fn tensorboard_reader_agrees_with_metrics_csv() {
    let s = Sandbox::new();
    s.write_data(800, 200);
    s.write_config("");
    assert_ok(&s.kd(&[
        "train",
        "student",
        "--epochs",
        "3",
        "--run-name",
        "student",
        "--quiet",
    ]));
    let teacher_run = [
        "train",
        "teacher",
        "--epochs",
        "1",
        "--run-name",
        "teacher",
        "--quiet",
    ];
    assert_ok(&s.kd(&teacher_run));
    let teacher = s.runs().join("teacher/model.safetensors");
    assert_ok(&s.kd(&[
        "distill",
        "--epochs",
        "2",
        "--run-name",
        "distilled",
        "--quiet",
        "--teacher",
        teacher.to_str().unwrap(),
    ]));

    let python = python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check_tensorboard.py");
    let dirs: Vec<String> = ["student", "teacher", "distilled"]
        .iter()
        .map(|d| s.runs().join(d).display().to_string())
        .collect();
    let o = std::process::Command::new(&python)
        .arg("-W")
        .arg("ignore")
        .arg(script)
        .args(&dirs)
        .output()
        .expect("run python");
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success(), "check_tensorboard.py failed:\n{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        3,
        "{out}"
    );
    // Histograms were on (the default): the student has 4 parameter tensors.
    assert!(out.contains("4 histogram tags"), "{out}");

    // And the checker can fail: a changed CSV value is caught.
    let csv = s.runs().join("student/metrics.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut cells: Vec<String> = lines[1].split(',').map(String::from).collect();
    cells[1] = "123.0".into();
    lines[1] = cells.join(",");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let o = std::process::Command::new(&python)
        .arg("-W")
        .arg("ignore")
        .arg(script)
        .arg(&dirs[0])
        .output()
        .unwrap();
    assert!(!o.status.success(), "a corrupted CSV passed the check");
}
