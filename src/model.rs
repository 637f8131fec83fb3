//! The networks. An architecture ([`Arch`]) is separate from the role a network plays
//! (teacher or student, see [`RunKind`]): `mlp:512,256,128` is the Keras
//! reference's teacher (inputs-512-256-128-classes), `mlp:128` its student
//! (inputs-128-classes), both ReLU. The inputs and classes come from the data's
//! [`DataSpec`]. A checkpoint records its architecture spec and data spec, and
//! [`Arch::build`] rebuilds it.
//!
//! Layers are named `fc1`, `fc2`, ... so checkpoint keys are stable (`fc1.weight`
//! `[out, in]`, `fc1.bias` `[out]`). This module owns shapes and initialisation, not
//! training or files.

use std::fmt;

use tch::{Device, Kind, Tensor, nn};

pub use crate::data::DataSpec;

/// Examples per forward pass when evaluating an MLP (no activations are kept, so large is
/// cheap); see [`Network::eval_batch`].
pub const EVAL_BATCH: i64 = 10_000;

/// What kind of model a run trains; names the run folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Teacher,
    Student,
    Distilled,
}

impl RunKind {
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Teacher => "teacher",
            RunKind::Student => "student",
            RunKind::Distilled => "distilled",
        }
    }

    /// The command that trains this kind of run.
    pub fn command(self) -> &'static str {
        match self {
            RunKind::Teacher => "train teacher",
            RunKind::Student => "train student",
            RunKind::Distilled => "distill",
        }
    }
}

/// A network architecture, written as a spec string.
///
/// Dropout is part of the spec (it changes training, not the parameters) and is kept in
/// thousandths so that specs compare and hash exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Arch {
    /// A ReLU multi-layer perceptron inputs-`hidden`-classes (`mlp:512,256,128`), with dropout
    /// after each hidden layer when `dropout_milli` > 0 (`mlp:512,256,128,dropout=0.2`).
    Mlp {
        hidden: Vec<i64>,
        dropout_milli: u32,
    },
    /// A convolutional network on `[batch, C, H, W]` (`cnn:32,64,256,dropout=0.3`): per
    /// entry of `channels` a block conv 3x3 (padding 1) -> batch norm -> ReLU -> max-pool
    /// 2x2, then a ReLU linear layer of `fc` units, dropout, and a linear layer to the
    /// logits, one per class.
    Cnn {
        channels: Vec<i64>,
        fc: i64,
        dropout_milli: u32,
    },
    /// A TorchScript model loaded as a teacher (`torchscript`); it cannot be built or
    /// trained here, so [`Arch::parse`] never returns it.
    TorchScript,
}

/// Side of the feature maps after `blocks` 2x2 max-pools (which floor) of an image side
/// `side` pixels long.
fn side_after(side: i64, blocks: usize) -> i64 {
    (0..blocks).fold(side, |s, _| s / 2)
}

impl Arch {
    /// The Keras reference's teacher, `mlp:512,256,128` (567,434 parameters).
    pub fn teacher() -> Arch {
        Arch::Mlp {
            hidden: vec![512, 256, 128],
            dropout_milli: 0,
        }
    }

    /// The Keras reference's student, `mlp:128` (101,770 parameters).
    pub fn student() -> Arch {
        Arch::Mlp {
            hidden: vec![128],
            dropout_milli: 0,
        }
    }

    /// The CNN teacher that `--arch cnn` selects: `cnn:32,64,256,dropout=0.3`, two conv
    /// blocks of 32 and 64 channels, FC 256 (824,650 parameters).
    pub fn cnn() -> Arch {
        Arch::Cnn {
            channels: vec![32, 64],
            fc: 256,
            dropout_milli: 300,
        }
    }

    /// Parses a spec:
    /// - `mlp:W1,W2,...` hidden widths, 1 to 8 layers of 1 to 16384 units;
    /// - `cnn:C1,...,Ck,F` k = 1 to 4 conv blocks of 1 to 1024 channels, then F (1 to
    ///   16384) units; `cnn` alone is [`Arch::cnn`];
    /// - either may end with `,dropout=P`, P in [0, 1).
    ///
    /// Checkpoints written before specs existed say `teacher` or `student`, which mean the
    /// reference's two MLPs.
    ///
    /// # Errors
    /// A message saying what a spec looks like and what is wrong with this one (the
    /// dropout, a width that is not a number or out of range, too many layers).
    pub fn parse(spec: &str) -> Result<Arch, String> {
        let expected = "an architecture such as \"mlp:512,256,128\" (hidden widths, 1 to 8 layers of \
                        1 to 16384 units) or \"cnn:32,64,256\" (1 to 4 conv blocks of 1 to 1024 \
                        channels, then FC units), optionally ending in \",dropout=P\" with P in [0, 1) \
                        and at most 3 decimals";
        // The message: what a spec looks like, then what is wrong with this one.
        let bad = |problem: String| format!("{expected}; here {problem}");
        // Spaces around the parts are allowed (" mlp : 128 , dropout = 0.1 "), not inside a
        // number ("12 8").
        let spec = spec.trim();
        match spec {
            "teacher" => return Ok(Arch::teacher()),
            "student" => return Ok(Arch::student()),
            "cnn" => return Ok(Arch::cnn()),
            _ => {}
        }
        if spec == "mlp" {
            return Err(bad(
                "\"mlp\" has no widths; write them out (\"mlp:128\"), or use the \
                 aliases \"teacher\" and \"student\" for the Keras example's MLPs"
                    .into(),
            ));
        }
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| bad("the \"mlp:\" or \"cnn:\" in front is missing".into()))?;
        let kind = kind.trim();
        if !matches!(kind, "mlp" | "cnn") {
            return Err(bad(format!("{kind:?} is neither mlp nor cnn")));
        }
        let mut items: Vec<&str> = rest.split(',').map(str::trim).collect();
        // `dropout = P`, spaces allowed around the `=`.
        fn dropout_value(item: &str) -> Option<&str> {
            let (key, value) = item.split_once('=')?;
            (key.trim() == "dropout").then_some(value.trim())
        }
        let mut dropout_milli = 0;
        if let Some(text) = items.last().and_then(|l| dropout_value(l)) {
            let p: f64 = text
                .parse()
                .map_err(|_| bad(format!("dropout {text:?} is not a number")))?;
            if !(0.0..1.0).contains(&p) {
                return Err(bad(format!("dropout {text} is not in [0, 1)")));
            }
            if (p * 1000.0).fract().abs() > 1e-9 {
                return Err(bad(format!("dropout {text} has more than 3 decimals")));
            }
            dropout_milli = (p * 1000.0).round() as u32;
            items.pop();
        }
        let widths: Vec<i64> = items
            .iter()
            .map(|w| match dropout_value(w).is_some() {
                true => Err(bad(format!(
                    "{w:?} is not last, or dropout is given twice; give it once, after the widths"
                ))),
                false => w
                    .parse::<i64>()
                    .map_err(|_| bad(format!("{w:?} is not a whole number of units"))),
            })
            .collect::<Result<_, _>>()?;
        let outside = |what: &str, v: i64, max: i64| -> Result<(), String> {
            match (1..=max).contains(&v) {
                true => Ok(()),
                false => Err(bad(format!("{what} = {v}, not from 1 to {max}"))),
            }
        };
        if widths.is_empty() {
            return Err(bad("there are no widths".into()));
        }
        if kind == "mlp" {
            if widths.len() > 8 {
                return Err(bad(format!(
                    "{} hidden layers are more than 8",
                    widths.len()
                )));
            }
            for &w in &widths {
                outside("hidden width", w, 16384)?;
            }
            return Ok(Arch::Mlp {
                hidden: widths,
                dropout_milli,
            });
        }
        let (&fc, channels) = widths
            .split_last()
            .expect("widths were checked to be non-empty");
        if channels.is_empty() {
            return Err(bad(
                "there is no conv block before the FC width (the last number)".into(),
            ));
        }
        if channels.len() > 4 {
            return Err(bad(format!(
                "{} conv blocks are more than 4",
                channels.len()
            )));
        }
        for &c in channels {
            outside("conv channels", c, 1024)?;
        }
        outside("FC width", fc, 16384)?;
        Ok(Arch::Cnn {
            channels: channels.to_vec(),
            fc,
            dropout_milli,
        })
    }

    /// The spec string, which [`Arch::parse`] reads back.
    pub fn spec(&self) -> String {
        let join = |v: &[i64]| {
            v.iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let drop = |m: u32| match m {
            0 => String::new(),
            m => format!(",dropout={}", m as f64 / 1000.0),
        };
        match self {
            Arch::Mlp {
                hidden,
                dropout_milli,
            } => format!("mlp:{}{}", join(hidden), drop(*dropout_milli)),
            Arch::Cnn {
                channels,
                fc,
                dropout_milli,
            } => format!("cnn:{},{fc}{}", join(channels), drop(*dropout_milli)),
            Arch::TorchScript => "torchscript".into(),
        }
    }

    /// Whether this is an MLP (whose layers export as a `torch.nn.Sequential` of linear
    /// layers).
    pub fn is_mlp(&self) -> bool {
        matches!(self, Arch::Mlp { .. })
    }

    /// Dropout probability during training.
    pub fn dropout(&self) -> f64 {
        match self {
            Arch::Mlp { dropout_milli, .. } | Arch::Cnn { dropout_milli, .. } => {
                *dropout_milli as f64 / 1000.0
            }
            Arch::TorchScript => 0.0,
        }
    }

    /// Whether the architecture fits images of `spec`: a CNN's 2x2 max-pools must leave
    /// feature maps of at least 1x1.
    ///
    /// # Errors
    /// A message giving the image size, the number of pools, what they leave and the
    /// most blocks the size allows.
    pub fn check_fits(&self, spec: &DataSpec) -> std::result::Result<(), String> {
        if let Arch::Cnn { channels, .. } = self {
            let k = channels.len();
            let (h, w) = (side_after(spec.height, k), side_after(spec.width, k));
            if h < 1 || w < 1 {
                let most = (0..=k)
                    .take_while(|&b| side_after(spec.height.min(spec.width), b) >= 1)
                    .last()
                    .unwrap_or(0);
                return Err(format!(
                    "{:?} has {k} conv blocks, each ending in a 2x2 max-pool, which leave {}x{} \
                     images at {h}x{w}; use at most {most} conv blocks, or larger images \
                     (data.resize)",
                    self.spec(),
                    spec.height,
                    spec.width
                ));
            }
        }
        Ok(())
    }

    /// An MLP's layer widths from input to logits (C·H·W, the hidden widths, classes);
    /// empty for other architectures.
    pub fn widths(&self, spec: &DataSpec) -> Vec<i64> {
        match self {
            Arch::Mlp { hidden, .. } => std::iter::once(spec.inputs())
                .chain(hidden.iter().copied())
                .chain(std::iter::once(spec.classes()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A CNN's `(in, out)` channels per conv block and the widths of its linear layers
    /// (flattened features, fc, classes).
    fn cnn_layout(spec: &DataSpec, channels: &[i64], fc: i64) -> (Vec<(i64, i64)>, [i64; 3]) {
        let convs = std::iter::once(spec.channels)
            .chain(channels.iter().copied())
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| (w[0], w[1]))
            .collect();
        let (h, w) = (
            side_after(spec.height, channels.len()),
            side_after(spec.width, channels.len()),
        );
        let flat = channels.last().copied().unwrap_or(spec.channels) * h * w;
        (convs, [flat, fc, spec.classes()])
    }

    /// Trainable parameters on data of `spec` (batch norm's running statistics are
    /// buffers, not counted).
    pub fn num_params(&self, spec: &DataSpec) -> i64 {
        let dense = |w: &[i64]| w.windows(2).map(|w| w[0] * w[1] + w[1]).sum::<i64>();
        match self {
            Arch::Mlp { .. } => dense(&self.widths(spec)),
            Arch::Cnn { channels, fc, .. } => {
                let (convs, lin) = Arch::cnn_layout(spec, channels, *fc);
                convs
                    .iter()
                    .map(|&(i, o)| i * o * 9 + o + 2 * o)
                    .sum::<i64>()
                    + dense(&lin)
            }
            Arch::TorchScript => 0,
        }
    }

    /// Multiply-accumulates of one forward pass for one example of `spec`.
    pub fn macs_per_example(&self, spec: &DataSpec) -> i64 {
        let dense = |w: &[i64]| w.windows(2).map(|w| w[0] * w[1]).sum::<i64>();
        match self {
            Arch::Mlp { .. } => dense(&self.widths(spec)),
            Arch::Cnn { channels, fc, .. } => {
                let (convs, lin) = Arch::cnn_layout(spec, channels, *fc);
                convs
                    .iter()
                    .enumerate()
                    .map(|(k, &(i, o))| {
                        let (h, w) = (side_after(spec.height, k), side_after(spec.width, k));
                        h * w * i * o * 9
                    })
                    .sum::<i64>()
                    + dense(&lin)
            }
            Arch::TorchScript => 0,
        }
    }

    /// A freshly initialised network of this architecture for data of `spec` (it takes
    /// `[batch, C·H·W] f32` and gives `[batch, classes] f32`) on `device` (draws from
    /// libtorch's global generator: seed it first with `tch::manual_seed`).
    ///
    /// # Panics
    /// For [`Arch::TorchScript`], which is loaded from its file, never built; specs from
    /// the config or a checkpoint never name it ([`Arch::parse`] refuses it).
    pub fn build(&self, spec: &DataSpec, device: Device) -> Box<dyn Network> {
        match self {
            Arch::Mlp { .. } => Box::new(Mlp::new(self.clone(), spec.clone(), device)),
            Arch::Cnn { .. } => Box::new(Cnn::new(self.clone(), spec.clone(), device)),
            Arch::TorchScript => unreachable!("TorchScript models are loaded, not built"),
        }
    }

    /// The spec with an MLP's widths on data of `spec`, as messages show it:
    /// `mlp:128 (C·H·W-128-classes)` with the numbers of `spec`; other architectures as
    /// their spec.
    pub fn describe(&self, spec: &DataSpec) -> String {
        Described(self, spec).to_string()
    }
}

/// An architecture on data of a spec, displayed as [`Arch::describe`] says.
pub struct Described<'a>(pub &'a Arch, pub &'a DataSpec);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w: Vec<String> = self
            .0
            .widths(self.1)
            .iter()
            .map(|w| w.to_string())
            .collect();
        if w.is_empty() {
            return f.write_str(&self.0.spec());
        }
        write!(f, "{} ({})", self.0.spec(), w.join("-"))
    }
}

/// A network the training loop can train, checkpoint and evaluate.
pub trait Network: Send {
    /// Its architecture.
    fn arch(&self) -> &Arch;

    /// The data it takes and the classes it tells apart.
    fn data_spec(&self) -> &DataSpec;

    /// Its architecture on its data, as messages show it ([`Arch::describe`]).
    fn describe(&self) -> String {
        self.arch().describe(self.data_spec())
    }

    /// The logits.
    ///
    /// # Shapes
    /// `x: [batch, C·H·W] f32 in [0, 1]` -> `[batch, classes] f32` (no softmax). `train` selects
    /// training behaviour (dropout, batch statistics) where the network has any.
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor;

    /// Trainable parameters in a fixed order with their checkpoint names (`fc1.weight`,
    /// ...): what the optimizer holds.
    fn named_parameters(&self) -> Vec<(String, Tensor)>;

    /// State that is not trained by gradient but saved with the weights, in a fixed
    /// order: batch norm's running statistics (`bn1.running_mean`, ...). None for an MLP.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Everything a checkpoint holds: [`Network::named_parameters`] then
    /// [`Network::named_buffers`].
    fn named_state(&self) -> Vec<(String, Tensor)> {
        let mut all = self.named_parameters();
        all.extend(self.named_buffers());
        all
    }

    /// Turns off gradients for every parameter (a frozen teacher).
    fn freeze(&mut self);

    fn device(&self) -> Device;

    /// Rows per forward pass when evaluating many examples (`eval::logits`).
    fn eval_batch(&self) -> i64 {
        EVAL_BATCH
    }

    /// Evaluation-mode logits (see [`Network::forward_t`]).
    fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    /// [`Network::forward`], or why it failed: a network kdtrain builds never fails; a
    /// TorchScript teacher may, on any batch (a shape its code does not take, say).
    ///
    /// # Errors
    /// A message naming the batch and libtorch's first line.
    fn try_forward(&self, x: &Tensor) -> std::result::Result<Tensor, String> {
        Ok(self.forward(x))
    }

    /// The trainable parameters as tensors, in the order of
    /// [`Network::named_parameters`].
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// A detached copy of the whole state, parameters and buffers (for early stopping's
    /// best weights).
    fn snapshot(&self) -> Vec<Tensor> {
        tch::no_grad(|| {
            self.named_state()
                .iter()
                .map(|(_, t)| t.detach().copy())
                .collect()
        })
    }

    /// Copies `values` (same order and shapes as [`Network::named_state`]) into the
    /// parameters and buffers.
    fn restore(&self, values: &[Tensor]) {
        tch::no_grad(|| {
            for ((_, mut p), v) in self.named_state().into_iter().zip(values) {
                p.copy_(v);
            }
        });
    }
}

/// An MLP with its own [`nn::VarStore`].
pub struct Mlp {
    arch: Arch,
    spec: DataSpec,
    pub vs: nn::VarStore,
    /// `(weight [out, in] f32, bias [out] f32)` per layer, input to output.
    layers: Vec<(Tensor, Tensor)>,
}

impl Mlp {
    /// A freshly initialised MLP on `device`. Weights are Glorot-uniform,
    /// U(-l, l) with l = sqrt(6 / (fan_in + fan_out)), and biases zero: the Keras `Dense`
    /// defaults (`glorot_uniform`, `zeros`). Draws from libtorch's global generator, so
    /// seed it first with `tch::manual_seed`. It takes `[batch, C·H·W]` of `spec` and gives
    /// `[batch, classes]`.
    pub fn new(arch: Arch, spec: DataSpec, device: Device) -> Mlp {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let layers = arch
            .widths(&spec)
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
        Mlp {
            arch,
            spec,
            vs,
            layers,
        }
    }
}

impl Network for Mlp {
    fn arch(&self) -> &Arch {
        &self.arch
    }

    fn data_spec(&self) -> &DataSpec {
        &self.spec
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let last = self.layers.len() - 1;
        let p = self.arch.dropout();
        let mut h = x.shallow_clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.linear(w, Some(b)); // [batch, out]
            if i < last {
                h = h.relu();
                if train && p > 0.0 {
                    h = h.dropout(p, true);
                }
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

/// A CNN ([`Arch::Cnn`]) with its own [`nn::VarStore`]. Layers are `conv1`, `bn1`, ...
/// per block, then `fc1` and `fc2`; initialisation is tch's (PyTorch's Kaiming-uniform
/// weights; conv biases zero, linear biases uniform), batch norm with PyTorch's momentum
/// 0.1 and eps 1e-5.
pub struct Cnn {
    arch: Arch,
    spec: DataSpec,
    pub vs: nn::VarStore,
    blocks: Vec<(nn::Conv2D, nn::BatchNorm)>,
    fc1: nn::Linear,
    fc2: nn::Linear,
    /// Checkpoint names of the trainable parameters and of the buffers, sorted.
    param_names: Vec<String>,
    buffer_names: Vec<String>,
}

impl Cnn {
    /// A freshly initialised CNN for data of `spec` on `device` (seed libtorch's
    /// generator first).
    ///
    /// # Panics
    /// When `arch` is not [`Arch::Cnn`].
    pub fn new(arch: Arch, spec: DataSpec, device: Device) -> Cnn {
        let Arch::Cnn { channels, fc, .. } = &arch else {
            panic!("Cnn::new needs a cnn architecture, not {}", arch.spec());
        };
        let (convs, lin) = Arch::cnn_layout(&spec, channels, *fc);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let blocks = convs
            .iter()
            .enumerate()
            .map(|(k, &(i, o))| {
                let conv = nn::conv2d(
                    &root / format!("conv{}", k + 1),
                    i,
                    o,
                    3,
                    nn::ConvConfig {
                        padding: 1,
                        ..Default::default()
                    },
                );
                let bn = nn::batch_norm2d(&root / format!("bn{}", k + 1), o, Default::default());
                (conv, bn)
            })
            .collect();
        let fc1 = nn::linear(&root / "fc1", lin[0], lin[1], Default::default());
        let fc2 = nn::linear(&root / "fc2", lin[1], lin[2], Default::default());
        let mut param_names = Vec::new();
        let mut buffer_names = Vec::new();
        for (name, t) in vs.variables() {
            if t.requires_grad() {
                param_names.push(name);
            } else {
                buffer_names.push(name);
            }
        }
        param_names.sort();
        buffer_names.sort();
        Cnn {
            arch,
            spec,
            vs,
            blocks,
            fc1,
            fc2,
            param_names,
            buffer_names,
        }
    }

    fn named(&self, names: &[String]) -> Vec<(String, Tensor)> {
        let vars = self.vs.variables();
        names
            .iter()
            .map(|n| (n.clone(), vars[n].shallow_clone()))
            .collect()
    }
}

impl Network for Cnn {
    fn arch(&self) -> &Arch {
        &self.arch
    }

    fn data_spec(&self) -> &DataSpec {
        &self.spec
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        use tch::nn::{Module, ModuleT};
        let s = &self.spec;
        let mut h = x.view([-1, s.channels, s.height, s.width]); // [batch, C, H, W]
        for (conv, bn) in &self.blocks {
            h = bn
                .forward_t(&conv.forward(&h), train)
                .relu()
                .max_pool2d_default(2);
        }
        let h = self.fc1.forward(&h.flatten(1, -1)).relu(); // [batch, fc]
        let h = h.dropout(self.arch.dropout(), train);
        self.fc2.forward(&h) // [batch, classes]
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.named(&self.param_names)
    }

    /// 256 rows: a CNN's feature maps for 10,000 images (1 GB after the first conv)
    /// spill out of the caches; in a one-off timing on 2 cores (not committed) chunks of
    /// 256 were the fastest of 256, 500, 2,000 and 10,000. The committed effect: the
    /// teacher cache of `docs/results/` took 11.8 s for 55,000 images, against 19.3 s
    /// in the run before it, made with chunks of 10,000 (git history of that file).
    fn eval_batch(&self) -> i64 {
        256
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        self.named(&self.buffer_names)
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

    /// A CNN fits images whose 2x2 max-pools leave at least 1x1: on 8x8 images three
    /// blocks do (1x1), four do not, and the message says the size and the most blocks.
    #[test]
    fn cnn_must_leave_at_least_one_pixel() {
        let spec = DataSpec {
            channels: 1,
            height: 8,
            width: 8,
            class_names: (0..10).map(|i| i.to_string()).collect(),
        };
        assert!(
            Arch::parse("cnn:4,4,4,16")
                .unwrap()
                .check_fits(&spec)
                .is_ok()
        );
        let e = Arch::parse("cnn:4,4,4,4,16")
            .unwrap()
            .check_fits(&spec)
            .unwrap_err();
        assert!(
            e.contains("8x8") && e.contains("0x0") && e.contains("at most 3"),
            "{e}"
        );
        assert!(Arch::parse("mlp:8").unwrap().check_fits(&spec).is_ok());
        // Any H, W and C: the last linear layer is sized from them.
        let wide = DataSpec {
            channels: 3,
            height: 12,
            width: 20,
            ..spec
        };
        let net = Arch::parse("cnn:4,8,16").unwrap().build(&wide, Device::Cpu);
        let z = net.forward(&Tensor::zeros(
            [2, 3 * 12 * 20],
            (tch::Kind::Float, Device::Cpu),
        ));
        assert_eq!(z.size(), [2, 10]);
    }

    fn fm() -> DataSpec {
        DataSpec::fashion_mnist()
    }

    #[test]
    fn parameter_counts_match_the_keras_models() {
        assert_eq!(Arch::teacher().num_params(&fm()), 567_434);
        assert_eq!(Arch::student().num_params(&fm()), 101_770);
        for (arch, n) in [(Arch::teacher(), 567_434), (Arch::student(), 101_770)] {
            let m = arch.build(&fm(), Device::Cpu);
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
        // Spaces around any part are allowed, in every position alike.
        let a = Arch::parse("mlp:128,dropout=0.1").unwrap();
        for spaced in [
            " mlp:128,dropout=0.1 ",
            "mlp :128,dropout=0.1",
            "mlp: 128 ,dropout=0.1",
            "mlp:128, dropout = 0.1",
            "mlp:128,dropout =0.10",
        ] {
            assert_eq!(Arch::parse(spaced), Ok(a.clone()), "{spaced:?}");
        }
        assert_eq!(Arch::parse(" teacher ").unwrap(), Arch::teacher());
        // Each refusal says what a spec looks like and what is wrong with this one.
        for (bad, problem) in [
            ("", "in front is missing"),
            ("mlp:", "\"\" is not a whole number"),
            ("mlp:dropout=0.2", "there are no widths"),
            ("cnn:dropout=0.2", "there are no widths"),
            ("mlp:0", "hidden width = 0, not from 1 to 16384"),
            ("mlp:1,x", "\"x\" is not a whole number"),
            ("mlp:1,2,3,4,5,6,7,8,9", "9 hidden layers are more than 8"),
            ("cnn:", "\"\" is not a whole number"),
            ("cnn:64", "no conv block before the FC width"),
            ("cnn:1,2,3,4,5,6", "5 conv blocks are more than 4"),
            ("cnn:2000,64", "conv channels = 2000, not from 1 to 1024"),
            ("cnn:32,0", "FC width = 0, not from 1 to 16384"),
            ("mlp:99999", "hidden width = 99999, not from 1 to 16384"),
            ("mlp:128,dropout=1", "dropout 1 is not in [0, 1)"),
            (
                "mlp:128,dropout=0.1,dropout=0.2",
                "\"dropout=0.1\" is not last, or dropout is given twice",
            ),
            ("mlp:dropout=0.1,128", "is not last"),
            ("mlp", "\"mlp\" has no widths"),
            ("mlp:128,dropout=x", "dropout \"x\" is not a number"),
            (
                "mlp:128,dropout=0.0005",
                "dropout 0.0005 has more than 3 decimals",
            ),
            ("rnn:5", "\"rnn\" is neither mlp nor cnn"),
            ("mlp:1 28", "\"1 28\" is not a whole number"),
            (
                "mlp:128,drop out=0.1",
                "\"drop out=0.1\" is not a whole number",
            ),
        ] {
            let e = Arch::parse(bad).unwrap_err();
            assert!(
                e.starts_with("an architecture such as") && e.contains(problem),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn stable_names_and_shapes() {
        let s = Arch::student().build(&fm(), Device::Cpu);
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
        let t = Arch::teacher().build(&fm(), Device::Cpu);
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
        let s = Arch::teacher().build(&fm(), Device::Cpu);
        let x = Tensor::rand([3, 784], (Kind::Float, Device::Cpu));
        assert_eq!(s.forward(&x).size(), vec![3, 10]);
    }

    #[test]
    fn cnn_shapes_parameter_count_and_buffers() {
        let arch = Arch::cnn();
        assert_eq!(arch.spec(), "cnn:32,64,256,dropout=0.3");
        assert_eq!(Arch::parse(&arch.spec()).unwrap(), arch);
        // conv1 1*32*9+32, bn1 2*32, conv2 32*64*9+64, bn2 2*64, fc1 64*7*7*256+256,
        // fc2 256*10+10.
        let by_hand = (9 * 32 + 32) + 64 + (32 * 64 * 9 + 64) + 128 + (3136 * 256 + 256) + 2570;
        assert_eq!(arch.num_params(&fm()), by_hand);
        assert_eq!(by_hand, 824_650);
        tch::manual_seed(0);
        let m = arch.build(&fm(), Device::Cpu);
        let count: i64 = m.parameters().iter().map(|p| p.numel() as i64).sum();
        assert_eq!(count, by_hand);
        let buffers: Vec<_> = m
            .named_buffers()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        assert_eq!(
            buffers,
            vec![
                ("bn1.running_mean".to_string(), vec![32]),
                ("bn1.running_var".to_string(), vec![32]),
                ("bn2.running_mean".to_string(), vec![64]),
                ("bn2.running_var".to_string(), vec![64]),
            ]
        );
        assert_eq!(m.named_state().len(), m.named_parameters().len() + 4);
        let x = Tensor::rand([5, 784], (Kind::Float, Device::Cpu));
        assert_eq!(m.forward(&x).size(), vec![5, 10]);
        // Training mode draws dropout masks and updates the running statistics; eval mode
        // is deterministic.
        let before = m.named_buffers()[0].1.copy();
        let a = m.forward_t(&x, true);
        let b = m.forward_t(&x, true);
        assert!(a.not_equal_tensor(&b).any().int64_value(&[]) == 1);
        assert!(
            before
                .not_equal_tensor(&m.named_buffers()[0].1)
                .any()
                .int64_value(&[])
                == 1
        );
        assert!(m.forward(&x).equal(&m.forward(&x)));
        // A deeper spec: three blocks leave 3x3 maps.
        let deep = Arch::parse("cnn:8,8,8,16").unwrap();
        assert_eq!(
            deep.build(&fm(), Device::Cpu).forward(&x).size(),
            vec![5, 10]
        );
        let n: i64 = deep
            .build(&fm(), Device::Cpu)
            .parameters()
            .iter()
            .map(|p| p.numel() as i64)
            .sum();
        assert_eq!(n, deep.num_params(&fm()));
    }

    #[test]
    fn snapshot_and_restore_cover_the_buffers() {
        tch::manual_seed(1);
        let m = Arch::cnn().build(&fm(), Device::Cpu);
        let snap = m.snapshot();
        let x = Tensor::rand([8, 784], (Kind::Float, Device::Cpu));
        let want = m.forward(&x);
        let _ = m.forward_t(&x, true); // moves the running statistics
        assert!(!m.forward(&x).equal(&want));
        m.restore(&snap);
        assert!(m.forward(&x).equal(&want));
    }

    #[test]
    fn mlp_dropout_only_in_training() {
        let arch = Arch::parse("mlp:512,256,128,dropout=0.2").unwrap();
        assert_eq!(arch.num_params(&fm()), 567_434);
        assert_eq!(arch.spec(), "mlp:512,256,128,dropout=0.2");
        let m = arch.build(&fm(), Device::Cpu);
        let x = Tensor::rand([4, 784], (Kind::Float, Device::Cpu));
        assert!(m.forward(&x).equal(&m.forward(&x)));
        assert!(!m.forward_t(&x, true).equal(&m.forward_t(&x, true)));
        let plain = Arch::teacher().build(&fm(), Device::Cpu);
        assert!(plain.forward_t(&x, true).equal(&plain.forward(&x)));
    }

    /// A colour spec of another size and class count: the layers, the logits and the
    /// counts all follow it (3x32x32 pools to 8x8 after two blocks; 3x30x20 to 7x5).
    #[test]
    fn networks_take_their_shapes_from_the_spec() {
        let spec = DataSpec {
            channels: 3,
            height: 32,
            width: 32,
            class_names: ["a", "b", "c", "d", "e"].map(String::from).to_vec(),
        };
        tch::manual_seed(0);
        let cnn = Arch::cnn().build(&spec, Device::Cpu);
        assert_eq!(cnn.data_spec(), &spec);
        let x = Tensor::rand([4, 3 * 32 * 32], (Kind::Float, Device::Cpu));
        assert_eq!(cnn.forward(&x).size(), vec![4, 5]);
        assert_eq!(cnn.forward_t(&x, true).size(), vec![4, 5]);
        let shapes: std::collections::HashMap<String, Vec<i64>> = cnn
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        assert_eq!(shapes["conv1.weight"], vec![32, 3, 3, 3]);
        assert_eq!(shapes["fc1.weight"], vec![256, 64 * 8 * 8]);
        assert_eq!(shapes["fc2.weight"], vec![5, 256]);
        let count: i64 = cnn.parameters().iter().map(|p| p.numel() as i64).sum();
        assert_eq!(count, Arch::cnn().num_params(&spec));
        // Sides that differ and do not halve evenly: 30x20 -> 15x10 -> 7x5.
        let tall = DataSpec {
            height: 30,
            width: 20,
            ..spec.clone()
        };
        let net = Arch::cnn().build(&tall, Device::Cpu);
        let x = Tensor::rand([2, 3 * 30 * 20], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward(&x).size(), vec![2, 5]);
        let count: i64 = net.parameters().iter().map(|p| p.numel() as i64).sum();
        assert_eq!(count, Arch::cnn().num_params(&tall));
        // The MLP: C·H·W inputs, one logit per class.
        let mlp = Arch::student().build(&spec, Device::Cpu);
        assert_eq!(Arch::student().widths(&spec), vec![3072, 128, 5]);
        let x = Tensor::rand([4, 3072], (Kind::Float, Device::Cpu));
        assert_eq!(mlp.forward(&x).size(), vec![4, 5]);
        assert_eq!(Arch::student().describe(&spec), "mlp:128 (3072-128-5)");
        assert_eq!(
            Arch::student().describe(&fm()),
            "mlp:128 (784-128-10)",
            "messages name Fashion-MNIST's widths as before"
        );
    }
}
