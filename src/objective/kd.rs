//! `kd`: the distillation loss of Hinton, Vinyals and Dean (2015), "Distilling the
//! Knowledge in a Neural Network", section 2, as torchdistill's `KDLoss` writes it:
//!
//! ```text
//! loss = alpha * CE(z, y) + (1 - alpha) * s * KL(softmax(t / T) || softmax(z / T))
//! ```
//!
//! with the KL summed over classes and averaged over the batch ("batchmean"), and
//! s = T^2 ("it is important to multiply them by T^2", so the soft term's gradients keep
//! their size when T changes) or s = 1 (the Keras reference).

use tch::Tensor;

use super::{Objective, Terms, cross_entropy, kl_divergence};
use serde::{Deserialize, Serialize};

use super::{Param, Range, Spec};

/// `kd` (Hinton et al. 2015, section 2), see [`crate::objective::kd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KdConfig {
    /// Temperature T of the soft targets, > 0.
    pub temperature: f64,
    /// Weight of the hard-label cross-entropy, in [0, 1]; the KL term gets 1 - alpha.
    pub alpha: f64,
    /// Multiply the KL term by T^2 (the paper). `false` reproduces the Keras reference.
    pub t_squared_scaling: bool,
}

impl Default for KdConfig {
    fn default() -> Self {
        KdConfig {
            temperature: 2.0,
            alpha: 0.5,
            t_squared_scaling: true,
        }
    }
}

/// kd's hyper-parameters, their flags and ranges.
pub const SPEC: Spec = Spec {
    name: "kd",
    params: &[
        Param::new(
            "temperature",
            "--t",
            Range::Temperature,
            "temperature T of the soft targets (> 0)",
        ),
        Param::new(
            "alpha",
            "--alpha",
            Range::Unit,
            "weight of the hard-label cross-entropy in [0, 1], the KL term gets 1 - alpha",
        ),
        Param::new(
            "t_squared_scaling",
            "--no-t-squared",
            Range::SwitchOff,
            "leave the KL term unscaled (s = 1, as the Keras reference) instead of T^2",
        ),
    ],
    temperature: Some("temperature"),
    alpha: Some("alpha"),
    build: |v| Ok(Box::new(Kd(v.clone().try_into()?))),
    defaults: || super::table_of(&KdConfig::default()),
};

/// Hinton et al.'s objective; terms `ce` and `kl` (the KL at T, unscaled).
pub struct Kd(pub KdConfig);

impl Kd {
    /// `s` in the formula: T^2 with `t_squared_scaling`, else 1.
    pub fn scale(&self) -> f64 {
        if self.0.t_squared_scaling {
            self.0.temperature * self.0.temperature
        } else {
            1.0
        }
    }
}

impl Objective for Kd {
    fn name(&self) -> &'static str {
        "kd"
    }
    fn term_names(&self) -> &'static [&'static str] {
        &["ce", "kl"]
    }
    fn describe(&self) -> String {
        let c = &self.0;
        format!(
            "kd (T={}, alpha={}, KL scaling {})",
            c.temperature,
            c.alpha,
            if c.t_squared_scaling { "T^2" } else { "1" }
        )
    }
    /// # Shapes
    /// `student` z, `teacher` t: `[batch, classes] f32`; `labels` y: `[batch] i64`.
    fn loss(&self, student: &Tensor, labels: &Tensor, teacher: Option<&Tensor>, _: usize) -> Terms {
        let c = &self.0;
        let ce = cross_entropy(student, labels);
        let kl = match teacher {
            Some(t) => kl_divergence(t, student, c.temperature),
            None => ce.zeros_like(),
        };
        let total = &ce * c.alpha + &kl * ((1.0 - c.alpha) * self.scale());
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

    fn kd(temperature: f64, alpha: f64, t_squared_scaling: bool) -> Kd {
        Kd(KdConfig {
            temperature,
            alpha,
            t_squared_scaling,
        })
    }

    #[test]
    fn matches_pytorch() {
        // scripts/objective_reference.py, case "kd T=2 alpha=0.5":
        // kd(z, t, y, 2.0, 0.5) -> [0.8481542, 0.7640072, 0.2330753]
        check(
            &kd(2.0, 0.5, true),
            1,
            &[0.8481542, 0.7640072, 0.2330753],
            [-0.2058086, 0.2241362, 0.0439805, -0.0623081],
        );
    }

    #[test]
    fn hand_checked_values() {
        // t = [2 ln 3, 0], z = [0, 0], y = 0, T = 2: KL = 0.130812, CE = ln 2.
        let ln3 = 3f32.ln();
        let t = Tensor::from_slice(&[2.0 * ln3, 0.0]).view([1, 2]);
        let z = Tensor::from_slice(&[0.0f32, 0.0]).view([1, 2]);
        let y = Tensor::from_slice(&[0i64]);
        // 0.5 ln 2 + 0.5 * 4 * 0.130812 = 0.608198
        let l = kd(2.0, 0.5, true).loss(&z, &y, Some(&t), 1);
        assert!((scalar(&l.total) - 0.608198).abs() < 1e-6);
        // Keras reference, s = 1: 0.9 ln 2 + 0.1 * 0.130812 = 0.636914
        let l = kd(2.0, 0.9, false).loss(&z, &y, Some(&t), 1);
        assert!((scalar(&l.total) - 0.636914).abs() < 1e-6);
    }

    #[test]
    fn alpha_one_is_plain_cross_entropy() {
        let l = kd(3.0, 1.0, true).loss(&z(), &y(), Some(&t()), 1);
        assert!((scalar(&l.total) - scalar(&cross_entropy(&z(), &y()))).abs() < 1e-7);
    }

    #[test]
    fn large_gap_stays_finite() {
        check_large_gap(&kd(2.0, 0.5, true));
    }

    #[test]
    fn gradient_matches_the_direct_formula() {
        let o = kd(4.0, 0.3, true);
        check_against_direct(&o, 1, |z, y, t| {
            use tch::Kind;
            let p = (t / 4.0).softmax(-1, Kind::Float);
            let log_q = (z / 4.0).log_softmax(-1, Kind::Float);
            let kl = (&p * (p.log() - log_q)).sum(Kind::Float) / z.size()[0] as f64;
            cross_entropy(z, y) * 0.3 + kl * (0.7 * 16.0)
        });
    }
}
