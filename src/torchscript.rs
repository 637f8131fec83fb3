//! Any TorchScript model as a teacher: a file saved from PyTorch with `torch.jit.save`
//! (or by `kdtrain export --format torchscript`), run through libtorch's `CModule` in eval
//! mode under `no_grad`. It is detected by content (a zip archive holding TorchScript
//! code), not by the file's extension, and probed once before training: its output must
//! be one float tensor `[batch, classes]` for the data's [`DataSpec`].

use std::path::Path;

use anyhow::Result;
use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::data::DataSpec;
use crate::error::UsageError;
use crate::model::{Arch, Network};

/// How the model takes its input (`model.teacher_input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `[batch, C, H, W]` f32 in [0, 1] (what `kdtrain export` writes, and what image
    /// models take).
    Image,
    /// `[batch, C·H·W]` f32 in [0, 1].
    Flat,
}

/// What the model returns (`model.teacher_output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// Logits `[batch, classes]`, as a classifier's last linear layer gives them.
    #[default]
    Logits,
    /// Class probabilities (its `forward` ends in softmax): kdtrain uses their
    /// logarithm, floored at 1e-30, as the logits (softmax of it gives them back).
    Probabilities,
    /// Log-probabilities (log_softmax): logits as they are, up to a constant per row.
    LogProbabilities,
}

impl Output {
    fn key(self) -> &'static str {
        match self {
            Output::Logits => "logits",
            Output::Probabilities => "probabilities",
            Output::LogProbabilities => "log_probabilities",
        }
    }
}

/// The line of a libtorch error that says what went wrong: the TorchScript
/// interpreter's message starts with "The following operation failed" and a traceback,
/// and ends with the exception (`RuntimeError: The size of tensor a ...`); other errors
/// say it on their first line.
pub fn error_line(e: &str) -> String {
    let lines: Vec<&str> = e.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines
        .iter()
        .rev()
        .find(|l| l.contains("Error: ") && !l.contains("The following operation failed"))
        .or(lines.first())
        .map(|l| l.to_string())
        .unwrap_or_default()
}

/// Whether `bytes` (a file's start) look like a zip archive, the container of TorchScript
/// and `torch.save` files.
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// A frozen TorchScript model.
pub struct TorchScriptNet {
    module: CModule,
    arch: Arch,
    input: Input,
    output: Output,
    /// The input's dtype: f32, or f64 for a model whose weights are f64.
    input_kind: Kind,
    spec: DataSpec,
    device: Device,
}

impl TorchScriptNet {
    /// Loads `path` onto `device` (a model saved on CUDA loads on the CPU), sets eval
    /// mode and probes it: batches of two and three images of `spec` must give
    /// `[batch, classes]` (f32 input, or f64 for a model with f64 weights); outputs that
    /// are probabilities or log-probabilities are named unless `output` says so; and the
    /// same eight images twice, and in two halves, must give the same logits (a model
    /// traced in training mode keeps dropout or batch statistics that `eval()` cannot
    /// remove).
    ///
    /// # Errors
    /// A [`UsageError`] naming the file: not TorchScript (a pickled state dict, say), an
    /// output that is not one float tensor `[batch, classes]` (naming what was found), a
    /// failure on a probe batch (libtorch's first line), probabilities or
    /// log-probabilities where logits were expected (naming `model.teacher_output`),
    /// logits that differ between passes.
    pub fn load(
        path: &Path,
        input: Input,
        output: Output,
        spec: &DataSpec,
        device: Device,
    ) -> Result<TorchScriptNet> {
        let shown = path.display();
        let first_line = |e: &tch::TchError| error_line(&e.to_string());
        let mut module = CModule::load_on_device(path, device).map_err(|e| {
            UsageError(format!(
                "--teacher {shown} is a zip archive but not a TorchScript module ({}); save the \
                 model with torch.jit.save(torch.jit.script(model) or torch.jit.trace(model, x)), \
                 not torch.save of a state dict",
                first_line(&e)
            ))
        })?;
        module.set_eval();
        let mut net = TorchScriptNet {
            module,
            arch: Arch::TorchScript,
            input,
            output,
            input_kind: Kind::Float,
            spec: spec.clone(),
            device,
        };
        // Fixed, varied images (no random generator: a run's seeding is not disturbed).
        let images = |n: i64| {
            let len = n * net.spec.inputs();
            ((Tensor::arange(len, (Kind::Int64, device)) * 7919 + 13).remainder(256))
                .to_kind(Kind::Float)
                .view([n, net.spec.inputs()])
                / 255.0
        };
        // Two batch sizes: a model traced with its batch size baked in passes one and
        // fails the other here, not in the middle of training.
        let probe = |net: &TorchScriptNet| net.run(&images(2)).and_then(|_| net.run(&images(3)));
        let mut probed = probe(&net);
        if probed.is_err() {
            // A model saved with f64 weights refuses f32 input: give it f64.
            net.input_kind = Kind::Double;
            match probe(&net) {
                Ok(z) => probed = Ok(z),
                Err(_) => net.input_kind = Kind::Float,
            }
        }
        let _probe_logits = probed.map_err(|e| {
            let other = match input {
                Input::Image => Input::Flat,
                Input::Flat => Input::Image,
            };
            UsageError(format!(
                "--teacher {shown}: {e}; the teacher must map {} f32 in [0, 1] to logits \
                 [batch, {}] (set model.teacher_input = \"{}\" if it takes {})",
                net.input_desc(input),
                net.spec.classes(),
                match other {
                    Input::Flat => "flat",
                    Input::Image => "image",
                },
                net.input_desc(other)
            ))
        })?;
        let x = images(8);
        let z = net
            .run(&x)
            .map_err(|e| UsageError(format!("--teacher {shown}: {e}")))?;
        // Non-finite outputs first: NaN would otherwise read as a determinism failure.
        if !bool::try_from(z.isfinite().all()).unwrap_or(false) {
            return Err(UsageError(format!(
                "--teacher {shown} gives NaN or infinite outputs on a probe batch of 8 \
                 images in [0, 1]; check its weights and its forward (a division by zero, \
                 a log of 0), or retrain it"
            ))
            .into());
        }
        if output == Output::Logits && net.spec.classes() > 1 {
            let kind = if z.min().double_value(&[]) >= 0.0
                && (z.sum_dim_intlist(1, false, Kind::Double) - 1.0)
                    .abs()
                    .max()
                    .double_value(&[])
                    < 1e-3
            {
                Some(Output::Probabilities)
            } else if (z.logsumexp(1, false)).abs().max().double_value(&[]) < 1e-3 {
                Some(Output::LogProbabilities)
            } else {
                None
            };
            if let Some(k) = kind {
                return Err(UsageError(format!(
                    "--teacher {shown} returns {} (each row {}), not logits; its forward \
                     likely ends in {}; set model.teacher_output = \"{}\" and kdtrain \
                     converts them, or save the model without that last step",
                    k.key().replace('_', "-"),
                    match k {
                        Output::Probabilities => "non-negative and summing to 1",
                        _ => "with exp summing to 1",
                    },
                    match k {
                        Output::Probabilities => "softmax",
                        _ => "log_softmax",
                    },
                    k.key()
                ))
                .into());
            }
        }
        let again = net
            .run(&x)
            .map_err(|e| UsageError(format!("--teacher {shown}: {e}")))?;
        let halves = net
            .run(&x.narrow(0, 0, 4))
            .and_then(|a| net.run(&x.narrow(0, 4, 4)).map(|b| Tensor::cat(&[a, b], 0)))
            .map_err(|e| UsageError(format!("--teacher {shown}: {e}")))?;
        let scale = 1.0 + z.abs().max().double_value(&[]);
        for (other, how) in [
            (&again, "the same 8 images twice"),
            (&halves, "8 images at once and in two halves of 4"),
        ] {
            let diff = (&z - other).abs().max().double_value(&[]);
            if diff.is_nan() || diff > 1e-4 * scale {
                return Err(UsageError(format!(
                    "--teacher {shown} is not deterministic in eval mode: {how} gave logits \
                     that differ by up to {diff:.3e}; was it traced in training mode? (dropout \
                     or batch statistics then stay in the trace: call model.eval() before \
                     torch.jit.trace, or use torch.jit.script)"
                ))
                .into());
            }
        }
        Ok(net)
    }

    /// `[batch, C, H, W]` or `[batch, C·H·W]` with the spec's numbers.
    fn input_desc(&self, input: Input) -> String {
        let s = &self.spec;
        match input {
            Input::Image => format!("[batch, {}, {}, {}]", s.channels, s.height, s.width),
            Input::Flat => format!("[batch, {}]", s.inputs()),
        }
    }

    /// The logits (probabilities converted per [`Output`]), or what is wrong with the
    /// output.
    ///
    /// # Shapes
    /// `x: [batch, C·H·W] f32` -> `[batch, classes] f32`.
    pub fn run(&self, x: &Tensor) -> std::result::Result<Tensor, String> {
        let batch = x.size()[0];
        let s = &self.spec;
        let input = match self.input {
            Input::Image => x.view([batch, s.channels, s.height, s.width]),
            Input::Flat => x.shallow_clone(),
        }
        .to_kind(self.input_kind);
        let out =
            tch::no_grad(|| self.module.forward_is(&[IValue::Tensor(input)])).map_err(|e| {
                format!(
                    "it failed on a batch {}: {}",
                    self.input_desc(self.input)
                        .replace("batch", &batch.to_string()),
                    error_line(&e.to_string())
                )
            })?;
        let t = match out {
            IValue::Tensor(t) => t,
            IValue::Tuple(v) => {
                return Err(format!(
                    "its output is a tuple of {} values, not one tensor",
                    v.len()
                ));
            }
            IValue::GenericDict(v) => {
                return Err(format!(
                    "its output is a dict of {} entries, not one tensor",
                    v.len()
                ));
            }
            IValue::TensorList(v) => {
                return Err(format!(
                    "its output is a list of {} tensors, not one tensor",
                    v.len()
                ));
            }
            other => return Err(format!("its output is {other:?}, not a tensor")),
        };
        if t.size() != [batch, s.classes()] {
            return Err(format!(
                "its output has shape {:?} for a batch of {batch}, expected [{batch}, {}]",
                t.size(),
                s.classes()
            ));
        }
        if !matches!(
            t.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        ) {
            return Err(format!(
                "its output is {:?}, expected floating-point logits",
                t.kind()
            ));
        }
        let t = t.to_kind(Kind::Float);
        Ok(match self.output {
            Output::Probabilities => t.clamp_min(1e-30).log(),
            Output::Logits | Output::LogProbabilities => t,
        })
    }
}

impl Network for TorchScriptNet {
    fn arch(&self) -> &Arch {
        &self.arch
    }

    fn data_spec(&self) -> &DataSpec {
        &self.spec
    }

    /// # Panics
    /// When the model fails on the batch. kdtrain's teacher paths call
    /// [`Network::try_forward`] instead, which says why as an error.
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        match self.run(x) {
            Ok(t) => t,
            Err(e) => panic!("the TorchScript teacher failed on a batch: {e}"),
        }
    }

    fn try_forward(&self, x: &Tensor) -> std::result::Result<Tensor, String> {
        self.run(x)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// 256 rows: the model is unknown (a CNN or larger), and large chunks of its
    /// activations cost memory and time (see [`crate::model::Cnn`]'s).
    fn eval_batch(&self) -> i64 {
        256
    }

    fn freeze(&mut self) {}

    fn device(&self) -> Device {
        self.device
    }
}
