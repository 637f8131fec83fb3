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

use crate::augment::{self, Augment, ViewSet};
use crate::config::Monitor;
use crate::data::Dataset;
use crate::error::{INTERRUPTED, Interrupted};
use crate::eval::{self, Metrics};
use crate::model::Network;
use crate::objective::Objective;
use crate::optim::{Adam, AdamConfig};
use crate::run::{EpochRecord, Progress, Run, TrainState};
use crate::schedule::CosineDecay;

/// A loss above this is divergence, treated like NaN or infinity: the run stops.
/// Cross-entropy over k classes starts at ln k (2.3 for ten) and a mean of 1e6 means the true
/// class trails by about a million logits; no healthy run (nor a distillation loss, whose
/// T^2-scaled KL term is of the order of the squared logit gap) gets near it. Adam with a
/// huge LR (`--lr 1e6`) drives the loss to 1e20 and beyond while staying finite, because
/// log-softmax is computed stably.
pub const DIVERGED_LOSS: f64 = 1e6;

/// The frozen teacher of a distillation run: its network (own VarStore, frozen, run in
/// eval mode under `no_grad`) and whether its training-set logits are cached.
pub struct Teacher<'a> {
    pub network: &'a dyn Network,
    /// What identifies the teacher's weights (its file's SHA-256): the key under which
    /// its cached logits are kept for the next run of this process (the seeds and
    /// objectives of a `reproduce` share them).
    pub id: String,
    /// Compute the logits of every training example once (`[n, classes] f32`, keyed by row
    /// of the training set) instead of a forward pass per batch. Any objective reads
    /// the same logits, so the cache serves them all.
    pub cache: bool,
}

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
const AUGMENT_SALT: u64 = 0x6175_676d_656e_7421;

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
    run.record_split(&data.split)?;
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
    // The K views are the same for every seed (only the per-epoch choice among them
    // depends on the seed), so one cache serves every run with this teacher.
    let view_set = (!aug.is_none() && cfg.views > 0).then_some(ViewSet {
        augment: aug,
        k: cfg.views,
        base: AUGMENT_SALT,
    });
    // The views' store is K * n * C·H·W bytes; refuse what this machine cannot hold before
    // the teacher spends K passes on a cache that would be thrown away.
    if let Some(set) = &view_set {
        let need = set.store_bytes(n, data.spec.inputs());
        if device == tch::Device::Cpu
            && let Some(free) = available_memory_bytes()
            && need > free
        {
            return crate::error::usage(format!(
                "augment.views = {}: the {} fixed views of {n} examples need {:.1} GB \
                 (views x examples x {} bytes), more than the {:.1} GB of memory available; \
                 use fewer views (8 by default), or views = 0 for a fresh view every epoch",
                set.k,
                set.k,
                need as f64 / 1e9,
                data.spec.inputs(),
                free as f64 / 1e9
            ));
        }
    }
    if !aug.is_none() {
        run.say(&format!(
            "augmentation {}: {}",
            aug.spec(),
            match cfg.views {
                0 => "a fresh view of each example every epoch".to_string(),
                k => format!("each epoch one of {k} fixed views per example"),
            }
        ));
    }
    let table = aug.table(&data.spec, device); // [combinations, C·H·W] i64
    // Keyed by row of `data.train`, i.e. by example, not by batch position; with
    // augmentation, by (view, example): row k * n + i holds view k of example i.
    let t_cache = Instant::now();
    let train_cache = match (teacher.filter(|t| t.cache), aug.is_none(), &view_set) {
        (None, _, _) => None,
        (Some(t), true, _) => Some(cached_logits(t, &data.split.split_hash, "none", n, || {
            // A Ctrl-C or SIGTERM is answered between chunks: a big teacher's pass can
            // outlast Slurm's 30 s between SIGTERM and SIGKILL. Test hook: `cache:0` acts
            // as one that arrives as the pass starts.
            if std::env::var(crate::error::INTERRUPT_HOOK).is_ok_and(|h| h == "cache:0") {
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
            let logits = eval::logits_until(
                t.network,
                &data.train.images,
                |x, _| x.shallow_clone(),
                || INTERRUPTED.load(Ordering::SeqCst),
            ); // [n, classes]
            logits.ok_or_else(|| {
                Interrupted::new(
                    "interrupted while caching the teacher's logits, before this run's first \
                     step; no checkpoint was written",
                )
                .into()
            })
        })?),
        (Some(t), false, Some(set)) => {
            let what = format!("{} x{}", aug.spec(), set.k);
            let mut fresh = false;
            let logits = cached_logits(t, &data.split.split_hash, &what, n, || {
                fresh = true;
                let mut views = Vec::new();
                for k in 0..set.k {
                    // Each view is a pass of the teacher over the training set: a Ctrl-C
                    // is answered between its chunks, not after all K views.
                    let interrupted = || {
                        Interrupted::new(format!(
                            "interrupted while caching the teacher's logits (view {} of {}), \
                             before this run's first step; no checkpoint was written",
                            k + 1,
                            set.k,
                        ))
                    };
                    let v = set.fixed(k, n, device);
                    let logits = eval::logits_until(
                        t.network,
                        &data.train.images,
                        |x, rows| aug.apply(x, &table, &v.narrow(0, rows.0, rows.1)),
                        || INTERRUPTED.load(Ordering::SeqCst),
                    );
                    views.push(logits.ok_or_else(interrupted)?);
                    // Test hook: `cache:K` acts as a Ctrl-C right after view K is cached.
                    if std::env::var(crate::error::INTERRUPT_HOOK)
                        .is_ok_and(|h| h == format!("cache:{}", k + 1))
                    {
                        INTERRUPTED.store(true, Ordering::SeqCst);
                    }
                }
                Ok(Tensor::cat(&views, 0)) // [k * n, classes]
            })?;
            run.say(&format!(
                "{} the teacher's logits on {} views of {n} examples in {:.1} s",
                if fresh { "cached" } else { "reused" },
                set.k,
                t_cache.elapsed().as_secs_f64()
            ));
            Some(logits)
        }
        (Some(_), false, None) => {
            run.say(
                "augment.views = 0 draws a fresh view every epoch, which no cache can hold: \
                 the teacher runs on every batch",
            );
            None
        }
    };
    let teacher_cache_seconds = train_cache
        .as_ref()
        .map(|_| t_cache.elapsed().as_secs_f64());
    let val_teacher = teacher.map(|t| eval::logits(t.network, &data.val.images)); // [n_val, classes]
    // The teacher's largest |logit| on the validation images, named if the loss diverges.
    let teacher_max_logit = val_teacher
        .as_ref()
        .map(|l| l.abs().max().double_value(&[]));
    // A teacher with broken weights (NaN or infinite) would make the first loss NaN,
    // which would read as a divergence of the student.
    for (logits, set) in [(&val_teacher, "validation"), (&train_cache, "training")] {
        if let Some(l) = logits {
            let bad = l
                .isfinite()
                .logical_not()
                .any_dim(1, false)
                .sum(Kind::Int64)
                .int64_value(&[]);
            if bad > 0 {
                return crate::error::usage(format!(
                    "the teacher's logits are not finite (NaN or infinite) in {bad} of its {} \
                     rows on the {set} images: its weights are broken; retrain it, or pass \
                     another --teacher",
                    l.size()[0]
                ));
            }
        }
    }
    // With K fixed views, every view of every example, augmented once ([k * n, C·H·W] u8).
    let view_store = match &view_set {
        None => None,
        Some(set) => {
            let t = Instant::now();
            let store = set.store(&data.train.images, &table).map_err(|e| {
                crate::error::UsageError(format!(
                    "augment.views = {}: cannot allocate the {:.1} GB that its fixed views \
                     of {n} examples take ({e}); use fewer views (8 by default), or views = 0 \
                     for a fresh view every epoch",
                    set.k,
                    set.store_bytes(n, data.spec.inputs()) as f64 / 1e9
                ))
            })?;
            run.say(&format!(
                "augmented {} views of {n} examples once, in {:.2} s",
                set.k,
                t.elapsed().as_secs_f64()
            ));
            Some(store)
        }
    };

    let mut epoch_seconds = Vec::new();
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
        // [n] i64: each example's view, and with fixed views which of the K it is.
        let (epoch_views, choice) = match (&view_set, aug.is_none()) {
            (_, true) => (None, None),
            (Some(set), false) => {
                let (choice, views) = set.epoch(epoch_key, n, device);
                (Some(views), Some(choice))
            }
            (None, false) => (Some(aug.views(epoch_key, n, device)), None),
        };
        let mut meter = Meter::default();
        let mut progress = Progress::epoch(run.quiet, epoch, cfg.epochs, steps_per_epoch as u64);
        let t0 = Instant::now();
        for step in 0..steps_per_epoch {
            if INTERRUPTED.load(Ordering::SeqCst) {
                progress.finish();
                let stop = match state.epoch {
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
                    },
                };
                return Err(stop.into());
            }
            let start = step * bs;
            let len = bs.min(n - start);
            let idx = perm.narrow(0, start, len); // [len] i64
            // With fixed views, view k of example i is row k * n + i of the store and cache.
            let rows = choice
                .as_ref()
                .map(|ch| ch.index_select(0, &idx) * n + &idx); // [len]
            // [len, C·H·W]: the view the student sees
            let x = match (&view_store, &rows, &epoch_views) {
                (Some(store), Some(r), _) => ViewSet::pixels(store, r),
                (_, _, Some(v)) => aug.apply(
                    &data.train.images.index_select(0, &idx),
                    &table,
                    &v.index_select(0, &idx),
                ),
                _ => data.train.images.index_select(0, &idx),
            };
            let y = data.train.labels.index_select(0, &idx); // [len]
            let logits = model.forward_t(&x, true); // [len, classes]
            let teacher_logits = match (&train_cache, teacher) {
                (Some(c), _) => Some(match &rows {
                    Some(r) => c.index_select(0, r),
                    None => c.index_select(0, &idx),
                }), // [len, classes]
                (None, Some(t)) => Some(tch::no_grad(|| t.network.forward(&x))),
                (None, None) => None,
            };
            let terms = objective.loss(&logits, &y, teacher_logits.as_ref(), epoch);
            let loss = &terms.total;
            let lr = schedule.lr(opt.step);
            // No zero_grad: `opt.step` clears each gradient as it consumes it.
            loss.backward();
            // Stop before a non-finite or diverged loss reaches the weights. On the CPU the
            // read is free; on a GPU it is one scalar copy per step.
            let value = loss.double_value(&[]);
            if !(value.is_finite() && value <= DIVERGED_LOSS) {
                progress.finish();
                let cause = match teacher_max_logit {
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
                    opt.step,
                    kept_note(&state, run)
                );
            }
            opt.step(lr);
            if startup_seconds.is_none() {
                startup_seconds = Some(crate::process_seconds());
            }
            meter.push(&terms, &logits, &y, len);
            progress.step(step as u64 + 1, || meter.means());
        }
        let seconds = t0.elapsed().as_secs_f64();
        epoch_seconds.push(seconds);
        progress.finish();

        let train = meter.means();
        let val_logits = eval::logits(model, &data.val.images);
        let val = eval::metrics(
            &val_logits,
            &data.val.labels,
            val_teacher.as_ref().map(|t| (objective, t, epoch)),
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
        let metric = match cfg.monitor {
            Monitor::Ce => val.ce,
            Monitor::Acc => -val.acc,
        };
        let improved = state.best_epoch == 0 || metric < state.best_metric;
        if improved {
            state.best_metric = metric;
            state.best_epoch = epoch;
            state.bad_epochs = 0;
            best_weights = model.snapshot();
        } else {
            state.bad_epochs += 1;
        }
        state.epoch = epoch;
        state.step = opt.step;
        let record = EpochRecord {
            epoch,
            lr,
            seconds,
            train,
            val,
        };
        state.history.push(record.clone());
        run.end_epoch(model, &opt, &names, &state, &record, improved)?;
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

/// The last teacher cache computed in this process, with its key.
static LAST_CACHE: std::sync::Mutex<Option<(String, Tensor)>> = std::sync::Mutex::new(None);

/// The teacher's training-set logits for `what` (`none`, or the views), computed by
/// `compute` unless the previous run of this process computed them for the same teacher
/// (by SHA-256), training split, views, size and device.
fn cached_logits(
    t: &Teacher,
    split_hash: &str,
    what: &str,
    n: i64,
    compute: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let key = format!("{}|{split_hash}|{what}|{n}|{:?}", t.id, t.network.device());
    let mut last = LAST_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, v)) = last.as_ref()
        && *k == key
    {
        return Ok(v.shallow_clone());
    }
    let v = compute()?;
    *last = Some((key, v.shallow_clone()));
    Ok(v)
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

/// An epoch's training metrics, kept on the device: each step only records its
/// (detached) loss tensors and its count of correct predictions, a few cheap ops; the
/// means are computed and read back when asked for (progress refresh, end of epoch).
#[derive(Default)]
struct Meter {
    /// Per step: the objective's value (scalar f32).
    loss: Vec<Tensor>,
    /// Per term name: its value per step (scalar f32).
    terms: Vec<(&'static str, Vec<Tensor>)>,
    /// Per step: correct predictions (scalar i64).
    correct: Vec<Tensor>,
    /// Per step: batch size.
    len: Vec<f64>,
}

impl Meter {
    fn push(
        &mut self,
        terms: &crate::objective::Terms,
        logits: &Tensor,
        labels: &Tensor,
        len: i64,
    ) {
        tch::no_grad(|| {
            self.loss.push(terms.total.detach());
            if self.terms.is_empty() {
                self.terms = terms.parts.iter().map(|(n, _)| (*n, Vec::new())).collect();
            }
            for ((_, values), (_, v)) in self.terms.iter_mut().zip(&terms.parts) {
                values.push(v.detach());
            }
            self.correct.push(crate::model::correct(logits, labels));
        });
        self.len.push(len as f64);
    }

    /// Example-weighted means so far. Cross-entropy training reports ce = loss.
    fn means(&self) -> Metrics {
        let count: f64 = self.len.iter().sum();
        if self.loss.is_empty() {
            return Metrics::default();
        }
        let weights = Tensor::from_slice(&self.len)
            .to_device(self.loss[0].device())
            .to_kind(Kind::Float);
        let mean = |v: &[Tensor]| -> f64 {
            let s = tch::no_grad(|| (Tensor::stack(v, 0) * &weights).sum(Kind::Float));
            s.double_value(&[]) / count
        };
        let loss = mean(&self.loss);
        let terms: std::collections::BTreeMap<String, f64> = self
            .terms
            .iter()
            .map(|(n, v)| (n.to_string(), mean(v)))
            .collect();
        let ce = terms.get("ce").copied().unwrap_or(loss);
        let correct =
            tch::no_grad(|| Tensor::stack(&self.correct, 0).sum(Kind::Int64)).int64_value(&[]);
        Metrics {
            loss,
            ce,
            acc: correct as f64 / count,
            terms,
        }
    }
}

/// A teacher's |logit| above which a diverged loss is blamed on the teacher rather than
/// the learning rate (a trained classifier's logits stay within a few tens).
const TEACHER_LOGIT_SUSPECT: f64 = 1e4;

/// `MemAvailable` from `/proc/meminfo`, in bytes; `None` where it cannot be read.
fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
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
