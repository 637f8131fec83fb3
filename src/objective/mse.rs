//! `mse`: regression on the teacher's logits, after Ba and Caruana (2014), "Do Deep Nets
//! Really Need to be Deep?" (section 2.2: the student mimics the teacher's logits under
//! an L2 loss), mixed with the hard-label cross-entropy:
//!
//! ```text
//! loss = alpha * CE(z, y) + (1 - alpha) * mean_{i,c} (z_ic - t_ic)^2
//! ```
//!
//! The mean runs over batch and classes (PyTorch's `F.mse_loss`, reduction "mean").

use tch::{Kind, Tensor};

use super::{Objective, Terms, cross_entropy};
use serde::{Deserialize, Serialize};

use super::{Param, Range, Spec};

/// `mse` (Ba & Caruana 2014), see [`crate::objective::mse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MseConfig {
    /// Weight of the hard-label cross-entropy, in [0, 1]; the logit MSE gets 1 - alpha.
    pub alpha: f64,
}

impl Default for MseConfig {
    fn default() -> Self {
        MseConfig { alpha: 0.5 }
    }
}

/// mse's hyper-parameters, their flags and ranges.
pub const SPEC: Spec = Spec {
    name: "mse",
    params: &[Param::new(
        "alpha",
        "--alpha",
        Range::Unit,
        "weight of the hard-label cross-entropy in [0, 1], the logit MSE gets 1 - alpha",
    )],
    temperature: None,
    alpha: Some("alpha"),
    build: |v| Ok(Box::new(Mse(v.clone().try_into()?))),
    defaults: || super::table_of(&MseConfig::default()),
};

/// Logit regression; terms `ce` and `mse`.
pub struct Mse(pub MseConfig);

impl Objective for Mse {
    fn name(&self) -> &'static str {
        "mse"
    }
    fn term_names(&self) -> &'static [&'static str] {
        &["ce", "mse"]
    }
    fn describe(&self) -> String {
        format!("mse (alpha={})", self.0.alpha)
    }
    /// # Shapes
    /// `student` z, `teacher` t: `[batch, classes] f32`; `labels` y: `[batch] i64`.
    fn loss(&self, student: &Tensor, labels: &Tensor, teacher: Option<&Tensor>, _: usize) -> Terms {
        let alpha = self.0.alpha;
        let ce = cross_entropy(student, labels);
        let mse = match teacher {
            Some(t) => (student - t).square().mean(Kind::Float),
            None => ce.zeros_like(),
        };
        let total = &ce * alpha + &mse * (1.0 - alpha);
        Terms {
            total,
            parts: vec![("ce", ce), ("mse", mse)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn matches_pytorch() {
        // scripts/objective_reference.py, case "mse alpha=0.5":
        // 0.5 * F.cross_entropy(z, y) + 0.5 * F.mse_loss(z, t) -> [2.0065868, 0.7640072, 3.2491665]
        check(
            &Mse(MseConfig { alpha: 0.5 }),
            1,
            &[2.0065868, 0.7640072, 3.2491665],
            [-0.2959654, 0.3515767, 0.0226648, -0.2449428],
        );
    }

    #[test]
    fn large_gap_stays_finite() {
        check_large_gap(&Mse(MseConfig { alpha: 0.5 }));
    }

    #[test]
    fn gradient_matches_the_direct_formula() {
        check_against_direct(&Mse(MseConfig { alpha: 0.2 }), 1, |z, y, t| {
            let n = (z.size()[0] * z.size()[1]) as f64;
            cross_entropy(z, y) * 0.2 + (z - t).pow_tensor_scalar(2).sum(Kind::Float) * (0.8 / n)
        });
    }
}
