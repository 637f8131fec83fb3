//! The learning-rate schedule: Keras `tf.keras.optimizers.schedules.CosineDecay`.

/// Cosine decay of the learning rate, evaluated at every optimizer step.
///
/// Formula (Keras `CosineDecay` API docs):
/// ```text
/// step'   = min(step, decay_steps)
/// decayed = (1 - alpha) * 0.5 * (1 + cos(pi * step' / decay_steps)) + alpha
/// lr      = initial_lr * decayed
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineDecay {
    /// LR at step 0 (per optimizer step, unitless).
    pub initial_lr: f64,
    /// Steps over which the LR falls to its floor, >= 1.
    pub decay_steps: u64,
    /// The floor, as a fraction of `initial_lr`, in [0, 1].
    pub alpha: f64,
}

impl CosineDecay {
    /// The learning rate for optimizer step `step` (0-based, counted over the whole run).
    pub fn lr(&self, step: u64) -> f64 {
        let decay_steps = self.decay_steps.max(1);
        let s = step.min(decay_steps) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * s / decay_steps as f64).cos());
        self.initial_lr * ((1.0 - self.alpha) * cosine + self.alpha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_keras_check_values() {
        // tf.keras.optimizers.schedules.CosineDecay(1e-3, 2000, alpha=0.1)(step)
        let s = CosineDecay {
            initial_lr: 1e-3,
            decay_steps: 2000,
            alpha: 0.1,
        };
        let expected = [
            (0, 1e-3),
            (500, 8.68198052e-4),
            (1000, 5.5e-4),
            (2000, 1e-4),
            (5000, 1e-4),
        ];
        for (step, lr) in expected {
            assert!(
                (s.lr(step) - lr).abs() < 1e-11,
                "step {step}: {} vs {lr}",
                s.lr(step)
            );
        }
    }

    #[test]
    fn is_monotone_non_increasing() {
        let s = CosineDecay {
            initial_lr: 1e-3,
            decay_steps: 100,
            alpha: 0.01,
        };
        for step in 0..200 {
            assert!(s.lr(step + 1) <= s.lr(step));
        }
    }
}
