//! `lskd`: KD on standardised logits, Sun, Ren, Li, Wang and Cao, CVPR 2024 ("Logit
//! Standardization in Knowledge Distillation", eq. 8 and Algorithm 1; the authors'
//! `mdistiller/distillers/KD.py` with `logit_stand`):
//!
//! ```text
//! Z(x) = (x - mean_c x) / (std_c x + eps)          std unbiased, eps = 1e-7
//! loss = ce_weight * CE(z, y) + kd_weight * T^2 * KL(softmax(Z(t)/T) || softmax(Z(z)/T))
//! ```
//!
//! The KL is summed over classes and averaged over the batch. Defaults from the authors'
//! configuration for KD with standardisation: T 2, KD weight 9, CE weight 0.1.

use tch::{Kind, Tensor};

use super::{Objective, Terms, cross_entropy, kl_divergence};
use serde::{Deserialize, Serialize};

use super::{Param, Range, Spec};

/// The authors' epsilon in the standardisation.
pub const EPS: f64 = 1e-7;

/// `lskd` (Sun et al., CVPR 2024), see [`crate::objective::lskd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LskdConfig {
    pub temperature: f64,
    /// Weight of the T^2-scaled KL of the standardised logits.
    pub kd_weight: f64,
    /// Weight of the hard-label cross-entropy.
    pub ce_weight: f64,
}

impl Default for LskdConfig {
    fn default() -> Self {
        LskdConfig {
            temperature: 2.0,
            kd_weight: 9.0,
            ce_weight: 0.1,
        }
    }
}

/// lskd's hyper-parameters, their flags and ranges.
pub const SPEC: Spec = Spec {
    name: "lskd",
    params: &[
        Param::new("temperature", "--t", Range::Temperature, "temperature T"),
        Param::new(
            "kd_weight",
            "--kd-weight",
            Range::Weight,
            "weight of the T^2-scaled KL of standardised logits",
        ),
        Param::new(
            "ce_weight",
            "--ce-weight",
            Range::Weight,
            "weight of the hard-label cross-entropy",
        ),
    ],
    temperature: Some("temperature"),
    alpha: None,
    build: |v| Ok(Box::new(Lskd(v.clone().try_into()?))),
    defaults: || super::table_of(&LskdConfig::default()),
};

/// KD with logit standardisation; terms `ce` and `kl` (the KL of standardised logits at
/// T, unscaled).
pub struct Lskd(pub LskdConfig);

/// Z-score of each row: `[batch, classes] f32` -> `[batch, classes] f32`.
pub fn standardise(x: &Tensor) -> Tensor {
    let mean = x.mean_dim([-1i64].as_slice(), true, Kind::Float);
    let std = x.std_dim([-1i64].as_slice(), true, true);
    (x - mean) / (std + EPS)
}

impl Objective for Lskd {
    fn name(&self) -> &'static str {
        "lskd"
    }
    fn term_names(&self) -> &'static [&'static str] {
        &["ce", "kl"]
    }
    fn describe(&self) -> String {
        let c = &self.0;
        format!(
            "lskd (T={}, KD weight {}, CE weight {})",
            c.temperature, c.kd_weight, c.ce_weight
        )
    }
    /// # Shapes
    /// `student` z, `teacher` t: `[batch, classes] f32`; `labels` y: `[batch] i64`.
    fn loss(&self, student: &Tensor, labels: &Tensor, teacher: Option<&Tensor>, _: usize) -> Terms {
        let c = &self.0;
        let ce = cross_entropy(student, labels);
        let kl = match teacher {
            Some(t) => kl_divergence(&standardise(t), &standardise(student), c.temperature),
            None => ce.zeros_like(),
        };
        let total = &ce * c.ce_weight + &kl * (c.kd_weight * c.temperature * c.temperature);
        Terms {
            total,
            parts: vec![("ce", ce), ("kl", kl)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn lskd() -> Lskd {
        Lskd(LskdConfig::default())
    }

    #[test]
    fn matches_the_authors_code() {
        // scripts/objective_reference.py, case "lskd T=2 kd=9 ce=0.1":
        // -> [4.2411046, 0.7640072, 0.1156862]
        check(
            &lskd(),
            1,
            &[4.2411046, 0.7640072, 0.1156862],
            [-0.85738, 0.4721607, 0.2095363, 0.1756831],
        );
    }

    #[test]
    fn invariant_to_shift_and_scale_of_the_teacher() {
        let (z, y, t) = (z(), y(), t());
        let a = scalar(&lskd().loss(&z, &y, Some(&t), 1).total);
        let b = scalar(&lskd().loss(&z, &y, Some(&(&t * 7.0 + 3.0)), 1).total);
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    #[test]
    fn large_gap_stays_finite() {
        check_large_gap(&lskd());
    }

    #[test]
    fn gradient_matches_the_direct_formula() {
        check_against_direct(&lskd(), 1, |z, y, t| {
            let zs = |x: &Tensor| {
                let m = x.mean_dim([1i64].as_slice(), true, Kind::Float);
                let d = x - &m;
                let var = (&d * &d).sum_dim_intlist(1, true, Kind::Float) / 9.0;
                d / (var.sqrt() + 1e-7)
            };
            let p = (zs(t) / 2.0).softmax(-1, Kind::Float);
            let log_q = (zs(z) / 2.0).log_softmax(-1, Kind::Float);
            let kl = (&p * (p.log() - log_q)).sum(Kind::Float) / 6.0;
            cross_entropy(z, y) * 0.1 + kl * 36.0
        });
    }
}
