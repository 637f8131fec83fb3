//! Evaluation: forward passes under `no_grad` in large batches, and the figures computed
//! from the logits (loss, accuracy, per-class accuracy, confusion matrix, calibration,
//! agreement with a teacher). Nothing here trains or writes files.

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::data::{DataSpec, Examples};
use std::collections::BTreeMap;

use crate::model::Network;
use crate::objective::{Objective, cross_entropy, kl_divergence};

/// Examples per forward pass when evaluating an MLP (no activations are kept, so large is
/// cheap); see [`Network::eval_batch`].
pub use crate::model::EVAL_BATCH;

/// Logits of `model` for every row of `images`, computed under `no_grad`.
///
/// # Shapes
/// `images: [n, C·H·W] f32` -> `[n, classes] f32`.
pub fn logits(model: &dyn Network, images: &Tensor) -> Tensor {
    logits_with(model, images, |x, _| x.shallow_clone())
}

/// Like [`logits`], with `prepare(chunk, (first_row, rows))` applied to each chunk of
/// images before the forward pass (an augmented view, say).
///
/// # Shapes
/// `images: [n, C·H·W] f32`; `prepare` maps `[rows, C·H·W]` to `[rows, C·H·W]` ->
/// `[n, classes] f32`.
pub fn logits_with(
    model: &dyn Network,
    images: &Tensor,
    prepare: impl Fn(&Tensor, (i64, i64)) -> Tensor,
) -> Tensor {
    match logits_until(model, images, prepare, || false) {
        Ok(Some(z)) => z,
        // Only a TorchScript teacher fails, and its callers use `try_logits`.
        Ok(None) | Err(_) => model.forward(images),
    }
}

/// Like [`logits`], or why the network failed on a chunk (a TorchScript teacher).
///
/// # Errors
/// [`Network::try_forward`]'s message.
pub fn try_logits(model: &dyn Network, images: &Tensor) -> std::result::Result<Tensor, String> {
    logits_until(model, images, |x, _| x.shallow_clone(), || false)
        .map(|z| z.unwrap_or_else(|| Tensor::zeros([0], (tch::Kind::Float, images.device()))))
}

/// Like [`logits_with`], asking `stop()` before each chunk: `Ok(None)` as soon as it
/// says yes (a Ctrl-C, say), so that a long pass over the training set can be abandoned
/// between chunks.
///
/// # Errors
/// [`Network::try_forward`]'s message for the first chunk that fails.
pub fn logits_until(
    model: &dyn Network,
    images: &Tensor,
    prepare: impl Fn(&Tensor, (i64, i64)) -> Tensor,
    stop: impl Fn() -> bool,
) -> std::result::Result<Option<Tensor>, String> {
    tch::no_grad(|| {
        let n = images.size()[0];
        let chunk = model.eval_batch();
        let mut parts = Vec::new();
        for s in (0..n).step_by(chunk as usize) {
            if stop() {
                return Ok(None);
            }
            let rows = chunk.min(n - s);
            parts.push(model.try_forward(&prepare(&images.narrow(0, s, rows), (s, rows)))?);
        }
        Ok(Some(Tensor::cat(&parts, 0)))
    })
}

/// Mean losses and accuracy over a set of examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Metrics {
    /// The objective minimised: cross-entropy alone, or the distillation objective.
    pub loss: f64,
    /// Cross-entropy on the hard labels (nats): what early stopping and model
    /// selection watch.
    pub ce: f64,
    /// Top-1 accuracy in [0, 1].
    pub acc: f64,
    /// The objective's own terms by name (see [`crate::objective::Terms`]); empty for
    /// cross-entropy training.
    #[serde(default)]
    pub terms: BTreeMap<String, f64>,
}

impl Metrics {
    /// A term by name (`loss`, `ce`, `acc`, or one of the objective's terms); NaN if absent.
    pub fn get(&self, name: &str) -> f64 {
        match name {
            "loss" => self.loss,
            "ce" => self.ce,
            "acc" => self.acc,
            n => self.terms.get(n).copied().unwrap_or(f64::NAN),
        }
    }
}

/// What [`metrics`] needs to evaluate a distillation objective on a set: the objective,
/// the teacher's logits for the same rows (`[n, classes] f32`), and the epoch (for warm-ups).
pub type Teaching<'a> = (&'a dyn Objective, &'a Tensor, usize);

/// Metrics of precomputed logits: cross-entropy and accuracy, plus the objective's
/// value and terms when `teaching` is given.
///
/// # Shapes
/// `logits`: `[n, classes] f32`; `labels`: `[n] i64`.
pub fn metrics(logits: &Tensor, labels: &Tensor, teaching: Option<Teaching>) -> Metrics {
    tch::no_grad(|| {
        let acc = crate::model::correct(logits, labels).double_value(&[])
            / labels.size()[0].max(1) as f64;
        let ce = cross_entropy(logits, labels).double_value(&[]);
        match teaching {
            None => Metrics {
                loss: ce,
                ce,
                acc,
                terms: BTreeMap::new(),
            },
            Some((objective, teacher, epoch)) => {
                let t = objective.loss(logits, labels, Some(teacher), epoch);
                Metrics {
                    loss: t.total.double_value(&[]),
                    ce,
                    acc,
                    terms: t
                        .parts
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.double_value(&[])))
                        .collect(),
                }
            }
        }
    })
}

/// The full evaluation of one model on one set, for the `evaluate` command.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub examples: i64,
    pub loss: f64,
    pub acc: f64,
    /// `(class name, accuracy in [0, 1], examples)` per class, by label.
    pub per_class: Vec<(String, f64, i64)>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
    /// Expected calibration error over 15 equal-width confidence bins (Guo et al. 2017,
    /// "On Calibration of Modern Neural Networks", eq. 3).
    pub ece: f64,
    /// Against a teacher: fraction of examples where the top-1 classes agree.
    pub teacher_agreement: Option<f64>,
    /// Against a teacher: mean KL(teacher || model) at T = 1 (nats, batchmean).
    pub teacher_kl: Option<f64>,
    /// The teacher's own top-1 accuracy on the set.
    pub teacher_acc: Option<f64>,
    /// A distillation objective's terms against the teacher, each unscaled, by name
    /// (`evaluate --objective`); serialised beside the other keys (`test.kl`, ...).
    #[serde(flatten)]
    pub terms: BTreeMap<String, f64>,
}

/// Number of confidence bins for the ECE.
pub const ECE_BINS: usize = 15;

/// Computes a [`Report`] from logits, its per-class rows named by `spec`.
///
/// # Shapes
/// `logits`, `teacher_logits`: `[n, classes] f32`; `labels`: `[n] i64`.
pub fn report(
    logits: &Tensor,
    labels: &Tensor,
    spec: &DataSpec,
    teacher_logits: Option<&Tensor>,
) -> anyhow::Result<Report> {
    tch::no_grad(|| {
        let n = labels.size()[0];
        let m = metrics(logits, labels, None);
        let probs = logits.softmax(-1, Kind::Float);
        let (conf, pred) = probs.max_dim(-1, false);
        let conf: Vec<f32> = Vec::try_from(conf.to_device(tch::Device::Cpu))?;
        let pred: Vec<i64> = Vec::try_from(pred.to_device(tch::Device::Cpu))?;
        let truth: Vec<i64> = Vec::try_from(labels.to_device(tch::Device::Cpu))?;
        let k = spec.classes().max(logits.size()[1]) as usize;
        let mut confusion = vec![vec![0u64; k]; k];
        for (&t, &p) in truth.iter().zip(&pred) {
            confusion[t as usize][p as usize] += 1;
        }
        let per_class = (0..k)
            .map(|c| {
                let total: u64 = confusion[c].iter().sum();
                let acc = if total == 0 {
                    0.0
                } else {
                    confusion[c][c] as f64 / total as f64
                };
                (spec.class_name(c as i64), acc, total as i64)
            })
            .collect();
        let ece = expected_calibration_error(&conf, &pred, &truth, ECE_BINS);
        let (teacher_agreement, teacher_kl) = match teacher_logits {
            Some(t) => {
                let agree =
                    crate::model::predictions(logits).eq_tensor(&crate::model::predictions(t));
                let agree = agree
                    .to_kind(Kind::Float)
                    .mean(Kind::Float)
                    .double_value(&[]);
                (
                    Some(agree),
                    Some(kl_divergence(t, logits, 1.0).double_value(&[])),
                )
            }
            None => (None, None),
        };
        Ok(Report {
            examples: n,
            loss: m.loss,
            acc: m.acc,
            per_class,
            confusion,
            ece,
            teacher_agreement,
            teacher_kl,
            teacher_acc: teacher_logits.map(|t| metrics(t, labels, None).acc),
            terms: BTreeMap::new(),
        })
    })
}

/// ECE = sum over bins b of |B_b|/n * |acc(B_b) - conf(B_b)|, with `bins` equal-width
/// bins of the top-1 confidence over (0, 1] (Guo et al. 2017, eq. 3).
pub fn expected_calibration_error(conf: &[f32], pred: &[i64], truth: &[i64], bins: usize) -> f64 {
    let n = conf.len();
    if n == 0 {
        return 0.0;
    }
    let mut count = vec![0usize; bins];
    let mut conf_sum = vec![0f64; bins];
    let mut correct = vec![0usize; bins];
    for i in 0..n {
        let c = conf[i] as f64;
        // Bin b holds (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to bin 0.
        let b = ((c * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[b] += 1;
        conf_sum[b] += c;
        correct[b] += usize::from(pred[i] == truth[i]);
    }
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let k = count[b] as f64;
            (k / n as f64) * (correct[b] as f64 / k - conf_sum[b] / k).abs()
        })
        .sum()
}

/// Builds the evaluation's inputs on the device: convenience for a whole [`Examples`] set.
pub fn model_report(
    model: &dyn Network,
    set: &Examples,
    teacher: Option<&dyn Network>,
) -> anyhow::Result<Report> {
    let z = logits(model, &set.images);
    let t = teacher.map(|t| logits(t, &set.images));
    report(&z, &set.labels, model.data_spec(), t.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_of_a_perfectly_calibrated_set_is_zero() {
        // Four examples at confidence 0.5, two right: acc 0.5 = conf 0.5.
        let e = expected_calibration_error(&[0.5; 4], &[0, 1, 0, 1], &[0, 1, 1, 0], 15);
        assert!(e.abs() < 1e-12);
    }

    #[test]
    fn ece_hand_checked() {
        // Two examples at 0.9 (one right: |0.5-0.9| = 0.4), two at 0.6 (both right: 0.4).
        let e = expected_calibration_error(&[0.9, 0.9, 0.6, 0.6], &[0, 0, 1, 1], &[0, 1, 1, 1], 15);
        assert!((e - 0.4).abs() < 1e-6, "{e}");
    }

    #[test]
    fn report_counts_and_agreement() {
        let logits = Tensor::from_slice(&[5.0f32, 0., 0., 0., 0., 0., 0., 0., 0., 0.])
            .view([1, 10])
            .repeat([3, 1]);
        let labels = Tensor::from_slice(&[0i64, 0, 3]);
        let r = report(&logits, &labels, &DataSpec::fashion_mnist(), Some(&logits)).unwrap();
        assert_eq!(r.confusion[0][0], 2);
        assert_eq!(r.confusion[3][0], 1);
        assert!((r.acc - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.teacher_agreement, Some(1.0));
        assert!(r.teacher_kl.unwrap().abs() < 1e-6);
        assert_eq!(r.per_class[0].0, "T-shirt/top");
    }
}
