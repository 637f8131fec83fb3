//! `dkd`: Decoupled Knowledge Distillation, Zhao, Cui, Song, Qiu and Liang, CVPR 2022
//! ("Decoupled Knowledge Distillation", eq. 7; mdistiller `mdistiller/distillers/DKD.py`).
//!
//! The KD loss splits into a target-class term and a non-target term, weighted apart:
//!
//! ```text
//! b   = [p_target, 1 - p_target]                  binary probabilities at T
//! p^  = softmax over the non-target classes at T   (the target class removed)
//! TCKD = KL(b_teacher || b_student)                 batchmean
//! NCKD = KL(p^_teacher || p^_student)               batchmean
//! loss = ce_weight * CE(z, y) + min(epoch / warmup, 1) * T^2 * (alpha * TCKD + beta * NCKD)
//! ```
//!
//! mdistiller removes the target class by subtracting 1000 from its logit and takes
//! `log(softmax)`, which underflows for large logit gaps; here the non-target logits are
//! gathered into `[batch, classes - 1]` and every log-probability comes from
//! log-sum-exp, so the value is the same where mdistiller's is finite and stays finite
//! where it is not. Defaults (mdistiller's CIFAR-100 configs): alpha 1, beta 8, T 4,
//! warm-up 20 epochs, CE weight 1.

use tch::{Kind, Tensor};

use super::{Objective, Terms, cross_entropy, kl_from_log_probs};
use serde::{Deserialize, Serialize};

use super::{Param, Range, Spec};

/// `dkd` (Zhao et al., CVPR 2022), see [`crate::objective::dkd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkdConfig {
    pub temperature: f64,
    /// Weight of TCKD, the target-class term (the paper's alpha).
    pub alpha: f64,
    /// Weight of NCKD, the non-target term (the paper's beta).
    pub beta: f64,
    /// Weight of the hard-label cross-entropy.
    pub ce_weight: f64,
    /// Epochs over which the KD part ramps up linearly from 0 (0 = none).
    pub warmup_epochs: usize,
}

impl Default for DkdConfig {
    fn default() -> Self {
        DkdConfig {
            temperature: 4.0,
            alpha: 1.0,
            beta: 8.0,
            ce_weight: 1.0,
            warmup_epochs: 20,
        }
    }
}

/// dkd's hyper-parameters, their flags and ranges.
pub const SPEC: Spec = Spec {
    name: "dkd",
    params: &[
        Param::new("temperature", "--t", Range::Temperature, "temperature T"),
        Param::new(
            "alpha",
            "--alpha",
            Range::Weight,
            "weight of TCKD, the target-class term",
        ),
        Param::new(
            "beta",
            "--beta",
            Range::Weight,
            "weight of NCKD, the non-target term",
        ),
        Param::new(
            "ce_weight",
            "--ce-weight",
            Range::Weight,
            "weight of the hard-label cross-entropy",
        ),
        Param::new(
            "warmup_epochs",
            "--warmup",
            Range::Epochs,
            "epochs over which the KD part ramps up from 0",
        ),
    ],
    temperature: Some("temperature"),
    alpha: Some("alpha"),
    build: |v| Ok(Box::new(Dkd(v.clone().try_into()?))),
    defaults: || super::table_of(&DkdConfig::default()),
};

/// Decoupled KD; terms `ce`, `tckd`, `nckd` (both KLs unscaled, at T).
pub struct Dkd(pub DkdConfig);

/// `[log p_target, log (1 - p_target)]` and the non-target log-softmax at T.
///
/// # Shapes
/// `logits`: `[batch, classes] f32`, already divided by T; `gt`: `[batch, classes]` bool,
/// true at the label. Returns `[batch, 2] f32` and `[batch, classes - 1] f32`.
fn decoupled(logits: &Tensor, gt: &Tensor) -> (Tensor, Tensor) {
    let (b, c) = (logits.size()[0], logits.size()[1]);
    let lse = logits.logsumexp([-1i64].as_slice(), true); // [batch, 1]
    let target = logits.masked_select(gt).view([b, 1]); // [batch, 1]
    let others = logits.masked_select(&gt.logical_not()).view([b, c - 1]); // [batch, c-1]
    let log_target = &target - &lse;
    let log_others = others.logsumexp([-1i64].as_slice(), true) - &lse;
    let binary = Tensor::cat(&[log_target, log_others], 1); // [batch, 2]
    (binary, others.log_softmax(-1, Kind::Float))
}

impl Objective for Dkd {
    fn name(&self) -> &'static str {
        "dkd"
    }
    fn term_names(&self) -> &'static [&'static str] {
        &["ce", "tckd", "nckd"]
    }
    fn describe(&self) -> String {
        let c = &self.0;
        format!(
            "dkd (T={}, alpha={}, beta={}, CE weight {}, warm-up {} epochs)",
            c.temperature, c.alpha, c.beta, c.ce_weight, c.warmup_epochs
        )
    }
    /// # Shapes
    /// `student` z, `teacher` t: `[batch, classes] f32` (classes >= 3); `labels` y:
    /// `[batch] i64`.
    fn loss(
        &self,
        student: &Tensor,
        labels: &Tensor,
        teacher: Option<&Tensor>,
        epoch: usize,
    ) -> Terms {
        let c = &self.0;
        let ce = cross_entropy(student, labels);
        let (tckd, nckd) = match teacher {
            Some(t) => {
                let classes = student.size()[1];
                let gt = labels.one_hot(classes).to_kind(Kind::Bool); // [batch, classes]
                let temp = c.temperature;
                let (bin_s, non_s) = decoupled(&(student / temp), &gt);
                let (bin_t, non_t) = decoupled(&(t / temp), &gt);
                (
                    kl_from_log_probs(&bin_t, &bin_s),
                    kl_from_log_probs(&non_t, &non_s),
                )
            }
            None => (ce.zeros_like(), ce.zeros_like()),
        };
        let warm = if c.warmup_epochs == 0 {
            1.0
        } else {
            (epoch as f64 / c.warmup_epochs as f64).min(1.0)
        };
        let s = warm * c.temperature * c.temperature;
        let total = &ce * c.ce_weight + (&tckd * c.alpha + &nckd * c.beta) * s;
        Terms {
            total,
            parts: vec![("ce", ce), ("tckd", tckd), ("nckd", nckd)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn dkd() -> Dkd {
        Dkd(DkdConfig::default())
    }

    #[test]
    fn defaults_are_mdistillers() {
        let c = DkdConfig::default();
        assert_eq!(
            (c.temperature, c.alpha, c.beta, c.ce_weight, c.warmup_epochs),
            (4.0, 1.0, 8.0, 1.0, 20)
        );
    }

    #[test]
    fn matches_mdistiller() {
        // scripts/objective_reference.py, case "dkd T=4 a=1 b=8 ce=1 warmup=20 epoch=5":
        // mdistiller DKD at epoch 5 -> [4.075026, 0.7640072, 0.0174767, 0.1012847]
        check(
            &dkd(),
            5,
            &[4.075026, 0.7640072, 0.0174767, 0.1012847],
            [-0.2945397, 0.8712992, 0.056768, -0.6335272],
        );
    }

    #[test]
    fn warm_up_scales_only_the_kd_part() {
        let (z, y, t) = (z(), y(), t());
        let o = dkd();
        let at = |e| scalar(&o.loss(&z, &y, Some(&t), e).total);
        let ce = scalar(&cross_entropy(&z, &y));
        // The KD part grows linearly to epoch 20, then stays.
        assert!(((at(10) - ce) - 2.0 * (at(5) - ce)).abs() < 1e-5);
        assert!((at(20) - at(40)).abs() < 1e-6);
    }

    #[test]
    fn large_gap_stays_finite() {
        check_large_gap(&dkd());
    }

    #[test]
    fn gradient_matches_the_direct_formula() {
        // mdistiller's masking, transcribed; fine at these moderate logits.
        check_against_direct(&dkd(), 30, |z, y, t| {
            let gt = y.one_hot(10).to_kind(Kind::Float);
            let other = gt.ones_like() - &gt;
            let parts = |x: &Tensor| {
                let p = (x / 4.0).softmax(-1, Kind::Float);
                let b = Tensor::cat(
                    &[
                        (&p * &gt).sum_dim_intlist(1, true, Kind::Float),
                        (&p * &other).sum_dim_intlist(1, true, Kind::Float),
                    ],
                    1,
                );
                (
                    b.log(),
                    (x / 4.0 - &gt * 1000.0).log_softmax(-1, Kind::Float),
                )
            };
            let (bs, ns) = parts(z);
            let (bt, nt) = parts(t);
            let kl = |log_p: &Tensor, log_q: &Tensor| {
                (log_p.exp() * (log_p - log_q)).sum(Kind::Float) / 6.0
            };
            cross_entropy(z, y) + (kl(&bt, &bs) + kl(&nt, &ns) * 8.0) * 16.0
        });
    }
}
