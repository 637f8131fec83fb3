//! The README's figures come from committed files: its Results section is
//! docs/results/results.md and its digits table docs/results/digits/results.md, copied
//! by scripts/readme_results.py, and each agrees with the results.json beside it; the
//! PyTorch twin's baseline (docs/results/pytorch-student) compares with the committed run.

use std::path::Path;

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn readme_results_are_the_committed_results() {
    let readme = read("README.md");
    for (marker, file) in [
        ("results", "docs/results/results.md"),
        ("baseline", "docs/results/pytorch-student/results.md"),
        ("fraction", "docs/results/fraction/results.md"),
        ("omit", "docs/results/omit/results.md"),
        ("ensemble", "docs/results/ensemble/results.md"),
        ("digits", "docs/results/digits/results.md"),
        ("speed", "bench/SPEED.md"),
    ] {
        let start = readme
            .find(&format!("<!-- {marker}:begin"))
            .unwrap_or_else(|| panic!("README.md lacks the <!-- {marker}:begin --> marker"));
        let body_start = start + readme[start..].find("-->\n").unwrap() + 4;
        let end = readme
            .find(&format!("<!-- {marker}:end -->"))
            .unwrap_or_else(|| panic!("no {marker}:end marker"));
        let section = &readme[body_start..end];
        assert_eq!(
            section,
            read(file),
            "README's {marker} table differs from {file}; run python3 scripts/readme_results.py"
        );
    }
}

#[test]
fn committed_results_md_agrees_with_results_json() {
    // The default reproduce and the same with a 20-epoch teacher, each also without the
    // student's dropout, the deeper teacher of configs/deep-teacher.toml (students without
    // dropout) and configs/deep-teacher-dropout.toml, and the earlier MLP-teacher results.
    for dir in [
        "docs/results",
        "docs/results/teacher15",
        "docs/history/results/no-student-dropout",
        "docs/history/results/no-student-dropout-teacher20",
        "docs/history/results/teacher20",
        "docs/history/results/deep-teacher",
        "docs/history/results/deep-teacher-dropout",
        "docs/history/results/mlp-teacher",
        "docs/results/digits",
        "docs/results/fraction",
        "docs/results/omit",
        "docs/results/ensemble",
    ] {
        check_results(dir);
    }
}

fn check_results(dir: &str) {
    let md = read(&format!("{dir}/results.md"));
    let json: serde_json::Value =
        serde_json::from_str(&read(&format!("{dir}/results.json"))).unwrap();
    let models = json["models"].as_array().unwrap();
    // A teacher read from a file (the shipped one) is in the teachers table instead.
    let from_file = json["teachers"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["from_file"] == true));
    assert!(
        models.len() >= if from_file { 2 } else { 3 },
        "{dir}: teacher, student and at least one distilled student"
    );
    for t in json["teachers"].as_array().into_iter().flatten() {
        let acc = t["test_acc"].as_f64().unwrap() * 100.0;
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", t["teacher"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{dir}: teacher {} missing", t["teacher"]));
        assert!(line.contains(&format!("{acc:.2}")), "{line} lacks {acc:.2}");
    }
    assert!(json["seeds"].as_array().unwrap().len() >= 3);
    for m in models {
        let acc = m["test_acc_mean"].as_f64().unwrap() * 100.0;
        // With the architecture where the results have one (older ones do not), so the
        // teachers table's header, `| teacher | architecture |`, is not taken for a row.
        let row = match m["arch"].as_str() {
            Some(arch) => format!("| {} | {arch} |", m["model"].as_str().unwrap()),
            None => format!("| {} |", m["model"].as_str().unwrap()),
        };
        let line = md
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("{row} missing"));
        assert!(line.contains(&format!("{acc:.2}")), "{line} lacks {acc:.2}");
    }
    for g in json["gains"].as_array().unwrap() {
        let (lo, hi) = (
            g["interval_95_points"][0].as_f64().unwrap(),
            g["interval_95_points"][1].as_f64().unwrap(),
        );
        assert!(
            md.contains(&format!("{lo:+.2} to {hi:+.2}")),
            "interval of {} missing",
            g["objective"]
        );
    }
}

/// Each committed `reproduce` was made with the config the README names for it: the
/// teacher's and the students' architectures in its results.json are that config's.
#[test]
fn committed_results_come_from_the_configs_named_for_them() {
    for (dir, config) in [
        ("docs/results", "config.toml"),
        ("docs/results/teacher15", "configs/teacher15.toml"),
        (
            "docs/history/results/no-student-dropout",
            "configs/no-student-dropout.toml",
        ),
        ("docs/history/results/teacher20", "configs/teacher15.toml"),
        (
            "docs/history/results/no-student-dropout-teacher20",
            "configs/no-student-dropout.toml",
        ),
        (
            "docs/history/results/deep-teacher",
            "configs/deep-teacher.toml",
        ),
        (
            "docs/history/results/deep-teacher-dropout",
            "configs/deep-teacher-dropout.toml",
        ),
        ("docs/results/digits", "configs/digits.toml"),
        ("docs/results/fraction", "config.toml"),
        ("docs/results/omit", "config.toml"),
        ("docs/results/ensemble", "configs/ensemble.toml"),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(config);
        let c = kdtrain::config::Config::load(&path, true).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&read(&format!("{dir}/results.json"))).unwrap();
        for m in json["models"].as_array().unwrap() {
            let (role, arch) = (m["model"].as_str().unwrap(), m["arch"].as_str().unwrap());
            let want = if role == "teacher" {
                &c.reproduce.teacher
            } else {
                &c.model.student
            };
            assert_eq!(
                arch, want,
                "{dir}: the {role}'s architecture, against {config}"
            );
        }
    }
}

/// The README's objectives table gives each objective's defaults as config.toml has them.
#[test]
fn readme_objective_defaults_are_the_configs() {
    let readme = read("README.md");
    let d = kdtrain::config::Config::default().distill;
    for (name, defaults) in [
        (
            "kd",
            format!("T {}, alpha {}", d.kd.temperature, d.kd.alpha),
        ),
        (
            "dkd",
            format!(
                "T {}, alpha {}, beta {}, CE {}, warm-up {} epochs",
                d.dkd.temperature, d.dkd.alpha, d.dkd.beta, d.dkd.ce_weight, d.dkd.warmup_epochs
            ),
        ),
        (
            "lskd",
            format!(
                "T {}, KD {}, CE {}",
                d.lskd.temperature, d.lskd.kd_weight, d.lskd.ce_weight
            ),
        ),
        (
            "dist",
            format!(
                "tau {}, beta {}, gamma {}, CE {}",
                d.dist.temperature, d.dist.beta, d.dist.gamma, d.dist.ce_weight
            ),
        ),
        ("mse", format!("alpha {}", d.mse.alpha)),
    ] {
        let row = readme
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("README has no objectives row for {name}"));
        assert!(
            row.contains(&format!("| {defaults} |")),
            "README's {name} row lacks its defaults \"{defaults}\":\n{row}"
        );
    }
}

/// The PyTorch twin's baseline is compared with the committed Quick start: its kdtrain
/// figures are docs/results/results.json's student runs, seed by seed, its table's means
/// are its own results.json's, and the twin held out the same validation images.
#[test]
fn the_pytorch_baseline_compares_with_the_committed_quick_start() {
    let dir = "docs/results/pytorch-student";
    let base: serde_json::Value =
        serde_json::from_str(&read(&format!("{dir}/results.json"))).unwrap();
    let kd: serde_json::Value = serde_json::from_str(&read("docs/results/results.json")).unwrap();
    assert_eq!(
        base["kdtrain_commit"], kd["commit"],
        "{dir} compares with another run: scripts/pytorch_baseline.sh"
    );
    assert_eq!(base["seeds"], kd["seeds"]);
    assert_eq!(base["validation"], kd["validation"]);
    let seeds: Vec<u64> = kd["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    let runs = kd["runs"].as_array().unwrap();
    for (i, seed) in seeds.iter().enumerate() {
        let student = runs
            .iter()
            .find(|r| r["model"] == "student" && r["seed"].as_u64() == Some(*seed))
            .unwrap();
        let want = 100.0 * student["test_acc"].as_f64().unwrap();
        let got = base["kdtrain_test_acc"][i].as_f64().unwrap();
        assert!(
            (want - got).abs() < 1e-9,
            "seed {seed}: {got} vs results.json's {want}"
        );
        let twin: serde_json::Value =
            serde_json::from_str(&read(&format!("{dir}/seed-{seed}.json"))).unwrap();
        let t = 100.0 * twin["test_acc"].as_f64().unwrap();
        assert!((t - base["pytorch_test_acc"][i].as_f64().unwrap()).abs() < 1e-9);
        assert!(
            kd["validation"]
                .as_str()
                .unwrap()
                .contains(twin["split_hash"].as_str().unwrap())
        );
    }
    let mean_sd = |key: &str| {
        let v: Vec<f64> = base[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
        format!("{m:.2} ± {sd:.2}")
    };
    let row = format!(
        "| test accuracy | {} | {} |",
        mean_sd("kdtrain_test_acc"),
        mean_sd("pytorch_test_acc")
    );
    let md = read(&format!("{dir}/results.md"));
    assert!(md.contains(&row), "{row} not in {dir}/results.md");
}
