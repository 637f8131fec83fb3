//! `kdtrain sweep` end to end on the small synthetic data set: plan (stable ids, bad
//! sweep files), run-one, collect (rows, jobs not finished), local runs with Ctrl-C, and
//! a real one-node Slurm cluster (`scripts/slurm.sh start`, which .ci/run does): the
//! array's weights equal a local run's bit for bit, a finished sweep submits nothing, and
//! a job killed mid-run completes on resubmission.
//!
//! The two Slurm tests are `#[ignore]`d, so that `cargo test` counts them as not run
//! rather than passing them where no cluster runs; `.ci/run` starts the cluster and runs
//! them with `cargo test --release --test it -- --ignored slurm_`. Run that way without a
//! cluster, they fail, saying how to start one.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::*;
use kdtrain::checkpoint::Checkpoint;
use kdtrain::config::Config;
use kdtrain::sweep::plan::{JobKind, Plan, job_id};

/// A sandbox with synthetic data and a file standing in for the teacher (plan only checks
/// that it exists).
fn sandbox() -> Sandbox {
    let s = Sandbox::new();
    s.write_data(1200, 300);
    s.write_config("");
    std::fs::write(s.path().join("fake-teacher.safetensors"), b"x").unwrap();
    s
}

/// A sandbox with a real 2-epoch teacher; returns it and the teacher's path.
fn sandbox_with_teacher() -> (Sandbox, PathBuf) {
    let s = sandbox();
    let o = s.kd(&["train", "teacher", "--epochs", "2", "--run-name", "teacher"]);
    assert_ok(&o);
    let t = s.runs().join("teacher").join("model.safetensors");
    (s, t)
}

/// Writes `name` with the synthetic data's config and `[sweep]` `body`.
fn sweep_file(s: &Sandbox, name: &str, head: &str, body: &str) -> PathBuf {
    let p = s.path().join(name);
    std::fs::write(
        &p,
        format!(
            "# a test sweep\n[data]\nvalidation_size = 100\ndir = {:?}\n\n[train]\nepochs = 2\n{head}\n[sweep]\n{body}\n",
            s.data_dir().display().to_string()
        ),
    )
    .unwrap();
    p
}

/// `sweep plan FILE --teacher T --out-dir <runs> <flags>`: its output and the sweep folder
/// it printed last.
fn plan_with(
    s: &Sandbox,
    file: &Path,
    teacher: &Path,
    flags: &[&str],
) -> (Output, Option<PathBuf>) {
    let runs = s.runs();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "sweep".as_ref(),
        "plan".as_ref(),
        file.as_os_str(),
        "--teacher".as_ref(),
        teacher.as_os_str(),
        "--out-dir".as_ref(),
        runs.as_os_str(),
    ];
    args.extend(flags.iter().map(|f| std::ffi::OsStr::new(*f)));
    let o = s.raw(&args);
    let dir = stdout(&o).lines().last().map(PathBuf::from);
    (o, dir)
}

/// `sweep plan` into `out` (instead of the sandbox's runs folder); the sweep folder.
fn plan_in(s: &Sandbox, file: &Path, teacher: &Path, out: &Path) -> PathBuf {
    let o = s.raw(&[
        "sweep".as_ref(),
        "plan".as_ref(),
        file.as_os_str(),
        "--teacher".as_ref(),
        teacher.as_os_str(),
        "--out-dir".as_ref(),
        out.as_os_str(),
    ]);
    assert_ok(&o);
    PathBuf::from(stdout(&o).lines().last().unwrap())
}

fn plan(s: &Sandbox, file: &Path, teacher: &Path) -> PathBuf {
    let (o, dir) = plan_with(s, file, teacher, &[]);
    assert_ok(&o);
    dir.unwrap()
}

/// `kdtrain sweep <args[0]> <dir> <args[1..]>`, not yet run.
fn sweep_command(s: &Sandbox, args: &[&str], dir: &Path) -> std::process::Command {
    let mut a: Vec<std::ffi::OsString> = vec!["sweep".into(), args[0].into(), dir.into()];
    a.extend(args[1..].iter().map(|x| x.into()));
    s.command(&a)
}

fn sweep(s: &Sandbox, args: &[&str], dir: &Path) -> Output {
    sweep_command(s, args, dir).output().expect("run kdtrain")
}

const GRID: &str = "t = [1, 4]\nalpha = [0.5, 0.9]\nseeds = [0, 1]";

#[test]
fn plan_gives_stable_ids_and_one_resolved_config_per_job() {
    let s = sandbox();
    let teacher = s.path().join("fake-teacher.safetensors");
    let f = sweep_file(&s, "grid.toml", "", GRID);
    let a = plan(&s, &f, &teacher);
    let b = plan(&s, &f, &teacher);
    assert_ne!(a, b, "each plan gets a new folder");
    for d in [&a, &b] {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("sweep-"), "{name}");
        assert!(
            d.starts_with(s.runs().canonicalize().unwrap()),
            "{}",
            d.display()
        );
    }
    let ja = std::fs::read_to_string(a.join("jobs.txt")).unwrap();
    assert_eq!(ja, std::fs::read_to_string(b.join("jobs.txt")).unwrap());
    // 2 T x 2 alpha x 2 seeds distill jobs, then the student alone per seed.
    assert_eq!(ja.lines().count(), 10, "{ja}");
    assert!(
        ja.lines()
            .next()
            .unwrap()
            .ends_with("distill\tkd t=1 alpha=0.5 seed=0"),
        "{ja}"
    );
    let plan = Plan::load(&a).unwrap();
    assert_eq!(plan.jobs.len(), 10);
    assert_eq!(plan.threads, 1, "one intra-op thread per job by default");
    for (i, job) in plan.jobs.iter().enumerate() {
        assert_eq!(job.index, i);
        let text = std::fs::read_to_string(a.join(job.config_path())).unwrap();
        // The id is the hash of the job's kind and resolved config.
        assert_eq!(job.id, job_id(job.kind, &text));
        assert!(ja.lines().nth(i).unwrap().starts_with(&job.id));
        let c = Config::parse(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.seed, job.seed);
        assert_eq!(
            c.train.epochs, 2,
            "the file's usual keys apply to every job"
        );
        assert_eq!(c.data.validation_size, 100);
        assert_eq!(c.runtime.threads, 1);
        assert!(Path::new(&c.distill.teacher).is_absolute());
        if job.kind == JobKind::Distill {
            assert_eq!(Some(c.distill.kd.temperature), job.temperature);
            assert_eq!(Some(c.distill.kd.alpha), job.alpha);
        }
    }
    let ids: std::collections::BTreeSet<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids.len(), 10);
    // A list left out takes the config's value; a common flag applies to every job.
    let f2 = sweep_file(&s, "t-only.toml", "[distill.kd]\nalpha = 0.7\n", "t = [3]");
    let (o, d) = plan_with(&s, &f2, &teacher, &["--epochs", "5"]);
    assert_ok(&o);
    let d = d.unwrap();
    let p = Plan::load(&d).unwrap();
    assert_eq!(p.jobs.len(), 2, "one distill job and one student, seed 42");
    assert_eq!(
        (p.jobs[0].temperature, p.jobs[0].alpha),
        (Some(3.0), Some(0.7))
    );
    assert_eq!(p.jobs[0].seed, 42);
    let c =
        Config::parse(&std::fs::read_to_string(d.join(p.jobs[0].config_path())).unwrap()).unwrap();
    assert_eq!(c.train.epochs, 5);
}

#[test]
fn bad_sweep_files_exit_2_naming_the_key() {
    let s = sandbox();
    let teacher = s.path().join("fake-teacher.safetensors");
    for (head, body, needles) in [
        ("", "t = []", &["`sweep.t` = []", "non-empty list"][..]),
        (
            "",
            "alpha = 0.5",
            &["`sweep.alpha` = 0.5", "non-empty list"],
        ),
        (
            "",
            "alpha = [0.5, 1.5]",
            &["`sweep.alpha` = 1.5", "distill.kd.alpha", "[0, 1]"],
        ),
        ("", "t = [0]", &["`sweep.t` = 0", "distill.kd.temperature"]),
        (
            "",
            "temperature = [1]",
            &["unknown key `sweep.temperature`", "t, alpha"],
        ),
        ("", "seeds = [1, 1]", &["`sweep.seeds`", "listed twice"]),
        (
            "",
            "objective = [\"kd\", \"nope\"]",
            &["`sweep.objective`", "\"nope\""],
        ),
        (
            "",
            "objective = [\"dist\"]\nalpha = [0.5]",
            &["`sweep.alpha`", "no objective"],
        ),
        (
            "[optimizer]\nbeta3 = 0.9\n",
            "t = [1]",
            &["optimizer.beta3"],
        ),
        ("", "t = [1, \"x\"]", &["`sweep.t`", "not a number"]),
        // 101 x 100 values: more jobs than a sweep may plan.
        (
            "",
            Box::leak(
                format!(
                    "t = [{}]\nalpha = [{}]",
                    (1..=101)
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    (0..100)
                        .map(|a| format!("{:.2}", a as f64 / 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into_boxed_str(),
            ),
            &["more than 10000 jobs", "split it"],
        ),
    ] {
        let f = sweep_file(&s, "bad.toml", head, body);
        let (o, _) = plan_with(&s, &f, &teacher, &[]);
        let mut n = needles.to_vec();
        n.push("bad.toml");
        assert_fails(&o, 2, &n);
    }
    // Flags that would have no effect.
    let f = sweep_file(&s, "ok.toml", "", "t = [1]");
    let o = s.raw(&[
        "sweep".as_ref(),
        "plan".as_ref(),
        f.as_os_str(),
        "--config".as_ref(),
        f.as_os_str(),
    ]);
    assert_fails(&o, 2, &["--config would have no effect"]);
    let o = s.raw(&["sweep", "run", "somewhere", "--epochs", "3"]);
    assert_fails(&o, 2, &["--epochs would have no effect", "plan again"]);
    assert_fails(
        &s.raw(&["sweep", "collect", "nowhere"]),
        2,
        &["nowhere is not a sweep folder"],
    );
    // No [sweep] at all, and a missing teacher.
    let f = s.path().join("none.toml");
    std::fs::write(&f, "[train]\nepochs = 2\n").unwrap();
    assert_fails(
        &plan_with(&s, &f, &teacher, &[]).0,
        2,
        &["no [sweep] table"],
    );
    let f = sweep_file(&s, "ok.toml", "", "t = [1]");
    assert_fails(
        &plan_with(&s, &f, &s.path().join("absent.safetensors"), &[]).0,
        2,
        &["absent.safetensors", "not found"],
    );
    // A bad value in the file names the file; the same value by a flag names the flag.
    let f = sweep_file(
        &s,
        "bs0.toml",
        "[lr_schedule]\ninitial_lr = 0.0\n",
        "t = [1]",
    );
    let (o, _) = plan_with(&s, &f, &teacher, &[]);
    assert_fails(&o, 2, &["sweep file", "bs0.toml", "lr_schedule.initial_lr"]);
    let f = sweep_file(&s, "bs32.toml", "", "t = [1]");
    let (o, _) = plan_with(&s, &f, &teacher, &["--batch-size", "0"]);
    assert_fails(&o, 2, &["data.batch_size", "--batch-size"]);
    assert!(!stderr(&o).contains("sweep file"), "{}", stderr(&o));
    // Nothing was planned by any of these.
    let planned = std::fs::read_dir(s.runs()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(planned, 0);
}

/// The commands kdtrain prints for a sweep folder are shell-quoted: run by a shell, a
/// folder with a space in its path reaches kdtrain as one argument.
#[test]
fn printed_sweep_commands_are_shell_quoted() {
    let s = sandbox();
    let teacher = s.path().join("fake-teacher.safetensors");
    let f = sweep_file(&s, "q.toml", "", "t = [1]\nstudent = false");
    let o = s.raw(&[
        "sweep".as_ref(),
        "plan".as_ref(),
        f.as_os_str(),
        "--teacher".as_ref(),
        teacher.as_os_str(),
        "--out-dir".as_ref(),
        s.path().join("my runs").as_os_str(),
    ]);
    assert_ok(&o);
    let d = PathBuf::from(stdout(&o).lines().last().unwrap());
    // `kdtrain ARGS` as a shell splits it, each argument on a line of its own.
    let split = |cmd: &str| -> Vec<String> {
        let args = cmd.strip_prefix("kdtrain ").expect(cmd);
        let o = std::process::Command::new("sh")
            .args(["-c", &format!("printf '%s\\n' {args}")])
            .output()
            .unwrap();
        assert_ok(&o);
        stdout(&o).lines().map(String::from).collect()
    };
    // The ways to run it that plan suggests.
    let err = stderr(&o);
    let cmd = err
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("kdtrain sweep run "))
        .unwrap_or_else(|| panic!("no sweep run command:\n{err}"));
    assert_eq!(
        split(cmd),
        ["sweep", "run", &d.display().to_string(), "--jobs", "2"]
    );
    let o = sweep(&s, &["collect"], &d);
    assert_ok(&o);
    let md = std::fs::read_to_string(d.join("summary.md")).unwrap();
    let cmd = quoted_command(&md, "kdtrain sweep run ");
    assert_eq!(split(cmd), ["sweep", "run", &d.display().to_string()]);
    // A failed job's message too.
    let plan = Plan::load(&d).unwrap();
    std::fs::write(d.join(plan.jobs[0].config_path()), "[train]\nepochs = 0\n").unwrap();
    let o = sweep(&s, &["run"], &d);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(
        split(quoted_command(&err, "kdtrain sweep run ")),
        ["sweep", "run", &d.display().to_string()]
    );
}

/// An interrupted `run-one` names itself as the way to resume (the job's options are in
/// its jobs/<id>.toml, on no command line), and that command finishes the job.
#[test]
fn an_interrupted_run_one_says_to_run_it_again() {
    let (s, teacher) = sandbox_with_teacher();
    let f = sweep_file(
        &s,
        "one.toml",
        "",
        "t = [2]\nalpha = [0.5]\nseeds = [0]\nstudent = false",
    );
    let d = plan(&s, &f, &teacher);
    let o = sweep_command(&s, &["run-one", "--index", "0"], &d)
        .env(kdtrain::commands::INTERRUPT_HOOK, "epoch:1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains(&format!("kdtrain sweep run-one {} --index 0", d.display()))
            && !err.contains("continue it with"),
        "{err}"
    );
    assert_ok(&sweep(&s, &["run-one", "--index", "0"], &d));
    let run = d.join("runs").join(&Plan::load(&d).unwrap().jobs[0].id);
    assert_eq!(epochs_done(&run), 2);
}

#[test]
fn collect_writes_rows_and_lists_jobs_not_finished() {
    let (s, teacher) = sandbox_with_teacher();
    let f = sweep_file(
        &s,
        "grid.toml",
        "",
        "t = [2]\nalpha = [0.5, 0.9]\nseeds = [0]",
    );
    let d = plan(&s, &f, &teacher);
    // jobs: 0 kd t=2 alpha=0.5, 1 kd t=2 alpha=0.9, 2 student.
    let o = sweep(&s, &["run-one", "--index", "0"], &d);
    assert_ok(&o);
    let o = sweep(&s, &["run-one", "--index", "0"], &d);
    assert_ok(&o);
    assert!(stdout(&o).contains("already finished"), "{}", stdout(&o));
    assert_fails(
        &sweep(&s, &["run-one", "--index", "3"], &d),
        2,
        &["--index 3", "3 jobs"],
    );
    // Job 1 fails: its config is broken after planning.
    let plan = Plan::load(&d).unwrap();
    std::fs::write(d.join(plan.jobs[1].config_path()), "[train]\nepochs = 0\n").unwrap();
    assert_fails(
        &sweep(&s, &["run-one", "--index", "1"], &d),
        2,
        &["train.epochs"],
    );
    // Job 2 was stopped (exit 130, as a Ctrl-C leaves it) before its run folder existed:
    // not finished, but not failed either.
    let status = |j: usize| d.join("status").join(format!("{}.json", plan.jobs[j].id));
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(status(1)).unwrap()).unwrap();
    st["index"] = 2.into();
    st["id"] = plan.jobs[2].id.clone().into();
    st["exit_code"] = 130.into();
    std::fs::write(status(2), st.to_string()).unwrap();

    let o = sweep(&s, &["collect"], &d);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("2 of 3 jobs not finished"),
        "{}",
        stderr(&o)
    );
    let csv = std::fs::read_to_string(d.join("sweep.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    let col = |name: &str| rows[0].iter().position(|h| *h == name).unwrap();
    assert_eq!(rows[1][col("state")], "finished");
    assert_eq!(rows[2][col("state")], "failed");
    assert_eq!(rows[3][col("state")], "missing");
    assert_eq!(rows[1][col("temperature")], "2");
    assert_eq!(rows[1][col("alpha")], "0.5");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("runs").join(&plan.jobs[0].id).join("summary.json"))
            .unwrap(),
    )
    .unwrap();
    let val: f64 = rows[1][col("val_acc")].parse().unwrap();
    assert!((val - summary["best_val_acc"].as_f64().unwrap()).abs() < 1e-6);
    let test: f64 = rows[1][col("test_acc")].parse().unwrap();
    assert!((test - summary["test_acc"].as_f64().unwrap()).abs() < 1e-6);
    assert_eq!(rows[1][col("epochs")], "2");
    let startup: f64 = rows[1][col("startup_seconds")].parse().unwrap();
    assert!(startup > 0.0 && startup < 30.0, "{startup}");
    assert!(rows[2][col("val_acc")].is_empty());
    let md = std::fs::read_to_string(d.join("summary.md")).unwrap();
    assert!(md.contains("## Jobs not finished (2)"), "{md}");
    assert!(
        md.contains(&plan.jobs[1].id) && md.contains(&plan.jobs[2].id),
        "{md}"
    );
    assert!(
        md.contains("Best by validation accuracy: kd t=2 alpha=0.5"),
        "{md}"
    );
    assert!(d.join("heatmap.png").is_file());
    let best = std::fs::read_to_string(d.join("best.toml")).unwrap();
    let c = Config::parse(&best).unwrap();
    c.validate().unwrap();
    assert_eq!((c.distill.kd.temperature, c.distill.kd.alpha), (2.0, 0.5));
}

#[test]
fn submit_writes_a_readable_array_script_and_needs_sbatch() {
    let s = sandbox();
    let teacher = s.path().join("fake-teacher.safetensors");
    let f = sweep_file(&s, "grid.toml", "", GRID);
    let d = plan(&s, &f, &teacher);
    let submit = |extra: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = vec![
            "sweep".into(),
            "submit".into(),
            d.clone().into(),
            "--slurm".into(),
        ];
        a.extend(extra.iter().map(|x| x.into()));
        s.command(&a).env("PATH", "/nonexistent").output().unwrap()
    };
    let o = submit(&[
        "--dry-run",
        "--partition",
        "short",
        "--time",
        "0:10:00",
        "--max-parallel",
        "3",
        "--mem",
        "900",
    ]);
    assert_ok(&o);
    let script = std::fs::read_to_string(d.join("sweep.sbatch")).unwrap();
    for line in [
        "#SBATCH --array=0-9%3",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=900M",
        "#SBATCH --partition=short",
        "#SBATCH --time=0:10:00",
        "sweep run-one",
        "--index \"$SLURM_ARRAY_TASK_ID\"",
    ] {
        assert!(script.contains(line), "{line}:\n{script}");
    }
    assert!(script.contains(&format!("--output={}/logs/slurm-%A_%a.out", d.display())));
    // Without sbatch: exit 2 with advice.
    assert_fails(&submit(&[]), 2, &["sbatch not found", "--jobs"]);
    assert_fails(&submit(&["--extra", "--qos='x"]), 2, &["--extra", "quotes"]);

    // Given relative to the current folder, the sweep folder is made absolute: sbatch
    // runs inside it, and must be handed a script it can open from there.
    let bin = s.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("sbatch");
    std::fs::write(
        &fake,
        "#!/bin/sh\ntest -f \"$1\" || { echo \"no $1 in $(pwd)\" >&2; exit 1; }\n\
         echo \"$1\" > sbatch-arg\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rel = d.strip_prefix(s.path()).unwrap();
    let o = s
        .command(&[
            "sweep".as_ref(),
            "submit".as_ref(),
            rel.as_os_str(),
            "--slurm".as_ref(),
        ])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    assert_ok(&o);
    let handed = std::fs::read_to_string(d.join("sbatch-arg")).unwrap();
    assert_eq!(handed.trim(), d.join("sweep.sbatch").display().to_string());
    let script = std::fs::read_to_string(d.join("sweep.sbatch")).unwrap();
    assert!(
        script.contains(&format!("--output={}/logs/", d.display()))
            && script.contains(&format!("sweep run-one {} --index", d.display())),
        "{script}"
    );

    // A path that an #SBATCH line cannot hold is refused, naming the character.
    let spaced = plan_in(&s, &f, &teacher, &s.path().join("my runs"));
    let o = s
        .command(&[
            "sweep".as_ref(),
            "submit".as_ref(),
            spaced.as_os_str(),
            "--slurm".as_ref(),
            "--dry-run".as_ref(),
        ])
        .output()
        .unwrap();
    assert_fails(
        &o,
        2,
        &["cannot go into a Slurm batch script", "' '", "sweep run"],
    );
}

/// A SIGTERM to `sweep submit --wait` stops the `sbatch --wait` it waits on (a fake
/// sbatch that sleeps), instead of leaving it running, and exits 130 naming it.
#[test]
fn sigterm_to_submit_wait_stops_sbatch() {
    let s = sandbox();
    let teacher = s.path().join("fake-teacher.safetensors");
    let f = sweep_file(&s, "grid.toml", "", GRID);
    let d = plan(&s, &f, &teacher);
    let bin = s.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("sbatch");
    let pid_file = s.path().join("sbatch.pid");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho $$ > {}.tmp && mv {0}.tmp {0}\nexec sleep 60\n",
            pid_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = s
        .command(&[
            "sweep".as_ref(),
            "submit".as_ref(),
            d.as_os_str(),
            "--slurm".as_ref(),
            "--wait".as_ref(),
        ])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        // A file, not a pipe: a sleeping sbatch that kept the pipe open would make
        // reading it wait for the sleep, and so pass late instead of failing.
        .stderr(std::fs::File::create(s.path().join("submit.err")).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_for(30, || pid_file.is_file()),
        "the fake sbatch never started"
    );
    let sbatch: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(child.id(), "TERM");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "kdtrain did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(s.path().join("submit.err")).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("stopped sbatch --wait") && err.contains("scancel"),
        "{err}"
    );
    // The fake sbatch is gone (or a zombie about to be reaped), not sleeping on.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{sbatch}/stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    assert!(
        wait_for(10, || !alive()),
        "sbatch --wait (pid {sbatch}) outlived kdtrain"
    );
}

/// Tensors of two checkpoints, compared exactly.
fn same_weights(a: &Path, b: &Path) -> bool {
    let (a, b) = (Checkpoint::read(a).unwrap(), Checkpoint::read(b).unwrap());
    a.tensors.len() == b.tensors.len()
        && a.tensors
            .iter()
            .all(|(k, t)| b.tensors.get(k).is_some_and(|u| t.equal(u)))
}

/// Waits until `f` holds, up to `secs`.
fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn epochs_done(run: &Path) -> usize {
    std::fs::read_to_string(run.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["epoch"].as_u64())
        .unwrap_or(0) as usize
}

#[test]
fn ctrl_c_stops_every_local_job_and_the_next_run_completes_them() {
    let (s, teacher) = sandbox_with_teacher();
    let f = sweep_file(
        &s,
        "long.toml",
        "[early_stopping]\nenabled = false\n",
        "t = [2]\nalpha = [0.5]\nseeds = [0, 1]\nstudent = false",
    );
    let (o, d) = plan_with(&s, &f, &teacher, &["--epochs", "300"]);
    assert_ok(&o);
    let d = d.unwrap();
    let plan = Plan::load(&d).unwrap();
    let child = sweep_command(&s, &["run", "--jobs", "2"], &d)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runs: Vec<PathBuf> = plan
        .jobs
        .iter()
        .map(|j| d.join("runs").join(&j.id))
        .collect();
    assert!(
        wait_for(120, || runs.iter().all(|r| epochs_done(r) >= 1)),
        "both jobs started"
    );
    // A second process cannot run a job that is running.
    assert_fails(
        &sweep(&s, &["run-one", "--index", "0"], &d),
        2,
        &["is running in another process"],
    );
    signal(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    for r in &runs {
        // Stopped cleanly at a step: not finished, resumable, and no process holds it.
        let n = epochs_done(r);
        assert!((1..300).contains(&n), "{}: {n} epochs", r.display());
        kdtrain::checkpoint::RunLock::acquire(r).expect("no job process is left");
    }
    // The next run resumes both (the resume checks the config is the same) and finishes them.
    let o = sweep(&s, &["run", "--jobs", "2"], &d);
    assert_ok(&o);
    for r in &runs {
        assert_eq!(epochs_done(r), 300);
    }
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("status").join(format!("{}.json", plan.jobs[0].id)))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(st["resumed"], true);
}

/// Two `sweep run` on one sweep at once share the jobs out: each job runs once, none
/// counts as failed, and no log is overwritten by a second start.
#[test]
fn two_sweep_runs_at_once_share_the_jobs() {
    let (s, teacher) = sandbox_with_teacher();
    let f = sweep_file(
        &s,
        "pair.toml",
        "",
        "t = [1, 2, 4]\nalpha = [0.5]\nseeds = [0, 1]\nstudent = false",
    );
    let d = plan(&s, &f, &teacher);
    let plan = Plan::load(&d).unwrap();
    let start = || {
        sweep_command(&s, &["run", "--jobs", "1"], &d)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&a, &b] {
        assert_ok(o);
    }
    let both = format!("{}{}", stderr(&a), stderr(&b));
    assert!(
        both.contains("is running in another process; not started here"),
        "{both}"
    );
    for j in &plan.jobs {
        let st: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.join("status").join(format!("{}.json", j.id))).unwrap(),
        )
        .unwrap();
        assert_eq!(st["exit_code"], 0, "job {}", j.id);
        let log = std::fs::read_to_string(d.join("logs").join(format!("{}.log", j.id))).unwrap();
        assert!(!log.contains("in use by another kdtrain process"), "{log}");
        assert!(log.contains("distilled: train loss"), "job {}: {log}", j.id);
        assert_eq!(epochs_done(&d.join("runs").join(&j.id)), 2);
    }
}

/// `SLURM_CONF` of the cluster `scripts/slurm.sh start` runs, when `sinfo` answers;
/// otherwise a failure saying why and how to start it.
fn slurm() -> PathBuf {
    let dir = std::env::var_os("KDTRAIN_SLURM_DIR")
        .map_or_else(|| PathBuf::from("/tmp/kdtrain-slurm"), PathBuf::from);
    let why = match std::fs::read_to_string(dir.join("env")) {
        Err(e) => format!("{}/env: {e}", dir.display()),
        Ok(text) => {
            let conf = text
                .trim()
                .strip_prefix("export SLURM_CONF=")
                .map(|s| PathBuf::from(s.trim_matches('\'')));
            match conf {
                None => format!("{}/env does not export SLURM_CONF", dir.display()),
                Some(conf) => match std::process::Command::new("sinfo")
                    .env("SLURM_CONF", &conf)
                    .output()
                {
                    Ok(o) if o.status.success() => return conf,
                    Ok(o) => format!("sinfo failed: {}", String::from_utf8_lossy(&o.stderr)),
                    Err(e) => format!("sinfo: {e}"),
                },
            }
        }
    };
    let msg = format!(
        "Slurm is not running ({why}); start the one-node cluster with `scripts/slurm.sh start` \
         (Debian, root), as .ci/run does"
    );
    panic!("{msg}");
}

fn submit(s: &Sandbox, d: &Path, conf: &Path) -> Output {
    let mut c = s.command(&[
        "sweep".as_ref(),
        "submit".as_ref(),
        d.as_os_str(),
        "--slurm".as_ref(),
        "--wait".as_ref(),
        "--max-parallel".as_ref(),
        "2".as_ref(),
    ]);
    c.env("SLURM_CONF", conf).output().unwrap()
}

#[test]
#[ignore = "needs the one-node Slurm cluster: scripts/slurm.sh start, then --ignored slurm_"]
fn slurm_array_equals_local_run_bit_for_bit_and_a_finished_sweep_submits_nothing() {
    let conf = slurm();
    let (s, teacher) = sandbox_with_teacher();
    let f = sweep_file(&s, "grid.toml", "", GRID);
    let local = plan(&s, &f, &teacher);
    let on_slurm = plan(&s, &f, &teacher);

    let t0 = Instant::now();
    let o = sweep(&s, &["run", "--jobs", "2"], &local);
    assert_ok(&o);
    let local_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let o = submit(&s, &on_slurm, &conf);
    assert_ok(&o);
    let slurm_secs = t0.elapsed().as_secs_f64();
    eprintln!("10 jobs: local --jobs 2 {local_secs:.1} s, Slurm array {slurm_secs:.1} s");
    let script = std::fs::read_to_string(on_slurm.join("sweep.sbatch")).unwrap();
    for line in [
        "#SBATCH --array=0-9%2",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=1200M",
    ] {
        assert!(script.contains(line), "{line}:\n{script}");
    }

    for d in [&local, &on_slurm] {
        assert_ok(&sweep(&s, &["collect"], d));
        let csv = std::fs::read_to_string(d.join("sweep.csv")).unwrap();
        assert_eq!(csv.lines().count(), 11);
        assert!(
            csv.lines().skip(1).all(|l| l.contains(",finished,")),
            "{}:\n{csv}",
            d.display()
        );
    }
    let plan = Plan::load(&local).unwrap();
    for job in &plan.jobs {
        let a = local.join("runs").join(&job.id).join("model.safetensors");
        let b = on_slurm
            .join("runs")
            .join(&job.id)
            .join("model.safetensors");
        assert!(
            same_weights(&a, &b),
            "job {} ({}) differs",
            job.index,
            job.id
        );
        let st: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(on_slurm.join("status").join(format!("{}.json", job.id)))
                .unwrap(),
        )
        .unwrap();
        assert!(
            st["slurm"].as_str().is_some_and(|v| v.contains('_')),
            "{st}"
        );
    }
    // The same table (the title names the folder).
    let md = |d: &Path| {
        let text = std::fs::read_to_string(d.join("summary.md")).unwrap();
        text.lines().skip(1).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(md(&local), md(&on_slurm));

    // Submitting or running a finished sweep again runs nothing.
    let mtime = |d: &Path| {
        std::fs::metadata(
            d.join("runs")
                .join(&plan.jobs[0].id)
                .join("model.safetensors"),
        )
        .unwrap()
        .modified()
        .unwrap()
    };
    let before = mtime(&on_slurm);
    std::fs::remove_file(on_slurm.join("sweep.sbatch")).unwrap();
    let o = submit(&s, &on_slurm, &conf);
    assert_ok(&o);
    assert!(stdout(&o).contains("nothing to submit"), "{}", stdout(&o));
    assert!(
        !on_slurm.join("sweep.sbatch").exists(),
        "no array was written"
    );
    assert_eq!(mtime(&on_slurm), before);
    let o = sweep(&s, &["run", "--jobs", "2"], &local);
    assert_ok(&o);
    assert!(stdout(&o).contains("nothing to run"), "{}", stdout(&o));
}

#[test]
#[ignore = "needs the one-node Slurm cluster: scripts/slurm.sh start, then --ignored slurm_"]
fn slurm_resubmission_completes_a_job_killed_mid_run() {
    let conf = slurm();
    let (s, teacher) = sandbox_with_teacher();
    let f = sweep_file(
        &s,
        "kill.toml",
        "[early_stopping]\nenabled = false\n",
        "t = [2]\nalpha = [0.5, 0.9]\nseeds = [0]\nstudent = false",
    );
    let (o, d) = plan_with(&s, &f, &teacher, &["--epochs", "60"]);
    assert_ok(&o);
    let d = d.unwrap();
    let plan = Plan::load(&d).unwrap();
    let run0 = d.join("runs").join(&plan.jobs[0].id);
    let mut child = sweep_command(&s, &["run-one", "--index", "0"], &d)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(120, || epochs_done(&run0) >= 1), "job 0 started");
    child.kill().unwrap(); // SIGKILL: no clean-up at all
    child.wait().unwrap();
    let killed_at = epochs_done(&run0);
    assert!(
        killed_at < 60,
        "job 0 was killed mid-run ({killed_at} epochs)"
    );

    let o = submit(&s, &d, &conf);
    assert_ok(&o);
    let script = std::fs::read_to_string(d.join("sweep.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-1%2"), "{script}");
    assert_ok(&sweep(&s, &["collect"], &d));
    let csv = std::fs::read_to_string(d.join("sweep.csv")).unwrap();
    assert!(
        csv.lines().skip(1).all(|l| l.contains(",finished,")),
        "{csv}"
    );
    assert_eq!(epochs_done(&run0), 60);
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("status").join(format!("{}.json", plan.jobs[0].id)))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(st["resumed"], true, "{st}");
    assert_eq!(st["exit_code"], 0, "{st}");
}
