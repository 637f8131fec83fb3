//! One batch's work, apart from the epoch around it: which images a step sees
//! ([`Views`] for the run, [`Batches`] for an epoch, [`Batch`] for a step) and the body
//! of one optimizer step ([`Step`]: forward, objective, backward, divergence check,
//! Adam). Eager on every device today; the seam where a captured CUDA graph would go.

use anyhow::Result;
use tch::Tensor;

use crate::augment::{Augment, ViewSet};
use crate::data::Examples;
use crate::model::Network;
use crate::objective::{Objective, Terms};
use crate::optim::Adam;
use crate::teacher::TeacherSource;

use super::{AUGMENT_SALT, DIVERGED_LOSS};

/// The training images a run draws its batches from: as they are, a fresh augmented
/// view per epoch, or one of K fixed views per example (augmented once, so that the
/// teacher's logits of every view can be cached).
pub struct Views {
    pub augment: Augment,
    pub set: Option<ViewSet>,
    /// The augmentation's shift table, `[combinations, C·H·W] i64`.
    pub table: Tensor,
    /// With K fixed views, every view of every example, `[k * n, C·H·W] u8`.
    pub store: Option<Tensor>,
}

impl Views {
    /// Augments every fixed view of `images` (`[n, C·H·W] f32`) once, when `set` has
    /// any. `say` prints a status line.
    ///
    /// # Errors
    /// A [`crate::error::UsageError`] naming `augment.views` when its store cannot be
    /// allocated.
    pub fn new(
        augment: Augment,
        set: Option<ViewSet>,
        table: Tensor,
        images: &Tensor,
        say: impl Fn(&str),
    ) -> Result<Views> {
        let n = images.size()[0];
        let store = match &set {
            None => None,
            Some(set) => {
                let t = std::time::Instant::now();
                let store = set.store(images, &table).map_err(|e| {
                    crate::error::UsageError(format!(
                        "augment.views = {}: cannot allocate the {:.1} GB that its fixed views \
                         of {n} examples take ({e}); use fewer views (8 by default), or views = 0 \
                         for a fresh view every epoch",
                        set.k,
                        set.store_bytes(n, images.size()[1]) as f64 / 1e9
                    ))
                })?;
                say(&format!(
                    "augmented {} views of {n} examples once, in {:.2} s",
                    set.k,
                    t.elapsed().as_secs_f64()
                ));
                Some(store)
            }
        };
        Ok(Views {
            augment,
            set,
            table,
            store,
        })
    }
}

/// The fixed views of a run with augmentation `aug` and `views` views per example (none
/// without augmentation, or with `views` = 0: a fresh view every epoch), after checking
/// that their store (`inputs` = C·H·W bytes per view of each of `n` examples) fits in
/// memory on the CPU; `say` prints what the run will see.
///
/// # Errors
/// A [`crate::error::UsageError`] naming `augment.views` when the store of `n`
/// examples' views needs more memory than is available.
pub fn view_set(
    aug: Augment,
    views: u64,
    n: i64,
    inputs: i64,
    device: tch::Device,
    say: impl Fn(&str),
) -> Result<Option<ViewSet>> {
    // The K views are the same for every seed (only the per-epoch choice among them
    // depends on the seed), so one cache serves every run with this teacher.
    let view_set = (!aug.is_none() && views > 0).then_some(ViewSet {
        augment: aug,
        k: views,
        base: AUGMENT_SALT,
    });
    // The views' store is K * n * C·H·W bytes; refuse what this machine cannot hold before
    // the teacher spends K passes on a cache that would be thrown away.
    if let Some(set) = &view_set {
        let need = set.store_bytes(n, inputs);
        if device == tch::Device::Cpu
            && let Some(free) = crate::device::available_memory_bytes()
            && need > free
        {
            return crate::error::usage(format!(
                "augment.views = {}: the {} fixed views of {n} examples need {:.1} GB \
                 (views x examples x {inputs} bytes), more than the {:.1} GB of memory available; \
                 use fewer views (8 by default), or views = 0 for a fresh view every epoch",
                set.k,
                set.k,
                need as f64 / 1e9,
                free as f64 / 1e9
            ));
        }
    }
    if !aug.is_none() {
        say(&format!(
            "augmentation {}: {}",
            aug.spec(),
            match views {
                0 => "a fresh view of each example every epoch".to_string(),
                k => format!("each epoch one of {k} fixed views per example"),
            }
        ));
    }
    Ok(view_set)
}

/// One epoch's batches: a permutation of the training set cut into batches of
/// `batch_size` (the last one partial), with each example's view for the epoch.
pub struct Batches<'a> {
    train: &'a Examples,
    views: &'a Views,
    /// `[n] i64`: the epoch's order.
    perm: Tensor,
    batch_size: i64,
    /// `[n] i64`: each example's augmentation for the epoch; `None` without augmentation
    /// or with fixed views.
    fresh: Option<Tensor>,
    /// `[n] i64`: with fixed views, which of the K each example shows this epoch.
    choice: Option<Tensor>,
}

/// The examples of one step.
pub struct Batch {
    /// `[len, C·H·W] f32`: the view the student sees.
    pub x: Tensor,
    /// `[len] i64`: the labels.
    pub y: Tensor,
    /// `[len] i64`: the examples' rows of the teacher cache (`k * n + i` for view k of
    /// example i with fixed views, else i).
    pub rows: Tensor,
    /// The number of examples.
    pub len: i64,
}

impl<'a> Batches<'a> {
    /// The batches of an epoch whose order is `perm` and whose augmentation draws come
    /// from `epoch_key`.
    pub fn new(
        train: &'a Examples,
        perm: Tensor,
        batch_size: i64,
        views: &'a Views,
        epoch_key: u64,
    ) -> Batches<'a> {
        let n = train.len();
        let device = perm.device();
        // [n] i64: each example's view, and with fixed views which of the K it is.
        let (fresh, choice) = match (&views.set, views.augment.is_none()) {
            (_, true) => (None, None),
            (Some(set), false) => {
                let (choice, v) = set.epoch(epoch_key, n, device);
                (Some(v), Some(choice))
            }
            (None, false) => (Some(views.augment.views(epoch_key, n, device)), None),
        };
        Batches {
            train,
            views,
            perm,
            batch_size,
            fresh,
            choice,
        }
    }

    /// Batches in the epoch: the last one may be partial.
    pub fn count(&self) -> i64 {
        (self.train.len() + self.batch_size - 1) / self.batch_size
    }

    /// Batch `step` (0-based).
    pub fn get(&self, step: i64) -> Batch {
        let n = self.train.len();
        let start = step * self.batch_size;
        let len = self.batch_size.min(n - start);
        let idx = self.perm.narrow(0, start, len); // [len] i64
        // With fixed views, view k of example i is row k * n + i of the store and cache.
        let rows = self
            .choice
            .as_ref()
            .map(|ch| ch.index_select(0, &idx) * n + &idx); // [len]
        let x = match (&self.views.store, &rows, &self.fresh) {
            (Some(store), Some(r), _) => ViewSet::pixels(store, r),
            (_, _, Some(v)) => self.views.augment.apply(
                &self.train.images.index_select(0, &idx),
                &self.views.table,
                &v.index_select(0, &idx),
            ),
            _ => self.train.images.index_select(0, &idx),
        };
        let y = self.train.labels.index_select(0, &idx); // [len]
        Batch {
            x,
            y,
            rows: rows.unwrap_or(idx),
            len,
        }
    }
}

/// The body of one optimizer step for a model, its objective and (distilling) its
/// teacher's logits.
pub struct Step<'a> {
    pub model: &'a dyn Network,
    pub objective: &'a dyn Objective,
    pub teacher: Option<&'a TeacherSource<'a>>,
}

/// A step that updated the weights: the objective's terms and the student's logits
/// (`[len, classes] f32`), for the epoch's meter.
pub struct Done {
    pub terms: Terms,
    pub logits: Tensor,
}

/// How a step ended.
pub enum StepOutcome {
    Done(Done),
    /// The loss (its value) was NaN, infinite or above [`DIVERGED_LOSS`]; the weights
    /// were not updated.
    Diverged(f64),
    /// The teacher (a TorchScript model) failed on the batch: why.
    TeacherFailed(String),
}

impl Step<'_> {
    /// Forward, objective, backward, and Adam at `lr` unless the loss diverged.
    /// `epoch` is 1-based (the objectives' warm-ups read it).
    pub fn run(&self, batch: &Batch, epoch: usize, opt: &mut Adam, lr: f64) -> StepOutcome {
        let logits = self.model.forward_t(&batch.x, true); // [len, classes]
        let teacher = match self.teacher.map(|t| t.logits(&batch.rows, &batch.x)) {
            None => None,
            Some(Ok(z)) => Some(z), // [len, classes]
            Some(Err(e)) => return StepOutcome::TeacherFailed(e),
        };
        let terms = self
            .objective
            .loss(&logits, &batch.y, teacher.as_ref(), epoch);
        // Fresh gradients, not accumulated into `.grad`: nothing to clear between steps.
        let grads = opt.gradients(&terms.total);
        // Stop before a non-finite or diverged loss reaches the weights. On the CPU the
        // read is free; on a GPU it is one scalar copy per step.
        let value = terms.total.double_value(&[]);
        if !(value.is_finite() && value <= DIVERGED_LOSS) {
            return StepOutcome::Diverged(value);
        }
        opt.step(lr, &grads);
        StepOutcome::Done(Done { terms, logits })
    }
}
