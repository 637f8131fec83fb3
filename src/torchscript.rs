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
    spec: DataSpec,
    device: Device,
}

impl TorchScriptNet {
    /// Loads `path` onto `device` (a model saved on CUDA loads on the CPU), sets eval
    /// mode and probes it with batches of two and three blank images of `spec`.
    ///
    /// # Errors
    /// A [`UsageError`] naming the file: not TorchScript (a pickled state dict, say), an
    /// output that is not one float tensor `[batch, classes]` (naming what was found), or
    /// a failure on the probe batch (libtorch's first line).
    pub fn load(
        path: &Path,
        input: Input,
        spec: &DataSpec,
        device: Device,
    ) -> Result<TorchScriptNet> {
        let shown = path.display();
        let first_line = |e: &tch::TchError| {
            e.to_string()
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let mut module = CModule::load_on_device(path, device).map_err(|e| {
            UsageError(format!(
                "--teacher {shown} is a zip archive but not a TorchScript module ({}); save the \
                 model with torch.jit.save(torch.jit.script(model) or torch.jit.trace(model, x)), \
                 not torch.save of a state dict",
                first_line(&e)
            ))
        })?;
        module.set_eval();
        let net = TorchScriptNet {
            module,
            arch: Arch::TorchScript,
            input,
            spec: spec.clone(),
            device,
        };
        // Two batch sizes: a model traced with its batch size baked in passes one and
        // fails the other here, not in the middle of training.
        let probe = |n: i64| {
            net.try_forward(&Tensor::zeros(
                [n, net.spec.inputs()],
                (Kind::Float, device),
            ))
        };
        let _logits = probe(2).and_then(|_| probe(3)).map_err(|e| {
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

    /// The logits, or what is wrong with the output.
    ///
    /// # Shapes
    /// `x: [batch, C·H·W] f32` -> `[batch, classes] f32`.
    pub fn try_forward(&self, x: &Tensor) -> std::result::Result<Tensor, String> {
        let batch = x.size()[0];
        let s = &self.spec;
        let input = match self.input {
            Input::Image => x.view([batch, s.channels, s.height, s.width]),
            Input::Flat => x.shallow_clone(),
        };
        let out =
            tch::no_grad(|| self.module.forward_is(&[IValue::Tensor(input)])).map_err(|e| {
                format!(
                    "it failed on a probe batch {}: {}",
                    self.input_desc(self.input)
                        .replace("batch", &batch.to_string()),
                    e.to_string().lines().next().unwrap_or("").trim()
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
        Ok(t.to_kind(Kind::Float))
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
    /// Never on a model that passed the probe in [`TorchScriptNet::load`] unless it
    /// changes its output shape with the batch; then the error is reported as a panic
    /// message naming the model's output.
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        match self.try_forward(x) {
            Ok(t) => t,
            Err(e) => panic!("the TorchScript teacher failed on a batch: {e}"),
        }
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
