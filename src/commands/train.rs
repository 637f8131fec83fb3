//! `train teacher|student`: cross-entropy on the labels.

use anyhow::Result;

use super::{data_dir, load_data, print_result, train_one};
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
    // The run folder is claimed before the data are read (a folder in use fails fast);
    // a bad data file leaves no empty run folder behind.
    let mut run = Run::open(&s.config, kind, s.run_name.as_deref(), s.resume, s.quiet)?;
    let data = load_data(s, &dir).inspect_err(|_| run.abandon())?;
    // So does a run stopped before its first epoch completes.
    let out = train_one(s, &s.config, &mut run, &CrossEntropy, &[], &data)
        .inspect_err(|_| run.abandon())?;
    print_result(&out);
    Ok(())
}
