//! `sweep`: plan a grid of distillation runs, run it here or on Slurm, and collect it
//! (see [`crate::sweep`]).

use anyhow::Result;

use crate::cli::Cli;
pub use crate::cli::{SweepAction, SweepArgs};
use crate::config::settings::{RunFlags, Settings};
use crate::error::usage;
use crate::sweep::plan::JobKind;
use crate::sweep::{collect, exec, plan};

/// Refuses common flags that would have no effect: `plan` takes the training flags
/// (they apply to every job) but not `--config` (the sweep file is the config); the
/// other subcommands take their settings from the plan.
fn refuse_unused(cli: &Cli, action: &SweepAction) -> Result<()> {
    let c = &cli.common;
    let planning = matches!(action, SweepAction::Plan { .. });
    let flags = [
        ("--config", c.config.is_some(), true),
        ("--run-name", c.run_name.is_some(), true),
        ("--resume", c.resume, true),
        ("--download", c.download, true),
        ("--data-dir", c.data_dir.is_some(), false),
        ("--out-dir", c.out_dir.is_some(), false),
        ("--epochs", c.epochs.is_some(), false),
        ("--batch-size", c.batch_size.is_some(), false),
        ("--lr", c.lr.is_some(), false),
        ("--seed", c.seed.is_some(), false),
        ("--device", c.device.is_some(), false),
        ("--threads", c.threads.is_some(), false),
    ];
    let unused: Vec<&str> = flags
        .iter()
        .filter(|(_, given, never)| *given && (*never || !planning))
        .map(|(f, ..)| *f)
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    let what = if planning {
        "sweep plan reads its config from the sweep file and names each job's run folder by \
         its id"
    } else {
        "this sweep subcommand takes every job's settings from the plan (jobs/<id>.toml)"
    };
    usage(format!(
        "{what}, so {} would have no effect; drop {}{}",
        unused.join(", "),
        if unused.len() == 1 { "it" } else { "them" },
        if planning {
            ""
        } else {
            ", or plan again with the flags (`kdtrain sweep plan FILE --epochs N ...`)"
        }
    ))
}

/// Runs a `sweep` subcommand.
pub fn run(cli: &Cli, args: &SweepArgs) -> Result<()> {
    let quiet = cli.common.quiet;
    refuse_unused(cli, &args.action)?;
    match &args.action {
        SweepAction::Plan { file, teacher } => {
            let opts = plan::PlanOptions {
                overrides: cli.overrides()?,
                teacher: teacher.clone(),
            };
            let (dir, p) = plan::plan(file, &opts)?;
            let n = p.jobs.len();
            if !quiet {
                crate::errln!(
                    "planned {n} jobs ({} distill, {} student alone); run them with one of:\n  \
                     kdtrain sweep run {dir} --jobs 2\n  kdtrain sweep submit {dir} --slurm\n  \
                     seq 0 {} | parallel -q -j 2 kdtrain sweep run-one {dir} --index {{}}",
                    p.jobs
                        .iter()
                        .filter(|j| j.kind == plan::JobKind::Distill)
                        .count(),
                    p.jobs
                        .iter()
                        .filter(|j| j.kind == plan::JobKind::Student)
                        .count(),
                    n.saturating_sub(1),
                    dir = crate::error::quote(&dir)
                );
            }
            crate::outln!("{}", dir.display());
            Ok(())
        }
        SweepAction::Run { dir, jobs } => exec::run_local(dir, *jobs, quiet),
        SweepAction::RunOne { dir, index } => exec::run_one(dir, *index, quiet, |job| {
            let overrides = crate::config::Overrides {
                out_dir: Some(job.out_dir.clone()),
                ..Default::default()
            };
            let s = Settings::from_config_file(
                Some(&job.config),
                &overrides,
                RunFlags {
                    quiet: job.quiet,
                    resume: job.resume,
                    run_name: Some(job.run_name.clone()),
                    ..RunFlags::default()
                },
            )?;
            match job.kind {
                JobKind::Distill => super::distill::run(&s),
                JobKind::Student => super::train::run(&s, crate::cli::ModelArg::Student),
            }
        }),
        SweepAction::Submit {
            dir,
            slurm,
            partition,
            time,
            max_parallel,
            extra,
            mem,
            dry_run,
            wait,
        } => {
            if !slurm {
                return usage(
                    "sweep submit: name the scheduler with --slurm (the only one so far); for \
                     others, each line i of jobs.txt is `kdtrain sweep run-one DIR --index i`",
                );
            }
            let extra = match extra {
                None => Vec::new(),
                Some(e) => match shlex::split(e) {
                    Some(v) => v,
                    None => {
                        return usage(format!(
                            "--extra {e:?}: unbalanced quotes; pass sbatch arguments as one \
                             shell-quoted string"
                        ));
                    }
                },
            };
            exec::submit_slurm(
                dir,
                &exec::SlurmOptions {
                    partition: partition.clone(),
                    time: time.clone(),
                    max_parallel: *max_parallel,
                    extra,
                    mem_mb: mem.unwrap_or(exec::DEFAULT_MEM_MB),
                    dry_run: *dry_run,
                    wait: *wait,
                },
            )
        }
        SweepAction::Collect { dir } => {
            let c = collect::collect(dir)?;
            let not_done: Vec<String> = c
                .rows
                .iter()
                .filter(|r| r.state != "finished")
                .map(|r| format!("{} ({}, {})", r.job.index, r.job.id, r.state))
                .collect();
            if !not_done.is_empty() {
                crate::errln!(
                    "warning: {} of {} jobs not finished (listed in summary.md): {}",
                    not_done.len(),
                    c.rows.len(),
                    not_done.join(", ")
                );
            }
            for f in &c.files {
                crate::outln!("{}", f.display());
            }
            Ok(())
        }
    }
}
