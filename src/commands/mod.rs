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

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::settings::Settings;
use crate::config::{Config, Validation};
use crate::data::{self, DataSpec, Dataset};
use crate::error::{Interrupted, quote};
use crate::eval::{self, Metrics};
use crate::model::Arch;
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
pub use crate::teacher::{
    LoadedTeacher, check_teacher_split, load_teacher, load_teachers, open_teacher,
    recorded_teacher_shas, spec_mismatch, teachers_meta,
};

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

/// The data set at `dir` read by the reader `data.source` names (detected when
/// `"auto"`), with the seconds it took; its source, shape and classes are said on one
/// line.
///
/// # Errors
/// The reader's (naming the file); a [`crate::error::UsageError`] naming
/// `data.data_shape` when it is set and is not the data's shape.
pub fn load_raw(s: &Settings, dir: &Path) -> Result<(data::RawData, f64)> {
    let t0 = Instant::now();
    let raw = data::load(dir, &s.config.data.read_options())?;
    let want = &s.config.data.data_shape;
    if !want.is_empty() && *want != raw.spec.data_shape() {
        return crate::error::usage(format!(
            "data.data_shape = {want:?} but the data in {} are {:?} ([height, width, \
             channels]); set data.data_shape = [] to take the data's shape, or data.resize / \
             data.channels to convert them",
            dir.display(),
            raw.spec.data_shape()
        ));
    }
    if raw.spec.classes() < 2 {
        return crate::error::usage(format!(
            "the data in {} have {} class ({}); a classifier needs at least 2: add class \
             folders, or labels of another class",
            dir.display(),
            raw.spec.classes(),
            raw.spec.class_names.join(", ")
        ));
    }
    let mut counts = vec![0usize; raw.spec.classes() as usize];
    for &l in &raw.train.labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    let empty: Vec<String> = (0..counts.len())
        .filter(|&k| counts[k] == 0)
        .map(|k| raw.spec.class_name(k as i64))
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    s.say(&format!(
        "data: {} read as {} in {secs:.2} s: {} images, {} classes ({}){}",
        dir.display(),
        raw.source.name(),
        raw.spec.describe(),
        raw.spec.classes(),
        crate::data::names_preview(&raw.spec.class_names),
        raw.note
            .as_ref()
            .map(|n| format!("; {n}"))
            .unwrap_or_default()
    ));
    if !empty.is_empty() {
        crate::errln!(
            "warning: {} of the {} classes have no training images ({}); the models get \
             outputs for them all, but cannot learn them (check the labels, or data.classes)",
            empty.len(),
            counts.len(),
            crate::data::names_preview(&empty)
        );
    }
    Ok((raw, secs))
}

/// The data read by [`load_raw`], split, normalised and on the device, with the seconds
/// it took in all.
pub fn prepare_data(s: &Settings, raw: &data::RawData, read_secs: f64) -> Result<(Dataset, f64)> {
    prepare_data_with(s, &s.config, raw, read_secs)
}

/// [`prepare_data`] with the `[data]` settings of `config` (reproduce's teachers and
/// students may see different transfer sets).
pub fn prepare_data_with(
    s: &Settings,
    config: &Config,
    raw: &data::RawData,
    read_secs: f64,
) -> Result<(Dataset, f64)> {
    let t0 = Instant::now();
    let c = &config.data;
    let val = match c.validation {
        Validation::Split => Some(c.validation_size),
        Validation::Test => None,
    };
    let ds = data::prepare(raw, val, c.split_seed, c.normalize, &c.transfer(), s.device)?;
    let secs = read_secs + t0.elapsed().as_secs_f64();
    s.say(&format!(
        "data: {} train, {} validation: {}, {} test; inputs {}; device {:?}, {} threads",
        ds.train.len(),
        ds.val.len(),
        ds.split.describe(),
        ds.test.len(),
        ds.normalize.describe(),
        s.device,
        s.threads
    ));
    if ds.transfer.fraction < 1.0 || !ds.transfer.omitted.is_empty() {
        s.say(&format!("data: transfer set {}", ds.transfer.describe()));
    }
    Ok((ds, secs))
}

/// [`load_raw`] and [`prepare_data`].
pub fn load_data(s: &Settings, dir: &Path) -> Result<(Dataset, f64)> {
    let (raw, secs) = load_raw(s, dir)?;
    prepare_data(s, &raw, secs)
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

/// Trains one model in `run` with `config` (against `teachers`, one or an ensemble, when
/// distilling; none otherwise) and writes its final checkpoint and reports.
pub fn train_one(
    s: &Settings,
    config: &Config,
    run: &mut Run,
    objective: &dyn Objective,
    teachers: &[LoadedTeacher],
    data: &(Dataset, f64),
) -> Result<RunOutcome> {
    let (data, data_load_seconds) = (&data.0, data.1);
    let c = config;
    let kind = run.kind;
    let arch = c.arch_for(kind)?;
    if let Err(e) = arch.check_fits(&data.spec) {
        let key = match kind {
            RunKind::Teacher => "model.teacher",
            _ => "model.student",
        };
        return crate::error::usage(format!("config key `{key}` = {e}"));
    }
    if s.device == tch::Device::Cpu {
        check_memory(
            &arch,
            &data.spec,
            kind,
            c.optimizer.amsgrad,
            crate::device::available_memory_bytes(),
        )?;
    }
    tch::manual_seed(c.seed as i64);
    let model = arch.build(&data.spec, s.device);
    let steps_per_epoch = (data.train.len() as usize).div_ceil(c.data.batch_size);
    let loop_cfg = loop_config(c, kind, steps_per_epoch)?;
    let epochs = loop_cfg.epochs;
    let teacher = (!teachers.is_empty()).then(|| Teacher {
        members: teachers.iter().map(|t| t.network.as_ref()).collect(),
        ids: teachers.iter().map(|t| t.sha256.clone()).collect(),
        combine: c.distill.ensemble,
        temperature: c.distill.ensemble_temperature(objective.name()),
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
    // Omitted classes: the shift of their logits chosen on validation, recorded in the
    // final checkpoint, which stores the weights as trained.
    let omitted = &data.transfer.omitted;
    let val_before = match omitted.is_empty() {
        true => None,
        false => Some(eval::logits(model.as_ref(), &data.val.images)),
    };
    let search = match &val_before {
        Some(z) => crate::bias::search(z, &data.val.labels, omitted)?,
        None => None,
    };
    let bias = search
        .as_ref()
        .map(|s| crate::bias::LogitBias::uniform(omitted, s.shift));
    if let Some(b) = &bias {
        run.set_logit_bias(b.clone());
    }
    run.finish(model.as_ref(), fit.best_epoch)?;
    // Test hook: `die-before-summary` ends the process as a kill would, between the
    // final model and the summary (a resume must still complete the run).
    if crate::error::hook_is("die-before-summary") {
        std::process::exit(137);
    }
    if crate::error::hook_is("final-evaluation") {
        crate::error::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    let t0 = Instant::now();
    let mut test_logits = eval::logits(model.as_ref(), &data.test.images);
    let mut test = eval::report(&test_logits, &data.test.labels, &data.spec, None)?;
    let mut bias_correction = None;
    if let (Some(b), Some(z)) = (&bias, &val_before) {
        // From here on the model computes what its checkpoint computes when loaded.
        b.fold_into(model.as_ref())?;
        let before = test;
        test_logits = eval::logits(model.as_ref(), &data.test.images);
        test = eval::report(&test_logits, &data.test.labels, &data.spec, None)?;
        let val = |z: &tch::Tensor| eval::metrics(z, &data.val.labels, None).acc;
        let bc = crate::bias::BiasCorrection {
            shift: b.0.values().next().copied().unwrap_or(0.0),
            classes: omitted.clone(),
            class_names: data.transfer.omitted_names.clone(),
            val_acc_before: val(z),
            val_acc_after: val(&eval::logits(model.as_ref(), &data.val.images)),
            test_acc_before: before.acc,
            test_acc_after: test.acc,
            per_class: omitted
                .iter()
                .map(|&c| crate::bias::ClassAccuracy {
                    class: c,
                    name: data.spec.class_name(c),
                    test_acc_before: before.per_class[c as usize].1,
                    test_acc_after: test.per_class[c as usize].1,
                })
                .collect(),
        };
        report_bias_correction(&bc);
        bias_correction = Some(bc);
    }
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
        data: data.record(),
        val_acc: history.iter().map(|r| r.val.acc).collect(),
        teachers: teachers.len(),
        bias_correction,
    };
    crate::checkpoint::write_atomic(
        &run.dir.join("summary.json"),
        serde_json::to_string_pretty(&out)?.as_bytes(),
    )?;
    run.mark_finished()?;
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
        curves(run, &history)?;
    }
    Ok(out)
}

/// The bias correction's lines on stderr (results, so also with `--quiet`): the shift, and validation,
/// test and each omitted class's test accuracy before and after it.
fn report_bias_correction(b: &crate::bias::BiasCorrection) {
    crate::errln!(
        "bias correction: logit shift {:+.4} for {} (chosen on validation): val acc {:.4} -> \
         {:.4}, test acc {:.4} -> {:.4}",
        b.shift,
        b.class_names.join(", "),
        b.val_acc_before,
        b.val_acc_after,
        b.test_acc_before,
        b.test_acc_after
    );
    for c in &b.per_class {
        crate::errln!(
            "bias correction: {} (class {}) test acc {:.4} -> {:.4}",
            c.name,
            c.class,
            c.test_acc_before,
            c.test_acc_after
        );
    }
}

/// The loop's settings for a `kind` run of `c` with `steps_per_epoch` optimizer steps an
/// epoch: its epochs, the cosine schedule (the teacher's floor for the teacher), Adam,
/// early stopping, the seed and the augmentation.
///
/// # Errors
/// A [`crate::error::UsageError`] for an augmentation spec that does not parse.
fn loop_config(c: &Config, kind: RunKind, steps_per_epoch: usize) -> Result<LoopConfig> {
    let is_teacher = kind == RunKind::Teacher;
    let alpha = if is_teacher {
        c.lr_schedule.teacher_alpha
    } else {
        c.lr_schedule.alpha
    };
    let epochs = c.epochs_for(is_teacher);
    let (augment, views) = c.augment_for(is_teacher)?;
    Ok(LoopConfig {
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
    })
}

/// Writes the run's `curves.png` from its `history`.
fn curves(run: &Run, history: &[crate::run::EpochRecord]) -> Result<()> {
    let col = |f: fn(&crate::run::EpochRecord) -> f64| history.iter().map(f).collect::<Vec<f64>>();
    let kind = run.kind;
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
    )
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
    use crate::error::UsageError;

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
