//! The training objectives: cross-entropy on hard labels, and the distillation loss of
//! Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural Network".

use tch::{Kind, Tensor};

/// Mean cross-entropy of `logits` against `labels`.
///
/// # Shapes
/// `logits: [batch, classes] f32`, `labels: [batch] i64 in [0, classes)`; returns a
/// scalar f32 (mean over the batch, nats).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.log_softmax(-1, Kind::Float).nll_loss(labels)
}

/// The teacher's soft targets at temperature T, precomputed once per example: what the
/// KL term needs of the teacher, so that a cached teacher costs nothing per step.
///
/// KL(p || q) = sum_c p_c log p_c - sum_c p_c log q_c; the first sum depends on the
/// teacher alone and is stored per example.
pub struct SoftTargets {
    /// p = softmax(t / T): `[n, classes] f32`.
    pub probs: Tensor,
    /// sum_c p_c log p_c (minus the entropy): `[n] f32`, computed from log-softmax, so a
    /// probability that underflows to 0 contributes 0, never `0 * log 0 = NaN`.
    pub neg_entropy: Tensor,
}

impl SoftTargets {
    /// Soft targets of `teacher_logits` (`[n, classes] f32`) at `temperature`, detached.
    pub fn new(teacher_logits: &Tensor, temperature: f64) -> SoftTargets {
        tch::no_grad(|| {
            let log_p = (teacher_logits / temperature).log_softmax(-1, Kind::Float); // [n, classes]
            let probs = log_p.exp();
            let neg_entropy = (&probs * &log_p).sum_dim_intlist(-1, false, Kind::Float); // [n]
            SoftTargets { probs, neg_entropy }
        })
    }

    /// The rows at `index` (`[k] i64`).
    pub fn select(&self, index: &Tensor) -> SoftTargets {
        SoftTargets {
            probs: self.probs.index_select(0, index),
            neg_entropy: self.neg_entropy.index_select(0, index),
        }
    }

    /// KL(p || softmax(z/T)) summed over classes, averaged over the batch ("batchmean").
    ///
    /// # Shapes
    /// `student_logits` z: `[batch, classes] f32` (the same rows as `self`); returns a
    /// scalar f32.
    pub fn kl(&self, student_logits: &Tensor, temperature: f64) -> Tensor {
        let log_q = (student_logits / temperature).log_softmax(-1, Kind::Float); // [batch, classes]
        let batch = student_logits.size()[0].max(1) as f64;
        (self.neg_entropy.sum(Kind::Float) - (&self.probs * log_q).sum(Kind::Float)) / batch
    }
}

/// KL(softmax(t/T) || softmax(z/T)), summed over classes and averaged over the batch
/// (PyTorch's `F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")`), computed
/// from log-softmax so that a teacher probability of 0 gives a finite 0 contribution.
///
/// # Shapes
/// `teacher_logits` (t), `student_logits` (z): `[batch, classes] f32`; returns a scalar f32.
pub fn kl_divergence(teacher_logits: &Tensor, student_logits: &Tensor, temperature: f64) -> Tensor {
    SoftTargets::new(teacher_logits, temperature).kl(student_logits, temperature)
}

/// The distillation loss's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillLoss {
    /// Temperature T of the soft targets, > 0.
    pub temperature: f64,
    /// Weight of the hard-label cross-entropy, in [0, 1].
    pub alpha: f64,
    /// Multiply the KL term by T^2 (Hinton et al. 2015, section 2: "it is important to
    /// multiply them by T^2" so that the soft term's gradients keep their magnitude
    /// when T changes). The Keras reference did not.
    pub t_squared_scaling: bool,
}

/// The three parts of one evaluation of the distillation loss, each a scalar f32 tensor.
pub struct LossParts {
    /// `alpha * clf + (1 - alpha) * s * kd`, the value minimised.
    pub sum: Tensor,
    /// Cross-entropy on the hard labels.
    pub clf: Tensor,
    /// KL divergence between the soft targets and the student at temperature T (unscaled).
    pub kd: Tensor,
}

impl DistillLoss {
    /// `s` in the formula: T^2 with scaling, 1 without.
    pub fn scale(&self) -> f64 {
        if self.t_squared_scaling {
            self.temperature * self.temperature
        } else {
            1.0
        }
    }

    /// `loss = alpha * CE(z, y) + (1 - alpha) * s * KL(softmax(t/T) || softmax(z/T))`
    /// (torchdistill's `KDLoss`; Hinton et al. 2015, section 2).
    ///
    /// # Shapes
    /// `student_logits` z and `teacher_logits` t: `[batch, classes] f32`;
    /// `labels` y: `[batch] i64`.
    pub fn compute(
        &self,
        student_logits: &Tensor,
        teacher_logits: &Tensor,
        labels: &Tensor,
    ) -> LossParts {
        self.compute_soft(
            student_logits,
            &SoftTargets::new(teacher_logits, self.temperature),
            labels,
        )
    }

    /// [`DistillLoss::compute`] with the teacher's soft targets at this loss's temperature
    /// already computed (the teacher cache).
    pub fn compute_soft(
        &self,
        student_logits: &Tensor,
        soft: &SoftTargets,
        labels: &Tensor,
    ) -> LossParts {
        let clf = cross_entropy(student_logits, labels);
        let kd = soft.kl(student_logits, self.temperature);
        let sum = &clf * self.alpha + &kd * ((1.0 - self.alpha) * self.scale());
        LossParts { sum, clf, kd }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 2])
    }

    fn scalar(x: &Tensor) -> f64 {
        x.double_value(&[])
    }

    const LN3: f32 = 1.098_612_3;

    #[test]
    fn kl_hand_checked_value() {
        // t = [2 ln 3, 0] at T=2 -> p = [3/4, 1/4]; z = [0, 0] -> q = [1/2, 1/2].
        // KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812
        // torch: F.kl_div(F.log_softmax(z/2,1), F.log_softmax(t/2,1), log_target=True, reduction="batchmean")
        let teacher = t(&[[2.0 * LN3, 0.0]]);
        let student = t(&[[0.0, 0.0]]);
        assert!((scalar(&kl_divergence(&teacher, &student, 2.0)) - 0.130812).abs() < 1e-6);
        // batchmean: two identical rows give the same value, not twice it.
        let teacher2 = t(&[[2.0 * LN3, 0.0], [2.0 * LN3, 0.0]]);
        let student2 = t(&[[0.0, 0.0], [0.0, 0.0]]);
        assert!((scalar(&kl_divergence(&teacher2, &student2, 2.0)) - 0.130812).abs() < 1e-6);
    }

    #[test]
    fn distill_loss_hand_checked_values() {
        let teacher = t(&[[2.0 * LN3, 0.0]]);
        let student = t(&[[0.0, 0.0]]);
        let label = Tensor::from_slice(&[0i64]);
        // T^2 * KL = 4 * 0.130812 = 0.523249
        let paper = DistillLoss {
            temperature: 2.0,
            alpha: 0.5,
            t_squared_scaling: true,
        };
        let p = paper.compute(&student, &teacher, &label);
        assert!((scalar(&p.kd) * paper.scale() - 0.523249).abs() < 1e-6);
        // CE([0,0], 0) = ln 2; 0.5 ln 2 + 0.5 * 0.523249 = 0.608198
        assert!((scalar(&p.clf) - std::f64::consts::LN_2).abs() < 1e-6);
        assert!((scalar(&p.sum) - 0.608198).abs() < 1e-6);
        // Keras reference, s = 1: 0.9 ln 2 + 0.1 * 0.130812 = 0.636914
        let keras = DistillLoss {
            temperature: 2.0,
            alpha: 0.9,
            t_squared_scaling: false,
        };
        assert!((scalar(&keras.compute(&student, &teacher, &label).sum) - 0.636914).abs() < 1e-6);
    }

    #[test]
    fn kl_is_finite_for_a_zero_teacher_probability() {
        // p = [1, e^-200] ~ [1, 0]; q = [1/2, 1/2]; KL = ln 2, with no 0 * log 0 = NaN.
        let kl = scalar(&kl_divergence(&t(&[[0.0, -200.0]]), &t(&[[0.0, 0.0]]), 1.0));
        assert!(kl.is_finite());
        assert!((kl - std::f64::consts::LN_2).abs() < 1e-6); // 0.693147
    }

    #[test]
    fn kl_matches_libtorch_kl_div() {
        let t = Tensor::from_slice(&[3.0f32, -1.0, 0.5, 2.0, 2.0, -4.0]).view([2, 3]);
        let z = Tensor::from_slice(&[0.1f32, 0.2, -0.3, 1.0, -1.0, 0.0]).view([2, 3]);
        for temp in [1.0, 2.0, 5.0] {
            let log_p = (&t / temp).log_softmax(-1, Kind::Float);
            let log_q = (&z / temp).log_softmax(-1, Kind::Float);
            let torch = log_q
                .kl_div(&log_p, tch::Reduction::Sum, true)
                .double_value(&[])
                / 2.0;
            assert!((scalar(&kl_divergence(&t, &z, temp)) - torch).abs() < 1e-6);
        }
    }

    #[test]
    fn kl_is_zero_when_student_matches_teacher() {
        let x = t(&[[1.0, -2.0], [0.5, 3.0]]);
        assert!(scalar(&kl_divergence(&x, &x, 4.0)).abs() < 1e-7);
    }

    #[test]
    fn alpha_one_is_plain_cross_entropy() {
        let teacher = t(&[[5.0, 0.0]]);
        let student = t(&[[0.3, 0.1]]);
        let label = Tensor::from_slice(&[1i64]);
        let l = DistillLoss {
            temperature: 3.0,
            alpha: 1.0,
            t_squared_scaling: true,
        }
        .compute(&student, &teacher, &label);
        assert!((scalar(&l.sum) - scalar(&cross_entropy(&student, &label))).abs() < 1e-7);
    }
}
