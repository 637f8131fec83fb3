//! Bias correction for classes left out of the transfer set (Hinton, Vinyals & Dean 2015,
//! section 3: a student that never saw a 3 recognised 98.6% of the test 3s once the
//! bias of the 3 class was raised by 3.5). A model trained without some classes keeps
//! their logits low; one shift `b`, the same for every omitted class, is added to their
//! logits, chosen to maximise validation accuracy (never the test set's).
//!
//! The shift is stored in the checkpoint's metadata ([`META_LOGIT_BIAS`], JSON
//! `{"class index": shift}`) beside the trained weights, which stay as trained; every
//! network built from a checkpoint (`Checkpoint::load_into`, in checkpoint.rs) adds
//! it to its output layer's bias once, so `evaluate`, `predict`, `export` and a teacher
//! all compute the corrected logits. This module owns the search, the metadata and the
//! fold; it does not decide when a run searches (that is `commands::train_one`).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, bail};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::data::DataSpec;
use crate::model::Network;

/// Checkpoint metadata key of the logit shifts, `{"1": 3.5}` (class index: shift).
pub const META_LOGIT_BIAS: &str = "kdtrain.logit_bias";

/// Shifts added to class logits, by class index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitBias(pub BTreeMap<i64, f64>);

impl LogitBias {
    /// The same `shift` for each of `classes`.
    pub fn uniform(classes: &[i64], shift: f64) -> LogitBias {
        LogitBias(classes.iter().map(|&c| (c, shift)).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The largest shift accepted, in logits (either sign): far beyond any logit a
    /// model gives, and well inside f32, so that shifted logits stay finite.
    pub const MAX_SHIFT: f64 = 1e4;

    /// The JSON stored under [`META_LOGIT_BIAS`].
    pub fn to_json(&self) -> String {
        let m: BTreeMap<String, f64> = self.0.iter().map(|(c, v)| (c.to_string(), *v)).collect();
        serde_json::to_string(&m).unwrap_or_default()
    }

    /// Reads [`META_LOGIT_BIAS`]; empty when the key is missing.
    ///
    /// # Errors
    /// A message naming the key when its value is not such JSON, names a class outside
    /// `0..classes`, or holds a shift that is not finite or beyond [`Self::MAX_SHIFT`].
    pub fn from_metadata(
        m: &HashMap<String, String>,
        classes: i64,
    ) -> std::result::Result<LogitBias, String> {
        let Some(v) = m.get(META_LOGIT_BIAS) else {
            return Ok(LogitBias::default());
        };
        let bad = || {
            format!(
                "metadata `{META_LOGIT_BIAS}` is {v:?}: expected a JSON object of class indices \
                 0 to {} and shifts from -{} to {}, e.g. {{\"1\": 3.5}}",
                classes - 1,
                Self::MAX_SHIFT,
                Self::MAX_SHIFT
            )
        };
        let raw: BTreeMap<String, f64> = serde_json::from_str(v).map_err(|_| bad())?;
        let mut out = BTreeMap::new();
        for (k, shift) in raw {
            match k.parse::<i64>() {
                Ok(c) if (0..classes).contains(&c) && shift.abs() <= Self::MAX_SHIFT => {
                    out.insert(c, shift);
                }
                _ => return Err(bad()),
            }
        }
        Ok(LogitBias(out))
    }

    /// One line: `Trouser +3.5000, Bag +0.0000`.
    pub fn describe(&self, spec: &DataSpec) -> String {
        self.0
            .iter()
            .map(|(c, v)| format!("{} {v:+.4}", spec.class_name(*c)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Adds the shifts to `model`'s output bias (its last parameter, `[classes]`), in
    /// place, as f32.
    ///
    /// # Errors
    /// When the network's last parameter is not a bias of one value per class (a
    /// network kdtrain builds always ends in one).
    pub fn fold_into(&self, model: &dyn Network) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let classes = model.data_spec().classes();
        let params = model.named_parameters();
        let Some((name, bias)) = params.last() else {
            bail!("the network has no parameters to carry {META_LOGIT_BIAS}");
        };
        if !name.ends_with("bias") || bias.size() != [classes] {
            bail!(
                "the network's last parameter `{name}` {:?} is not an output bias of {classes} \
                 classes; {META_LOGIT_BIAS} cannot be applied",
                bias.size()
            );
        }
        let mut delta = vec![0f32; classes as usize];
        for (&c, &v) in &self.0 {
            delta[c as usize] = v as f32;
        }
        let delta = Tensor::from_slice(&delta).to_device(bias.device());
        tch::no_grad(|| {
            let mut b = bias.shallow_clone();
            let _ = b.f_add_(&delta);
        });
        Ok(())
    }
}

/// The best shift for the omitted classes on a validation set.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// The shift added to every omitted class's logit (>= 0).
    pub shift: f64,
    /// Correct predictions without the shift, and with it.
    pub correct_before: usize,
    pub correct_after: usize,
}

/// The shift `b >= 0`, added to the logits of the `omitted` classes, that maximises the
/// number of correct top-1 predictions; ties go to the smallest `b`. `None` when no
/// class is omitted.
///
/// Exact, over the breakpoints: with `m_o` the largest omitted logit of an example and
/// `m_r` the largest other one, and `d = m_r - m_o`, the example is predicted as its
/// omitted argmax when `b > d` and as its other argmax when `b < d`. So an example whose
/// label is its omitted argmax is correct for `b > d`, one whose label is its other
/// argmax for `b < d`, and the count is constant between consecutive values of `d`. The
/// shift returned is 0, the midpoint between two consecutive breakpoints, or the last
/// breakpoint + 1: never a breakpoint itself, where f32 rounding would decide.
///
/// # Shapes
/// `logits`: `[n, classes]` row-major; `labels`: `[n]` in `0..classes`.
pub fn best_shift(
    logits: &[f32],
    classes: usize,
    labels: &[i64],
    omitted: &[i64],
) -> Option<Search> {
    if omitted.is_empty() || classes == 0 {
        return None;
    }
    // d of the examples correct above it (a) and below it (b).
    let (mut above, mut below) = (Vec::new(), Vec::new());
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let best = |want: bool| {
            row.iter()
                .enumerate()
                .filter(|(c, _)| omitted.contains(&(*c as i64)) == want)
                .fold((f64::NEG_INFINITY, usize::MAX), |acc, (c, &z)| {
                    if (z as f64) > acc.0 {
                        (z as f64, c)
                    } else {
                        acc
                    }
                })
        };
        let ((m_o, a_o), (m_r, a_r)) = (best(true), best(false));
        let d = m_r - m_o;
        if a_o as i64 == label {
            above.push(d);
        } else if a_r as i64 == label {
            below.push(d);
        }
    }
    above.sort_by(f64::total_cmp);
    below.sort_by(f64::total_cmp);
    // Correct at b (not a breakpoint): d < b among `above`, d > b among `below`.
    let correct = |b: f64| {
        above.partition_point(|&d| d < b) + (below.len() - below.partition_point(|&d| d <= b))
    };
    let mut points: Vec<f64> = above
        .iter()
        .chain(&below)
        .copied()
        .filter(|&d| d >= 0.0)
        .collect();
    points.sort_by(f64::total_cmp);
    points.dedup();
    let mut candidates = Vec::with_capacity(points.len() + 1);
    if points.first().is_none_or(|&p| p > 0.0) {
        candidates.push(0.0);
    }
    candidates.extend(points.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    if let Some(&last) = points.last() {
        candidates.push(last + 1.0);
    }
    // Candidates ascend, so the first maximum is the smallest shift.
    let mut best = (0.0, usize::MAX);
    for &b in &candidates {
        let c = correct(b);
        if best.1 == usize::MAX || c > best.1 {
            best = (b, c);
        }
    }
    // Before: b = 0 exactly, as argmax decides (the first maximum wins a tie).
    let correct_before = logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, l)| {
            let arg = row
                .iter()
                .enumerate()
                .fold(
                    (f32::NEG_INFINITY, 0),
                    |acc, (c, &z)| {
                        if z > acc.0 { (z, c) } else { acc }
                    },
                )
                .1;
            arg as i64 == **l
        })
        .count();
    Some(Search {
        shift: best.0,
        correct_before,
        correct_after: best.1,
    })
}

/// [`best_shift`] on tensors (any device).
///
/// # Shapes
/// `logits`: `[n, classes] f32`; `labels`: `[n] i64`.
///
/// # Errors
/// When the tensors cannot be copied to the host.
pub fn search(logits: &Tensor, labels: &Tensor, omitted: &[i64]) -> Result<Option<Search>> {
    let classes = logits.size().get(1).copied().unwrap_or(0) as usize;
    let z: Vec<f32> = Vec::try_from(
        logits
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view([-1]),
    )?;
    let y: Vec<i64> = Vec::try_from(labels.to_device(tch::Device::Cpu))?;
    Ok(best_shift(&z, classes, &y, omitted))
}

/// One omitted class's test accuracy before and after the shift (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct ClassAccuracy {
    pub class: i64,
    pub name: String,
    pub test_acc_before: f64,
    pub test_acc_after: f64,
}

/// What the bias correction of a run did, as `summary.json` records it. The run's
/// `test_acc` is `test_acc_after`: the checkpoint computes the corrected logits.
#[derive(Debug, Clone, Serialize)]
pub struct BiasCorrection {
    /// The shift added to each omitted class's logit, chosen on the validation set.
    pub shift: f64,
    /// The omitted classes (labels) and their names.
    pub classes: Vec<i64>,
    pub class_names: Vec<String>,
    /// Validation accuracy of the selected weights without and with the shift.
    pub val_acc_before: f64,
    pub val_acc_after: f64,
    /// Test accuracy without and with it (reported, never used to choose).
    pub test_acc_before: f64,
    pub test_acc_after: f64,
    /// Each omitted class's test accuracy without and with it.
    pub per_class: Vec<ClassAccuracy>,
}

impl BiasCorrection {
    /// The omitted classes' mean test accuracy in percent, without (`after` false) or
    /// with the shift: every omitted class's images together when the classes are of
    /// equal size, as in the test sets used here.
    pub fn class_acc(&self, after: bool) -> f64 {
        let v: Vec<f64> = self
            .per_class
            .iter()
            .map(|c| {
                if after {
                    c.test_acc_after
                } else {
                    c.test_acc_before
                }
            })
            .collect();
        100.0 * v.iter().sum::<f64>() / v.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes, class 2 omitted. Rows are `[z0, z1, z2]`; d = max(z0, z1) - z2.
    fn rows(v: &[[f32; 3]]) -> Vec<f32> {
        v.iter().flatten().copied().collect()
    }

    #[test]
    fn the_best_shift_is_found_between_breakpoints() {
        // Two class-2 examples with d = 1 and 2 (correct for b > 1, b > 2), one class-0
        // example with d = 3 (correct for b < 3), one class-1 example with d = 0.5
        // (correct for b < 0.5). Counts: b in [0, .5): 2; (.5, 1): 1; (1, 2): 2;
        // (2, 3): 3; above 3: 2. Best: (2, 3), midpoint 2.5.
        let z = rows(&[
            [1.0, 0.0, 0.0],
            [2.0, 0.0, 0.0],
            [3.0, 0.0, 0.0],
            [0.0, 0.5, 0.0],
        ]);
        let s = best_shift(&z, 3, &[2, 2, 0, 1], &[2]).unwrap();
        assert_eq!(s.shift, 2.5);
        assert_eq!((s.correct_before, s.correct_after), (2, 3));
    }

    #[test]
    fn ties_go_to_the_smallest_shift_and_nothing_omitted_searches_nothing() {
        // Class-2 examples with d = 1 and 2, a class-0 example with d = 1.5: 1 correct
        // on [0, 1), 2 on (1, 1.5), 1 on (1.5, 2), 2 above 2: the smaller, 1.25, wins.
        let z = rows(&[[1.0, 0.0, 0.0], [1.5, 0.0, 0.0], [2.0, 0.0, 0.0]]);
        let s = best_shift(&z, 3, &[2, 0, 2], &[2]).unwrap();
        assert_eq!(s.shift, 1.25);
        assert_eq!(s.correct_after, 2);
        // Already right without a shift: 0.
        let z = rows(&[[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]);
        assert_eq!(best_shift(&z, 3, &[0, 2], &[2]).unwrap().shift, 0.0);
        assert_eq!(best_shift(&z, 3, &[0, 2], &[]), None);
        // Two omitted classes share one shift; the omitted argmax decides among them.
        let z = rows(&[[3.0, 1.0, 0.0], [3.0, 0.0, 1.0], [3.0, 0.0, 0.0]]);
        let s = best_shift(&z, 3, &[1, 2, 0], &[1, 2]).unwrap();
        assert_eq!((s.shift, s.correct_after), (2.5, 3));
    }

    #[test]
    fn the_metadata_round_trips_and_bad_values_name_the_key() {
        let b = LogitBias::uniform(&[1, 3], 2.5);
        let m = HashMap::from([(META_LOGIT_BIAS.to_string(), b.to_json())]);
        assert_eq!(b.to_json(), r#"{"1":2.5,"3":2.5}"#);
        assert_eq!(LogitBias::from_metadata(&m, 10), Ok(b));
        assert!(
            LogitBias::from_metadata(&HashMap::new(), 10)
                .unwrap()
                .is_empty()
        );
        for bad in [r#"{"10":1}"#, r#"{"x":1}"#, "[1]", r#"{"-1":1}"#] {
            let m = HashMap::from([(META_LOGIT_BIAS.to_string(), bad.to_string())]);
            let e = LogitBias::from_metadata(&m, 10).unwrap_err();
            assert!(e.contains(META_LOGIT_BIAS), "{e}");
        }
    }

    #[test]
    fn folding_adds_the_shift_to_the_output_bias_once() {
        let spec = DataSpec::fashion_mnist();
        let net = crate::model::Arch::parse("mlp:4")
            .unwrap()
            .build(&spec, tch::Device::Cpu);
        let x = Tensor::rand([3, 784], (Kind::Float, tch::Device::Cpu));
        let before = net.forward(&x);
        LogitBias::uniform(&[1], 3.5)
            .fold_into(net.as_ref())
            .unwrap();
        let diff = net.forward(&x) - before;
        let want = Tensor::from_slice(&[0f32, 3.5, 0., 0., 0., 0., 0., 0., 0., 0.]);
        assert!(diff.allclose(
            &want.view([1, 10]).expand([3, 10], false),
            1e-5,
            1e-5,
            false
        ));
    }
}
