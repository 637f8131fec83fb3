//! The commands: `train`, `distill`, `evaluate`, `reproduce`. Each is a thin file over
//! the shared steps here: find the data, load the teacher, and [`train_one`] (one run:
//! model, loop, checkpoint, reports). Each command resolves and checks everything it
//! needs (settings, data folder, run folder, teacher checkpoint) before training.

pub mod distill;
pub mod evaluate;
pub mod reproduce;
pub mod sweep;
pub mod train;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::checkpoint::Checkpoint;
use crate::cli::{Cli, Command};
use crate::config::settings::Settings;
use crate::config::{Config, Validation};
use crate::data::{self, DataSpec, Dataset};
use crate::error::{Interrupted, quote};
use crate::error::{UsageError, usage};
use crate::eval::{self, Metrics};
use crate::model::{Arch, Network};
use crate::objective::Objective;
use crate::optim::AdamConfig;
use crate::run::{Run, RunKind};
use crate::schedule::CosineDecay;
use crate::train::{LoopConfig, Teacher};

pub use crate::error::INTERRUPT_HOOK;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    // A sweep's settings are in its sweep file and plan, not in config.toml and the flags.
    if let Command::Sweep(a) = &cli.command {
        return sweep::run(&cli, a);
    }
    let settings = Settings::resolve(&cli)?;
    match &cli.command {
        Command::Train { model, .. } => train::run(&settings, *model),
        Command::Distill(_) => distill::run(&settings),
        Command::Evaluate(args) => evaluate::run(&settings, args),
        Command::Reproduce(_) => reproduce::run(&settings),
        Command::Predict(a) => crate::predict::run(a, settings.device, settings.quiet),
        Command::Export(a) => crate::export::run(a, settings.quiet),
        Command::Sweep(a) => sweep::run(&cli, a),
    }
}

pub use crate::report::RunOutcome;

/// The data folder, found (or downloaded with `--download`) before anything else runs.
pub fn data_dir(s: &Settings) -> Result<PathBuf> {
    let named = (!s.config.data.dir.as_os_str().is_empty()).then(|| s.config.data.dir.clone());
    match data::locate(named.as_deref()) {
        Ok(d) => Ok(d),
        Err(_) if s.download && named.is_none() => {
            s.say(&format!(
                "downloading Fashion-MNIST from {} into {}",
                s.config.data.download_url,
                data::DOWNLOAD_DIR
            ));
            crate::download::download_all(
                &s.config.data.download_url,
                Path::new(data::DOWNLOAD_DIR),
                s.quiet,
            )
        }
        Err(e) => Err(e),
    }
}

/// The data, split and on the device, with the seconds it took.
pub fn load_data(s: &Settings, dir: &Path) -> Result<(Dataset, f64)> {
    let t0 = Instant::now();
    let raw = data::load_dir(dir)?;
    let c = &s.config.data;
    let val = match c.validation {
        Validation::Split => Some(c.validation_size),
        Validation::Test => None,
    };
    let ds = data::prepare(&raw, val, c.split_seed, s.device)?;
    let secs = t0.elapsed().as_secs_f64();
    s.say(&format!(
        "data: {} ({} train, {} validation: {}, {} test) in {secs:.2} s; device {:?}, {} threads",
        dir.display(),
        ds.train.len(),
        ds.val.len(),
        ds.split.describe(),
        ds.test.len(),
        s.device,
        s.threads
    ));
    Ok((ds, secs))
}

/// A frozen teacher read from a checkpoint, with what it was trained on.
pub struct LoadedTeacher {
    pub network: Box<dyn Network>,
    pub path: PathBuf,
    pub split: Option<data::SplitInfo>,
    /// SHA-256 of the checkpoint file, hex: which teacher a run used, whatever its path.
    pub sha256: String,
}

impl LoadedTeacher {
    /// What a distilled run records about its teacher in `meta.json`: its file, the
    /// file's SHA-256, its architecture as a spec (`cnn:32,64,256,dropout=0.3`, or
    /// `torchscript`; the run's `model.teacher` is only what `train teacher` would build)
    /// and its split's hash.
    pub fn meta(&self) -> serde_json::Value {
        serde_json::json!({
            "teacher": self.path.display().to_string(),
            "teacher_arch": self.network.arch().spec(),
            "teacher_sha256": self.sha256,
            "teacher_split_hash": self.split.as_ref().map(|s| s.split_hash.clone()),
        })
    }
}

/// The teacher checkpoint for distillation: `distill.teacher`, or the newest teacher in
/// the out-dir; read, checked (against the data of `spec`) and frozen before training.
///
/// # Errors
/// Usage errors naming the file: none found, unreadable, not a teacher, wrong shapes,
/// another data spec.
pub fn load_teacher(s: &Settings, config: &Config, spec: &DataSpec) -> Result<LoadedTeacher> {
    let path = if config.distill.teacher.as_os_str().is_empty() {
        let out = config.runtime.out_dir.as_path();
        match crate::run::newest_model(out, RunKind::Teacher) {
            Some(p) => p,
            None => {
                return usage(format!(
                    "no finished teacher checkpoint in {0}/teacher-*/model.safetensors or \
                     {0}/reproduce-*/teacher/model.safetensors (interrupted runs are skipped; \
                     finish one with --resume); run `train teacher` first, or pass --teacher PATH",
                    out.display()
                ));
            }
        }
    } else {
        config.distill.teacher.clone()
    };
    // Recorded by its absolute path, so that the run's config.toml (and the printed
    // resume command) finds it from any folder.
    let path = std::path::absolute(&path).unwrap_or(path);
    let (mut network, split) = open_teacher(&path, s, "--teacher", spec)?;
    network.freeze();
    s.say(&format!(
        "teacher: {} ({})",
        path.display(),
        network.describe()
    ));
    let sha256 = {
        use sha2::{Digest, Sha256};
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read teacher {}", path.display()))?;
        crate::hex(&Sha256::digest(&bytes))
    };
    Ok(LoadedTeacher {
        network,
        split,
        path,
        sha256,
    })
}

/// A teacher from `path`: a TorchScript file (recognised by content: a zip archive) run
/// through libtorch, or a kdtrain checkpoint; with the split it records (TorchScript
/// files record none). It must take the data of `spec` and give its classes' logits.
///
/// # Errors
/// Usage errors naming the file (missing, not TorchScript, wrong output, not a teacher,
/// trained on data of another spec).
pub fn open_teacher(
    path: &Path,
    s: &Settings,
    flag: &str,
    spec: &DataSpec,
) -> Result<(Box<dyn Network>, Option<data::SplitInfo>)> {
    let head = {
        use std::io::Read;
        let mut b = [0u8; 4];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut b))
            .unwrap_or(0);
        b[..n].to_vec()
    };
    if crate::torchscript::is_zip(&head) {
        let input = match s.config.model.teacher_input.as_str() {
            "flat" => crate::torchscript::Input::Flat,
            "image" => crate::torchscript::Input::Image,
            other => {
                return usage(format!(
                    "config key `model.teacher_input` = {other:?}: expected \"image\" or \"flat\""
                ));
            }
        };
        let net = crate::torchscript::TorchScriptNet::load(path, input, spec, s.device)?;
        return Ok((Box::new(net), None));
    }
    let ckpt = Checkpoint::read(path).map_err(|e| match e.downcast_ref::<UsageError>() {
        Some(_) => UsageError(format!(
            "{e}; run `train teacher` first, or pass --teacher PATH"
        ))
        .into(),
        None => e,
    })?;
    let network = teacher_network(&ckpt, s, flag)?;
    if let Some(e) = spec_mismatch(
        &format!("{flag} {}", path.display()),
        network.data_spec(),
        spec,
    ) {
        return usage(e);
    }
    Ok((network, ckpt.split()))
}

/// Why a network for data of `have` cannot serve on data of `want`, naming `what` (a
/// flag and a file): `None` when they are the same.
pub fn spec_mismatch(what: &str, have: &DataSpec, want: &DataSpec) -> Option<String> {
    (have != want).then(|| {
        format!(
            "{what} takes {} images of {} classes ({}) but the data are {} images of {} \
             classes ({}); use a model trained on this data",
            have.describe(),
            have.classes(),
            have.class_names.join(", "),
            want.describe(),
            want.classes(),
            want.class_names.join(", ")
        )
    })
}

/// The network of a checkpoint that is to act as a teacher: its recorded architecture
/// (or, for a file that records none, the configured teacher's), and a refusal of a
/// checkpoint trained as a student.
fn teacher_network(ckpt: &Checkpoint, s: &Settings, flag: &str) -> Result<Box<dyn Network>> {
    let network = ckpt
        .network(s.device)
        .map_err(|e| UsageError(format!("{flag}: {e:#}")))?;
    let arch = network.arch().clone();
    if let Some(role) = ckpt.role()
        && role != "teacher"
    {
        return usage(format!(
            "{flag}: {} is a {role} checkpoint ({}; metadata kdtrain.role = {role}), not a \
             teacher; pass a teacher's model.safetensors",
            ckpt.path.display(),
            arch.describe(network.data_spec())
        ));
    }
    Ok(network)
}

/// The teacher's split against this run's: refuses a mismatch (unless
/// `--allow-split-mismatch`), warns when the teacher records none.
pub fn check_teacher_split(s: &Settings, teacher: &LoadedTeacher, data: &Dataset) -> Result<()> {
    match &teacher.split {
        None => {
            crate::errln!(
                "warning: teacher {} records no validation split; make sure this run's \
                 validation images were not in its training set",
                teacher.path.display()
            );
            Ok(())
        }
        Some(t) if t.same_as(&data.split) => Ok(()),
        Some(t) if s.allow_split_mismatch => {
            crate::errln!(
                "warning: teacher {} validated on {}, this run on {} (--allow-split-mismatch)",
                teacher.path.display(),
                t.describe(),
                data.split.describe()
            );
            Ok(())
        }
        Some(t) => {
            let (why, fix) = match (t.split_seed, data.split.split_seed) {
                (None, _) => (
                    "the teacher trained on every training image, so this run's held-out \
                     images are in its training set",
                    "validate on the test set as the teacher did (data.validation = \"test\")"
                        .to_string(),
                ),
                (Some(seed), None) => (
                    "this run would select models on another set than the teacher did",
                    format!(
                        "use the teacher's split (data.validation = \"split\", \
                         data.split_seed = {seed}, data.validation_size = {})",
                        t.validation_size
                    ),
                ),
                (Some(seed), Some(_)) => (
                    "this run's validation images would include images the teacher trained on",
                    format!(
                        "use the teacher's data.split_seed ({seed}) and data.validation_size ({})",
                        t.validation_size
                    ),
                ),
            };
            usage(format!(
                "teacher {} was trained with validation on {}, but this run validates on {}: \
                 {why}; {fix}, or pass --allow-split-mismatch",
                teacher.path.display(),
                t.describe(),
                data.split.describe(),
            ))
        }
    }
}

/// Bytes of memory the kernel says are available (`MemAvailable` in /proc/meminfo);
/// `None` where that cannot be read (not Linux).
pub fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses, before allocating anything, an architecture whose training state cannot fit
/// in `available` bytes: the f32 weights, their gradients and Adam's moment tensors (m
/// and v, and AMSGrad's running max when `amsgrad`), 16 or 20 bytes per parameter,
/// activations not counted. libtorch would otherwise abort mid-allocation with an
/// internal error.
///
/// # Errors
/// A [`crate::error::UsageError`] naming the role, the spec, the parameter count and
/// both sizes.
pub fn check_memory(
    arch: &Arch,
    spec: &DataSpec,
    kind: RunKind,
    amsgrad: bool,
    available: Option<u64>,
) -> Result<()> {
    let need = arch.num_params(spec).max(0) as u64 * if amsgrad { 20 } else { 16 };
    match available {
        Some(have) if need > have => crate::error::usage(format!(
            "the {} architecture {:?} has {} parameters; training it needs at least {:.1} GB \
             (weights, gradients and Adam's moments in f32) but {:.1} GB of memory is \
             available; choose fewer or narrower layers",
            kind.name(),
            arch.spec(),
            arch.num_params(spec),
            need as f64 / 1e9,
            have as f64 / 1e9
        )),
        _ => Ok(()),
    }
}

/// Trains one model in `run` with `config` and writes its final checkpoint and reports.
pub fn train_one(
    s: &Settings,
    config: &Config,
    run: &mut Run,
    objective: &dyn Objective,
    teacher: Option<&LoadedTeacher>,
    data: &(Dataset, f64),
) -> Result<RunOutcome> {
    let (data, data_load_seconds) = (&data.0, data.1);
    let c = config;
    let kind = run.kind;
    let arch = c.arch_for(kind)?;
    if s.device == tch::Device::Cpu {
        check_memory(
            &arch,
            &data.spec,
            kind,
            c.optimizer.amsgrad,
            available_memory_bytes(),
        )?;
    }
    tch::manual_seed(c.seed as i64);
    let model = arch.build(&data.spec, s.device);
    let steps_per_epoch = (data.train.len() as usize).div_ceil(c.data.batch_size);
    let alpha = if kind == RunKind::Teacher {
        c.lr_schedule.teacher_alpha
    } else {
        c.lr_schedule.alpha
    };
    let is_teacher = kind == RunKind::Teacher;
    let epochs = c.epochs_for(is_teacher);
    let (augment, views) = c.augment_for(is_teacher)?;
    let loop_cfg = LoopConfig {
        epochs,
        batch_size: c.data.batch_size as i64,
        schedule: CosineDecay {
            initial_lr: c.lr_schedule.initial_lr,
            decay_steps: c.decay_steps(epochs, steps_per_epoch),
            alpha,
        },
        adam: AdamConfig {
            beta1: c.optimizer.beta1,
            beta2: c.optimizer.beta2,
            eps: c.optimizer.eps,
            amsgrad: c.optimizer.amsgrad,
            eps_placement: c.optimizer.epsilon_placement,
        },
        patience: c
            .early_stopping
            .enabled
            .then_some(c.early_stopping.patience),
        monitor: c.early_stopping.monitor,
        seed: c.seed,
        augment,
        views,
    };
    let teacher = teacher.map(|t| Teacher {
        network: t.network.as_ref(),
        id: t.sha256.clone(),
        cache: c.distill.teacher_cache,
    });
    let fit = crate::train::fit(
        run,
        model.as_ref(),
        objective,
        teacher.as_ref(),
        data,
        &loop_cfg,
    )
    .map_err(|e| with_resume_command(e, run, epochs))?;
    run.finish(model.as_ref(), fit.best_epoch)?;
    if std::env::var_os(INTERRUPT_HOOK).is_some_and(|v| v == "final-evaluation") {
        crate::error::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    let t0 = Instant::now();
    let test_logits = eval::logits(model.as_ref(), &data.test.images);
    let test = eval::report(&test_logits, &data.test.labels, &data.spec, None)?;
    let eval_test_seconds = t0.elapsed().as_secs_f64();
    let train_m: Metrics = eval::metrics(
        &eval::logits(model.as_ref(), &data.train.images),
        &data.train.labels,
        None,
    );
    let history = run.history();
    // The selected weights are the best epoch's, whose validation figures the history
    // already holds.
    let best = history
        .iter()
        .find(|r| r.epoch == fit.best_epoch)
        .map(|r| (r.val.acc, r.val.ce));
    let (best_val_acc, best_val_ce) = match best {
        Some(b) => b,
        None => {
            let m = eval::metrics(
                &eval::logits(model.as_ref(), &data.val.images),
                &data.val.labels,
                None,
            );
            (m.acc, m.ce)
        }
    };
    // Every epoch of the run, also those of earlier processes before a resume (a
    // resumed run that trains no further epoch still has a median).
    let secs: Vec<f64> = history.iter().map(|r| r.seconds).collect();
    let distilled = kind == RunKind::Distilled;
    let (temperature, alpha) = c.distill.t_alpha(objective.name());
    let out = RunOutcome {
        implementation: "kdtrain",
        model: kind.name(),
        arch: arch.spec(),
        objective: objective.name().to_string(),
        objective_settings: objective.describe(),
        run_dir: run.dir.clone(),
        params: arch.num_params(&data.spec),
        epochs_run: fit.epochs_run,
        best_epoch: fit.best_epoch,
        stopped_early: fit.stopped_early,
        median_epoch_seconds: crate::report::median(secs),
        epoch_seconds: fit.epoch_seconds,
        eval_test_seconds,
        startup_seconds: fit.startup_seconds,
        teacher_cache_seconds: fit.teacher_cache_seconds,
        data_load_seconds,
        train_set: match c.data.validation {
            Validation::Split => {
                "the training split (training images less the validation split)".into()
            }
            Validation::Test => "all training images (the test set validates)".into(),
        },
        train_examples: data.train.len(),
        train_loss: train_m.loss,
        train_acc: train_m.acc,
        test_loss: test.loss,
        test_acc: test.acc,
        test_ece: test.ece,
        best_val_acc,
        best_val_ce,
        threads: s.threads,
        device: format!("{:?}", s.device),
        temperature: temperature.filter(|_| distilled),
        alpha: alpha.filter(|_| distilled),
        seed: c.seed,
        split: data.split.clone(),
        val_acc: history.iter().map(|r| r.val.acc).collect(),
    };
    crate::checkpoint::write_atomic(
        &run.dir.join("summary.json"),
        serde_json::to_string_pretty(&out)?.as_bytes(),
    )?;
    if crate::error::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        // Ctrl-C after the last epoch: the selected model was already saved, so the run
        // is finished; it says so, and a command with more runs to go stops at the next
        // run's first step (exit 130).
        crate::errln!(
            "kdtrain: interrupt received after the last epoch of {}; the run is complete \
             (model.safetensors and summary.json written)",
            run.dir.display()
        );
    }
    if c.logging.plots {
        let h = &history;
        let col = |f: fn(&crate::run::EpochRecord) -> f64| h.iter().map(f).collect::<Vec<f64>>();
        let title = match run.name() {
            n if n == kind.name() => n,
            n => format!("{} ({n})", kind.name()),
        };
        crate::plot::curves_png(
            &run.dir.join("curves.png"),
            &crate::plot::Curves {
                title: &title,
                train_loss: &col(|r| r.train.loss),
                val_loss: &col(|r| r.val.loss),
                train_acc: &col(|r| r.train.acc),
                val_acc: &col(|r| r.val.acc),
            },
        )?;
    }
    Ok(out)
}

/// `e` with the command that resumes `run` when it is an [`Interrupted`] that left a
/// completed epoch on disk: `kdtrain <command> --out-dir .. --run-name .. --epochs N
/// <the run's resume_args> --resume`, shell-quoted. The loop knows only that it stopped;
/// the command knows how it was started.
fn with_resume_command(e: anyhow::Error, run: &Run, epochs: usize) -> anyhow::Error {
    match e.downcast::<Interrupted>() {
        Ok(mut stop) => {
            if stop.resumable && stop.resume.is_none() {
                stop.resume = Some(format!(
                    "kdtrain {} --out-dir {} --run-name {} --epochs {epochs}{} --resume",
                    run.kind.command(),
                    quote(run.dir.parent().unwrap_or(Path::new(""))),
                    quote(Path::new(&run.name())),
                    run.resume_args
                ));
            }
            stop.into()
        }
        Err(e) => e,
    }
}

/// The one-line result of a run on stdout.
pub fn print_result(o: &RunOutcome) {
    crate::outln!(
        "{}: train loss {:.4} acc {:.4} | test loss {:.4} acc {:.4} | {} epochs (best {}) at {} s/epoch | {}",
        o.model,
        o.train_loss,
        o.train_acc,
        o.test_loss,
        o.test_acc,
        o.epochs_run,
        o.best_epoch,
        o.median_epoch_seconds
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into()),
        o.run_dir.join(crate::run::MODEL_FILE).display()
    );
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    #[test]
    fn an_architecture_too_big_for_memory_is_refused_by_name() {
        let student = Arch::parse("mlp:128").unwrap();
        // 101,770 parameters x 20 bytes = 2,035,400 bytes.
        let e = check_memory(
            &student,
            &DataSpec::fashion_mnist(),
            RunKind::Student,
            true,
            Some(2_035_399),
        )
        .unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some(), "exit 2: {e}");
        let e = e.to_string();
        assert!(
            e.contains("student architecture \"mlp:128\" has 101770 parameters"),
            "{e}"
        );
        check_memory(
            &student,
            &DataSpec::fashion_mnist(),
            RunKind::Student,
            true,
            Some(2_035_400),
        )
        .unwrap();
        check_memory(
            &student,
            &DataSpec::fashion_mnist(),
            RunKind::Student,
            true,
            None,
        )
        .unwrap();
        // Without AMSGrad's running max, 16 bytes per parameter.
        check_memory(
            &student,
            &DataSpec::fashion_mnist(),
            RunKind::Student,
            false,
            Some(1_628_320),
        )
        .unwrap();
        assert!(
            check_memory(
                &student,
                &DataSpec::fashion_mnist(),
                RunKind::Student,
                false,
                Some(1_628_319)
            )
            .is_err()
        );
    }
}
