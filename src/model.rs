//! The networks. An architecture ([`Arch`]) is separate from the role a network plays
//! (teacher or student, see [`crate::run::RunKind`]): `mlp:512,256,128` is the Keras
//! reference's teacher (784-512-256-128-10), `mlp:128` its student (784-128-10), both
//! ReLU. A checkpoint records its architecture spec, and [`Arch::build`] rebuilds it.
//!
//! Layers are named `fc1`, `fc2`, ... so checkpoint keys are stable (`fc1.weight`
//! `[out, in]`, `fc1.bias` `[out]`). This module owns shapes and initialisation, not
//! training or files.

use std::fmt;

use tch::{Device, Kind, Tensor, nn};

/// Input features: 28x28 pixels, flattened.
pub const INPUTS: i64 = 784;
/// Output logits: the ten Fashion-MNIST classes.
pub const OUTPUTS: i64 = 10;

/// A network architecture, written as a spec string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Arch {
    /// A ReLU multi-layer perceptron 784-`hidden`-10 (`mlp:512,256,128`).
    Mlp { hidden: Vec<i64> },
    /// A TorchScript model loaded as a teacher (`torchscript`); it cannot be built or
    /// trained here, so [`Arch::parse`] never returns it.
    TorchScript,
}

impl Arch {
    /// The Keras reference's teacher, `mlp:512,256,128` (567,434 parameters).
    pub fn teacher() -> Arch {
        Arch::Mlp {
            hidden: vec![512, 256, 128],
        }
    }

    /// The Keras reference's student, `mlp:128` (101,770 parameters).
    pub fn student() -> Arch {
        Arch::Mlp { hidden: vec![128] }
    }

    /// Parses a spec: `mlp:W1,W2,...` (hidden widths, 1 to 8 layers of 1 to 16384
    /// units). Checkpoints written before specs existed say `teacher` or `student`,
    /// which mean the reference's two MLPs.
    ///
    /// # Errors
    /// A message saying what a spec looks like.
    pub fn parse(spec: &str) -> Result<Arch, String> {
        let expected = "an architecture such as \"mlp:512,256,128\" (hidden widths, 1 to 8 layers of 1 to 16384 units)";
        match spec {
            "teacher" => return Ok(Arch::teacher()),
            "student" => return Ok(Arch::student()),
            _ => {}
        }
        let Some(widths) = spec.strip_prefix("mlp:") else {
            return Err(expected.into());
        };
        let hidden: Vec<i64> = widths
            .split(',')
            .map(|w| w.trim().parse::<i64>())
            .collect::<Result<_, _>>()
            .map_err(|_| expected.to_string())?;
        if hidden.is_empty()
            || hidden.len() > 8
            || hidden.iter().any(|&w| !(1..=16384).contains(&w))
        {
            return Err(expected.into());
        }
        Ok(Arch::Mlp { hidden })
    }

    /// The spec string, which [`Arch::parse`] reads back.
    pub fn spec(&self) -> String {
        match self {
            Arch::Mlp { hidden } => {
                let w: Vec<String> = hidden.iter().map(|w| w.to_string()).collect();
                format!("mlp:{}", w.join(","))
            }
            Arch::TorchScript => "torchscript".into(),
        }
    }

    /// Layer widths from input to logits.
    pub fn widths(&self) -> Vec<i64> {
        match self {
            Arch::Mlp { hidden } => std::iter::once(INPUTS)
                .chain(hidden.iter().copied())
                .chain(std::iter::once(OUTPUTS))
                .collect(),
            Arch::TorchScript => Vec::new(),
        }
    }

    /// Trainable parameters: sum over layers of `in * out + out`.
    pub fn num_params(&self) -> i64 {
        self.widths().windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }

    /// Multiply-accumulates of one forward pass for one example.
    pub fn macs_per_example(&self) -> i64 {
        self.widths().windows(2).map(|w| w[0] * w[1]).sum()
    }

    /// A freshly initialised network of this architecture on `device` (draws from
    /// libtorch's global generator: seed it first with `tch::manual_seed`).
    ///
    /// # Panics
    /// For [`Arch::TorchScript`], which is loaded from its file, never built; specs from
    /// the config or a checkpoint never name it ([`Arch::parse`] refuses it).
    pub fn build(&self, device: Device) -> Box<dyn Network> {
        match self {
            Arch::Mlp { .. } => Box::new(Mlp::new(self.clone(), device)),
            Arch::TorchScript => unreachable!("TorchScript models are loaded, not built"),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w: Vec<String> = self.widths().iter().map(|w| w.to_string()).collect();
        if w.is_empty() {
            return f.write_str(&self.spec());
        }
        write!(f, "{} ({})", self.spec(), w.join("-"))
    }
}

/// A network the training loop can train, checkpoint and evaluate.
pub trait Network: Send {
    /// Its architecture.
    fn arch(&self) -> &Arch;

    /// The logits.
    ///
    /// # Shapes
    /// `x: [batch, 784] f32 in [0, 1]` -> `[batch, 10] f32` (no softmax). `train` selects
    /// training behaviour (dropout, batch statistics) where the network has any.
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor;

    /// Parameters in a fixed order with their checkpoint names (`fc1.weight`, ...).
    fn named_parameters(&self) -> Vec<(String, Tensor)>;

    /// Turns off gradients for every parameter (a frozen teacher).
    fn freeze(&mut self);

    fn device(&self) -> Device;

    /// Evaluation-mode logits (see [`Network::forward_t`]).
    fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    /// The parameters as tensors, in the order of [`Network::named_parameters`].
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// A detached copy of every parameter (for early stopping's best weights).
    fn snapshot(&self) -> Vec<Tensor> {
        tch::no_grad(|| {
            self.parameters()
                .iter()
                .map(|t| t.detach().copy())
                .collect()
        })
    }

    /// Copies `values` (same order and shapes as [`Network::parameters`]) into the
    /// parameters.
    fn restore(&self, values: &[Tensor]) {
        tch::no_grad(|| {
            for (mut p, v) in self.parameters().into_iter().zip(values) {
                p.copy_(v);
            }
        });
    }
}

/// An MLP with its own [`nn::VarStore`].
pub struct Mlp {
    arch: Arch,
    pub vs: nn::VarStore,
    /// `(weight [out, in] f32, bias [out] f32)` per layer, input to output.
    layers: Vec<(Tensor, Tensor)>,
}

impl Mlp {
    /// A freshly initialised MLP on `device`. Weights are Glorot-uniform,
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
}

impl Network for Mlp {
    fn arch(&self) -> &Arch {
        &self.arch
    }

    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
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

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.layers.len() * 2);
        for (i, (w, b)) in self.layers.iter().enumerate() {
            out.push((format!("fc{}.weight", i + 1), w.shallow_clone()));
            out.push((format!("fc{}.bias", i + 1), b.shallow_clone()));
        }
        out
    }

    fn freeze(&mut self) {
        self.vs.freeze();
    }

    fn device(&self) -> Device {
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
        assert_eq!(Arch::teacher().num_params(), 567_434);
        assert_eq!(Arch::student().num_params(), 101_770);
        for (arch, n) in [(Arch::teacher(), 567_434), (Arch::student(), 101_770)] {
            let m = arch.build(Device::Cpu);
            let count: i64 = m.parameters().iter().map(|p| p.numel() as i64).sum();
            assert_eq!(count, n);
        }
    }

    #[test]
    fn specs_round_trip_and_bad_ones_are_refused() {
        for a in [Arch::teacher(), Arch::student()] {
            assert_eq!(Arch::parse(&a.spec()).unwrap(), a);
        }
        assert_eq!(Arch::teacher().spec(), "mlp:512,256,128");
        assert_eq!(Arch::parse("teacher").unwrap(), Arch::teacher());
        assert_eq!(Arch::parse("student").unwrap(), Arch::student());
        for bad in ["", "mlp:", "mlp:0", "mlp:1,x", "cnn", "mlp:99999"] {
            assert!(Arch::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stable_names_and_shapes() {
        let s = Arch::student().build(Device::Cpu);
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
        let t = Arch::teacher().build(Device::Cpu);
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
        let s = Arch::teacher().build(Device::Cpu);
        let x = Tensor::rand([3, 784], (Kind::Float, Device::Cpu));
        assert_eq!(s.forward(&x).size(), vec![3, 10]);
    }
}
