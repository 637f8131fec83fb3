//! The one training loop. It serves the teacher, the student and distillation: they
//! differ only in the [`Objective`] (and whether a frozen teacher supplies logits) and in
//! which model's parameters the optimizer holds.
//!
//! Per epoch: a seeded permutation of the training set, minibatches indexed out of the
//! on-device tensors, one fused Adam step per batch at the cosine-decayed LR, metrics
//! accumulated on the device and read back at the progress bar's refresh or at the end of
//! the epoch, then validation, early stopping and the epoch's checkpoint (through
//! [`crate::run::Run`]).

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Result, bail};
use tch::{Kind, Tensor};

pub mod meter;
pub mod step;

use crate::augment::{self, Augment};
use crate::config::Monitor;
use crate::data::Dataset;
use crate::error::{INTERRUPTED, Interrupted};
use crate::eval;
use crate::model::Network;
use crate::objective::Objective;
use crate::optim::{Adam, AdamConfig};
use crate::run::{EpochRecord, Progress, Run, TrainState};
use crate::schedule::CosineDecay;
pub use crate::teacher::Teacher;
use crate::teacher::{TEACHER_LOGIT_SUSPECT, TeacherSource};
use meter::Meter;
use step::{Batches, Step, StepOutcome, Views};

/// A loss above this is divergence, treated like NaN or infinity: the run stops.
/// Cross-entropy over k classes starts at ln k (2.3 for ten) and a mean of 1e6 means the true
/// class trails by about a million logits; no healthy run (nor a distillation loss, whose
/// T^2-scaled KL term is of the order of the squared logit gap) gets near it. Adam with a
/// huge LR (`--lr 1e6`) drives the loss to 1e20 and beyond while staying finite, because
/// log-softmax is computed stably.
pub const DIVERGED_LOSS: f64 = 1e6;

/// Loop settings, resolved from the config.
pub struct LoopConfig {
    pub epochs: usize,
    pub batch_size: i64,
    pub schedule: CosineDecay,
    pub adam: AdamConfig,
    /// Early-stopping patience in epochs; `None` disables early stopping.
    pub patience: Option<usize>,
    /// What early stopping and the best-epoch selection watch.
    pub monitor: Monitor,
    pub seed: u64,
    /// Training augmentation (none: the images as they are).
    pub augment: Augment,
    /// With augmentation: draw each epoch one of this many fixed views per example (so
    /// the teacher's logits of every view can be cached); 0 draws a fresh view per epoch.
    pub views: u64,
}

/// Salt that separates the augmentation draws from the shuffle's seed.
pub(crate) const AUGMENT_SALT: u64 = 0x6175_676d_656e_7421;

/// How the run ended.
pub struct FitResult {
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub stopped_early: bool,
    /// Training-loop seconds of each epoch run in this process (no evaluation).
    pub epoch_seconds: Vec<f64>,
    /// Seconds from process start to the first optimizer step.
    pub startup_seconds: f64,
    /// Seconds to compute the teacher's cached logits (every view's, with
    /// augmentation); `None` without a cache.
    pub teacher_cache_seconds: Option<f64>,
}

/// The seed of epoch `epoch`'s shuffle: a function of the run's seed and the epoch
/// alone, so a resumed run draws the same permutations as an uninterrupted one.
fn epoch_seed(seed: u64, epoch: usize) -> i64 {
    let z = seed.wrapping_add((epoch as u64).wrapping_mul(augment::GOLDEN));
    augment::finalise(z) as i64 & i64::MAX
}

/// Trains `model` on `data` and leaves it holding the best weights (by validation
/// `clf_loss`, which for supervised training is the validation loss).
///
/// # Errors
/// A non-finite loss (naming the epoch and step; the best checkpoint so far stays on
/// disk), [`Interrupted`] on Ctrl-C, or an I/O error from the run folder.
pub fn fit(
    run: &mut Run,
    model: &dyn Network,
    objective: &dyn Objective,
    teacher: Option<&Teacher>,
    data: &Dataset,
    cfg: &LoopConfig,
) -> Result<FitResult> {
    if objective.needs_teacher() && teacher.is_none() {
        bail!("objective {} needs a teacher", objective.name());
    }
    run.set_terms(objective.term_names());
    run.record_data(data)?;
    // Test hook: `run-start` acts as a Ctrl-C before the run's first step.
    if crate::error::hook_is("run-start") {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    let device = model.device();
    let n = data.train.len();
    let bs = cfg.batch_size;
    let steps_per_epoch = (n + bs - 1) / bs;
    let names: Vec<String> = model
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut opt = Adam::new(model.parameters(), cfg.adam);
    let mut schedule = cfg.schedule;

    // Resume: weights, optimizer moments and step, epoch, best metric and patience
    // counter from the last completed epoch.
    let mut state = TrainState::default();
    let mut best_weights = model.snapshot();
    if let Some(resumed) = run.resume_state(model, &mut opt, &names)? {
        state = resumed.state;
        best_weights = resumed.best_weights;
        // The schedule's horizon was fixed when the run started; a new epoch budget on
        // resume does not stretch it (that would raise the LR).
        if let Some(d) = state.decay_steps {
            schedule.decay_steps = d;
        }
    }
    state.decay_steps = Some(schedule.decay_steps);
    run.say(&format!(
        "training {} ({}, {} parameters) with {} in {}: up to {} epochs of {steps_per_epoch} steps, \
         LR {} cosine over {} steps",
        run.kind.name(),
        model.arch().spec(),
        model.parameters().iter().map(|p| p.numel() as i64).sum::<i64>(),
        objective.describe(),
        run.dir.display(),
        cfg.epochs,
        schedule.initial_lr,
        schedule.decay_steps
    ));

    let aug = cfg.augment;
    let view_set = step::view_set(aug, cfg.views, n, data.spec.inputs(), device, |line| {
        run.say(line)
    })?;
    let table = aug.table(&data.spec, device); // [combinations, C·H·W] i64
    let source = match teacher {
        None => None,
        Some(t) => Some(TeacherSource::prepare(
            t,
            data,
            aug,
            view_set.as_ref(),
            &table,
            |line| run.say(line),
        )?),
    };
    let teacher_cache_seconds = source.as_ref().and_then(|s| s.cache_seconds);
    let views = Views::new(aug, view_set, table, &data.train.images, |line| {
        run.say(line)
    })?;
    let step_body = Step {
        model,
        objective,
        teacher: source.as_ref(),
    };

    let mut epoch_seconds = Vec::new();
    // A load that arrives after start slows epochs that kdtrain cannot speed up again
    // in this process; say so once (crate::load::LateLoad).
    let mut late_load = if device == tch::Device::Cpu {
        crate::load::LateLoad::start(tch::get_num_threads().max(1) as usize)
    } else {
        None
    };
    let mut startup_seconds = None;
    let mut stopped_early = false;
    // A run killed after early stopping fired but before it finished does not train on.
    let first_epoch = match cfg.patience {
        Some(p) if state.bad_epochs >= p => {
            stopped_early = true;
            cfg.epochs + 1
        }
        _ => state.epoch + 1,
    };
    for epoch in first_epoch..=cfg.epochs {
        tch::manual_seed(epoch_seed(cfg.seed, epoch));
        let perm = Tensor::randperm(n, (Kind::Int64, device));
        let epoch_key = augment::key(cfg.seed ^ AUGMENT_SALT, epoch as u64);
        let batches = Batches::new(&data.train, perm, bs, &views, epoch_key);
        let (train, seconds) = train_epoch(
            &mut EpochContext {
                run,
                opt: &mut opt,
                schedule: &schedule,
                state: &state,
                startup_seconds: &mut startup_seconds,
                teacher_max_logit: source.as_ref().map(|s| s.max_logit),
                objective: objective.describe(),
                epochs: cfg.epochs,
            },
            &step_body,
            &batches,
            epoch,
        )?;
        epoch_seconds.push(seconds);
        let val_logits = eval::logits(model, &data.val.images);
        let val = eval::metrics(
            &val_logits,
            &data.val.labels,
            source.as_ref().map(|t| (objective, &t.val, epoch)),
        );
        let lr = schedule.lr(opt.step.saturating_sub(1));
        // Weights that blew up on the epoch's last step show here first; stop before they
        // are saved as a checkpoint.
        if !(val.loss.is_finite() && val.loss <= DIVERGED_LOSS && val.ce.is_finite()) {
            bail!(
                "the validation loss became {:e} after epoch {epoch} (global step {}, LR {lr:.3e}): training \
                 diverged (NaN, infinite or above {DIVERGED_LOSS:e}) and stopped; {}; lower \
                 lr_schedule.initial_lr (--lr)",
                val.loss,
                opt.step,
                kept_note(&state, run)
            );
        }
        let record = EpochRecord {
            epoch,
            lr,
            seconds,
            train,
            val,
        };
        let improved = state.record_epoch(&record, cfg.monitor, opt.step);
        if improved {
            best_weights = model.snapshot();
        }
        run.end_epoch(model, &opt, &names, &state, &record, improved)?;
        if let Some(note) = late_load.as_mut().and_then(|w| {
            w.check(
                epoch,
                "stop with Ctrl-C and run the resume command it prints",
            )
        }) {
            crate::errln!("{note}");
        }
        // Test hook: `KDTRAIN_TEST_INTERRUPT=epoch:N` acts as a Ctrl-C right after epoch N
        // is saved (resume tests need a stop at a known epoch).
        if std::env::var(crate::error::INTERRUPT_HOOK).is_ok_and(|v| v == format!("epoch:{epoch}"))
        {
            INTERRUPTED.store(true, Ordering::SeqCst);
        }
        if let Some(p) = cfg.patience
            && state.bad_epochs >= p
        {
            run.say(&format!(
                "early stopping: {} has not improved for {p} epochs; restoring epoch {}",
                cfg.monitor.describe(),
                state.best_epoch
            ));
            stopped_early = true;
            break;
        }
    }
    model.restore(&best_weights);
    Ok(FitResult {
        epochs_run: state.epoch,
        best_epoch: state.best_epoch,
        stopped_early,
        epoch_seconds,
        startup_seconds: startup_seconds.unwrap_or(0.0),
        teacher_cache_seconds,
    })
}

/// What [`train_epoch`] reads and updates besides the step and the batches.
struct EpochContext<'a> {
    run: &'a Run,
    opt: &'a mut Adam,
    schedule: &'a CosineDecay,
    /// The state after the last completed epoch (for the messages of a stop).
    state: &'a TrainState,
    /// Set at the run's first optimizer step.
    startup_seconds: &'a mut Option<f64>,
    /// The teacher's largest |logit| on the validation images, named if the loss diverges.
    teacher_max_logit: Option<f64>,
    /// The objective's name and settings, named if the loss diverges.
    objective: String,
    /// The run's epoch budget (for the progress bar).
    epochs: usize,
}

/// Trains one epoch: every batch of `batches` through `step`, stopping at a step
/// boundary on Ctrl-C. Returns the epoch's training metrics and its training-loop
/// seconds (no evaluation).
///
/// # Errors
/// [`Interrupted`] on Ctrl-C; a divergence naming the epoch, step and likely cause.
fn train_epoch(
    cx: &mut EpochContext,
    step_body: &Step,
    batches: &Batches,
    epoch: usize,
) -> Result<(eval::Metrics, f64)> {
    let steps = batches.count();
    let mut meter = Meter::default();
    let mut progress = Progress::epoch(cx.run.quiet, epoch, cx.epochs, steps as u64);
    let t0 = Instant::now();
    for step in 0..steps {
        if INTERRUPTED.load(Ordering::SeqCst) {
            progress.finish();
            return Err(interruption(cx.state, epoch, cx.run).into());
        }
        let batch = batches.get(step);
        let lr = cx.schedule.lr(cx.opt.step);
        let done = match step_body.run(&batch, epoch, cx.opt, lr) {
            StepOutcome::Done(done) => done,
            StepOutcome::TeacherFailed(e) => {
                progress.finish();
                return Err(crate::teacher::teacher_failed(e));
            }
            StepOutcome::Diverged(value) => {
                progress.finish();
                let cause = match cx.teacher_max_logit {
                    // Before any update the weights are the initial ones whatever the LR:
                    // the loss itself, the objective on these teacher logits, is the cause.
                    Some(m) if cx.opt.step == 0 => format!(
                        "the loss was so before the first update, so the learning rate is not \
                         the cause: the objective {} on the teacher's logits (largest |z| \
                         {m:.3e} on the validation images) gives it; {}",
                        cx.objective,
                        match m > TEACHER_LOGIT_SUSPECT {
                            true =>
                                "that is far beyond a trained classifier's, so the teacher \
                                     is the likely cause: check or retrain it",
                            false =>
                                "check what the teacher returns (model.teacher_output) \
                                      and its logit scale, or choose another objective",
                        }
                    ),
                    // Logits of a trained classifier stay within a few tens.
                    Some(m) if m > TEACHER_LOGIT_SUSPECT => format!(
                        "the teacher's logits reach |z| = {m:.3e} on the validation images, \
                         far beyond a trained classifier's, so the teacher is the likely cause: \
                         check or retrain it"
                    ),
                    _ => "lower lr_schedule.initial_lr (--lr)".to_string(),
                };
                bail!(
                    "the loss became {value:e} at epoch {epoch}, step {} (global step {}, LR {lr:.3e}): training \
                     diverged (NaN, infinite or above {DIVERGED_LOSS:e}) and stopped; {}; {cause}",
                    step + 1,
                    cx.opt.step,
                    kept_note(cx.state, cx.run)
                );
            }
        };
        if cx.startup_seconds.is_none() {
            *cx.startup_seconds = Some(crate::process_seconds());
        }
        meter.push(&done.terms, &done.logits, &batch.y, batch.len);
        progress.step(step as u64 + 1, || meter.means());
    }
    let seconds = t0.elapsed().as_secs_f64();
    progress.finish();
    Ok((meter.means(), seconds))
}

/// The stop of a run interrupted during `epoch`: resumable once an epoch is on disk
/// (the command that started it adds the resume command).
fn interruption(state: &TrainState, epoch: usize, run: &Run) -> Interrupted {
    match state.epoch {
        0 => Interrupted::new(format!(
            "interrupted during epoch {epoch}, before any epoch had completed; no \
             checkpoint was written{}",
            if run.dir.join("config.toml").exists() {
                format!(" in {}", run.dir.display())
            } else {
                String::new()
            }
        )),
        e => Interrupted {
            what: format!(
                "interrupted during epoch {epoch}; the checkpoint of epoch {e} is in {}",
                run.dir.display()
            ),
            resume: None,
            resumable: true,
            left: String::new(),
        },
    }
}

/// What a stopped run leaves: the best checkpoint so far, or none.
fn kept_note(state: &TrainState, run: &Run) -> String {
    match state.best_epoch {
        0 => format!(
            "no epoch had completed, so no checkpoint was written in {}",
            run.dir.display()
        ),
        e => format!(
            "the best checkpoint so far (epoch {e}) is kept in {}",
            run.dir.join(crate::run::MODEL_FILE).display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn epoch_seeds_differ_and_are_stable() {
        assert_eq!(epoch_seed(42, 3), epoch_seed(42, 3));
        assert_ne!(epoch_seed(42, 3), epoch_seed(42, 4));
        assert_ne!(epoch_seed(42, 3), epoch_seed(43, 3));
        assert!(epoch_seed(u64::MAX, usize::MAX) >= 0);
    }

    /// The cache is keyed by example: the cached logits gathered by a shuffled epoch's
    /// indices equal the teacher's fresh logits for the same examples.
    #[test]
    fn cached_logits_equal_fresh_ones_on_a_shuffled_epoch() {
        tch::manual_seed(11);
        let mut teacher = crate::model::Arch::teacher()
            .build(&crate::data::DataSpec::fashion_mnist(), Device::Cpu);
        teacher.freeze();
        let images = Tensor::rand([1000, 784], (Kind::Float, Device::Cpu));
        let cache = eval::logits(teacher.as_ref(), &images);
        let perm = Tensor::randperm(1000, (Kind::Int64, Device::Cpu));
        for start in (0..1000).step_by(256) {
            let idx = perm.narrow(0, start, 256.min(1000 - start));
            let fresh = tch::no_grad(|| teacher.forward(&images.index_select(0, &idx)));
            let diff = (&fresh - cache.index_select(0, &idx))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-5, "batch at {start}: logits differ by {diff}");
        }
    }
}
