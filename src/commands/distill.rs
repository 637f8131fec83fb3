//! `distill`: a fresh student trained against a frozen teacher with the chosen
//! objective (`--objective`, default `kd`).

use anyhow::Result;

use super::{
    check_teacher_split, data_dir, load_raw, load_teacher, prepare_data, print_result, train_one,
};
use crate::config::Config;
use crate::config::settings::Settings;
use crate::error::usage;
use crate::run::{Run, RunKind};

/// Distils the teacher (`--teacher`, or the newest in the out-dir) into a new student.
pub fn run(s: &Settings) -> Result<()> {
    let dir = data_dir(s)?;
    // A resumed run keeps the teacher it started with: the one its config.toml names
    // (unless --teacher names one), whose file must be the same bytes.
    let mut recorded = None;
    if s.resume {
        let run_dir = match &s.run_name {
            Some(n) => s.out_dir().join(n),
            None => crate::run::newest_unfinished(s.out_dir(), RunKind::Distilled)?,
        };
        let saved_teacher = std::fs::read_to_string(run_dir.join("config.toml"))
            .ok()
            .and_then(|t| Config::parse(&t).ok())
            .map(|c| c.distill.teacher);
        let saved_sha = std::fs::read_to_string(run_dir.join("meta.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["teacher_sha256"].as_str().map(String::from));
        recorded = Some((saved_teacher, saved_sha));
    }
    let teacher_config = match &recorded {
        Some((Some(saved), _))
            if s.config.distill.teacher.as_os_str().is_empty() && !saved.as_os_str().is_empty() =>
        {
            s.run_config(|c| c.distill.teacher = saved.clone())
        }
        _ => s.config.clone(),
    };
    // The teacher is checked against the data's spec before any run folder exists.
    let (raw, secs) = load_raw(s, &dir)?;
    let teacher = load_teacher(s, &teacher_config, &raw.spec)?;
    if let Some((_, Some(sha))) = &recorded
        && *sha != teacher.sha256
    {
        return usage(format!(
            "--resume: teacher {} is not the file this run started with (SHA-256 {} vs \
             the recorded {}); resume with the original teacher, or start a new run",
            teacher.path.display(),
            &teacher.sha256[..16],
            &sha[..sha.len().min(16)]
        ));
    }
    // The run's config records the teacher actually used, also when it was found
    // automatically.
    let config = s.run_config(|c| c.distill.teacher = teacher.path.clone());
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
    check_teacher_split(s, &teacher, &data.0).inspect_err(|_| run.abandon())?;
    let mut meta = teacher.meta();
    meta["allow_split_mismatch"] = serde_json::Value::Bool(s.allow_split_mismatch);
    run.add_meta(meta)?;
    // So does a run stopped before its first epoch completes.
    let out = train_one(
        s,
        &config,
        &mut run,
        objective.as_ref(),
        Some(&teacher),
        &data,
    )
    .inspect_err(|_| run.abandon())?;
    print_result(&out);
    Ok(())
}
