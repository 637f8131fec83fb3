//! `reproduce`: the teacher, then for every seed the student trained alone and one
//! distilled student per objective, all on one validation split; then `results.md`,
//! `results.json` and `comparison.png` (validation accuracy per epoch, every seed).
//!
//! Layout of `<out_dir>/reproduce-<date>-<time>/`: `teacher/` (or `seed-N/teacher/`
//! with `reproduce.teacher_per_seed`), `seed-N/student/`, `seed-N/distilled-<objective>/`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use super::{LoadedTeacher, RunOutcome, data_dir, load_data, print_result, train_one};
use crate::config::Validation;
use crate::config::settings::Settings;
use crate::error::{UsageError, usage};
use crate::objective::CrossEntropy;
use crate::report::{Results, label};
use crate::run::{Run, RunKind};

/// Runs the whole comparison.
pub fn run(s: &Settings) -> Result<()> {
    let t0 = Instant::now();
    if s.resume || s.run_name.is_some() {
        return usage(
            "reproduce takes neither --resume nor --run-name; it makes a new reproduce-<time> \
             folder (resume one of its runs with the command the interruption message gives)",
        );
    }
    let c = &s.config;
    let seeds = c.reproduce.seeds.clone();
    let objectives = if c.reproduce.objectives.is_empty() {
        vec![c.distill.objective.clone()]
    } else {
        c.reproduce.objectives.clone()
    };
    let per_seed_teacher = c.reproduce.teacher_per_seed;
    let dir = data_dir(s)?;
    let _ = std::fs::create_dir_all(s.out_dir());
    let root = crate::run::claim_stamped_dir(s.out_dir(), "reproduce").map_err(|(dir, e)| {
        UsageError(format!(
            "cannot create {} ({e}); choose a writable --out-dir",
            dir.display()
        ))
    })?;
    s.say(&format!(
        "reproduce in {}: seeds {:?}, objectives {}, {}",
        root.display(),
        seeds,
        objectives.join(", "),
        if per_seed_teacher {
            "one teacher per seed"
        } else {
            "one teacher for every seed"
        }
    ));
    let data = load_data(s, &dir).inspect_err(|_| {
        let _ = std::fs::remove_dir(&root);
    })?;
    let q = s.quiet;
    let mut runs: Vec<RunOutcome> = Vec::new();
    let mut teacher: Option<(LoadedTeacher, PathBuf)> = None;
    // The config file the user named, repeated in the resume commands printed on Ctrl-C.
    let config_flag = s
        .config_file
        .as_ref()
        .map(|p| format!(" --config {}", crate::error::quote(p)))
        .unwrap_or_default();
    // A stage stopped before its first epoch (Ctrl-C, a bad teacher) leaves no empty
    // folder: its run folder is abandoned, and the seed folders and the root too when
    // nothing else is in them.
    let trained = (|| -> Result<()> {
        for (i, &seed) in seeds.iter().enumerate() {
            let seed_dir = root.join(format!("seed-{seed}"));
            if per_seed_teacher || i == 0 {
                let (out_dir, name) = if per_seed_teacher {
                    (seed_dir.clone(), "teacher")
                } else {
                    (root.clone(), "teacher")
                };
                let config = s.run_config(|c| {
                    c.seed = seed;
                    c.runtime.out_dir = out_dir.clone();
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
                });
                let mut run = Run::open(&config, RunKind::Teacher, Some(name), false, q)?;
                // reproduce's own teacher recipe, as `train teacher` flags.
                run.resume_args = format!(
                    "{config_flag} --seed {seed} --arch {} --augment {}",
                    config.model.teacher, config.augment.teacher,
                );
                let out = train_one(s, &config, &mut run, &CrossEntropy, None, &data)
                    .inspect_err(|_| run.abandon())?;
                print_result(&out);
                drop(run);
                let path = out.run_dir.join(crate::run::MODEL_FILE);
                let t_config = s.run_config(|c| c.distill.teacher = path.clone());
                teacher = Some((super::load_teacher(s, &t_config, &data.0.spec)?, path));
                runs.push(out);
            }
            let (t, t_path) = teacher.as_ref().expect("trained above");
            let config = s.run_config(|c| {
                c.seed = seed;
                c.runtime.out_dir = seed_dir.clone();
                c.distill.teacher = t_path.clone();
            });
            let mut run = Run::open(&config, RunKind::Student, Some("student"), false, q)?;
            run.resume_args = format!("{config_flag} --seed {seed}");
            let out = train_one(s, &config, &mut run, &CrossEntropy, None, &data)
                .inspect_err(|_| run.abandon())?;
            print_result(&out);
            runs.push(out);
            for name in &objectives {
                let config = s.run_config(|c| {
                    c.seed = seed;
                    c.runtime.out_dir = seed_dir.clone();
                    c.distill.teacher = t_path.clone();
                    c.distill.objective = name.clone();
                });
                let objective = config.distill.build_chosen()?;
                let folder = format!("distilled-{name}");
                let mut run = Run::open(&config, RunKind::Distilled, Some(&folder), false, q)?;
                run.resume_args = format!(
                    "{config_flag} --seed {seed} --objective {name} --teacher {}",
                    crate::error::quote(t_path)
                );
                run.add_meta(t.meta())?;
                let out = train_one(s, &config, &mut run, objective.as_ref(), Some(t), &data)
                    .inspect_err(|_| run.abandon())?;
                print_result(&out);
                runs.push(out);
            }
        }
        Ok(())
    })();
    if let Err(e) = trained {
        for seed in &seeds {
            let _ = std::fs::remove_dir(root.join(format!("seed-{seed}")));
        }
        let _ = std::fs::remove_dir(&root);
        return Err(e);
    }
    let validation = match c.data.validation {
        Validation::Split => data.0.split.describe(),
        Validation::Test => "the test set (as the Keras reference; optimistic)".into(),
    };
    let results = Results::new(
        runs,
        &seeds,
        &objectives,
        per_seed_teacher,
        validation,
        c.early_stopping.monitor.describe().into(),
        t0.elapsed().as_secs_f64(),
    );
    let md = results.markdown();
    crate::outln!("\n{md}");
    crate::checkpoint::write_atomic(&root.join("results.md"), md.as_bytes())?;
    crate::checkpoint::write_atomic(
        &root.join("results.json"),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;
    let labels: Vec<String> = results.runs.iter().map(label).collect();
    let curves: Vec<(&str, &[f64])> = results
        .runs
        .iter()
        .zip(&labels)
        .map(|(r, l)| (l.as_str(), r.val_acc.as_slice()))
        .collect();
    crate::plot::comparison_png(
        &root.join("comparison.png"),
        &format!(
            "Validation accuracy per epoch ({} seed{})",
            seeds.len(),
            if seeds.len() == 1 { "" } else { "s" }
        ),
        &curves,
    )?;
    crate::outln!(
        "wrote {}, {} and {}",
        root.join("results.md").display(),
        root.join("results.json").display(),
        root.join("comparison.png").display()
    );
    Ok(())
}
