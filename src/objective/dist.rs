//! `dist`: DIST, Huang, You, Wang, Qian and Xu, NeurIPS 2022 ("Knowledge Distillation
//! from A Stronger Teacher", eq. 6-9; the authors' `DIST_KD`
//! `classification/lib/models/losses/dist_kd.py`). It matches relations rather than
//! exact probabilities, with the Pearson correlation rho:
//!
//! ```text
//! Y_s = softmax(z / tau), Y_t = softmax(t / tau)                    [batch, classes]
//! inter = 1 - mean_i rho(Y_s[i, :], Y_t[i, :])      per example, across classes
//! intra = 1 - mean_c rho(Y_s[:, c], Y_t[:, c])      per class, across the batch
//! loss  = ce_weight * CE(z, y) + tau^2 * (beta * inter + gamma * intra)
//! rho(a, b) = <a - mean a, b - mean b> / (|a - mean a| |b - mean b| + 1e-8)
//! ```
//!
//! Defaults as the authors' ImageNet setting: beta = gamma = 1, tau = 1, CE weight 1.

use tch::{Kind, Tensor};

use super::{Objective, Terms, cross_entropy};
use serde::{Deserialize, Serialize};

use super::{Param, Range, Spec};

/// The authors' epsilon in the cosine similarity.
pub const EPS: f64 = 1e-8;

/// `dist` (Huang et al., NeurIPS 2022), see [`crate::objective::dist`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// The paper's tau.
    pub temperature: f64,
    /// Weight of the inter-class relation term.
    pub beta: f64,
    /// Weight of the intra-class relation term.
    pub gamma: f64,
    /// Weight of the hard-label cross-entropy.
    pub ce_weight: f64,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            temperature: 1.0,
            beta: 1.0,
            gamma: 1.0,
            ce_weight: 1.0,
        }
    }
}

/// dist's hyper-parameters, their flags and ranges.
pub const SPEC: Spec = Spec {
    name: "dist",
    params: &[
        Param::new("temperature", "--t", Range::Temperature, "the paper's tau"),
        Param::new(
            "beta",
            "--beta",
            Range::Weight,
            "weight of the inter-class relation term",
        ),
        Param::new(
            "gamma",
            "--gamma",
            Range::Weight,
            "weight of the intra-class relation term",
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
    build: |v| Ok(Box::new(Dist(v.clone().try_into()?))),
    defaults: || super::table_of(&DistConfig::default()),
};

/// DIST; terms `ce`, `inter` and `intra` (each 1 - mean correlation, unscaled).
pub struct Dist(pub DistConfig);

/// 1 - the mean over rows of the Pearson correlation of `a`'s and `b`'s rows.
///
/// # Shapes
/// `a`, `b`: `[rows, k] f32`; returns a scalar f32 in [0, 2].
pub fn one_minus_pearson(a: &Tensor, b: &Tensor) -> Tensor {
    let centre = |x: &Tensor| x - x.mean_dim([1i64].as_slice(), true, Kind::Float);
    let (a, b) = (centre(a), centre(b));
    let dot = (&a * &b).sum_dim_intlist(1, false, Kind::Float); // [rows]
    let norms = a.norm_scalaropt_dim(2, [1i64].as_slice(), false)
        * b.norm_scalaropt_dim(2, [1i64].as_slice(), false); // [rows]
    1.0 - (dot / (norms + EPS)).mean(Kind::Float)
}

impl Objective for Dist {
    fn name(&self) -> &'static str {
        "dist"
    }
    fn term_names(&self) -> &'static [&'static str] {
        &["ce", "inter", "intra"]
    }
    fn describe(&self) -> String {
        let c = &self.0;
        format!(
            "dist (tau={}, beta={}, gamma={}, CE weight {})",
            c.temperature, c.beta, c.gamma, c.ce_weight
        )
    }
    /// # Shapes
    /// `student` z, `teacher` t: `[batch, classes] f32`; `labels` y: `[batch] i64`.
    fn loss(&self, student: &Tensor, labels: &Tensor, teacher: Option<&Tensor>, _: usize) -> Terms {
        let c = &self.0;
        let ce = cross_entropy(student, labels);
        let (inter, intra) = match teacher {
            Some(t) => {
                let ys = (student / c.temperature).softmax(-1, Kind::Float);
                let yt = (t / c.temperature).softmax(-1, Kind::Float);
                (
                    one_minus_pearson(&ys, &yt),
                    one_minus_pearson(&ys.tr(), &yt.tr()),
                )
            }
            None => (ce.zeros_like(), ce.zeros_like()),
        };
        let s = c.temperature * c.temperature;
        let total = &ce * c.ce_weight + (&inter * c.beta + &intra * c.gamma) * s;
        Terms {
            total,
            parts: vec![("ce", ce), ("inter", inter), ("intra", intra)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn dist(temperature: f64, beta: f64, gamma: f64) -> Dist {
        Dist(DistConfig {
            temperature,
            beta,
            gamma,
            ce_weight: 1.0,
        })
    }

    #[test]
    fn matches_the_authors_code() {
        // scripts/objective_reference.py, case "dist tau=1 beta=1 gamma=1 ce=1":
        // -> [1.6386368, 0.7640072, 0.4596702, 0.4149594]
        check(
            &dist(1.0, 1.0, 1.0),
            1,
            &[1.6386368, 0.7640072, 0.4596702, 0.4149594],
            [-0.4434958, 0.3484859, 0.0870776, 0.0079323],
        );
        // case "dist tau=2 beta=2 gamma=0.5 ce=1" -> [6.2951579, 0.7640072, 0.5453584, 0.5841417]
        check(
            &dist(2.0, 2.0, 0.5),
            1,
            &[6.2951579, 0.7640072, 0.5453584, 0.5841417],
            [-1.5420001, 0.9774817, 0.5273636, 0.0371547],
        );
    }

    #[test]
    fn identical_predictions_correlate_perfectly() {
        let l = dist(1.0, 1.0, 1.0).loss(&t(), &y(), Some(&t()), 1);
        for (n, v) in &l.parts[1..] {
            assert!(scalar(v).abs() < 1e-6, "{n} = {}", scalar(v));
        }
    }

    #[test]
    fn large_gap_stays_finite() {
        check_large_gap(&dist(1.0, 1.0, 1.0));
    }

    #[test]
    fn gradient_matches_the_direct_formula() {
        check_against_direct(&dist(2.0, 1.0, 1.0), 1, |z, y, t| {
            let rho = |a: &Tensor, b: &Tensor| {
                // Columns of a [rows, k] pair, one Pearson correlation per row.
                let rows = a.size()[0];
                let mut total = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
                for i in 0..rows {
                    let (x, w) = (a.get(i), b.get(i));
                    let (x, w) = (&x - x.mean(Kind::Float), &w - w.mean(Kind::Float));
                    let r = (&x * &w).sum(Kind::Float)
                        / (x.square().sum(Kind::Float).sqrt() * w.square().sum(Kind::Float).sqrt()
                            + 1e-8);
                    total += r;
                }
                1.0 - total / rows as f64
            };
            let ys = (z / 2.0).softmax(-1, Kind::Float);
            let yt = (t / 2.0).softmax(-1, Kind::Float);
            cross_entropy(z, y) + (rho(&ys, &yt) + rho(&ys.tr(), &yt.tr())) * 4.0
        });
    }
}
