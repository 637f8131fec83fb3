//! A run folder and everything written into it while training: the resolved config,
//! the checkpoints, the resume state, `metrics.csv`, the TensorBoard events, the plots
//! and `summary.json`; plus the progress bar and the per-epoch summary line.
//!
//! Layout of `<out_dir>/<name>/`:
//! - `config.toml`: the resolved config; `meta.json`: seed, versions, device, threads
//! - `model.safetensors`: the best weights so far (by `early_stopping.monitor`: validation
//!   accuracy by default, or validation cross-entropy); at the end, the weights the run
//!   selected
//! - `last.safetensors`: the last completed epoch for `--resume`: weights, Adam moments,
//!   and in its metadata the [`TrainState`] (step, best metric, early-stopping counter,
//!   history), all in one atomically written file; `state.json`: the same state, for
//!   people and tools, plus whether the run finished
//! - `metrics.csv`, `events.out.tfevents.*`, `curves.png`, `summary.json`
//! - `run.lock`: held while a process writes here

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::checkpoint::{self, Checkpoint, RunLock, write_atomic};
use crate::config::{Config, Monitor};
use crate::data::SplitInfo;
use crate::error::{UsageError, usage};
use crate::eval::Metrics;
use crate::model::Network;
pub use crate::model::RunKind;
use crate::optim::Adam;
use crate::tensorboard::EventWriter;

/// One epoch's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// LR of the epoch's last optimizer step.
    pub lr: f64,
    /// Training-loop seconds (no evaluation).
    pub seconds: f64,
    pub train: Metrics,
    pub val: Metrics,
}

/// Everything `--resume` needs besides the tensors.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Last completed epoch (0 = none).
    pub epoch: usize,
    /// Optimizer steps taken (the LR schedule's position).
    pub step: u64,
    /// Best value so far of the monitored validation metric, lower is better: minus the
    /// validation accuracy (`early_stopping.monitor = "acc"`, the default) or the
    /// validation cross-entropy (`"ce"`).
    pub best_metric: f64,
    /// Epoch of `best_metric` (0 = none yet).
    pub best_epoch: usize,
    /// Epochs since the last improvement (early stopping's counter).
    pub bad_epochs: usize,
    pub history: Vec<EpochRecord>,
    /// The run ended normally (early stop or last epoch).
    pub finished: bool,
    /// The LR schedule's horizon in optimizer steps, fixed when the run started
    /// (`decay_steps = "auto"` resolved once), so a resumed run keeps it.
    #[serde(default)]
    pub decay_steps: Option<u64>,
}

impl TrainState {
    /// Adds a completed epoch: its record, the step count, and whether it improved on the
    /// best epoch so far by `monitor` (validation cross-entropy lower, or accuracy higher;
    /// ties keep the earlier epoch), which updates the best metric and the early-stopping
    /// counter. Returns whether it improved.
    pub fn record_epoch(&mut self, record: &EpochRecord, monitor: Monitor, step: u64) -> bool {
        let metric = match monitor {
            Monitor::Ce => record.val.ce,
            Monitor::Acc => -record.val.acc,
        };
        let improved = self.best_epoch == 0 || metric < self.best_metric;
        if improved {
            self.best_metric = metric;
            self.best_epoch = record.epoch;
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        self.epoch = record.epoch;
        self.step = step;
        self.history.push(record.clone());
        improved
    }
}

/// What a resumed run restores.
pub struct Resumed {
    pub state: TrainState,
    pub best_weights: Vec<Tensor>,
}

/// An open run folder, locked for this process.
pub struct Run {
    pub dir: PathBuf,
    pub kind: RunKind,
    pub quiet: bool,
    config: Config,
    config_toml: String,
    resuming: bool,
    histograms: bool,
    events: Option<EventWriter>,
    /// The objective's term names (the extra metrics columns).
    terms: &'static [&'static str],
    /// The validation split, once the data is loaded.
    split: Option<SplitInfo>,
    /// How the data's pixels became inputs, once they are loaded.
    normalize: Option<crate::data::Normalize>,
    /// The omitted classes' logit shift, once chosen; only the final model carries it.
    logit_bias: Option<crate::bias::LogitBias>,
    /// Flags the resume command needs besides `--out-dir`, `--run-name`, `--epochs` and
    /// `--resume` (a `reproduce` stage's `--seed`, objective and teacher), for the Ctrl-C
    /// message.
    pub resume_args: String,
    /// This process made the folder (so [`Run::abandon`] may remove it).
    created: bool,
    _lock: RunLock,
}

/// Names of the files in a run folder.
pub const MODEL_FILE: &str = "model.safetensors";
pub const LAST_FILE: &str = "last.safetensors";
pub const STATE_FILE: &str = "state.json";
/// Metadata key of `last.safetensors` that holds the [`TrainState`] as JSON.
pub const META_STATE: &str = "kdtrain.state";

impl Run {
    /// Opens `<out_dir>/<name>` for a new run, or an existing one with `resume`.
    /// Without a name, a new run is `<kind>-<YYYYmmdd-HHMMSS>` and a resumed one is the
    /// newest unfinished `<kind>-*` folder.
    ///
    /// Checks, before any training: the folder can be created and written, it is not
    /// in use by another process, a new run does not overwrite an earlier one, and a
    /// resumed run's config agrees with this command's.
    ///
    /// # Errors
    /// Usage errors for each of the above, naming the folder.
    pub fn open(
        config: &Config,
        kind: RunKind,
        name: Option<&str>,
        resume: bool,
        quiet: bool,
    ) -> Result<Run> {
        let out = config.runtime.out_dir.clone();
        if let Err(e) = std::fs::create_dir_all(&out) {
            return usage(format!(
                "--out-dir {}: cannot create it ({e}); choose a writable folder",
                out.display()
            ));
        }
        // Set when this process made the folder itself (the default name's atomic claim).
        let mut claimed = false;
        let dir = match (name, resume) {
            (Some(n), _) => {
                if n.is_empty() || n.contains('/') || n == "." || n == ".." {
                    return usage(format!("--run-name {n:?}: expected a plain folder name"));
                }
                out.join(n)
            }
            (None, true) => newest_unfinished(&out, kind)?,
            (None, false) => {
                let dir = claim_stamped_dir(&out, kind.name()).map_err(|(dir, e)| {
                    UsageError(format!(
                        "cannot create run folder {} ({e}); choose a writable --out-dir",
                        dir.display()
                    ))
                })?;
                claimed = true;
                dir
            }
        };
        let created = claimed || !dir.exists();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return usage(format!(
                "cannot create run folder {} ({e}); choose a writable --out-dir",
                dir.display()
            ));
        }
        let lock = RunLock::acquire(&dir).map_err(|e| {
            if e.downcast_ref::<UsageError>().is_some() {
                e
            } else {
                UsageError(format!("{e:#}; choose a writable --out-dir")).into()
            }
        })?;
        let state_path = dir.join(STATE_FILE);
        if resume {
            if !state_path.exists() && !dir.join(LAST_FILE).exists() {
                return usage(format!(
                    "--resume: {} holds no completed epoch ({} is missing); start a new run without --resume",
                    dir.display(),
                    STATE_FILE
                ));
            }
            if let Some(k) = std::fs::read_to_string(dir.join("meta.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["kind"].as_str().map(String::from))
                && k != kind.name()
            {
                return usage(format!(
                    "--resume: {} holds a {k} run, not a {} run; resume it with the command that started it",
                    dir.display(),
                    kind.name()
                ));
            }
            if saved_state(&dir).is_some_and(|s| s.finished) {
                return usage(format!(
                    "--resume: the run in {} already finished; nothing to resume",
                    dir.display()
                ));
            }
            let saved = std::fs::read_to_string(dir.join("config.toml"))
                .with_context(|| format!("--resume: cannot read {}/config.toml", dir.display()))?;
            let mut saved = Config::parse(&saved)
                .map_err(|e| UsageError(format!("--resume: {}/config.toml: {e}", dir.display())))?;
            // Runs saved before specs were written in canonical form.
            saved.canonicalize();
            check_same_training(&saved, config, &dir)?;
        } else if [MODEL_FILE, LAST_FILE, STATE_FILE]
            .iter()
            .any(|f| dir.join(f).exists())
        {
            return usage(if saved_state(&dir).is_some_and(|s| s.finished) {
                format!(
                    "run folder {} already holds a finished run; choose another --run-name",
                    dir.display()
                )
            } else {
                format!(
                    "run folder {} already holds a trained model; use --resume to continue it, or another --run-name",
                    dir.display()
                )
            });
        }
        let config_toml = config.to_toml()?;
        // Also the writability probe: it fails here, before any data is loaded.
        write_atomic(&dir.join("config.toml"), config_toml.as_bytes())
            .map_err(|e| UsageError(format!("{e:#}; choose a writable --out-dir")))?;
        let meta = serde_json::json!({
            "kind": kind.name(),
            "seed": config.seed,
            "version": env!("CARGO_PKG_VERSION"),
            "libtorch": crate::LIBTORCH_VERSION,
            "device": config.runtime.device,
            // How libgomp's workers wait (src/main.rs): the spin count, and whether
            // kdtrain chose it from the load at start or the user set it.
            "openmp_spincount": std::env::var("GOMP_SPINCOUNT").ok(),
            "openmp_spincount_chosen_by": if std::env::var_os(crate::device::CHOSEN_SPINCOUNT).is_some() {
                "kdtrain, from the load at start"
            } else if std::env::var_os("GOMP_SPINCOUNT").is_some() {
                "the user"
            } else {
                "libgomp's default"
            },
        });
        write_atomic(
            &dir.join("meta.json"),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )?;
        Ok(Run {
            dir,
            kind,
            quiet,
            config: config.clone(),
            config_toml,
            resuming: resume,
            histograms: config.logging.histograms,
            events: None,
            terms: &[],
            split: None,
            normalize: None,
            logit_bias: None,
            resume_args: String::new(),
            created,
            _lock: lock,
        })
    }

    /// Removes a folder this process created when the run fails before its first epoch
    /// (bad data, say), so that no empty run folder is left behind. A folder holding
    /// anything but the files [`Run::open`] wrote (a checkpoint, metrics) is kept whole.
    pub fn abandon(&self) {
        const OURS: [&str; 3] = ["config.toml", "meta.json", "run.lock"];
        let only_ours = std::fs::read_dir(&self.dir).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .all(|e| e.file_name().to_str().is_some_and(|n| OURS.contains(&n)))
        });
        if !self.created || !only_ours {
            return;
        }
        for f in OURS {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        let _ = std::fs::remove_dir(&self.dir); // fails, harmlessly, if anything else is there
    }

    /// Sets the objective's term names: the metrics columns besides loss and accuracy.
    pub fn set_terms(&mut self, terms: &'static [&'static str]) {
        self.terms = terms;
    }

    /// Records the validation split and the data ([`crate::data::DataRecord`]: source,
    /// shape, classes, normalisation) in `meta.json`, and the split and normalisation in
    /// every checkpoint written from now on.
    pub fn record_data(&mut self, data: &crate::data::Dataset) -> Result<()> {
        self.add_meta(serde_json::to_value(&data.split)?)?;
        self.add_meta(serde_json::json!({ "data": data.record() }))?;
        self.split = Some(data.split.clone());
        self.normalize = Some(data.normalize.clone());
        Ok(())
    }

    /// Merges the keys of `values` (a JSON object) into `meta.json`.
    pub fn add_meta(&self, values: serde_json::Value) -> Result<()> {
        let path = self.dir.join("meta.json");
        let mut meta: serde_json::Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        if let (Some(m), serde_json::Value::Object(s)) = (meta.as_object_mut(), values) {
            m.extend(s);
        }
        write_atomic(&path, serde_json::to_string_pretty(&meta)?.as_bytes())
    }

    /// The checkpoint metadata of `model` after `epoch`, its data spec included (also in
    /// last.safetensors, which is not written by [`checkpoint::save_model`]).
    fn metadata(
        &self,
        model: &dyn Network,
        epoch: usize,
    ) -> std::collections::HashMap<String, String> {
        let mut meta = checkpoint::metadata(
            model.arch(),
            self.kind.name(),
            &self.config_toml,
            epoch,
            self.split.as_ref(),
        );
        meta.extend(model.data_spec().to_metadata());
        if let Some(n) = &self.normalize {
            meta.insert(crate::data::META_NORMALIZE.to_string(), n.to_json());
        }
        if let Some(b) = &self.logit_bias {
            meta.insert(crate::bias::META_LOGIT_BIAS.to_string(), b.to_json());
        }
        meta
    }

    /// Sets the logit shift that [`Run::finish`] records in the final checkpoint
    /// ([`crate::bias::META_LOGIT_BIAS`]); the saved weights stay as trained.
    pub fn set_logit_bias(&mut self, bias: crate::bias::LogitBias) {
        self.logit_bias = Some(bias);
    }

    /// The run folder's name.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Prints a line to stderr unless quiet.
    pub fn say(&self, line: &str) {
        if !self.quiet {
            crate::errln!("{line}");
        }
    }

    /// For a resumed run: loads the last completed epoch into `model` and `opt`.
    pub fn resume_state(
        &self,
        model: &dyn Network,
        opt: &mut Adam,
        names: &[String],
    ) -> Result<Option<Resumed>> {
        if !self.resuming {
            return Ok(None);
        }
        let state_path = self.dir.join(STATE_FILE);
        let from_json = std::fs::read_to_string(&state_path)
            .ok()
            .and_then(|t| serde_json::from_str::<TrainState>(&t).ok());
        if from_json.as_ref().is_some_and(|s| s.finished) {
            return usage(format!(
                "--resume: the run in {} already finished; nothing to resume",
                self.dir.display()
            ));
        }
        let last = Checkpoint::read(&self.dir.join(LAST_FILE))?;
        // The state saved inside last.safetensors belongs to its tensors; state.json may
        // lag it by one epoch (or be missing) after a kill between the two writes.
        let state = match (last.metadata.get(META_STATE), from_json) {
            (Some(json), _) => serde_json::from_str::<TrainState>(json).with_context(|| {
                format!(
                    "{}: the saved training state is corrupt; start a new run without --resume",
                    last.path.display()
                )
            })?,
            (None, Some(s)) => s,
            (None, None) => bail!(
                "{} is missing or corrupt; start a new run without --resume",
                state_path.display()
            ),
        };
        // Data of another shape, class count or order is a usage error naming both.
        last.load_into(model).context("--resume")?;
        opt.load_state(
            names,
            |k| last.tensors.get(k).map(|t| t.to_device(model.device())),
            state.step,
        )
        .with_context(|| format!("{}", last.path.display()))?;
        // The best weights: those of the last epoch if it was the best (model.safetensors
        // is written after last.safetensors, so it may not have them yet), else
        // model.safetensors.
        let best = if state.best_epoch == state.epoch {
            // And model.safetensors gets them now: a later resume, after an epoch that
            // did not improve, reads the best weights from that file.
            let meta = self.metadata(model, state.epoch);
            checkpoint::save_model(&self.dir.join(MODEL_FILE), model, meta)?;
            model.snapshot()
        } else {
            Checkpoint::read(&self.dir.join(MODEL_FILE))?
                .model(model.arch(), model.device())?
                .snapshot()
        };
        self.say(&format!(
            "resuming {} after epoch {} (step {}, best epoch {}, {} epoch(s) without improvement)",
            self.dir.display(),
            state.epoch,
            state.step,
            state.best_epoch,
            state.bad_epochs
        ));
        Ok(Some(Resumed {
            state,
            best_weights: best,
        }))
    }

    /// Writes an epoch's results: the best checkpoint if it improved, the resume
    /// checkpoint and state, `metrics.csv`, the TensorBoard scalars and histograms, and
    /// the summary line.
    pub fn end_epoch(
        &mut self,
        model: &dyn Network,
        opt: &Adam,
        names: &[String],
        state: &TrainState,
        rec: &EpochRecord,
        improved: bool,
    ) -> Result<()> {
        let meta = self.metadata(model, rec.epoch);
        // last.safetensors first, with the state inside: one atomic file that `--resume`
        // can trust whatever moment a kill strikes.
        let mut tensors = model.named_state();
        tensors.extend(opt.state(names));
        let mut last_meta = meta.clone();
        last_meta.insert(META_STATE.to_string(), serde_json::to_string(state)?);
        write_atomic(
            &self.dir.join(LAST_FILE),
            &checkpoint::to_safetensors(&tensors, last_meta)?,
        )?;
        // Test hook: `die-after-last:N` ends the process as a kill would, between epoch
        // N's last.safetensors and its model.safetensors.
        if crate::error::hook_is(&format!("die-after-last:{}", rec.epoch)) {
            std::process::exit(137);
        }
        if improved {
            checkpoint::save_model(&self.dir.join(MODEL_FILE), model, meta)?;
        }
        // state.json last: it names an epoch only once that epoch's tensors are on disk.
        write_atomic(
            &self.dir.join(STATE_FILE),
            serde_json::to_string(state)?.as_bytes(),
        )?;
        self.write_csv(&state.history)?;
        self.log_tensorboard(model, rec)?;
        if !self.quiet {
            let t = &rec.train;
            let v = &rec.val;
            let kd: String = self
                .terms
                .iter()
                .map(|n| format!(" {n} {:.4}", t.get(n)))
                .collect();
            crate::errln!(
                "epoch {:>3}/{}  train loss {:.4}{kd} acc {:.4} | val loss {:.4} ce {:.4} acc {:.4} | lr {:.2e} | {:.2} s{}",
                rec.epoch,
                self.config.epochs_for(self.kind == RunKind::Teacher),
                t.loss,
                t.acc,
                v.loss,
                v.ce,
                v.acc,
                rec.lr,
                rec.seconds,
                if improved { "  *best" } else { "" }
            );
        }
        Ok(())
    }

    /// The CSV columns (besides `epoch`): `train_loss`, `train_acc`, `val_loss`,
    /// `val_acc`, then `train_<term>` and `val_<term>` for each of the objective's terms
    /// (`train_ce`, `train_kl`, ... when distilling), then `lr` and
    /// `time_epoch_seconds`. The same names, with the first `_` as `/`, are the
    /// TensorBoard tags.
    fn columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = ["train_loss", "train_acc", "val_loss", "val_acc"]
            .map(String::from)
            .to_vec();
        for set in ["train", "val"] {
            cols.extend(self.terms.iter().map(|t| format!("{set}_{t}")));
        }
        cols.extend(["lr".to_string(), "time_epoch_seconds".to_string()]);
        cols
    }

    /// The value of column `name` in `r`.
    fn value(r: &EpochRecord, name: &str) -> f64 {
        match name {
            "lr" => r.lr,
            "time_epoch_seconds" => r.seconds,
            n => match n.split_once('_') {
                Some(("train", m)) => r.train.get(m),
                Some(("val", m)) => r.val.get(m),
                _ => f64::NAN,
            },
        }
    }

    fn write_csv(&self, history: &[EpochRecord]) -> Result<()> {
        let cols = self.columns();
        let mut out = String::from("epoch");
        for name in &cols {
            out.push(',');
            out.push_str(name);
        }
        out.push('\n');
        for r in history {
            out.push_str(&r.epoch.to_string());
            for name in &cols {
                out.push_str(&format!(",{}", Self::value(r, name)));
            }
            out.push('\n');
        }
        write_atomic(&self.dir.join("metrics.csv"), out.as_bytes())
    }

    fn log_tensorboard(&mut self, model: &dyn Network, rec: &EpochRecord) -> Result<()> {
        if self.events.is_none() {
            self.events = Some(EventWriter::create(&self.dir)?);
        }
        let cols = self.columns();
        let histograms = self.histograms;
        let ev = self.events.as_mut().expect("created above");
        let step = rec.epoch as i64;
        for name in cols {
            let tag = name.replacen('_', "/", 1);
            ev.add_scalar(&tag, Self::value(rec, &name), step)?;
        }
        if histograms {
            for (name, t) in model.named_parameters() {
                let values: Vec<f32> =
                    Vec::try_from(t.detach().to_device(tch::Device::Cpu).flatten(0, -1))?;
                ev.add_histogram(&name.replace('.', "/"), &values, step)?;
            }
        }
        ev.flush()
    }

    /// Writes the final model with the selected weights (`model.safetensors`). The run
    /// is not finished until [`Run::mark_finished`]: a stop before then (after the last
    /// epoch, during the final evaluation) leaves it for `--resume`, which evaluates
    /// again and writes the summary.
    pub fn finish(&mut self, model: &dyn Network, state_epoch: usize) -> Result<()> {
        let meta = self.metadata(model, state_epoch);
        checkpoint::save_model(&self.dir.join(MODEL_FILE), model, meta)?;
        Ok(())
    }

    /// Marks the run finished in `state.json`, so that `--resume` will not reopen it;
    /// called once its `summary.json` is written.
    ///
    /// # Errors
    /// An I/O error writing `state.json`.
    pub fn mark_finished(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(mut s) = serde_json::from_str::<TrainState>(&text)
        {
            s.finished = true;
            write_atomic(&path, serde_json::to_string(&s)?.as_bytes())?;
        }
        Ok(())
    }

    /// The whole history, as saved in `state.json`.
    pub fn history(&self) -> Vec<EpochRecord> {
        saved_state(&self.dir)
            .map(|s| s.history)
            .unwrap_or_default()
    }
}

/// The `state.json` in run folder `dir`, when it exists and parses.
fn saved_state(dir: &Path) -> Option<TrainState> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// A resumed run must train the same thing: everything but the epoch budget, the
/// device, threads, out-dir, logging, the data folder, the teacher's path (its identity is
/// checked by `distill`) and `[reproduce]` must match the run's saved config. The error
/// names each differing key (`distill.dkd.beta`) with both values.
fn check_same_training(saved: &Config, now: &Config, dir: &Path) -> Result<()> {
    let norm = |c: &Config| {
        let mut c = c.clone();
        // The epoch budget may change on resume (the schedule's horizon is kept).
        c.train.epochs = 0;
        c.train.teacher_epochs = 0;
        c.runtime = Default::default();
        c.logging = Default::default();
        c.data.dir = PathBuf::new();
        c.distill.teacher = PathBuf::new();
        c.reproduce = Default::default();
        c
    };
    let (a, b) = (norm(saved), norm(now));
    if a != b {
        let flat = |c: &Config| -> Result<std::collections::BTreeMap<String, String>> {
            let v = toml::Value::try_from(c).context("serialising the config")?;
            let mut out = std::collections::BTreeMap::new();
            fn walk(
                prefix: &str,
                v: &toml::Value,
                out: &mut std::collections::BTreeMap<String, String>,
            ) {
                match v {
                    toml::Value::Table(t) => {
                        for (k, v) in t {
                            let key = if prefix.is_empty() {
                                k.clone()
                            } else {
                                format!("{prefix}.{k}")
                            };
                            walk(&key, v, out);
                        }
                    }
                    other => {
                        out.insert(prefix.to_string(), other.to_string());
                    }
                }
            }
            walk("", &v, &mut out);
            Ok(out)
        };
        let (fa, fb) = (flat(&a)?, flat(&b)?);
        let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
        let none = "(none)".to_string();
        let diff: Vec<String> = keys
            .into_iter()
            .filter(|k| fa.get(*k) != fb.get(*k))
            .map(|k| {
                format!(
                    "`{k}` saved {} vs now {}",
                    fa.get(k).unwrap_or(&none),
                    fb.get(k).unwrap_or(&none)
                )
            })
            .take(4)
            .collect();
        return usage(format!(
            "--resume: the config saved in {}/config.toml disagrees with this command ({}); \
             rerun with the same settings (`--config {}/config.toml` holds them all), or \
             start a new run",
            dir.display(),
            diff.join("; "),
            dir.display()
        ));
    }
    Ok(())
}

/// Creates and returns a new folder `<out>/<prefix>-<date>-<time>`, or `...-2`, `...-3`,
/// ... when that name is taken. `create_dir` is atomic, so processes started in the same
/// second (a sweep's jobs, two `reproduce` runs) each get their own folder.
///
/// # Errors
/// The folder it last tried and the I/O error (after 1000 taken names, `AlreadyExists`).
pub fn claim_stamped_dir(
    out: &Path,
    prefix: &str,
) -> std::result::Result<PathBuf, (PathBuf, std::io::Error)> {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let base = out.join(format!("{prefix}-{stamp}"));
    let mut dir = base.clone();
    let mut i = 2;
    loop {
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && i < 1000 => {
                dir = PathBuf::from(format!("{}-{i}", base.display()));
                i += 1;
            }
            Err(e) => return Err((dir, e)),
        }
    }
}

/// The newest `<kind>-*` folder in `out` with a `state.json` that is not finished.
pub fn newest_unfinished(out: &Path, kind: RunKind) -> Result<PathBuf> {
    let prefix = format!("{}-", kind.name());
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(out)
        .with_context(|| format!("cannot list {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .filter(|p| saved_state(p).is_some_and(|s| !s.finished))
        .collect();
    candidates.sort();
    candidates.pop().ok_or_else(|| {
        UsageError(format!(
            "--resume: no unfinished {} run in {}; name one with --run-name, or start a new run",
            kind.name(),
            out.display()
        ))
        .into()
    })
}

/// The newest trained model of `kind` in `out` (by modification time), among the runs
/// whose `state.json` says they finished. Others (interrupted, still training in another
/// process, or with a `state.json` missing or unreadable after a kill) are skipped:
/// their `model.safetensors` may be only the best epoch so far.
pub fn newest_model(out: &Path, kind: RunKind) -> Option<PathBuf> {
    // `<out>/<kind>-*/model.safetensors` from `train`/`distill`, and
    // `<out>/reproduce-*/<kind>/model.safetensors` from `reproduce`; the newest file wins.
    let prefix = format!("{}-", kind.name());
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                Some(p.join(MODEL_FILE))
            } else if name.starts_with("reproduce-") {
                Some(p.join(kind.name()).join(MODEL_FILE))
            } else {
                None
            }
        })
        .filter(|p| p.parent().and_then(saved_state).is_some_and(|s| s.finished))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// The per-epoch progress bar: drawn on stderr only when it is a terminal, refreshed
/// at most every `REFRESH_STEPS` steps (reading the metrics is a device sync).
pub struct Progress {
    bar: Option<ProgressBar>,
}

const REFRESH_STEPS: u64 = 16;

impl Progress {
    pub fn epoch(quiet: bool, epoch: usize, epochs: usize, steps: u64) -> Progress {
        let target = ProgressDrawTarget::stderr_with_hz(10);
        if quiet || target.is_hidden() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(steps), target);
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} steps {elapsed}<{eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{epochs}"));
        Progress { bar: Some(bar) }
    }

    /// Advances to `pos`; calls `metrics` (a device sync) only when the bar is shown and
    /// due for a refresh.
    pub fn step(&mut self, pos: u64, metrics: impl FnOnce() -> Metrics) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            if pos.is_multiple_of(REFRESH_STEPS) {
                let m = metrics();
                bar.set_message(format!("loss {:.4} acc {:.4}", m.loss, m.acc));
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
