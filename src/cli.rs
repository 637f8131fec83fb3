//! The command line (clap). Parsing only: [`Cli::overrides`] turns the flags into
//! [`Overrides`] that [`crate::config::Config::apply`] merges over the config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{ObjectiveFlags, Overrides, parse_seeds};
use crate::error::UsageError;

/// Knowledge distillation (Hinton et al. 2015) of a teacher (a CNN, an MLP or a TorchScript
/// model) into a small student, on Fashion-MNIST or your own image-classification data,
/// on libtorch.
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
    /// Train the teacher (model.teacher: the MLP with hidden layers 512-256-128 and dropout
    /// 0.2; --arch cnn for the CNN) or the student (model.student: the MLP with one hidden
    /// layer of 128 and dropout 0.1) on the labels.
    Train {
        /// Which model.
        #[arg(value_enum)]
        model: ModelArg,
        /// Architecture: mlp (the Keras example's MLP for the role, without dropout: hidden
        /// layers 512-256-128 teacher, 128 student), cnn (cnn:32,64,256,dropout=0.3)
        /// or a spec such as "mlp:512,256,128,dropout=0.2" [config: model.teacher /
        /// model.student].
        #[arg(long, value_name = "ARCH")]
        arch: Option<String>,
        /// Training augmentation: none, or a comma list of shiftN and flip
        /// ("shift2,flip") [config: augment.teacher / augment.student].
        #[arg(long, value_name = "VIEWS")]
        augment: Option<String>,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Distil the trained teacher into a fresh student (model.student: the MLP with one
    /// hidden layer of 128 and dropout 0.1).
    Distill(DistillArgs),
    /// Report loss, accuracy, per-class accuracy, confusion matrix and calibration of a
    /// checkpoint; with --teacher, agreement and an objective's terms against it.
    Evaluate(EvaluateArgs),
    /// Read the shipped teacher (or train one), then per seed the student alone and the
    /// distilled student(s), and compare them over seeds (mean, sd, paired gain with its
    /// 95% interval). Takes neither --resume nor --run-name.
    Reproduce(ReproduceArgs),
    /// Classify PNG, JPEG, BMP, GIF or WebP images, folders of them, or IDX files with a
    /// checkpoint.
    Predict(crate::predict::PredictArgs),
    /// Export a checkpoint as TorchScript, ONNX or PyTorch-named safetensors.
    Export(crate::export::ExportArgs),
    /// Sweep temperature x alpha x objective x seed: plan, run here or on Slurm, collect.
    Sweep(SweepArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModelArg {
    Teacher,
    Student,
}

/// The distillation objective and its hyper-parameters (override `[distill]` and
/// `[distill.<objective>]` in the config). A flag the chosen objective does not have is
/// an error. The hyper-parameter flags and their help come from the objectives' registry
/// ([`crate::objective::FLAGS`] and each objective's [`crate::objective::Spec`]).
#[derive(Debug, Default, Clone)]
pub struct ObjectiveArgs {
    /// `--objective`: one name, or (reproduce) a comma list.
    pub objective: Option<String>,
    /// The hyper-parameter flags given.
    pub params: ObjectiveFlags,
}

impl clap::FromArgMatches for ObjectiveArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut a = ObjectiveArgs::default();
        a.update_from_arg_matches(m)?;
        Ok(a)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        use crate::objective::FlagKind;
        if let Some(o) = m.get_one::<String>("objective") {
            self.objective = Some(o.clone());
        }
        for f in crate::objective::FLAGS {
            let value = match f.kind {
                FlagKind::Number => m.get_one::<f64>(f.id()).copied(),
                FlagKind::Count => m.get_one::<usize>(f.id()).map(|&v| v as f64),
                FlagKind::Switch => m.get_flag(f.id()).then_some(0.0),
            };
            if let Some(v) = value {
                self.params.set(f.name, v);
            }
        }
        Ok(())
    }
}

impl clap::Args for ObjectiveArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        use crate::objective::FlagKind;
        use clap::{Arg, ArgAction};
        let cmd = cmd.arg(
            Arg::new("objective")
                .long("objective")
                .value_name("NAME")
                .help(
                    "Distillation objective: kd (Hinton 2015), dkd (Zhao 2022), lskd (Sun 2024), \
                     dist (Huang 2022) or mse (Ba & Caruana 2014) [config: distill.objective, \
                     default kd]. reproduce takes a comma list (kd,dkd)",
                ),
        );
        cmd.args(crate::objective::FLAGS.iter().map(|f| {
            let arg = Arg::new(f.id()).long(f.id()).help(f.help());
            let arg = match f.alias {
                Some(a) => arg.visible_alias(a),
                None => arg,
            };
            match f.kind {
                FlagKind::Number => arg
                    .value_name(f.value_name)
                    .value_parser(clap::value_parser!(f64)),
                FlagKind::Count => arg
                    .value_name(f.value_name)
                    .value_parser(clap::value_parser!(usize)),
                FlagKind::Switch => arg.action(ArgAction::SetTrue),
            }
        }))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The transfer set: the training images a model trains on (override `data.train_fraction`
/// and `data.omit_classes`).
#[derive(Debug, Args, Default, Clone)]
pub struct TransferArgs {
    /// Train on this fraction of the training split (0 < F <= 1), drawn by
    /// data.subset_seed, not by --seed [config: data.train_fraction, default 1].
    #[arg(long, value_name = "F")]
    pub train_fraction: Option<f64>,
    /// Leave a class out of the training set (not validation or test), by name
    /// ("Trouser") or index; repeatable. Its logits are then shifted by the bias that
    /// maximises validation accuracy [config: data.omit_classes, default none].
    #[arg(long = "omit-class", value_name = "NAME|INDEX")]
    pub omit_class: Vec<String>,
}

impl TransferArgs {
    fn apply(&self, o: &mut Overrides) {
        o.train_fraction = self.train_fraction;
        if !self.omit_class.is_empty() {
            o.omit_classes = Some(self.omit_class.clone());
        }
    }
}

/// Distillation settings (override `[distill]` in the config).
#[derive(Debug, Args, Default, Clone)]
pub struct DistillArgs {
    #[command(flatten)]
    pub objective: ObjectiveArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Teacher checkpoint or TorchScript file; repeat it for an ensemble of teachers,
    /// combined as distill.ensemble says [config: distill.teacher / distill.teachers;
    /// default: the newest <out-dir>/teacher-*/model.safetensors].
    #[arg(long, value_name = "PATH")]
    pub teacher: Vec<PathBuf>,
    /// Run the teacher on every batch instead of caching its logits once.
    #[arg(long)]
    pub no_teacher_cache: bool,
    /// The student's training views: none, or a comma list of shiftN and flip; the
    /// teacher sees the same view [config: augment.student].
    #[arg(long, value_name = "VIEWS")]
    pub augment: Option<String>,
    /// Distil even when the teacher was trained with another validation split (its
    /// training images may then be in this run's validation set).
    #[arg(long)]
    pub allow_split_mismatch: bool,
}

/// `reproduce`'s settings.
#[derive(Debug, Args, Default, Clone)]
pub struct ReproduceArgs {
    #[command(flatten)]
    pub objective: ObjectiveArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Seeds: a comma list (0,1,2; one seed as 7,) or a count N for seeds 0 to N-1
    /// [config: reproduce.seeds, default 0,1,2,3,4].
    #[arg(long, value_name = "LIST|N")]
    pub seeds: Option<String>,
    /// The teacher's epochs (after --epochs, which sets every model's)
    /// [config: reproduce.teacher_epochs, default 60; used when reproduce trains its
    /// teacher].
    #[arg(long, value_name = "N")]
    pub teacher_epochs: Option<usize>,
    /// Run the teacher on every batch instead of caching its logits once.
    #[arg(long)]
    pub no_teacher_cache: bool,
    /// Which comparison: full (all data), fraction (a 3% transfer set, Hinton et al.
    /// 2015 section 6), omit (a class never seen, section 3), ensemble (several teachers,
    /// section 4) or paper (the four, beside the paper's figures)
    /// [config: reproduce.experiment, default full].
    #[arg(long, value_name = "NAME")]
    pub experiment: Option<crate::config::Experiment>,
    /// Train the teacher with reproduce's recipe instead of using
    /// reproduce.teacher_file (the shipped teacher) [config: reproduce.teacher_file = ""].
    #[arg(long)]
    pub train_teacher: bool,
    /// Train K teachers (seeds: the first seed, +1, ...) and distil their ensemble
    /// [config: reproduce.teachers, default 1].
    #[arg(long, value_name = "K")]
    pub teachers: Option<usize>,
}

/// `evaluate`'s arguments.
#[derive(Debug, Args, Clone)]
pub struct EvaluateArgs {
    /// A `model.safetensors` written by train or distill.
    pub checkpoint: PathBuf,
    /// Also report top-1 agreement with this teacher checkpoint, the mean KL at T=1,
    /// the teacher's accuracy, and the objective's terms (--objective); repeated, the
    /// same against the ensemble (distill.ensemble), and each member's accuracy.
    #[arg(long, value_name = "PATH")]
    pub teacher: Vec<PathBuf>,
    /// With --teacher: report this objective's terms on each set (kd: ce, kl).
    #[command(flatten)]
    pub objective: ObjectiveArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Add VALUE to class CLASS's logit (a name or an index; repeatable), in place of
    /// the shift the checkpoint stores for that class (kdtrain.logit_bias).
    #[arg(long = "bias", value_name = "CLASS=VALUE")]
    pub bias: Vec<String>,
}

/// Flags shared by every command.
#[derive(Debug, Args)]
pub struct Common {
    /// Config file (TOML); flags override it [default: config.toml if present].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The data set: a folder with four IDX files (Fashion-MNIST's, or any size with a
    /// classes.txt), an image folder (train/<class>/, test/<class>/), CIFAR's binary
    /// batches, or an .npz file (data.source says which when detection cannot).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder for run folders [default: runs].
    #[arg(long, global = true, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Run folder name inside --out-dir [default: <model>-<date>-<time>].
    #[arg(long, global = true, value_name = "NAME")]
    pub run_name: Option<String>,
    /// Epochs (full passes over the training set) of every model trained, the teacher
    /// included [default: 200, the teacher 60, reproduce's teacher 60].
    #[arg(long, global = true)]
    pub epochs: Option<usize>,
    /// Examples per optimizer step [default: 256].
    #[arg(long, global = true)]
    pub batch_size: Option<usize>,
    /// Initial learning rate of the cosine schedule, per optimizer step [default: 1e-3].
    #[arg(long, global = true)]
    pub lr: Option<f64>,
    /// Seed for initialisation, the shuffles, dropout and augmentation (the validation
    /// split has its own, data.split_seed) [default: 42].
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

impl ObjectiveArgs {
    fn apply(&self, o: &mut Overrides) {
        o.objectives = self
            .objective
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            // An empty item (`--objective ''`, `kd,`, `kd,,dkd`) stays, to be named as
            // an unknown objective rather than dropped.
            .collect();
        o.params = self.params.clone();
    }
}

impl Cli {
    /// The flags that override config values.
    ///
    /// # Errors
    /// A [`crate::error::UsageError`] for a malformed `--seeds`.
    pub fn overrides(&self) -> anyhow::Result<Overrides> {
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
        match &self.command {
            Command::Distill(d) => {
                d.objective.apply(&mut o);
                d.transfer.apply(&mut o);
                o.no_teacher_cache = d.no_teacher_cache;
                o.teacher = d.teacher.clone();
                o.augment = d
                    .augment
                    .clone()
                    .map(|a| (crate::model::RunKind::Distilled, a));
            }
            Command::Reproduce(r) => {
                r.objective.apply(&mut o);
                r.transfer.apply(&mut o);
                o.many_objectives = true;
                o.no_teacher_cache = r.no_teacher_cache;
                o.teacher_epochs = r.teacher_epochs;
                o.experiment = r.experiment;
                o.train_teacher = r.train_teacher;
                o.teachers = r.teachers;
                if let Some(s) = &r.seeds {
                    o.seeds = Some(parse_seeds(s).map_err(UsageError)?);
                }
            }
            Command::Evaluate(e) => e.objective.apply(&mut o),
            Command::Train {
                model,
                arch,
                augment,
                transfer,
            } => {
                transfer.apply(&mut o);
                let kind = match model {
                    ModelArg::Teacher => crate::model::RunKind::Teacher,
                    ModelArg::Student => crate::model::RunKind::Student,
                };
                o.arch = arch.clone().map(|a| (kind, a));
                o.augment = augment.clone().map(|a| (kind, a));
            }
            Command::Predict(_) | Command::Export(_) | Command::Sweep(_) => {}
        }
        Ok(o)
    }
}

/// `sweep`'s subcommands.
#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub action: SweepAction,
}

#[derive(Debug, Subcommand)]
pub enum SweepAction {
    /// Expand a sweep file (a config with a [sweep] table of lists: objective, t, alpha,
    /// beta, gamma, ce_weight, kd_weight, warmup, seeds; student = true|false) into a new
    /// sweep-<date>-<time> folder under --out-dir; prints the folder last.
    Plan {
        /// The sweep file (TOML).
        file: PathBuf,
        /// Teacher checkpoint for every job [default: distill.teacher in the file, else the
        /// newest <out-dir>/teacher-*/model.safetensors].
        #[arg(long, value_name = "PATH")]
        teacher: Option<PathBuf>,
    },
    /// Run the unfinished jobs of a sweep folder here, K at a time, each in its own
    /// process; finished jobs are skipped, interrupted ones resumed.
    Run {
        /// A sweep folder written by `sweep plan`.
        dir: PathBuf,
        /// Jobs at a time (processes; each uses the threads its config names, 1 by default).
        #[arg(long, short = 'j', default_value_t = 1, value_name = "K")]
        jobs: usize,
    },
    /// Run one job of a sweep folder in this process (what each Slurm array task runs);
    /// a finished job is skipped.
    RunOne {
        /// A sweep folder written by `sweep plan`.
        dir: PathBuf,
        /// The job's 0-based line in jobs.txt (Slurm: $SLURM_ARRAY_TASK_ID).
        #[arg(long, value_name = "I")]
        index: usize,
    },
    /// Submit the unfinished jobs as a Slurm job array (writes <dir>/sweep.sbatch, then
    /// runs sbatch).
    Submit {
        /// A sweep folder written by `sweep plan`.
        dir: PathBuf,
        /// Submit to Slurm (the only scheduler so far; for others see jobs.txt).
        #[arg(long)]
        slurm: bool,
        /// Slurm partition.
        #[arg(long)]
        partition: Option<String>,
        /// Time limit per task, in sbatch's format (minutes, or H:MM:SS).
        #[arg(long)]
        time: Option<String>,
        /// At most this many array tasks at once.
        #[arg(long, value_name = "M")]
        max_parallel: Option<usize>,
        /// More sbatch arguments, quoted as one: --extra '--account=x --qos=y'.
        #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
        extra: Option<String>,
        /// Memory per task in MB [default: 1200, the measured peak of a job plus a third].
        #[arg(long, value_name = "MB")]
        mem: Option<u64>,
        /// Only write sweep.sbatch.
        #[arg(long)]
        dry_run: bool,
        /// Wait until the array has finished (sbatch --wait).
        #[arg(long)]
        wait: bool,
    },
    /// Write sweep.csv, summary.md, heatmap.png and best.toml from the jobs' summaries.
    Collect {
        /// A sweep folder written by `sweep plan`.
        dir: PathBuf,
    },
}
