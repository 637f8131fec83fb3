//! `distill`: a fresh student trained against a frozen teacher with the chosen
//! objective (`--objective`, default `kd`).

use anyhow::Result;

use super::{check_teacher_split, data_dir, load_data, load_teacher, print_result, train_one};
use crate::run::{Run, RunKind};
use crate::settings::Settings;

/// Distils the teacher (`--teacher`, or the newest in the out-dir) into a new student.
pub fn run(s: &Settings) -> Result<()> {
    let dir = data_dir(s)?;
    let teacher = load_teacher(s, &s.config)?;
    // The run's config records the teacher actually used, also when it was found
    // automatically.
    let config = s.run_config(|c| c.distill.teacher = teacher.path.display().to_string());
    let objective = crate::objective::build(&config.distill);
    let mut run = Run::open(
        &config,
        RunKind::Distilled,
        s.run_name.as_deref(),
        s.resume,
        s.quiet,
    )?;
    // A bad data file or a teacher with another split leaves no empty run folder.
    let data = load_data(s, &dir).inspect_err(|_| run.abandon())?;
    check_teacher_split(s, &teacher, &data.0).inspect_err(|_| run.abandon())?;
    let out = train_one(
        s,
        &config,
        &mut run,
        objective.as_ref(),
        Some(teacher.network.as_ref()),
        &data,
    )?;
    print_result(&out);
    Ok(())
}
