//! One typed settings value per invocation: the config file merged with the flags,
//! validated, with the device resolved. Commands read this and nothing else; they never
//! look at raw CLI fields or change the config after validation (a run's own config,
//! e.g. one seed of `reproduce`, is derived from it with [`Settings::run_config`]).

use std::path::{Path, PathBuf};

use anyhow::Result;
use tch::Device;

use crate::cli::{Cli, Command};
use crate::config::{Config, Overrides};
use crate::error::usage;

/// The flags of a command that are not config keys.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    /// `--quiet`.
    pub quiet: bool,
    /// `--resume`.
    pub resume: bool,
    /// `--run-name`.
    pub run_name: Option<String>,
    /// `--download`.
    pub download: bool,
    /// `--allow-split-mismatch` (distill).
    pub allow_split_mismatch: bool,
}

/// Everything a command needs to know about how it was asked to run.
pub struct Settings {
    /// The validated config; `runtime.device` names the device used (`cpu`, `cuda:N`).
    pub config: Config,
    pub device: Device,
    /// Intra-op threads in force.
    pub threads: usize,
    pub quiet: bool,
    /// `--resume`: continue an unfinished run.
    pub resume: bool,
    /// `--run-name`.
    pub run_name: Option<String>,
    /// `--download`: fetch Fashion-MNIST if it is found nowhere.
    pub download: bool,
    /// `--allow-split-mismatch` (distill).
    pub allow_split_mismatch: bool,
    /// `--config`, when given (`reproduce` repeats it in the commands it prints).
    pub config_file: Option<PathBuf>,
}

impl Settings {
    /// Loads `--config` (or `config.toml` when present), applies the flags, validates,
    /// resolves the device and sets the thread count.
    ///
    /// # Errors
    /// [`crate::error::UsageError`]s naming the file, key or flag; flags that have no
    /// effect on `evaluate`, `predict` or `export` are refused by name.
    pub fn resolve(cli: &Cli) -> Result<Settings> {
        let c = &cli.common;
        // The commands that train nothing, and whether they read the data set.
        let no_training = match &cli.command {
            Command::Evaluate(_) => Some(("evaluate", true)),
            Command::Predict(_) => Some(("predict", false)),
            Command::Export(_) => Some(("export", false)),
            _ => None,
        };
        if let Some((name, reads_data)) = no_training {
            let unused: Vec<&str> = [
                ("--data-dir", !reads_data && c.data_dir.is_some()),
                ("--epochs", c.epochs.is_some()),
                ("--batch-size", c.batch_size.is_some()),
                ("--lr", c.lr.is_some()),
                ("--seed", c.seed.is_some()),
                ("--resume", c.resume),
                ("--run-name", c.run_name.is_some()),
                ("--out-dir", c.out_dir.is_some()),
                ("--download", c.download),
            ]
            .into_iter()
            .filter_map(|(f, given)| given.then_some(f))
            .collect();
            if !unused.is_empty() {
                let it = if unused.len() == 1 { "it" } else { "them" };
                let what = if reads_data {
                    "does not train"
                } else {
                    "reads only the checkpoint and its own arguments"
                };
                let hint = if reads_data && c.download {
                    " (to fetch the data, use --download with a training command, or pass \
                     --data-dir)"
                } else {
                    ""
                };
                return usage(format!(
                    "{name} {what} and takes no {}; drop {it}{hint}",
                    unused.join(", ")
                ));
            }
        }
        // evaluate's objective flags choose the terms it reports against --teacher.
        if let Command::Evaluate(e) = &cli.command
            && e.teacher.is_empty()
        {
            let mut given = e.objective.params.given();
            if e.objective.objective.is_some() {
                given.insert(0, "--objective");
            }
            if !given.is_empty() {
                let it = if given.len() == 1 { "it" } else { "them" };
                return usage(format!(
                    "evaluate takes {} only with --teacher (the objective's terms are \
                     reported against the teacher); pass --teacher, or drop {it}",
                    given.join(", ")
                ));
            }
        }
        let overrides = cli.overrides()?;
        Settings::from_config_file(
            c.config.as_deref(),
            &overrides,
            RunFlags {
                quiet: c.quiet,
                resume: c.resume,
                run_name: c.run_name.clone(),
                download: c.download,
                allow_split_mismatch: matches!(&cli.command, Command::Distill(d) if d.allow_split_mismatch),
            },
        )
    }

    /// The settings of a command that reads `config` (the user's `--config`; `None`:
    /// `config.toml` when present, else the defaults) with `overrides` (the flags that
    /// set config keys) and `flags` (those that do not): the config merged, validated and
    /// canonicalised, the device resolved and the thread count set. `sweep run-one` builds
    /// a job's settings this way, from its config file, in its own process.
    ///
    /// # Errors
    /// [`crate::error::UsageError`]s naming the file, key or flag.
    pub fn from_config_file(
        config: Option<&Path>,
        overrides: &Overrides,
        flags: RunFlags,
    ) -> Result<Settings> {
        let (config_path, required) = match config {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("config.toml"), false),
        };
        let config_path_given = config.map(Path::to_path_buf);
        let loaded = Config::load(&config_path, required)?;
        let mut config = loaded.with_overrides(overrides, |e| {
            crate::error::UsageError(format!("config file {}: {e}", config_path.display())).into()
        })?;
        config.canonicalize();
        let device = crate::device::resolve(&config.runtime.device).map_err(|e| {
            // A device named by the file, not by --device: the file is named too.
            if overrides.device.is_none()
                && loaded.runtime.device != Config::default().runtime.device
            {
                crate::error::UsageError(format!("config file {}: {e}", config_path.display()))
                    .into()
            } else {
                e
            }
        })?;
        // The resolved config (written next to each checkpoint) names the device used.
        config.runtime.device = match device {
            Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".to_string(),
        };
        let threads = crate::device::set_threads(config.runtime.threads);
        Ok(Settings {
            config,
            device,
            threads,
            quiet: flags.quiet,
            resume: flags.resume,
            run_name: flags.run_name,
            download: flags.download,
            allow_split_mismatch: flags.allow_split_mismatch,
            config_file: config_path_given,
        })
    }

    /// The config of one run derived from these settings: `f` sets what differs (a
    /// seed, the out-dir, the teacher used, the objective).
    pub fn run_config(&self, f: impl FnOnce(&mut Config)) -> Config {
        let mut c = self.config.clone();
        f(&mut c);
        c
    }

    /// The out-dir.
    pub fn out_dir(&self) -> &Path {
        &self.config.runtime.out_dir
    }

    /// Prints a status line to stderr unless `--quiet`.
    pub fn say(&self, line: &str) {
        if !self.quiet {
            crate::errln!("{line}");
        }
    }
}
