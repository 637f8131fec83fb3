//! `reproduce`: the teacher(s), then for every seed the student trained alone and the
//! distilled student(s), all on one validation split; then `results.md`,
//! `results.json`, `comparison.png` (mean validation accuracy per epoch) and
//! `gains.png` (the paired gains with their intervals). `--experiment` chooses the
//! comparison ([`Experiment`]): all the data, a small transfer set, a class never seen,
//! an ensemble of teachers, or the four beside the paper's figures.
//!
//! Layout of `<out_dir>/reproduce-<date>-<time>/`: `teacher/` (or `teacher-K/` for an
//! ensemble's members, `seed-N/teacher/` with `reproduce.teacher_per_seed`; none with a
//! teacher file), `seed-N/student/`, `seed-N/distilled-<objective>/` (and
//! `seed-N/distilled-<objective>-teacher-1/` in the ensemble experiment). The paper
//! experiment puts each experiment in a folder of that name and writes `paper.md`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use super::{
    LoadedTeacher, RunOutcome, data_dir, load_raw, prepare_data_with, print_result, teachers_meta,
    train_one,
};
use crate::config::settings::Settings;
use crate::config::{Config, Experiment, Validation};
use crate::data::Dataset;
use crate::error::{Interrupted, UsageError, usage};
use crate::objective::CrossEntropy;
use crate::report::{Results, TeacherSummary, label};
use crate::run::{Run, RunKind};

/// Runs the comparison `reproduce.experiment` names.
pub fn run(s: &Settings) -> Result<()> {
    if s.resume || s.run_name.is_some() {
        return usage(
            "reproduce takes neither --resume nor --run-name; it makes a new reproduce-<time> \
             folder (resume one of its runs with the command the interruption message gives)",
        );
    }
    let c = &s.config;
    let experiment = c.reproduce.experiment;
    let k = teacher_count(c, experiment);
    if k > 1 && c.reproduce.teacher_per_seed {
        return usage(format!(
            "reproduce.teacher_per_seed = true with {k} teachers: an ensemble is trained once \
             for every seed; set one of them"
        ));
    }
    if c.reproduce.teacher_per_seed && k == 1 && !c.reproduce.teacher_file.as_os_str().is_empty() {
        return usage(
            "reproduce.teacher_per_seed = true trains a teacher for each seed, but \
             reproduce.teacher_file names one to read; pass --train-teacher (or set \
             reproduce.teacher_file = \"\"), or set teacher_per_seed = false",
        );
    }
    let dir = data_dir(s)?;
    // The data and a teacher file are checked before any folder is made.
    let (raw, secs) = load_raw(s, &dir)?;
    let teacher_file = match (k, experiment) {
        (1, _) => shipped_teacher(c)?,
        _ => None,
    };
    let _ = std::fs::create_dir_all(s.out_dir());
    let root = crate::run::claim_stamped_dir(s.out_dir(), "reproduce").map_err(|(dir, e)| {
        UsageError(format!(
            "cannot create {} ({e}); choose a writable --out-dir",
            dir.display()
        ))
    })?;
    let experiments = match experiment {
        Experiment::Paper => vec![
            Experiment::Fraction,
            Experiment::Omit,
            Experiment::Ensemble,
            Experiment::Full,
        ],
        e => vec![e],
    };
    let mut all = Vec::new();
    let done = (|| -> Result<()> {
        for &e in &experiments {
            let dir = match experiment {
                Experiment::Paper => root.join(e.key()),
                _ => root.clone(),
            };
            let file = match (teacher_count(c, e), &teacher_file) {
                (1, Some(f)) => Some(f.clone()),
                (1, None) => shipped_teacher(c)?,
                _ => None,
            };
            let results = one_experiment(s, e, &dir, &raw, secs, file.as_deref())?;
            all.push((e, results));
        }
        Ok(())
    })();
    if let Err(e) = done {
        remove_empty(&root);
        return Err(e);
    }
    if experiment == Experiment::Paper {
        let md = crate::report::paper_markdown(&all);
        crate::outln!("\n{md}");
        crate::checkpoint::write_atomic(&root.join("paper.md"), md.as_bytes())?;
        crate::outln!("wrote {}", root.join("paper.md").display());
    }
    Ok(())
}

/// How many teachers `e` trains or loads: `reproduce.teachers`, or 3 for the ensemble
/// experiment when that is 1.
fn teacher_count(c: &Config, e: Experiment) -> usize {
    match (e, c.reproduce.teachers) {
        (Experiment::Ensemble, 1) => 3,
        (_, k) => k,
    }
}

/// `reproduce.teacher_file`, found (from the working folder, else from the repository's
/// root, where the shipped teacher lives) and its SHA-256 checked; `None` when it is
/// `""` (the teacher is trained).
///
/// # Errors
/// A usage error naming the key: the file is missing, or its SHA-256 is not
/// `reproduce.teacher_sha256`.
fn shipped_teacher(c: &Config) -> Result<Option<PathBuf>> {
    let r = &c.reproduce;
    if r.teacher_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let candidates = [
        r.teacher_file.clone(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(&r.teacher_file),
    ];
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        return usage(format!(
            "config key `reproduce.teacher_file` = {}: no such file (looked in the working \
             folder and in {}); pass --train-teacher to train the teacher instead, or name \
             an existing file",
            r.teacher_file.display(),
            env!("CARGO_MANIFEST_DIR")
        ));
    };
    let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
    if !r.teacher_sha256.is_empty() {
        let sha = crate::checkpoint::file_sha256(&path)?;
        if !sha.eq_ignore_ascii_case(&r.teacher_sha256) {
            return usage(format!(
                "teacher file {} has SHA-256 {sha}, not the {} of `reproduce.teacher_sha256`: \
                 it is not the recorded teacher; restore it (git checkout -- {}), set \
                 reproduce.teacher_sha256 = \"\" to use it anyway, or pass --train-teacher",
                path.display(),
                r.teacher_sha256,
                r.teacher_file.display()
            ));
        }
    }
    Ok(Some(path))
}

/// Removes `root` and its seed folders when nothing is in them (a run stopped before its
/// first epoch leaves no empty folder).
fn remove_empty(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_empty(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(root);
}

/// The config of the students of experiment `e` (its transfer set) from the user's.
fn student_config(c: &Config, e: Experiment) -> Config {
    let mut c = c.clone();
    match e {
        Experiment::Fraction if c.data.train_fraction >= 1.0 => {
            c.data.train_fraction = c.reproduce.fraction;
        }
        Experiment::Omit if c.data.omit_classes.is_empty() => {
            c.data.omit_classes = c.reproduce.omit_classes.clone();
        }
        _ => {}
    }
    c
}

/// The config of the teachers: all the training split, whatever the students'.
fn teacher_config(c: &Config) -> Config {
    let mut c = c.clone();
    c.data.train_fraction = 1.0;
    c.data.omit_classes.clear();
    c
}

/// One experiment in `root`: teachers, then per seed the student alone and the
/// distilled students; its results files. `teacher_file`: the teacher to load instead
/// of training one.
fn one_experiment(
    s: &Settings,
    e: Experiment,
    root: &Path,
    raw: &crate::data::RawData,
    read_secs: f64,
    teacher_file: Option<&Path>,
) -> Result<Results> {
    let t_start = Instant::now();
    let c = &s.config;
    let seeds = c.reproduce.seeds.clone();
    let objectives = if c.reproduce.objectives.is_empty() {
        vec![c.distill.objective.clone()]
    } else {
        c.reproduce.objectives.clone()
    };
    let k = teacher_count(c, e);
    let per_seed_teacher = c.reproduce.teacher_per_seed && teacher_file.is_none();
    // Every run, for a stop's message: the teachers, then per seed the student alone and
    // a distilled student per objective (and per arm: the ensemble's first teacher alone).
    let arms = if e == Experiment::Ensemble { 2 } else { 1 };
    let teacher_runs = match (teacher_file, per_seed_teacher) {
        (Some(_), _) => 0,
        (None, true) => seeds.len(),
        (None, false) => k,
    };
    let planned = teacher_runs + seeds.len() * (1 + objectives.len() * arms);
    let stopped = |err: anyhow::Error, done: usize| with_runs_left(err, root, done, planned);
    let next_run = |done: usize| stop_between_runs(root, done, planned);
    std::fs::create_dir_all(root).map_err(|err| {
        UsageError(format!(
            "cannot create {} ({err}); choose a writable --out-dir",
            root.display()
        ))
    })?;
    let base_teacher = teacher_config(c);
    let base_student = student_config(c, e);
    s.say(&format!(
        "reproduce, experiment {}, in {}: seeds {:?}, objectives {}, {}",
        e.key(),
        root.display(),
        seeds,
        objectives.join(", "),
        match (teacher_file, k, per_seed_teacher) {
            (Some(f), _, _) => format!("the teacher {}", f.display()),
            (None, 1, true) => "one teacher per seed".into(),
            (None, 1, false) => "one teacher, trained with the first seed, for every seed".into(),
            (None, k, _) =>
                format!("an ensemble of {k} teachers trained with seeds from the first"),
        }
    ));
    let teacher_data = prepare_data_with(s, &base_teacher, raw, read_secs)?;
    let student_data = if base_student.data == base_teacher.data {
        None
    } else {
        Some(prepare_data_with(s, &base_student, raw, read_secs)?)
    };
    let student_data = student_data.as_ref().unwrap_or(&teacher_data);
    let q = s.quiet;
    let mut runs: Vec<RunOutcome> = Vec::new();
    let mut teachers: Vec<LoadedTeacher> = Vec::new();
    // The config file the user named, repeated in the resume commands printed on Ctrl-C.
    let config_flag = s
        .config_file
        .as_ref()
        .map(|p| format!(" --config {}", crate::error::quote(p)))
        .unwrap_or_default();
    let t_config = |seed: u64, out_dir: &Path| {
        let mut c = base_teacher.clone();
        c.seed = seed;
        c.runtime.out_dir = out_dir.to_path_buf();
        let r = c.reproduce.clone();
        if !r.teacher.is_empty() {
            c.model.teacher = r.teacher;
        }
        if !r.teacher_augment.is_empty() {
            c.augment.teacher = r.teacher_augment;
        }
        if r.teacher_epochs > 0 {
            c.train.teacher_epochs = r.teacher_epochs;
        }
        c
    };
    let train_teacher = |seed: u64, out_dir: &Path, name: &str| -> Result<RunOutcome> {
        let config = t_config(seed, out_dir);
        let mut run = Run::open(&config, RunKind::Teacher, Some(name), false, q)?;
        // reproduce's own teacher recipe, as `train teacher` flags.
        run.resume_args = format!(
            "{config_flag} --seed {seed} --arch {} --augment {}",
            config.model.teacher, config.augment.teacher,
        );
        let out = train_one(s, &config, &mut run, &CrossEntropy, &[], &teacher_data)
            .inspect_err(|_| run.abandon())?;
        print_result(&out);
        Ok(out)
    };
    let load = |path: &Path| -> Result<LoadedTeacher> {
        let mut tc = base_student.clone();
        tc.distill.teacher = path.to_path_buf();
        tc.distill.teachers.clear();
        let t = super::load_teacher(s, &tc, &student_data.0.spec)?;
        super::check_teacher_split(s, &t, &student_data.0)?;
        Ok(t)
    };
    // The teachers every seed shares (all but per-seed ones).
    match (teacher_file, per_seed_teacher) {
        (Some(f), _) => teachers.push(load(f)?),
        (None, true) => {}
        (None, false) => {
            for j in 0..k {
                let name = match k {
                    1 => "teacher".to_string(),
                    _ => format!("teacher-{}", j + 1),
                };
                next_run(runs.len())?;
                let out = train_teacher(seeds[0] + j as u64, root, &name)
                    .map_err(|err| stopped(err, runs.len()))?;
                teachers.push(load(&out.run_dir.join(crate::run::MODEL_FILE))?);
                runs.push(out);
            }
        }
    }
    for &seed in &seeds {
        let seed_dir = root.join(format!("seed-{seed}"));
        if per_seed_teacher {
            next_run(runs.len())?;
            let out = train_teacher(seed, &seed_dir, "teacher")
                .map_err(|err| stopped(err, runs.len()))?;
            teachers = vec![load(&out.run_dir.join(crate::run::MODEL_FILE))?];
            runs.push(out);
        }
        let for_seed = |tweak: &dyn Fn(&mut Config)| {
            let mut c = base_student.clone();
            c.seed = seed;
            c.runtime.out_dir = seed_dir.clone();
            tweak(&mut c);
            c
        };
        let config = for_seed(&|_| {});
        next_run(runs.len())?;
        let mut run = Run::open(&config, RunKind::Student, Some("student"), false, q)?;
        run.resume_args = format!("{config_flag} --seed {seed}");
        let out = train_one(s, &config, &mut run, &CrossEntropy, &[], student_data)
            .inspect_err(|_| run.abandon())
            .map_err(|err| stopped(err, runs.len()))?;
        print_result(&out);
        runs.push(out);
        // (folder suffix, the teachers): the ensemble experiment also distils its first
        // teacher alone.
        let mut arms: Vec<(String, &[LoadedTeacher])> = Vec::new();
        if e == Experiment::Ensemble {
            arms.push(("-teacher-1".into(), &teachers[..1]));
        }
        arms.push((String::new(), &teachers[..]));
        for name in &objectives {
            for (suffix, ts) in &arms {
                let config = for_seed(&|c: &mut Config| {
                    c.distill.objective = name.clone();
                    match ts.len() {
                        1 => {
                            c.distill.teacher = ts[0].path.clone();
                            c.distill.teachers.clear();
                        }
                        _ => {
                            c.distill.teacher = PathBuf::new();
                            c.distill.teachers = ts.iter().map(|t| t.path.clone()).collect();
                        }
                    }
                });
                let objective = config.distill.build_chosen()?;
                let folder = format!("distilled-{name}{suffix}");
                next_run(runs.len())?;
                let mut run = Run::open(&config, RunKind::Distilled, Some(&folder), false, q)?;
                let teacher_flags: String = ts
                    .iter()
                    .map(|t| format!(" --teacher {}", crate::error::quote(&t.path)))
                    .collect();
                run.resume_args =
                    format!("{config_flag} --seed {seed} --objective {name}{teacher_flags}");
                let t = config.distill.ensemble_temperature(name);
                run.add_meta(teachers_meta(ts, config.distill.ensemble, t))?;
                let out = train_one(s, &config, &mut run, objective.as_ref(), ts, student_data)
                    .inspect_err(|_| run.abandon())
                    .map_err(|err| stopped(err, runs.len()))?;
                print_result(&out);
                runs.push(out);
            }
        }
    }
    let validation = match c.data.validation {
        Validation::Split => student_data.0.split.describe(),
        Validation::Test => "the test set (as the Keras reference; optimistic)".into(),
    };
    // The teachers as distilled (a file, or the last trained), and an ensemble's
    // accuracy, on the test set.
    let summaries = teacher_summaries(
        &teachers,
        teacher_file.is_some(),
        &teacher_data.0,
        c,
        &objectives[0],
    );
    let mut results = Results::new(
        runs,
        &seeds,
        &objectives,
        per_seed_teacher,
        validation,
        c.early_stopping.monitor.describe().into(),
        t_start.elapsed().as_secs_f64(),
    );
    results.experiment = e.key().to_string();
    results.teachers = summaries;
    // A teacher file is named as the config names it, and a trained teacher by its place
    // in the reproduce folder, not by this machine's paths.
    if let (Some(_), Some(t)) = (teacher_file, results.teachers.first_mut()) {
        t.teacher = c.reproduce.teacher_file.display().to_string();
    }
    for t in results.teachers.iter_mut() {
        if let Ok(rel) = Path::new(&t.teacher).strip_prefix(root) {
            t.teacher = rel.display().to_string();
        }
    }
    results.transfer = describe_transfer(&base_student, student_data);
    write_results(root, &results)?;
    Ok(results)
}

/// `err` with what a stop left of reproduce when it is an [`Interrupted`] run: `done` of
/// the `planned` runs had completed, and those after this one did not start.
fn with_runs_left(err: anyhow::Error, root: &Path, done: usize, planned: usize) -> anyhow::Error {
    match err.downcast::<Interrupted>() {
        Ok(mut stop) => {
            let after = match planned.saturating_sub(done + 1) {
                0 => "it was the last".to_string(),
                1 => "the one after it did not start".to_string(),
                n => format!("the {n} after it did not start"),
            };
            stop.left = format!(
                "reproduce ({}) had completed {done} of its {planned} runs before this one, \
                 and {after}; reproduce does not resume as a whole: the command above \
                 completes this run alone, and results.json is written only by a \
                 `kdtrain reproduce` that runs to its end (a new folder)",
                root.display()
            );
            stop.into()
        }
        Err(err) => err,
    }
}

/// Before each run: a stop that came while the previous run was finishing (in its last
/// epoch or its final evaluation) ends reproduce here, saying what did not start,
/// instead of starting a run that would stop at once.
///
/// # Errors
/// An [`Interrupted`] (exit 130) when Ctrl-C, SIGTERM or SIGHUP has arrived.
fn stop_between_runs(root: &Path, done: usize, planned: usize) -> Result<()> {
    if !crate::error::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    Err(Interrupted::new(format!(
        "interrupted between runs: reproduce ({}) had completed {done} of its {planned} runs \
         (each in its own folder there), and the {} left did not start; reproduce does not \
         resume as a whole: results.json is written only by a `kdtrain reproduce` that runs \
         to its end (a new folder)",
        root.display(),
        planned - done
    ))
    .into())
}

/// The transfer set of the students, in words: "all N images of the training split", or
/// the fraction and omitted classes.
fn describe_transfer(c: &Config, data: &(Dataset, f64)) -> String {
    let n = data.0.train.len();
    let mut parts = Vec::new();
    if c.data.train_fraction < 1.0 {
        parts.push(format!(
            "a fraction {} of the training split drawn by data.subset_seed {}",
            c.data.train_fraction, c.data.subset_seed
        ));
    }
    if !c.data.omit_classes.is_empty() {
        let names: Vec<String> = data
            .0
            .transfer
            .omitted
            .iter()
            .map(|&k| data.0.spec.class_name(k))
            .collect();
        parts.push(format!("without class {}", names.join(", ")));
    }
    match parts.is_empty() {
        true => format!("all {n} images of the training split"),
        false => format!("{n} images: {}", parts.join(", ")),
    }
}

/// Each teacher's test accuracy, and with several the ensemble's (combined as
/// `distill.ensemble` at the first objective's temperature).
fn teacher_summaries(
    teachers: &[LoadedTeacher],
    from_file: bool,
    data: &Dataset,
    c: &Config,
    objective: &str,
) -> Vec<TeacherSummary> {
    let mut out = Vec::new();
    let mut each = Vec::new();
    for t in teachers {
        let Ok(z) = crate::eval::try_logits(t.network.as_ref(), &data.test.images) else {
            continue;
        };
        let acc = crate::eval::metrics(&z, &data.test.labels, None).acc;
        each.push(z);
        out.push(TeacherSummary {
            teacher: t.path.display().to_string(),
            arch: t.network.arch().spec(),
            sha256: t.sha256.clone(),
            from_file,
            test_acc: acc,
        });
    }
    if each.len() > 1 {
        let how = c.distill.ensemble;
        let t = c.distill.ensemble_temperature(objective);
        let z = crate::ensemble::combine(&each, how, t);
        out.push(TeacherSummary {
            teacher: format!("ensemble of {} ({})", each.len(), how.describe(t)),
            arch: "ensemble".into(),
            sha256: String::new(),
            from_file: false,
            test_acc: crate::eval::metrics(&z, &data.test.labels, None).acc,
        });
    }
    out
}

/// `results.md`, `results.json`, `comparison.png` and `gains.png` in `root`.
fn write_results(root: &Path, results: &Results) -> Result<()> {
    let md = results.markdown();
    crate::outln!("\n{md}");
    crate::checkpoint::write_atomic(&root.join("results.md"), md.as_bytes())?;
    crate::checkpoint::write_atomic(
        &root.join("results.json"),
        serde_json::to_string_pretty(results)?.as_bytes(),
    )?;
    // Mean validation accuracy per epoch of each model over the seeds.
    let mut labels: Vec<String> = Vec::new();
    for r in &results.runs {
        if !labels.contains(&label(r)) {
            labels.push(label(r));
        }
    }
    let means: Vec<(String, Vec<f64>)> = labels
        .iter()
        .map(|l| {
            let rs: Vec<&RunOutcome> = results.runs.iter().filter(|r| &label(r) == l).collect();
            let len = rs.iter().map(|r| r.val_acc.len()).min().unwrap_or(0);
            let mean = (0..len)
                .map(|i| rs.iter().map(|r| r.val_acc[i]).sum::<f64>() / rs.len() as f64)
                .collect();
            (l.clone(), mean)
        })
        .collect();
    let curves: Vec<(&str, &[f64])> = means
        .iter()
        .map(|(l, v)| (l.as_str(), v.as_slice()))
        .collect();
    let n = results.seeds.len();
    crate::plot::comparison_png(
        &root.join("comparison.png"),
        &format!(
            "Validation accuracy per epoch, mean over {n} seed{}",
            if n == 1 { "" } else { "s" }
        ),
        &curves,
    )?;
    crate::plot::gains_png(&root.join("gains.png"), &results.gains)?;
    crate::outln!(
        "wrote {}, {}, {} and {}",
        root.join("results.md").display(),
        root.join("results.json").display(),
        root.join("comparison.png").display(),
        root.join("gains.png").display()
    );
    Ok(())
}
