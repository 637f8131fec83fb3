//! Several teachers as one: how the logits of an ensemble of teachers are combined into
//! the logits one teacher would give (`distill.ensemble`).
//!
//! Hinton, Vinyals and Dean 2015, §4 (and §5's ensembles of specialists): the
//! knowledge of an ensemble is distilled by matching the soft targets the ensemble
//! gives, the mean of its members' predictive distributions. Every objective here reads
//! a teacher's logits, so the combination is served as logits whose softmax at the
//! objective's temperature T is that mean:
//!
//! `z = T · log( (1/M) Σᵢ softmax(zᵢ / T) )` (then shifted per row, see
//! [`Combine::Probabilities`]).
//!
//! The other choice, [`Combine::Logits`], is the mean of the members' logits, whose
//! softmax at any T is the normalised geometric mean of their distributions at T.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How an ensemble's logits are combined (`distill.ensemble`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// The mean of the members' probabilities at the objective's temperature T (Hinton
    /// et al. 2015, §4), served as `T · log(mean softmax(zᵢ / T))`, each row then
    /// shifted so that its mean over classes is the mean over classes of the members'
    /// mean logits. A softmax ignores the shift, so kd, dkd, lskd and dist see exactly
    /// the mean distribution; mse (logits, no temperature; T = 1) sees logits on the
    /// members' scale instead of log-probabilities, which are all negative.
    #[default]
    Probabilities,
    /// The mean of the members' logits: at any temperature, the normalised geometric
    /// mean of their distributions.
    Logits,
}

impl Combine {
    /// The config value: `"probabilities"` or `"logits"`.
    pub fn key(self) -> &'static str {
        match self {
            Combine::Probabilities => "probabilities",
            Combine::Logits => "logits",
        }
    }

    /// In words, with the temperature, for status lines and `meta.json`.
    pub fn describe(self, t: f64) -> String {
        match self {
            Combine::Probabilities => format!("the mean of the teachers' probabilities at T={t}"),
            Combine::Logits => "the mean of the teachers' logits".into(),
        }
    }
}

/// The ensemble's logits from its members' (`members[i]`: `[n, classes] f32`, the same
/// rows), combined as `how` says at temperature `t` (> 0; the objective's, or 1 for one
/// without). One member is returned as it is.
///
/// # Shapes
/// `members: M × [n, classes] f32` -> `[n, classes] f32`.
pub fn combine(members: &[Tensor], how: Combine, t: f64) -> Tensor {
    match members {
        [] => panic!("an ensemble of no teacher"),
        [one] => one.shallow_clone(),
        _ => {
            let stacked = Tensor::stack(members, 0); // [M, n, classes]
            let mean_logits = stacked.mean_dim(0, false, Kind::Float); // [n, classes]
            match how {
                Combine::Logits => mean_logits,
                Combine::Probabilities => {
                    let m = members.len() as f64;
                    // log mean_i softmax(z_i / T) = logsumexp_i log_softmax(z_i / T) - log M,
                    // stable for logits of any size.
                    let log_mean = (stacked / t)
                        .log_softmax(2, Kind::Float)
                        .logsumexp([0], false)
                        - m.ln();
                    let z = log_mean * t; // [n, classes]
                    let shift = mean_logits.mean_dim(1, true, Kind::Float)
                        - z.mean_dim(1, true, Kind::Float);
                    z + shift
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<Tensor> {
        let t = |v: [f32; 6]| Tensor::from_slice(&v).view([2, 3]);
        vec![
            t([2.0, -1.0, 0.5, 0.0, 3.0, -2.0]),
            t([1.0, 0.0, -0.5, 4.0, -1.0, 1.0]),
            t([-3.0, 2.5, 0.0, 1.0, 1.0, 1.0]),
        ]
    }

    fn close(a: &Tensor, b: &[f64]) {
        let a: Vec<f64> = Vec::try_from(a.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    /// The softmax at T of the combined logits is the mean of the members' softmax at T,
    /// as PyTorch computes it:
    /// `torch.stack([torch.softmax(z / T, 1) for z in (z1, z2, z3)]).mean(0)` in float64.
    #[test]
    fn probabilities_give_pytorchs_mean_distribution_at_t() {
        let m = members();
        for (t, want) in [
            (
                1.0,
                [
                    0.4726304333252304,
                    0.397000388200665,
                    0.13036917847410456,
                    0.4423186241369637,
                    0.4287366389362231,
                    0.12894473692681327,
                ],
            ),
            (
                4.0,
                [
                    0.33664603904468,
                    0.3645931521754126,
                    0.29876080877990735,
                    0.3901473527469475,
                    0.35492367442562595,
                    0.2549289728274264,
                ],
            ),
        ] {
            let z = combine(&m, Combine::Probabilities, t);
            close(&(&z / t).softmax(1, Kind::Float), &want);
            // Each row's mean over classes is the members' mean logits' (0.1667 and 0.8889).
            close(
                &z.mean_dim(1, false, Kind::Float),
                &[0.5 / 3.0, (1.0 + 2.0 / 3.0 + 1.0) / 3.0],
            );
        }
    }

    /// The mean of the logits, as PyTorch's `(z1 + z2 + z3) / 3`.
    #[test]
    fn logits_are_pytorchs_mean() {
        let z = combine(&members(), Combine::Logits, 4.0);
        close(&z, &[0.0, 0.5, 0.0, 5.0 / 3.0, 1.0, 0.0]);
    }

    #[test]
    fn one_member_is_itself_and_huge_logits_stay_finite() {
        let m = members();
        close(
            &combine(&m[..1], Combine::Probabilities, 2.0),
            &[2.0, -1.0, 0.5, 0.0, 3.0, -2.0],
        );
        let big = vec![&m[0] * 1e4, &m[1] * 1e4];
        let z = combine(&big, Combine::Probabilities, 1.0);
        assert!(bool::try_from(z.isfinite().all()).unwrap());
    }
}
