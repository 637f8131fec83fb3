//! The configuration: `config.toml` mirrored section by section, merged with the
//! command-line flags, then validated into one value that the rest of the program reads.
//!
//! Precedence: built-in defaults < config file < flags. Unknown keys, wrong types and
//! values out of range are [`UsageError`]s that name the key, so they surface before
//! any data is loaded or any epoch is trained. This module does no I/O beyond reading
//! the config file.
//!
//! Here: the serde mirror of `config.toml` with its defaults, and reading it. The merge
//! of the flags ([`merge`]), the checks of every value ([`validate`]) and the typed
//! [`settings::Settings`] a command reads are beside it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::error::{UsageError, usage};

pub mod merge;
pub mod settings;
mod validate;

/// The whole configuration, as in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seed for initialisation, the validation split and the per-epoch shuffles.
    pub seed: u64,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub lr_schedule: LrScheduleConfig,
    pub optimizer: OptimizerConfig,
    pub early_stopping: EarlyStoppingConfig,
    pub model: ModelConfig,
    pub augment: AugmentConfig,
    pub distill: DistillConfig,
    pub reproduce: ReproduceConfig,
    pub logging: LoggingConfig,
    pub runtime: RuntimeConfig,
}

/// The networks that play each role, as architecture specs (see [`crate::model::Arch`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The teacher's architecture, e.g. `"mlp:512,256,128"` (inputs-512-256-128-classes).
    pub teacher: String,
    /// The student's architecture, e.g. `"mlp:128"` (inputs-128-classes); by default
    /// `"mlp:128,dropout=0.1"`, the same 101,770 parameters with dropout 0.1 on the hidden
    /// layer while training (docs/results/ against docs/results/no-student-dropout/).
    pub student: String,
    /// What a TorchScript teacher takes: `"image"` (`[batch, C, H, W]`) or `"flat"`
    /// (`[batch, C·H·W]`), f32 in [0, 1].
    pub teacher_input: String,
    /// What a TorchScript teacher returns: `"logits"`, `"probabilities"` (its `forward`
    /// ends in softmax; kdtrain takes their logarithm) or `"log_probabilities"` (it ends
    /// in log_softmax, which are logits as they are).
    pub teacher_output: crate::torchscript::Output,
}

/// Training augmentation per role (see [`crate::augment`]): `"none"` or a comma list of
/// `shiftN` and `flip`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// The teacher's training views, e.g. `"shift2,flip"`.
    pub teacher: String,
    /// The student's views, trained alone or distilled (the same recipe for both).
    pub student: String,
    /// For the student: each epoch draws one of this many fixed views per example, so
    /// the teacher's logits of every view can be cached (consistent teaching); 0 draws a
    /// fresh view every epoch (the teacher then runs on every batch).
    pub views: u64,
}

/// `reproduce`: which seeds and objectives, and whether each seed gets its own teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReproduceConfig {
    /// Training seeds; each gets a student alone and a distilled student per objective.
    pub seeds: Vec<u64>,
    /// Distillation objectives to compare; empty = `distill.objective` alone.
    pub objectives: Vec<String>,
    /// Train one teacher per seed instead of one (with the first seed) for all.
    pub teacher_per_seed: bool,
    /// The teacher's architecture in `reproduce`; `""` = `model.teacher`.
    pub teacher: String,
    /// Its training augmentation; `""` = `augment.teacher`.
    pub teacher_augment: String,
    /// Its epochs; 0 = `train.teacher_epochs`.
    pub teacher_epochs: usize,
    /// Which comparison: see [`Experiment`].
    pub experiment: Experiment,
    /// A trained teacher to use instead of training one (a kdtrain checkpoint or
    /// TorchScript file; a relative path is looked up from the working folder, then from
    /// the repository's root); `""` = train it with the recipe above (`--train-teacher`).
    /// Only for one teacher (`teachers = 1`).
    pub teacher_file: PathBuf,
    /// The SHA-256 (hex) `teacher_file` must have; `""` = not checked.
    pub teacher_sha256: String,
    /// Teachers trained (seeds: the first seed, +1, ...) and distilled as one ensemble;
    /// 1 = one teacher. The `ensemble` experiment takes 3 when this is 1.
    pub teachers: usize,
    /// The `fraction` experiment's transfer set: this fraction of the training split
    /// (`data.train_fraction`, unless that is set below 1).
    pub fraction: f64,
    /// The `omit` experiment's classes left out of the transfer set, names or indices
    /// (`data.omit_classes`, unless that is set).
    pub omit_classes: Vec<String>,
}

/// Which comparison `reproduce` runs (`reproduce.experiment`, `--experiment`). In each,
/// per seed, the student trained alone and the distilled student(s) see the same
/// training images, chosen on the validation split; the teacher keeps all its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Experiment {
    /// All the training split (less any `data.train_fraction` / `data.omit_classes`).
    #[default]
    Full,
    /// Hinton et al. 2015 §6, soft targets as a regulariser: a small transfer set
    /// (`reproduce.fraction` of the training split).
    Fraction,
    /// §3, a class never seen: `reproduce.omit_classes` left out of the transfer set,
    /// then the omitted classes' bias shift chosen on validation.
    Omit,
    /// §4, an ensemble: `reproduce.teachers` teachers (3 when 1); per seed the student
    /// alone, distilled from the first teacher and from the ensemble.
    Ensemble,
    /// Fraction, omit, ensemble and full in turn, beside the paper's figures.
    Paper,
}

impl Experiment {
    /// The config value.
    pub fn key(self) -> &'static str {
        match self {
            Experiment::Full => "full",
            Experiment::Fraction => "fraction",
            Experiment::Omit => "omit",
            Experiment::Ensemble => "ensemble",
            Experiment::Paper => "paper",
        }
    }
}

/// The teacher shipped in the repository (`teachers/fashion-mnist-cnn.toml` says how it
/// was made), the default `reproduce.teacher_file`.
pub const SHIPPED_TEACHER: &str = "teachers/fashion-mnist-cnn.safetensors";
/// Its SHA-256.
pub const SHIPPED_TEACHER_SHA256: &str =
    "c2e1c1328c56e6fca58e5231506c49fe34a0eeb6a90656a53b56ac9127ecf6b6";

/// The reference's `DATA_CONFIG`, plus where the data lives and how validation is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// The data set: a folder (four IDX files, an image folder, CIFAR's batches) or an
    /// `.npz` file. Empty: search the usual places for Fashion-MNIST.
    pub dir: PathBuf,
    /// Which reader: `"auto"` (detected from the content), `"idx"`, `"folder"`, `"npz"`
    /// or `"cifar"`.
    pub source: crate::data::Source,
    /// Image channels: `"auto"` (grey when every image is grey, else RGB), 1 or 3.
    pub channels: crate::data::Channels,
    /// `[height, width]`: area-average every image to this size; `[]` = as they are
    /// (they must then all have one size).
    pub resize: Vec<usize>,
    /// An `.npz`'s image layout: `"auto"`, `"nhwc"` or `"nchw"`.
    pub layout: crate::data::Layout,
    /// Number of classes K; 0 = from the class names or the largest label.
    pub classes: usize,
    /// `"unit"` (pixels / 255) or `"standardize"` (then per channel by the training
    /// images' mean and sd, recorded in checkpoints).
    pub normalize: crate::data::NormalizeKind,
    /// Examples per optimizer step; the last partial batch of an epoch is kept.
    pub batch_size: usize,
    /// Image shape `[height, width, channels]`; `[]` = the data's. When set, it must be
    /// the data's ([`crate::data::DataSpec::data_shape`]), checked when they are read.
    pub data_shape: Vec<usize>,
    /// `"split"`: hold out `validation_size` training images, drawn by `split_seed`.
    /// `"test"`: validate on the test set, as the Keras reference did (optimistic).
    pub validation: Validation,
    /// Images held out of the training set when `validation = "split"`.
    pub validation_size: usize,
    /// Seed of the validation split, separate from the training seed, so that every
    /// seed of a run, and the teacher, hold out the same images.
    pub split_seed: u64,
    /// The transfer set (`--train-fraction`): the fraction of the training split (after
    /// the validation images are held out) that every model trains on, in (0, 1].
    pub train_fraction: f64,
    /// Seed of that subset, separate from the training seed, so that a student alone and
    /// a distilled one see the same images whatever their seeds.
    pub subset_seed: u64,
    /// Classes left out of the transfer set (`--omit-class`), by name or index (as
    /// strings); validation and test keep them. A run that omits any shifts their logits
    /// by the bias that maximises validation accuracy (Hinton et al. 2015, section 3).
    pub omit_classes: Vec<String>,
    /// Base URL for `--download`; the four official file names are appended.
    pub download_url: String,
}

impl DataConfig {
    /// The keys that choose and shape the reader.
    pub fn read_options(&self) -> crate::data::ReadOptions {
        crate::data::ReadOptions {
            source: self.source,
            channels: self.channels,
            resize: match self.resize[..] {
                [h, w] => Some((h, w)),
                _ => None,
            },
            layout: self.layout,
            classes: (self.classes > 0).then_some(self.classes),
        }
    }

    /// The transfer set asked for (`train_fraction`, `subset_seed`, `omit_classes`).
    pub fn transfer(&self) -> crate::data::TransferSpec {
        crate::data::TransferSpec {
            fraction: self.train_fraction,
            subset_seed: self.subset_seed,
            omit: self.omit_classes.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    Split,
    Test,
}

/// The reference's `TRAIN_CONFIG` (epochs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Upper bound on epochs; early stopping may end a run sooner.
    pub epochs: usize,
    /// The same for the teacher; 0 = `epochs`. `--epochs` sets both.
    pub teacher_epochs: usize,
}

/// Keras `CosineDecay`, applied at every optimizer step (see [`crate::schedule`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrScheduleConfig {
    /// Learning rate at step 0.
    pub initial_lr: f64,
    /// Steps over which the LR decays; `"auto"` = epochs x steps per epoch (the whole run).
    pub decay_steps: DecaySteps,
    /// Floor of the schedule as a fraction of `initial_lr`, for the student and distillation.
    pub alpha: f64,
    /// The same floor for the teacher (the reference used 0.01).
    pub teacher_alpha: f64,
}

/// `decay_steps`: a positive number of optimizer steps, or `"auto"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "an integer >= 1 or \"auto\"")]
pub enum DecaySteps {
    Steps(i64),
    Named(String),
}

/// Adam with amsgrad, Keras defaults (`tf.keras.optimizers.Adam`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub amsgrad: bool,
    /// `"pytorch"`: eps added after the bias correction; `"keras"`: before it.
    pub epsilon_placement: crate::optim::EpsPlacement,
}

/// Keras `EarlyStopping(patience, restore_best_weights=True)` on the validation loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStoppingConfig {
    pub enabled: bool,
    /// Epochs without improvement before training stops.
    pub patience: usize,
    /// What selects the best epoch and counts as improvement: `"ce"` (validation
    /// cross-entropy, Keras's `val_loss`) or `"acc"` (validation accuracy).
    pub monitor: Monitor,
}

/// The validation figure that selects the best epoch and drives early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Monitor {
    /// Validation cross-entropy on the labels (lower is better; ties keep the earlier
    /// epoch).
    Ce,
    /// Validation accuracy (higher is better; ties keep the earlier epoch).
    Acc,
}

impl Monitor {
    /// What it watches, in words: `validation accuracy`, `validation cross-entropy`.
    pub fn describe(self) -> &'static str {
        match self {
            Monitor::Ce => "validation cross-entropy",
            Monitor::Acc => "validation accuracy",
        }
    }
}

/// `[distill]`, generated from the objectives' registry
/// ([`crate::objective::with_objectives`]): the objective, the teacher, and one table of
/// hyper-parameters per objective, each defined in its objective's file.
macro_rules! distill_config {
    ($($name:ident: $module:ident::$table:ident),* $(,)?) => {
        /// Distillation: the objective, its hyper-parameters (one table per objective),
        /// and the teacher.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct DistillConfig {
            /// One of [`crate::objective::NAMES`]: `kd`, `dkd`, `lskd`, `dist`, `mse`.
            pub objective: String,
            /// Compute the frozen teacher's logits for the training set once and reuse them.
            pub teacher_cache: bool,
            /// Teacher checkpoint; empty = the newest `<out_dir>/teacher-*/model.safetensors`.
            pub teacher: PathBuf,
            /// Several teachers distilled as one ensemble (checkpoints or TorchScript files,
            /// mixed); `[]` = the one of `teacher`. Setting both is an error.
            pub teachers: Vec<PathBuf>,
            /// How an ensemble's logits are combined: see [`crate::ensemble::Combine`].
            pub ensemble: crate::ensemble::Combine,
            $(
                #[doc = concat!("`[distill.", stringify!($name), "]`, see [`crate::objective::", stringify!($module), "`].")]
                pub $name: crate::objective::$module::$table,
            )*
        }


        impl Default for DistillConfig {
            fn default() -> Self {
                DistillConfig {
                    objective: "kd".into(),
                    teacher_cache: true,
                    teacher: PathBuf::new(),
                    teachers: Vec::new(),
                    ensemble: crate::ensemble::Combine::Probabilities,
                    $($name: Default::default(),)*
                }
            }
        }

        impl DistillConfig {
            /// The table `[distill.<name>]` as TOML; `None` for a name not in the registry.
            pub fn table(&self, name: &str) -> Option<toml::Value> {
                match name {
                    $(stringify!($name) => toml::Value::try_from(&self.$name).ok(),)*
                    _ => None,
                }
            }

            /// Replaces the table `[distill.<name>]`.
            ///
            /// # Errors
            /// A message when `name` is not in the registry or `value` does not fit its table.
            pub fn set_table(&mut self, name: &str, value: toml::Value) -> std::result::Result<(), String> {
                match name {
                    $(stringify!($name) => {
                        self.$name = value.try_into().map_err(|e| format!("[distill.{name}]: {e}"))?;
                        Ok(())
                    })*
                    _ => Err(format!("no objective {name:?}")),
                }
            }
        }
    };
}
crate::with_objectives!(distill_config);

impl DistillConfig {
    /// Objective `name` with the hyper-parameters of its table.
    ///
    /// # Errors
    /// A [`UsageError`] for a name that is not in the registry (validation checks it first).
    pub fn build(&self, name: &str) -> Result<Box<dyn crate::objective::Objective>> {
        // A name with no table is not in the registry, which objective::build says.
        let table = self
            .table(name)
            .unwrap_or_else(|| toml::Value::Table(Default::default()));
        crate::objective::build(name, &table).map_err(|e| UsageError(e).into())
    }

    /// The objective named by `distill.objective`.
    pub fn build_chosen(&self) -> Result<Box<dyn crate::objective::Objective>> {
        self.build(&self.objective)
    }

    /// The temperature and alpha in force for `objective` (for tables and the heatmap).
    /// The teacher files named: `teachers`, or `[teacher]`, or none (the newest in the
    /// out-dir is then found when the teachers are loaded).
    pub fn teacher_paths(&self) -> Vec<PathBuf> {
        match (
            self.teachers.is_empty(),
            self.teacher.as_os_str().is_empty(),
        ) {
            (false, _) => self.teachers.clone(),
            (true, false) => vec![self.teacher.clone()],
            (true, true) => Vec::new(),
        }
    }

    /// The temperature at which an ensemble of teachers is combined for `objective`: its
    /// T, or 1 for an objective without one.
    pub fn ensemble_temperature(&self, objective: &str) -> f64 {
        self.t_alpha(objective).0.unwrap_or(1.0)
    }

    pub fn t_alpha(&self, objective: &str) -> (Option<f64>, Option<f64>) {
        match (crate::objective::spec(objective), self.table(objective)) {
            (Some(spec), Some(table)) => spec.t_alpha(&table),
            _ => (None, None),
        }
    }
}

/// What each run writes besides its checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Write weight and bias histograms to TensorBoard every epoch.
    pub histograms: bool,
    /// Write `curves.png` at the end of a run.
    pub plots: bool,
}

/// Where and how to compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Intra-op threads; 0 = the number of physical cores.
    pub threads: usize,
    /// Folder that holds the run folders.
    pub out_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 42,
            data: DataConfig::default(),
            train: TrainConfig::default(),
            lr_schedule: LrScheduleConfig::default(),
            optimizer: OptimizerConfig::default(),
            early_stopping: EarlyStoppingConfig::default(),
            model: ModelConfig::default(),
            augment: AugmentConfig::default(),
            distill: DistillConfig::default(),
            reproduce: ReproduceConfig::default(),
            logging: LoggingConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: PathBuf::new(),
            source: crate::data::Source::Auto,
            channels: crate::data::Channels::Auto,
            resize: Vec::new(),
            layout: crate::data::Layout::Auto,
            classes: 0,
            normalize: crate::data::NormalizeKind::Unit,
            batch_size: 256,
            data_shape: Vec::new(),
            validation: Validation::Split,
            validation_size: 5000,
            split_seed: DEFAULT_SPLIT_SEED,
            train_fraction: 1.0,
            subset_seed: DEFAULT_SUBSET_SEED,
            omit_classes: Vec::new(),
            download_url: crate::data::OFFICIAL_URL.to_string(),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 200,
            teacher_epochs: 60,
        }
    }
}

impl Default for LrScheduleConfig {
    fn default() -> Self {
        LrScheduleConfig {
            initial_lr: 1e-3,
            decay_steps: DecaySteps::Named("auto".into()),
            alpha: 0.1,
            teacher_alpha: 0.1,
        }
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-7,
            amsgrad: true,
            epsilon_placement: crate::optim::EpsPlacement::PyTorch,
        }
    }
}

impl Default for EarlyStoppingConfig {
    fn default() -> Self {
        EarlyStoppingConfig {
            enabled: false,
            patience: 5,
            monitor: Monitor::Acc,
        }
    }
}

/// The default `data.split_seed`.
pub const DEFAULT_SPLIT_SEED: u64 = 20_150_309;

/// The default `data.subset_seed`.
pub const DEFAULT_SUBSET_SEED: u64 = 20_150_310;

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            teacher: "mlp:512,256,128,dropout=0.2".into(),
            student: "mlp:128,dropout=0.1".into(),
            teacher_input: "image".into(),
            teacher_output: crate::torchscript::Output::Logits,
        }
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            teacher: "none".into(),
            student: "none".into(),
            views: 8,
        }
    }
}

impl Default for ReproduceConfig {
    fn default() -> Self {
        ReproduceConfig {
            seeds: vec![0, 1, 2, 3, 4],
            objectives: Vec::new(),
            teacher_per_seed: false,
            teacher: "cnn:32,64,128,256,dropout=0.3".into(),
            teacher_augment: "shift1,flip".into(),
            teacher_epochs: 60,
            experiment: Experiment::Full,
            teacher_file: PathBuf::from(SHIPPED_TEACHER),
            teacher_sha256: SHIPPED_TEACHER_SHA256.into(),
            teachers: 1,
            fraction: 0.03,
            omit_classes: vec!["1".into()],
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            histograms: true,
            plots: true,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            device: "auto".into(),
            threads: 0,
            out_dir: PathBuf::from("runs"),
        }
    }
}

/// The dotted key (`section.key`) of the `key = value` line that holds byte `at` of a
/// TOML text, if that line is one; the section is the last `[header]` above it.
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    if key.is_empty() || !key.chars().all(plain) {
        return None;
    }
    let section = text[..line_start].lines().rev().find_map(|l| {
        let l = l.split('#').next().unwrap_or("").trim();
        l.strip_prefix('[')?.strip_suffix(']').map(str::trim)
    });
    Some(match section {
        Some(s) if !s.is_empty() => format!("{s}.{key}"),
        _ => key.to_string(),
    })
}

/// The table header (`data` for `[data]`, `distill.kd` for `[distill.kd]`) on the line
/// holding byte `at` of `text`, if that line is one.
fn table_at(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let l = line.split('#').next().unwrap_or("").trim();
    let name = l.strip_prefix('[')?.strip_suffix(']')?.trim();
    (!name.is_empty() && !name.starts_with('[')).then(|| name.to_string())
}

pub use merge::{ObjectiveFlags, Overrides, check_objective, objective_flags, parse_seeds};

impl Config {
    /// Reads `path` as TOML. A missing file is an error only when `required` (the user
    /// named it with `--config`); otherwise the built-in defaults are used.
    ///
    /// # Errors
    /// [`UsageError`] for a missing required file, a TOML syntax error, an unknown key or
    /// a wrong type, each naming the file and the key.
    pub fn load(path: &Path, required: bool) -> Result<Config> {
        // At most 1 MiB: a config is a few hundred bytes, and `--config /dev/zero` must
        // not read forever.
        let read = |p: &Path| -> std::io::Result<String> {
            use std::io::Read;
            let mut bytes = Vec::new();
            std::fs::File::open(p)?
                .take(1 << 20)
                .read_to_end(&mut bytes)?;
            if bytes.len() >= 1 << 20 {
                return Err(std::io::Error::other(
                    "larger than 1 MiB; this is not a config file",
                ));
            }
            String::from_utf8(bytes).map_err(|_| std::io::Error::other("not UTF-8 text"))
        };
        let text = match read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(e) => {
                return usage(format!(
                    "cannot read config file {}: {e}; pass a TOML config file with --config",
                    path.display()
                ));
            }
        };
        Config::parse(&text)
            .map_err(|e| UsageError(format!("config file {}: {e}", path.display())).into())
    }

    /// Parses TOML text; the error message names the line, the key (`section.key`) and
    /// what was expected.
    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| {
            // toml's message spans several lines with a source excerpt; keep it on one.
            let mut msg = e.message().trim().to_string();
            // serde names Rust's integer types; say what they mean.
            for (rust, words) in [
                ("expected usize", "expected an integer >= 0"),
                ("expected u64", "expected an integer >= 0"),
                ("expected u32", "expected an integer >= 0"),
                ("expected i64", "expected an integer"),
                ("expected f64", "expected a number"),
                // PathBuf's serde name for what a path key takes.
                ("expected path string", "expected a string"),
            ] {
                if let Some(head) = msg.strip_suffix(rust) {
                    msg = format!("{head}{words}");
                }
            }
            // An integer past 64 bits is read as i128, which serde calls a wrong type.
            if msg.starts_with("invalid type: integer `") && msg.contains("` as i128,") {
                msg = msg.replacen("invalid type:", "invalid value:", 1).replacen(
                    "` as i128,",
                    "` is too large,",
                    1,
                );
            }
            // Before objectives had their own tables, kd's keys sat in [distill].
            for old in ["temperature", "alpha", "t_squared_scaling"] {
                if msg.starts_with(&format!("unknown field `{old}`")) && msg.contains("`kd`") {
                    msg.push_str(&format!(
                        "; each objective has its own table now: write `{old}` under \
                         [distill.kd] (or the table of the objective you use)"
                    ));
                }
            }
            match e.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let line = text[..start].matches('\n').count() + 1;
                    match (key_at(text, start), table_at(text, start)) {
                        (Some(key), _) => format!("line {line}, key `{key}`: {msg}"),
                        (None, Some(table)) if msg.starts_with("duplicate key") => format!(
                            "line {line}, table `[{table}]`: {msg}: the table appears \
                             earlier in the file; write its keys under one `[{table}]`"
                        ),
                        (None, Some(table)) => format!("line {line}, table `[{table}]`: {msg}"),
                        (None, None) => format!("line {line}: {msg}"),
                    }
                }
                None => msg,
            }
        })
    }

    /// The resolved decay horizon in optimizer steps, given the epochs and the steps per
    /// epoch.
    pub fn decay_steps(&self, epochs: usize, steps_per_epoch: usize) -> u64 {
        match self.lr_schedule.decay_steps {
            DecaySteps::Steps(n) => n.max(1) as u64,
            DecaySteps::Named(_) => (epochs * steps_per_epoch).max(1) as u64,
        }
    }

    /// The architecture a role trains, from `model.teacher` (the teacher) or
    /// `model.student` (the student, alone or distilled).
    ///
    /// # Errors
    /// A [`UsageError`] naming the key when its spec does not parse ([`Config::validate`]
    /// refuses such a config first, so a validated config never fails here).
    pub fn arch_for(&self, kind: crate::model::RunKind) -> Result<crate::model::Arch> {
        let (key, spec) = match kind {
            crate::model::RunKind::Teacher => ("model.teacher", &self.model.teacher),
            _ => ("model.student", &self.model.student),
        };
        crate::model::Arch::parse(spec)
            .map_err(|e| UsageError(format!("config key `{key}` = {spec:?}: expected {e}")).into())
    }

    /// The epoch budget of a role: `train.teacher_epochs` (when not 0) for the teacher,
    /// `train.epochs` otherwise.
    pub fn epochs_for(&self, teacher: bool) -> usize {
        match (teacher, self.train.teacher_epochs) {
            (true, n) if n > 0 => n,
            _ => self.train.epochs,
        }
    }

    /// The augmentation of a role, and the fixed views per example (0 for the teacher,
    /// which draws a fresh view every epoch).
    ///
    /// # Errors
    /// A [`UsageError`] naming the key when its spec does not parse ([`Config::validate`]
    /// refuses such a config first, so a validated config never fails here).
    pub fn augment_for(&self, teacher: bool) -> Result<(crate::augment::Augment, u64)> {
        let (key, text, views) = if teacher {
            ("augment.teacher", &self.augment.teacher, 0)
        } else {
            ("augment.student", &self.augment.student, self.augment.views)
        };
        let augment = crate::augment::Augment::parse(text)
            .map_err(|e| UsageError(format!("config key `{key}` = {text:?}: expected {e}")))?;
        Ok((augment, views))
    }

    /// The resolved config as TOML, written next to each checkpoint.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serialising the resolved config")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse_and_validate() {
        for file in [
            "config.toml",
            "configs/reference.toml",
            "configs/deep-teacher.toml",
            "configs/no-student-dropout.toml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let c = Config::load(&path, true).unwrap();
            c.validate().unwrap();
        }
    }

    #[test]
    fn default_config_file_equals_builtin_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        assert_eq!(Config::load(&path, true).unwrap(), Config::default());
    }

    #[test]
    fn reference_config_matches_keras_example() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/reference.toml");
        let c = Config::load(&path, true).unwrap();
        assert_eq!(c.lr_schedule.decay_steps, DecaySteps::Steps(2000));
        assert_eq!(c.lr_schedule.teacher_alpha, 0.01);
        assert!(!c.distill.kd.t_squared_scaling);
        assert_eq!(c.data.validation, Validation::Test);
    }

    #[test]
    fn decay_steps_type_error_says_what_is_allowed() {
        for v in ["1e3", "true", "[1]"] {
            let e = Config::parse(&format!("[lr_schedule]\ndecay_steps = {v}\n")).unwrap_err();
            assert!(e.contains("an integer >= 1 or \"auto\""), "{v}: {e}");
        }
    }

    #[test]
    fn data_shape_must_be_exactly_28_28_1() {
        let c = Config::parse("[data]\ndata_shape = [28, 28, 1, 1]\n").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("data.data_shape")
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[data]\nbatch_sise = 3\n").unwrap_err();
        assert!(e.contains("batch_sise"), "{e}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let e = Config::parse("[data]\nbatch_size = \"big\"\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("`data.batch_size`"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_line_and_dotted_key() {
        let e = Config::parse("seed = 1\n\n[distill.kd] # KD\nalpha = 0.5\ntemprature = 2.0\n")
            .unwrap_err();
        assert!(e.starts_with("line 5, key `distill.kd.temprature`"), "{e}");
        let e = Config::parse("seed = \"x\"\n").unwrap_err();
        assert!(e.starts_with("line 1, key `seed`"), "{e}");
    }

    #[test]
    fn a_table_given_twice_is_named() {
        let e = Config::parse("[data]\nbatch_size = 64\n\n[data] # again\nbatch_size = 32\n")
            .unwrap_err();
        assert!(
            e.starts_with("line 4, table `[data]`: duplicate key")
                && e.contains("under one `[data]`"),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        type Case = (&'static str, Box<dyn Fn(&mut Config)>);
        let cases: Vec<Case> = vec![
            ("data.batch_size", Box::new(|c| c.data.batch_size = 0)),
            ("train.epochs", Box::new(|c| c.train.epochs = 0)),
            (
                "lr_schedule.initial_lr",
                Box::new(|c| c.lr_schedule.initial_lr = 0.0),
            ),
            (
                "lr_schedule.initial_lr",
                Box::new(|c| c.lr_schedule.initial_lr = f64::NAN),
            ),
            (
                "lr_schedule.decay_steps",
                Box::new(|c| c.lr_schedule.decay_steps = DecaySteps::Steps(0)),
            ),
            (
                "distill.kd.temperature",
                Box::new(|c| c.distill.kd.temperature = -1.0),
            ),
            (
                "distill.dkd.temperature",
                Box::new(|c| c.distill.dkd.temperature = f64::NAN),
            ),
            ("distill.kd.alpha", Box::new(|c| c.distill.kd.alpha = 1.5)),
            (
                "distill.mse.alpha",
                Box::new(|c| c.distill.mse.alpha = f64::NAN),
            ),
            ("distill.dkd.beta", Box::new(|c| c.distill.dkd.beta = -1.0)),
            (
                "distill.dist.gamma",
                Box::new(|c| c.distill.dist.gamma = f64::INFINITY),
            ),
            (
                "distill.objective",
                Box::new(|c| c.distill.objective = "kl".into()),
            ),
            (
                "model.student",
                Box::new(|c| c.model.student = "mlp:0".into()),
            ),
            ("reproduce.seeds", Box::new(|c| c.reproduce.seeds = vec![])),
            (
                "reproduce.seeds",
                Box::new(|c| c.reproduce.seeds = vec![1, 1]),
            ),
            (
                "runtime.device",
                Box::new(|c| c.runtime.device = "tpu".into()),
            ),
        ];
        for (key, f) in cases {
            let mut c = Config::default();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "expected {key} in: {e}");
        }
    }

    #[test]
    fn a_path_that_is_not_utf8_is_refused_by_key_and_flag() {
        use std::os::unix::ffi::OsStrExt;
        let bad = PathBuf::from(std::ffi::OsStr::from_bytes(b"runs\xff"));
        type Case<'a> = (&'a str, &'a str, Box<dyn Fn(&mut Config) + 'a>);
        let cases: Vec<Case> = vec![
            (
                "runtime.out_dir",
                "--out-dir",
                Box::new(|c| c.runtime.out_dir = bad.clone()),
            ),
            (
                "data.dir",
                "--data-dir",
                Box::new(|c| c.data.dir = bad.clone()),
            ),
            (
                "distill.teacher",
                "--teacher",
                Box::new(|c| c.distill.teacher = bad.clone()),
            ),
        ];
        for (key, flag, f) in cases {
            let mut c = Config::default();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.downcast_ref::<UsageError>().is_some(), "exit 2: {e}");
            let e = e.to_string();
            assert!(
                e.contains(&format!("`{key}` ({flag})")) && e.contains("UTF-8"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_path_key_of_another_type_expects_a_string() {
        let e = Config::parse("[data]\ndir = 5\n").unwrap_err();
        assert!(e.ends_with("expected a string"), "{e}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let mut c = Config::default();
        c.lr_schedule.decay_steps = DecaySteps::Steps(2000);
        let back = Config::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back, c);
    }

    fn flags(f: impl FnOnce(&mut Overrides)) -> Overrides {
        let mut o = Overrides::default();
        f(&mut o);
        o
    }

    #[test]
    fn objective_flags_go_to_the_chosen_objective() {
        let mut c = Config::default();
        c.apply(&flags(|o| {
            o.objectives = vec!["dkd".into()];
            o.params.set("--t", 3.0);
            o.params.set("--beta", 2.0);
        }))
        .unwrap();
        assert_eq!(c.distill.objective, "dkd");
        assert_eq!((c.distill.dkd.temperature, c.distill.dkd.beta), (3.0, 2.0));
        // kd keeps its own default temperature.
        assert_eq!(c.distill.kd.temperature, 2.0);
    }

    #[test]
    fn a_flag_the_objective_lacks_is_refused_by_name() {
        let e = Config::default()
            .apply(&flags(|o| o.params.set("--gamma", 1.0)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--gamma") && e.contains("kd takes --t"), "{e}");
        let e = Config::default()
            .apply(&flags(|o| {
                o.objectives = vec!["mse".into()];
                o.params.set("--t", 2.0);
            }))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--t is not a parameter of objective mse"), "{e}");
    }

    #[test]
    fn unknown_objective_lists_the_valid_names() {
        let e = Config::default()
            .apply(&flags(|o| o.objectives = vec!["kdd".into()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"kdd\"") && e.contains("kd, dkd, lskd, dist, mse"),
            "{e}"
        );
        let e = Config::default()
            .apply(&flags(|o| o.objectives = vec!["kd".into(), "dkd".into()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes one objective"), "{e}");
    }

    #[test]
    fn several_objectives_share_a_flag_in_reproduce() {
        let mut c = Config::default();
        c.apply(&flags(|o| {
            o.objectives = vec!["kd".into(), "dkd".into()];
            o.many_objectives = true;
            o.params.set("--t", 3.0);
        }))
        .unwrap();
        assert_eq!(c.reproduce.objectives, vec!["kd", "dkd"]);
        assert_eq!(
            (c.distill.kd.temperature, c.distill.dkd.temperature),
            (3.0, 3.0)
        );
    }

    #[test]
    fn seeds_parse_as_a_list_or_a_count() {
        assert_eq!(parse_seeds("0,1,2").unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_seeds("3").unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_seeds("7,").unwrap(), vec![7]);
        assert_eq!(parse_seeds(" 4 , 5 ").unwrap(), vec![4, 5]);
        // An empty item is named as such (it was dropped: `0,,1` ran seeds 0 and 1).
        assert!(parse_seeds("0,,1").unwrap_err().contains("an empty item"));
        for bad in [
            "", "0", "a,b", "1,-2", ",", "1001", "0,,1", ",1", "1,,", "1, ,2",
        ] {
            assert!(parse_seeds(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_seeds("0")
                .unwrap_err()
                .ends_with("for seed 0 alone, write --seeds 0,")
        );
    }
}
