//! The configuration: `config.toml` mirrored section by section, merged with the
//! command-line flags, then validated into one value that the rest of the program reads.
//!
//! Precedence: built-in defaults < config file < flags. Unknown keys, wrong types and
//! values out of range are [`UsageError`]s that name the key, so they surface before
//! any data is loaded or any epoch is trained. This module does no I/O beyond reading
//! the config file.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// An error in how the program was called (config file, flag value, missing prerequisite
/// file named by the user). `main` maps it to exit code 2; every other error exits 1.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand for returning a [`UsageError`].
pub fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(UsageError(msg.into()).into())
}

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
    pub distill: DistillConfig,
    pub logging: LoggingConfig,
    pub runtime: RuntimeConfig,
}

/// The reference's `DATA_CONFIG`, plus where the data lives and how validation is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder holding the four IDX files (gzipped or not). Empty: search the usual places.
    pub dir: String,
    /// Examples per optimizer step; the last partial batch of an epoch is kept.
    pub batch_size: usize,
    /// Image shape `[height, width, channels]`; Fashion-MNIST is `[28, 28, 1]`.
    pub data_shape: Vec<usize>,
    /// `"split"`: hold out `validation_size` training images, drawn by the seed.
    /// `"test"`: validate on the test set, as the Keras reference did (optimistic).
    pub validation: Validation,
    /// Images held out of the training set when `validation = "split"`.
    pub validation_size: usize,
    /// Base URL for `--download`; the four official file names are appended.
    pub download_url: String,
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
}

/// Distillation (Hinton et al. 2015, section 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// Temperature T of the soft targets, > 0.
    pub temperature: f64,
    /// Weight of the hard-label cross-entropy, in [0, 1]; the KL term gets 1 - alpha.
    pub alpha: f64,
    /// Multiply the KL term by T^2 (the paper). `false` reproduces the Keras reference.
    pub t_squared_scaling: bool,
    /// Compute the frozen teacher's logits for the training set once and reuse them.
    pub teacher_cache: bool,
    /// Teacher checkpoint; empty = the newest `<out_dir>/teacher-*/model.safetensors`.
    pub teacher: String,
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
    pub out_dir: String,
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
            distill: DistillConfig::default(),
            logging: LoggingConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: String::new(),
            batch_size: 256,
            data_shape: vec![28, 28, 1],
            validation: Validation::Split,
            validation_size: 5000,
            download_url: crate::data::OFFICIAL_URL.to_string(),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { epochs: 50 }
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
            enabled: true,
            patience: 5,
        }
    }
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            temperature: 2.0,
            alpha: 0.9,
            t_squared_scaling: true,
            teacher_cache: true,
            teacher: String::new(),
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
            out_dir: "runs".into(),
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

/// Values given on the command line; `None` leaves the config file's value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub seed: Option<u64>,
    pub device: Option<String>,
    pub threads: Option<usize>,
    pub lr: Option<f64>,
    pub temperature: Option<f64>,
    pub alpha: Option<f64>,
    pub no_teacher_cache: bool,
    pub no_t_squared: bool,
    pub teacher: Option<PathBuf>,
}

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
            let msg = e.message().trim().to_string();
            match e.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let line = text[..start].matches('\n').count() + 1;
                    match key_at(text, start) {
                        Some(key) => format!("line {line}, key `{key}`: {msg}"),
                        None => format!("line {line}: {msg}"),
                    }
                }
                None => msg,
            }
        })
    }

    /// Applies command-line overrides (flags win over the file).
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(d) = &o.data_dir {
            self.data.dir = d.display().to_string();
        }
        if let Some(d) = &o.out_dir {
            self.runtime.out_dir = d.display().to_string();
        }
        if let Some(v) = o.epochs {
            self.train.epochs = v;
        }
        if let Some(v) = o.batch_size {
            self.data.batch_size = v;
        }
        if let Some(v) = o.seed {
            self.seed = v;
        }
        if let Some(v) = &o.device {
            self.runtime.device = v.clone();
        }
        if let Some(v) = o.threads {
            self.runtime.threads = v;
        }
        if let Some(v) = o.lr {
            self.lr_schedule.initial_lr = v;
        }
        if let Some(v) = o.temperature {
            self.distill.temperature = v;
        }
        if let Some(v) = o.alpha {
            self.distill.alpha = v;
        }
        if o.no_teacher_cache {
            self.distill.teacher_cache = false;
        }
        if o.no_t_squared {
            self.distill.t_squared_scaling = false;
        }
        if let Some(t) = &o.teacher {
            self.distill.teacher = t.display().to_string();
        }
    }

    /// Checks every value's range. The error names the key (`section.key`), the value
    /// found and what is allowed.
    pub fn validate(&self) -> Result<()> {
        fn bad<T>(key: &str, found: impl fmt::Display, expected: &str) -> Result<T> {
            // The flag that sets the key, if any, so a bad flag value is recognisable.
            let flag = match key {
                "data.batch_size" => " (--batch-size)",
                "train.epochs" => " (--epochs)",
                "lr_schedule.initial_lr" => " (--lr)",
                "distill.temperature" => " (--t)",
                "distill.alpha" => " (--alpha)",
                "runtime.threads" => " (--threads)",
                "runtime.out_dir" => " (--out-dir)",
                _ => "",
            };
            usage(format!(
                "config key `{key}`{flag} = {found}: expected {expected}"
            ))
        }
        let positive = "a finite number > 0";
        // Upper bounds keep step and schedule arithmetic far from overflow.
        if !(1..=1 << 24).contains(&self.data.batch_size) {
            return bad(
                "data.batch_size",
                self.data.batch_size,
                "an integer from 1 to 16777216",
            );
        }
        if self.data.data_shape != [28, 28, 1] {
            return bad(
                "data.data_shape",
                format!("{:?}", self.data.data_shape),
                "[28, 28, 1] (Fashion-MNIST)",
            );
        }
        if self.data.validation == Validation::Split && self.data.validation_size == 0 {
            return bad(
                "data.validation_size",
                0,
                "an integer >= 1 (or set data.validation = \"test\")",
            );
        }
        if self.data.validation_size >= 60_000 {
            return bad(
                "data.validation_size",
                self.data.validation_size,
                "fewer than 60000",
            );
        }
        if !(1..=1_000_000).contains(&self.train.epochs) {
            return bad(
                "train.epochs",
                self.train.epochs,
                "an integer from 1 to 1000000",
            );
        }
        let lr = &self.lr_schedule;
        if !(lr.initial_lr.is_finite() && lr.initial_lr > 0.0) {
            return bad("lr_schedule.initial_lr", lr.initial_lr, positive);
        }
        match &lr.decay_steps {
            DecaySteps::Steps(n) if *n <= 0 => {
                return bad("lr_schedule.decay_steps", n, "an integer >= 1 or \"auto\"");
            }
            DecaySteps::Named(s) if s != "auto" => {
                return bad(
                    "lr_schedule.decay_steps",
                    format!("{s:?}"),
                    "an integer >= 1 or \"auto\"",
                );
            }
            _ => {}
        }
        for (key, a) in [
            ("lr_schedule.alpha", lr.alpha),
            ("lr_schedule.teacher_alpha", lr.teacher_alpha),
        ] {
            if !(0.0..=1.0).contains(&a) {
                return bad(key, a, "a number in [0, 1]");
            }
        }
        let o = &self.optimizer;
        for (key, b) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(key, b, "a number in [0, 1)");
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return bad("optimizer.eps", o.eps, positive);
        }
        if self.early_stopping.enabled && self.early_stopping.patience == 0 {
            return bad(
                "early_stopping.patience",
                0,
                "an integer >= 1 (or enabled = false)",
            );
        }
        let d = &self.distill;
        // Below 1e-3 the logits / T overflow f32; above 1e3 the soft targets are uniform
        // to f32 precision and T^2 overflows the loss. The paper uses T from 1 to 20.
        if !(d.temperature.is_finite() && (1e-3..=1e3).contains(&d.temperature)) {
            return bad(
                "distill.temperature",
                d.temperature,
                "a number from 0.001 to 1000 (> 0)",
            );
        }
        if !(0.0..=1.0).contains(&d.alpha) {
            return bad("distill.alpha", d.alpha, "a number in [0, 1]");
        }
        crate::device::parse(&self.runtime.device)
            .map_err(|e| UsageError(format!("config key `runtime.device`: {e}")))?;
        if self.runtime.threads > 1024 {
            return bad(
                "runtime.threads",
                self.runtime.threads,
                "0 (physical cores) to 1024",
            );
        }
        if self.runtime.out_dir.is_empty() {
            return bad("runtime.out_dir", "\"\"", "a folder path");
        }
        Ok(())
    }

    /// The resolved decay horizon in optimizer steps, given the steps per epoch.
    pub fn decay_steps(&self, steps_per_epoch: usize) -> u64 {
        match self.lr_schedule.decay_steps {
            DecaySteps::Steps(n) => n.max(1) as u64,
            DecaySteps::Named(_) => (self.train.epochs * steps_per_epoch).max(1) as u64,
        }
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
        for file in ["config.toml", "configs/reference.toml"] {
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
        assert!(!c.distill.t_squared_scaling);
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
        let e = Config::parse("seed = 1\n\n[distill] # KD\nalpha = 0.5\ntemprature = 2.0\n")
            .unwrap_err();
        assert!(e.starts_with("line 5, key `distill.temprature`"), "{e}");
        let e = Config::parse("seed = \"x\"\n").unwrap_err();
        assert!(e.starts_with("line 1, key `seed`"), "{e}");
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
                "distill.temperature",
                Box::new(|c| c.distill.temperature = -1.0),
            ),
            (
                "distill.temperature",
                Box::new(|c| c.distill.temperature = f64::NAN),
            ),
            ("distill.alpha", Box::new(|c| c.distill.alpha = 1.5)),
            ("distill.alpha", Box::new(|c| c.distill.alpha = f64::NAN)),
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
    fn resolved_config_round_trips() {
        let mut c = Config::default();
        c.lr_schedule.decay_steps = DecaySteps::Steps(2000);
        let back = Config::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
