//! The command line (clap). Parsing only: [`Cli::overrides`] turns the flags into
//! [`Overrides`] that [`crate::config::Config::apply`] merges over the config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

/// Knowledge distillation (Hinton et al. 2015) of an MLP teacher into a small MLP student
/// on Fashion-MNIST, on libtorch.
#[derive(Debug, Parser)]
#[command(name = "kdtrain", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the teacher (784-512-256-128-10) or the student (784-128-10) on the labels.
    Train {
        /// Which model.
        #[arg(value_enum)]
        model: ModelArg,
    },
    /// Distil the trained teacher into a fresh student.
    Distill(DistillArgs),
    /// Report loss, accuracy, per-class accuracy, confusion matrix and calibration of a checkpoint.
    Evaluate {
        /// A `model.safetensors` written by train or distill.
        checkpoint: PathBuf,
        /// Also report top-1 agreement with this teacher checkpoint and the mean KL at T=1.
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Train the teacher, then the student, then distil, and compare the three in a table.
    Reproduce(DistillArgs),
    /// Classify PNG/JPEG images, folders of them, or IDX files with a checkpoint.
    Predict(crate::predict::PredictArgs),
    /// Export a checkpoint as TorchScript, ONNX or PyTorch-named safetensors.
    Export(crate::export::ExportArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModelArg {
    Teacher,
    Student,
}

/// Distillation settings (override `[distill]` in the config).
#[derive(Debug, Args, Default)]
pub struct DistillArgs {
    /// Temperature T of the soft targets (> 0) [config: distill.temperature, default 2].
    #[arg(long = "t", visible_alias = "temperature", value_name = "T")]
    pub t: Option<f64>,
    /// Weight of the hard-label cross-entropy, in [0, 1]; the KL term gets 1 - alpha
    /// [config: distill.alpha, default 0.9].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Teacher checkpoint [default: the newest <out-dir>/teacher-*/model.safetensors].
    #[arg(long, value_name = "PATH")]
    pub teacher: Option<PathBuf>,
    /// Run the teacher on every batch instead of caching its logits once.
    #[arg(long)]
    pub no_teacher_cache: bool,
    /// Leave the KL term unscaled (s = 1, as the Keras reference) instead of T^2.
    #[arg(long)]
    pub no_t_squared: bool,
}

/// Flags shared by every command.
#[derive(Debug, Args)]
pub struct Common {
    /// Config file (TOML); flags override it [default: config.toml if present].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Folder with the four Fashion-MNIST IDX files, gzipped or not.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder for run folders [default: runs].
    #[arg(long, global = true, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Run folder name inside --out-dir [default: <model>-<date>-<time>].
    #[arg(long, global = true, value_name = "NAME")]
    pub run_name: Option<String>,
    /// Maximum epochs (full passes over the training set) [default: 50].
    #[arg(long, global = true)]
    pub epochs: Option<usize>,
    /// Examples per optimizer step [default: 256].
    #[arg(long, global = true)]
    pub batch_size: Option<usize>,
    /// Initial learning rate of the cosine schedule, per optimizer step [default: 1e-3].
    #[arg(long, global = true)]
    pub lr: Option<f64>,
    /// Seed for initialisation, the validation split and the shuffles [default: 42].
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// auto, cpu, cuda or cuda:N [default: auto = the first GPU if any].
    #[arg(long, global = true, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Intra-op CPU threads; 0 = physical cores [default: 0].
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Continue an interrupted run from its last completed epoch.
    #[arg(long, global = true)]
    pub resume: bool,
    /// Fetch Fashion-MNIST into data/fashion-mnist if it is found nowhere.
    #[arg(long, global = true)]
    pub download: bool,
    /// No progress bars or per-epoch lines; results and errors only.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

impl Cli {
    /// The flags that override config values.
    pub fn overrides(&self) -> Overrides {
        let c = &self.common;
        let mut o = Overrides {
            data_dir: c.data_dir.clone(),
            out_dir: c.out_dir.clone(),
            epochs: c.epochs,
            batch_size: c.batch_size,
            seed: c.seed,
            device: c.device.clone(),
            threads: c.threads,
            lr: c.lr,
            ..Default::default()
        };
        if let Command::Distill(d) | Command::Reproduce(d) = &self.command {
            o.temperature = d.t;
            o.alpha = d.alpha;
            o.no_teacher_cache = d.no_teacher_cache;
            o.no_t_squared = d.no_t_squared;
            o.teacher = d.teacher.clone();
        }
        o
    }
}
