//! `distill`: a fresh student trained against a frozen teacher (or an ensemble of
//! teachers) with the chosen objective (`--objective`, default `kd`).

use anyhow::Result;

use super::{
    check_teacher_split, data_dir, load_raw, load_teachers, prepare_data, print_result,
    recorded_teacher_shas, teachers_meta, train_one,
};
use crate::config::Config;
use crate::config::settings::Settings;
use crate::error::usage;
use crate::run::{Run, RunKind};

/// Distils the teacher (`--teacher`, or the newest in the out-dir) into a new student.
pub fn run(s: &Settings) -> Result<()> {
    let dir = data_dir(s)?;
    // A resumed run keeps the teachers it started with: the ones its config.toml names
    // (unless --teacher names some), whose files must be the same bytes.
    let mut recorded = None;
    if s.resume {
        let run_dir = match &s.run_name {
            Some(n) => s.out_dir().join(n),
            None => crate::run::newest_unfinished(s.out_dir(), RunKind::Distilled)?,
        };
        let saved = std::fs::read_to_string(run_dir.join("config.toml"))
            .ok()
            .and_then(|t| Config::parse(&t).ok())
            .map(|c| c.distill);
        let saved_shas = std::fs::read_to_string(run_dir.join("meta.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|v| recorded_teacher_shas(&v))
            .unwrap_or_default();
        recorded = Some((saved, saved_shas));
    }
    let teacher_config = match &recorded {
        Some((Some(saved), _))
            if s.config.distill.teacher_paths().is_empty() && !saved.teacher_paths().is_empty() =>
        {
            s.run_config(|c| {
                c.distill.teacher = saved.teacher.clone();
                c.distill.teachers = saved.teachers.clone();
            })
        }
        _ => s.config.clone(),
    };
    // The teachers are checked against the data's spec before any run folder exists.
    let (raw, secs) = load_raw(s, &dir)?;
    let teachers = load_teachers(s, &teacher_config, &raw.spec)?;
    if let Some((_, shas)) = &recorded
        && !shas.is_empty()
    {
        let now: Vec<&str> = teachers.iter().map(|t| t.sha256.as_str()).collect();
        if now != shas.iter().map(String::as_str).collect::<Vec<_>>() {
            let short = |v: Vec<&str>| {
                v.iter()
                    .map(|s| &s[..s.len().min(16)])
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (what, verb, original) = match teachers.len() {
                1 => ("teacher", "is not the file", "teacher"),
                _ => ("the teacher files", "are not the ones", "teachers"),
            };
            return usage(format!(
                "--resume: {what} {} {verb} this run started with (SHA-256 {} vs the \
                 recorded {}); resume with the original {original}, or start a new run",
                teachers
                    .iter()
                    .map(|t| t.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                short(now),
                short(shas.iter().map(String::as_str).collect())
            ));
        }
    }
    // The run's config records the teachers actually used, also when found
    // automatically.
    let config = s.run_config(|c| match teachers.as_slice() {
        [one] => {
            c.distill.teacher = one.path.clone();
            c.distill.teachers.clear();
        }
        many => {
            c.distill.teacher = Default::default();
            c.distill.teachers = many.iter().map(|t| t.path.clone()).collect();
        }
    });
    let objective = config.distill.build_chosen()?;
    let mut run = Run::open(
        &config,
        RunKind::Distilled,
        s.run_name.as_deref(),
        s.resume,
        s.quiet,
    )?;
    // A bad data file or a teacher with another split leaves no empty run folder.
    let data = prepare_data(s, &raw, secs).inspect_err(|_| run.abandon())?;
    drop(raw);
    for t in &teachers {
        check_teacher_split(s, t, &data.0).inspect_err(|_| run.abandon())?;
    }
    let t = config.distill.ensemble_temperature(objective.name());
    let mut meta = teachers_meta(&teachers, config.distill.ensemble, t);
    meta["allow_split_mismatch"] = serde_json::Value::Bool(s.allow_split_mismatch);
    run.add_meta(meta)?;
    if teachers.len() > 1 {
        s.say(&format!(
            "ensemble of {} teachers: soft targets from {}",
            teachers.len(),
            config.distill.ensemble.describe(t)
        ));
    }
    // So does a run stopped before its first epoch completes.
    let out = train_one(s, &config, &mut run, objective.as_ref(), &teachers, &data)
        .inspect_err(|_| run.abandon())?;
    print_result(&out);
    Ok(())
}
