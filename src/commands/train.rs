//! `train teacher|student`: cross-entropy on the labels.

use anyhow::Result;

use super::{data_dir, load_raw, prepare_data, print_result, train_one};
use crate::cli::ModelArg;
use crate::config::settings::Settings;
use crate::objective::CrossEntropy;
use crate::run::{Run, RunKind};

/// Trains the teacher or the student alone.
pub fn run(s: &Settings, model: ModelArg) -> Result<()> {
    let kind = match model {
        ModelArg::Teacher => RunKind::Teacher,
        ModelArg::Student => RunKind::Student,
    };
    let dir = data_dir(s)?;
    // A bad data file leaves no run folder behind: the data are read first.
    let (raw, secs) = load_raw(s, &dir)?;
    let mut run = Run::open(&s.config, kind, s.run_name.as_deref(), s.resume, s.quiet)?;
    let data = prepare_data(s, &raw, secs).inspect_err(|_| run.abandon())?;
    drop(raw);
    // So does a run stopped before its first epoch completes.
    let out = train_one(s, &s.config, &mut run, &CrossEntropy, None, &data)
        .inspect_err(|_| run.abandon())?;
    print_result(&out);
    Ok(())
}
