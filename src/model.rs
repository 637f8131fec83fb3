//! The two networks: the teacher MLP 784-512-256-128-10 and the student MLP 784-128-10,
//! both ReLU, as in the Keras reference's `TeacherModel` and `StudentModel`.
//!
//! Layers are named `fc1`, `fc2`, ... so checkpoint keys are stable (`fc1.weight`
//! `[out, in]`, `fc1.bias` `[out]`). This module owns shapes and initialisation, not
//! training or files.

use std::fmt;

use tch::{Device, Kind, Tensor, nn};

/// Which network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    Teacher,
    Student,
}

impl Arch {
    /// Layer widths from input to logits.
    pub fn widths(self) -> &'static [i64] {
        match self {
            Arch::Teacher => &[784, 512, 256, 128, 10],
            Arch::Student => &[784, 128, 10],
        }
    }

    /// Trainable parameters: sum over layers of `in * out + out`.
    pub fn num_params(self) -> i64 {
        self.widths().windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }

    /// Multiply-accumulates of one forward pass for one example.
    pub fn macs_per_example(self) -> i64 {
        self.widths().windows(2).map(|w| w[0] * w[1]).sum()
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Teacher => "teacher",
            Arch::Student => "student",
        }
    }

    pub fn from_name(s: &str) -> Option<Arch> {
        match s {
            "teacher" => Some(Arch::Teacher),
            "student" => Some(Arch::Student),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An MLP with its own [`nn::VarStore`].
pub struct Mlp {
    pub arch: Arch,
    pub vs: nn::VarStore,
    /// `(weight [out, in] f32, bias [out] f32)` per layer, input to output.
    layers: Vec<(Tensor, Tensor)>,
}

impl Mlp {
    /// A freshly initialised network on `device`. Weights are Glorot-uniform,
    /// U(-l, l) with l = sqrt(6 / (fan_in + fan_out)), and biases zero: the Keras `Dense`
    /// defaults (`glorot_uniform`, `zeros`). Draws from libtorch's global generator, so
    /// seed it first with `tch::manual_seed`.
    pub fn new(arch: Arch, device: Device) -> Mlp {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let layers = arch
            .widths()
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let (fan_in, fan_out) = (w[0], w[1]);
                let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
                let p = &root / format!("fc{}", i + 1);
                let weight = p.var(
                    "weight",
                    &[fan_out, fan_in],
                    nn::Init::Uniform {
                        lo: -limit,
                        up: limit,
                    },
                );
                let bias = p.var("bias", &[fan_out], nn::Init::Const(0.0));
                (weight, bias)
            })
            .collect();
        Mlp { arch, vs, layers }
    }

    /// The logits.
    ///
    /// # Shapes
    /// `x: [batch, 784] f32 in [0, 1]` -> `[batch, 10] f32` (no softmax).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let last = self.layers.len() - 1;
        let mut h = x.shallow_clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.linear(w, Some(b)); // [batch, out]
            if i < last {
                h = h.relu();
            }
        }
        h
    }

    /// Parameters in a fixed order with their checkpoint names (`fc1.weight`, `fc1.bias`, ...).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.layers.len() * 2);
        for (i, (w, b)) in self.layers.iter().enumerate() {
            out.push((format!("fc{}.weight", i + 1), w.shallow_clone()));
            out.push((format!("fc{}.bias", i + 1), b.shallow_clone()));
        }
        out
    }

    /// The parameters as tensors, in the order of [`Mlp::named_parameters`].
    pub fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// A detached copy of every parameter (for early stopping's best weights).
    pub fn snapshot(&self) -> Vec<Tensor> {
        tch::no_grad(|| {
            self.parameters()
                .iter()
                .map(|t| t.detach().copy())
                .collect()
        })
    }

    /// Copies `values` (same order and shapes as [`Mlp::parameters`]) into the parameters.
    pub fn restore(&self, values: &[Tensor]) {
        tch::no_grad(|| {
            for (mut p, v) in self.parameters().into_iter().zip(values) {
                p.copy_(v);
            }
        });
    }

    /// Turns off gradients for every parameter (the frozen teacher).
    pub fn freeze(&mut self) {
        self.vs.freeze();
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

/// Top-1 predictions. `logits: [batch, classes]` -> `[batch] i64`.
pub fn predictions(logits: &Tensor) -> Tensor {
    logits.argmax(-1, false)
}

/// Number of correct predictions as a scalar i64 tensor (no host sync).
pub fn correct(logits: &Tensor, labels: &Tensor) -> Tensor {
    predictions(logits).eq_tensor(labels).sum(Kind::Int64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_keras_models() {
        assert_eq!(Arch::Teacher.num_params(), 567_434);
        assert_eq!(Arch::Student.num_params(), 101_770);
        let t = Mlp::new(Arch::Teacher, Device::Cpu);
        let n: i64 = t.parameters().iter().map(|p| p.numel() as i64).sum();
        assert_eq!(n, 567_434);
        let s = Mlp::new(Arch::Student, Device::Cpu);
        let n: i64 = s.parameters().iter().map(|p| p.numel() as i64).sum();
        assert_eq!(n, 101_770);
    }

    #[test]
    fn stable_names_and_shapes() {
        let s = Mlp::new(Arch::Student, Device::Cpu);
        let names: Vec<_> = s
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("fc1.weight".to_string(), vec![128, 784]),
                ("fc1.bias".to_string(), vec![128]),
                ("fc2.weight".to_string(), vec![10, 128]),
                ("fc2.bias".to_string(), vec![10]),
            ]
        );
    }

    #[test]
    fn glorot_uniform_init_and_zero_bias() {
        tch::manual_seed(0);
        let t = Mlp::new(Arch::Teacher, Device::Cpu);
        let p = t.named_parameters();
        let w = &p[0].1;
        let limit = (6.0f64 / (784.0 + 512.0)).sqrt();
        assert!(w.abs().max().double_value(&[]) <= limit);
        // The variance of U(-l, l) is l^2 / 3.
        let var = w.var(true).double_value(&[]);
        assert!((var - limit * limit / 3.0).abs() < 0.05 * limit * limit / 3.0);
        assert_eq!(p[1].1.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn forward_shape() {
        let s = Mlp::new(Arch::Teacher, Device::Cpu);
        let x = Tensor::rand([3, 784], (Kind::Float, Device::Cpu));
        assert_eq!(s.forward(&x).size(), vec![3, 10]);
    }
}
