//! An epoch's training metrics, accumulated on the device and read back only when asked
//! for (progress refresh, end of epoch), so a step never waits for the device.

use tch::{Kind, Tensor};

use crate::eval::Metrics;

/// An epoch's training metrics, kept on the device: each step only records its
/// (detached) loss tensors and its count of correct predictions, a few cheap ops; the
/// means are computed and read back when asked for (progress refresh, end of epoch).
#[derive(Default)]
pub struct Meter {
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
    pub fn push(
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
    pub fn means(&self) -> Metrics {
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
