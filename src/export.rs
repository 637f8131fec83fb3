//! The `export` command: a checkpoint as a file other programs can run.
//!
//! - `torchscript`: traced through libtorch (`tch::CModule::create_by_tracing`), method
//!   `forward`, loadable with `torch.jit.load` or `tch::CModule::load`.
//! - `onnx`: libtorch has no ONNX exporter, so kdtrain runs PyTorch's own
//!   (`torch.onnx.export`) in the project's Python (scripts/export_onnx.py, embedded in
//!   the binary): an MLP through the dynamo route (needing `onnx` and `onnxscript`),
//!   rebuilt from its weights; any other network (a CNN) traced to TorchScript here and
//!   converted by the TorchScript-based route.
//! - `safetensors-torch`: the weights under the names and shapes of
//!   `torch.nn.Sequential(Flatten(), Linear, ReLU, ..., Linear)`: `1.weight`, `1.bias`,
//!   `3.weight`, ... (`[out, in]` and `[out]` f32, as `nn.Linear` keeps them).
//!
//! Every format takes `[batch, C, H, W] f32 in [0, 1]` of the checkpoint's data spec
//! (pixels / 255; for Fashion-MNIST grey, a light object on a dark background) and gives
//! logits `[batch, classes] f32` (no softmax). The model flattens internally and applies
//! the training data's normalisation itself (folded into an MLP's first layer). That
//! description, the class names, the normalisation and the
//! architecture go into a sidecar `<output>.json` ([`Description`]), and also into the
//! file's own metadata where the format has some (safetensors `__metadata__`, ONNX
//! `metadata_props`, key `kdtrain.export`).
//!
//! Files are written to a temporary name in the destination folder, flushed and renamed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{META_ARCH, to_safetensors, write_atomic};
use crate::data::DataSpec;
use crate::error::UsageError;
use crate::predict::{LoadedModel, load_network};

/// The ONNX exporter, run by the project's Python.
const EXPORT_ONNX_PY: &str = include_str!("../scripts/export_onnx.py");

/// Metadata key holding the [`Description`] as JSON.
pub const META_EXPORT: &str = "kdtrain.export";

/// `kdtrain export CKPT --format F [-o PATH] [--force]`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A checkpoint written by train or distill (`model.safetensors`).
    pub checkpoint: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Output file [default: next to the checkpoint, e.g. model.pt, model.onnx,
    /// model.torch.safetensors]; a sidecar <output>.json describes it.
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Overwrite the output file (and its sidecar) if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// TorchScript traced through libtorch (torch.jit.load).
    Torchscript,
    /// ONNX through torch.onnx.export in the project's Python (onnxruntime and others).
    Onnx,
    /// safetensors with torch.nn.Sequential's names ("1.weight", ...).
    SafetensorsTorch,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Torchscript => "torchscript",
            Format::Onnx => "onnx",
            Format::SafetensorsTorch => "safetensors-torch",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Torchscript => "pt",
            Format::Onnx => "onnx",
            Format::SafetensorsTorch => "torch.safetensors",
        }
    }
}

/// What an exported file computes and expects; written as `<output>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Description {
    pub format: &'static str,
    /// The checkpoint it was exported from, and its architecture name.
    pub source_checkpoint: String,
    pub arch: String,
    /// Layer widths, input to logits.
    pub widths: Vec<i64>,
    /// The layer stack, in PyTorch terms.
    pub layers: String,
    pub input: TensorSpec,
    pub output: TensorSpec,
    /// How to turn an image into the input.
    pub preprocessing: String,
    /// The training data's normalisation, which the exported model applies itself to
    /// its input (pixels / 255): `{"kind": "unit"}` or `{"kind": "standardize", "mean":
    /// [..], "sd": [..]}` per channel.
    pub normalize: crate::data::Normalize,
    /// Class names by logit index.
    pub class_names: Vec<String>,
    pub kdtrain_version: &'static str,
}

/// A tensor's name, shape (`"batch"` for the symbolic dimension), dtype and meaning.
#[derive(Debug, Clone, Serialize)]
pub struct TensorSpec {
    pub name: &'static str,
    pub shape: Vec<serde_json::Value>,
    pub dtype: &'static str,
    pub description: &'static str,
}

fn describe(model: &LoadedModel, checkpoint: &Path, format: Format) -> Description {
    let mut layers = vec!["Flatten()".to_string()];
    for (i, w) in model.widths.windows(2).enumerate() {
        if i > 0 {
            layers.push("ReLU()".into());
        }
        layers.push(format!("Linear({}, {})", w[0], w[1]));
    }
    let spec = &model.spec;
    let classes = spec.classes();
    let layers = if model.layers.is_empty() {
        // Not a stack of linear layers: the spec says what it is (see `Arch::parse`).
        model.arch.clone()
    } else {
        format!("Sequential({})", layers.join(", "))
    };
    Description {
        format: format.name(),
        source_checkpoint: checkpoint.display().to_string(),
        arch: model.arch.clone(),
        widths: model.widths.clone(),
        layers,
        input: TensorSpec {
            name: "image",
            shape: vec![
                "batch".into(),
                spec.channels.into(),
                spec.height.into(),
                spec.width.into(),
            ],
            dtype: "float32",
            description: "pixels / 255, in [0, 1], channel-major; any normalisation of \
                          the training data is inside the model",
        },
        output: TensorSpec {
            name: "logits",
            shape: vec!["batch".into(), classes.into()],
            dtype: "float32",
            description: "logits (no softmax); softmax over the last axis gives class probabilities",
        },
        preprocessing: preprocessing(spec),
        normalize: model.normalize.clone(),
        class_names: spec.class_names.clone(),
        kdtrain_version: env!("CARGO_PKG_VERSION"),
    }
}

/// The sidecar's `preprocessing` for images of `spec`.
fn preprocessing(spec: &DataSpec) -> String {
    let size = format!("{}x{}", spec.height, spec.width);
    match (spec.channels, *spec == DataSpec::fashion_mnist()) {
        (1, true) => format!(
            "grey, {size}, pixels / 255 as float32 in [0, 1], a light object on a dark \
             background (Fashion-MNIST); `kdtrain predict` does this for PNG/JPEG"
        ),
        (1, false) => format!(
            "grey, {size}, pixels / 255 as float32 in [0, 1], a light object on a dark \
             background; `kdtrain predict` does this for PNG/JPEG"
        ),
        (c, _) => format!(
            "{c} channels (RGB) of {size}, channel-major, pixels / 255 as float32 in [0, 1], \
             as the training data; `kdtrain predict` does this for PNG/JPEG"
        ),
    }
}

/// Runs `export`.
///
/// # Errors
/// Usage errors (exit 2): a missing checkpoint; an existing output without `--force`; an
/// output equal to the checkpoint. Runtime errors (exit 1): tracing, writing, or the
/// Python exporter failing (its message is included).
pub fn run(args: &ExportArgs, quiet: bool) -> Result<()> {
    // Exports are built on the CPU so that they load anywhere.
    let model = load_network(&args.checkpoint, Device::Cpu)?;
    let out = match &args.output {
        Some(p) => p.clone(),
        None => default_output(&args.checkpoint, args.format),
    };
    let sidecar = sidecar_path(&out);
    for (p, what) in [(&out, "-o"), (&sidecar, "the sidecar of -o")] {
        if same_file(p, &args.checkpoint) {
            return Err(UsageError(format!(
                "{what} {} is the checkpoint itself; choose another output file",
                p.display()
            ))
            .into());
        }
    }
    // A folder (or a name ending in `/`) is not an output file.
    let file_name = default_output(&args.checkpoint, args.format);
    let file_name = file_name.file_name().unwrap_or_default();
    if out.is_dir() || out.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(UsageError(format!(
            "-o {} is a folder (not overwritten even with --force); -o takes a file name, \
             e.g. {}",
            out.display(),
            out.join(file_name).display()
        ))
        .into());
    }
    if sidecar.is_dir() {
        return Err(UsageError(format!(
            "{} is a folder, where the export's sidecar (-o plus .json) goes; move it away \
             or choose another -o",
            sidecar.display(),
        ))
        .into());
    }
    for p in [&out, &sidecar] {
        // Only a regular file is replaced: renaming over a device, a FIFO, a socket or a
        // symbolic link would swap it for a plain file (`/dev/full`, say).
        if let Ok(m) = std::fs::symlink_metadata(p)
            && !m.is_file()
        {
            return Err(UsageError(format!(
                "{} exists and is not a regular file (a symbolic link, device, FIFO or \
                 socket); it is not replaced, even with --force; choose another -o",
                p.display()
            ))
            .into());
        }
        if p.exists() && !args.force {
            return Err(UsageError(format!(
                "{} already exists; pass --force to overwrite it, or choose another -o",
                p.display()
            ))
            .into());
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(UsageError(format!(
            "the folder of -o {} does not exist; create it first",
            out.display()
        ))
        .into());
    }
    if model.layers.is_empty() && args.format == Format::SafetensorsTorch {
        return Err(UsageError(format!(
            "{} holds a {}; only MLPs export as {} (a Sequential of Linear layers); export \
             it with --format torchscript or onnx",
            args.checkpoint.display(),
            model.arch,
            args.format.name()
        ))
        .into());
    }
    let desc = describe(&model, &args.checkpoint, args.format);
    let desc_json = serde_json::to_string_pretty(&desc)?;
    match args.format {
        Format::Torchscript => export_torchscript(&model, &out)?,
        Format::SafetensorsTorch => {
            let mut meta = HashMap::from([
                (META_EXPORT.to_string(), desc_json.clone()),
                (META_ARCH.to_string(), model.arch.clone()),
            ]);
            meta.insert("format".into(), "pt".into());
            write_atomic(&out, &to_safetensors(&torch_named(&model), meta)?)?;
        }
        Format::Onnx => export_onnx(&model, &out, &desc_json)?,
    }
    write_atomic(&sidecar, format!("{desc_json}\n").as_bytes())?;
    if !quiet {
        crate::errln!(
            "exported the {} ({}) as {} to {}, described in {}",
            model.arch,
            args.checkpoint.display(),
            args.format.name(),
            out.display(),
            sidecar.display()
        );
    }
    crate::outln!("{}", out.display());
    Ok(())
}

/// `<checkpoint stem>.<format extension>` next to the checkpoint.
pub fn default_output(checkpoint: &Path, format: Format) -> PathBuf {
    let stem = checkpoint
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    checkpoint.with_file_name(format!("{stem}.{}", format.extension()))
}

/// `<output>.json`.
pub fn sidecar_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The weights under `torch.nn.Sequential(Flatten, Linear, ReLU, ..., Linear)`'s names:
/// linear layer k (0-based) is module `1 + 2k`.
fn torch_named(model: &LoadedModel) -> Vec<(String, Tensor)> {
    model
        .layers
        .iter()
        .enumerate()
        .flat_map(|(k, (w, b))| {
            let m = 1 + 2 * k;
            [
                (format!("{m}.weight"), w.shallow_clone()),
                (format!("{m}.bias"), b.shallow_clone()),
            ]
        })
        .collect()
}

/// A temporary path in the folder of `out`.
fn temp_beside(out: &Path, tag: &str) -> Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("{} has no file name", out.display()))?;
    Ok(out.with_file_name(format!(
        ".{}.{tag}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// The bytes an unprivileged process may still write in the file system of `dir`
/// (`fs2::available_space`: statvfs's available blocks times the fragment size); `None`
/// when it cannot be read. `KDTRAIN_TEST_FREE_BYTES` replaces the figure (for tests).
fn free_bytes(dir: &Path) -> Option<u64> {
    if let Some(v) = std::env::var_os("KDTRAIN_TEST_FREE_BYTES") {
        return v.to_str()?.parse().ok();
    }
    fs2::available_space(dir).ok()
}

/// Flushes `tmp` to disk and renames it to `out` (same folder), then flushes the folder.
fn persist(tmp: &Path, out: &Path) -> Result<()> {
    let result = (|| -> std::io::Result<()> {
        std::fs::File::open(tmp)?.sync_all()?;
        std::fs::rename(tmp, out)?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(tmp);
        bail!(
            "cannot write {}: {e}; check free space and permissions",
            out.display()
        );
    }
    Ok(())
}

/// Traces `image [batch, C, H, W] f32 -> logits [batch, classes] f32` and saves it.
/// `flatten(1, -1)` is recorded as an op, so the batch size is not baked in; the traced
/// module is checked on another batch size before it is written.
fn export_torchscript(model: &LoadedModel, out: &Path) -> Result<()> {
    let s = &model.spec;
    let example = Tensor::rand(
        [2, s.channels, s.height, s.width],
        (Kind::Float, Device::Cpu),
    );
    let mut forward = |inputs: &[Tensor]| vec![model.forward(&inputs[0].flatten(1, -1))];
    let mut module = tch::no_grad(|| {
        tch::CModule::create_by_tracing("KdtrainMlp", "forward", &[example], &mut forward)
    })
    .map_err(|e| anyhow!("tracing the {} failed: {e}", model.arch))?;
    module.set_eval();
    let check = Tensor::rand(
        [3, s.channels, s.height, s.width],
        (Kind::Float, Device::Cpu),
    );
    let got = tch::no_grad(|| module.forward_ts(&[&check]))
        .map_err(|e| anyhow!("the traced module does not run: {e}"))?;
    let want = model.logits(&check.flatten(1, -1));
    if got.size() != want.size() || !got.allclose(&want, 1e-5, 1e-5, false) {
        let diff = match got.size() == want.size() {
            true => format!(
                ", largest difference {:.3e}",
                (&got - &want).abs().max().double_value(&[])
            ),
            false => String::new(),
        };
        bail!(
            "the traced module disagrees with the model on a batch of 3 (shapes {:?} vs \
             {:?}{diff})",
            got.size(),
            want.size()
        );
    }
    // libtorch's archive writer aborts the process (a C++ exception in a destructor)
    // when the disk fills up under it, so the space is checked first: the tensors'
    // bytes and 1 MiB for the code and the zip records.
    let bytes: i64 = module
        .named_parameters()?
        .iter()
        .map(|(_, t)| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64)
        .sum();
    let need = bytes as u64 + (1 << 20);
    let folder = out.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(free) = free_bytes(folder.unwrap_or(Path::new(".")))
        && free < need
    {
        bail!(
            "cannot write {}: its folder has {:.1} MB free and the TorchScript file needs \
             about {:.1} MB; free some space or choose another -o",
            out.display(),
            free as f64 / 1e6,
            need as f64 / 1e6
        );
    }
    let tmp = temp_beside(out, "pt")?;
    if let Err(e) = module.save(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        // libtorch's message goes on with a C++ stack trace; its first line says it.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("").trim();
        bail!(
            "cannot write {}: {first}; check that the folder exists and is writable",
            out.display()
        );
    }
    persist(&tmp, out)
}

/// The Python that has torch, onnx and onnxscript: `KDTRAIN_PYTHON`, else the virtual
/// environment scripts/setup.sh makes.
fn python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KDTRAIN_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var_os("KDTRAIN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("kdtrain")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kdtrain")));
    let venv = cache.map(|c| c.join("torch-2.11.0/bin/python"));
    match venv {
        Some(p) if p.exists() => Ok(p),
        _ => bail!(
            "--format onnx needs a Python with torch, onnx and onnxscript and none was found \
             ({}); run scripts/setup.sh, or set KDTRAIN_PYTHON to such a python",
            venv.map(|p| format!("looked for {}", p.display()))
                .unwrap_or_else(|| "KDTRAIN_PYTHON and HOME are unset".into())
        ),
    }
}

/// Writes the safetensors-torch weights and the metadata to temporary files, runs
/// scripts/export_onnx.py on them, and renames its output into place.
fn export_onnx(model: &LoadedModel, out: &Path, desc_json: &str) -> Result<()> {
    let python = python()?;
    if model.layers.is_empty() {
        // Not a stack of linear layers: traced to TorchScript here, converted by
        // PyTorch's TorchScript-based exporter there.
        let script = temp_beside(out, "script")?;
        let r = export_torchscript(model, &script).and_then(|()| {
            run_onnx_exporter(&python, model, &script, "torchscript", out, desc_json)
        });
        let _ = std::fs::remove_file(&script);
        return r;
    }
    let weights = temp_beside(out, "weights")?;
    let r = std::fs::write(
        &weights,
        to_safetensors(&torch_named(model), HashMap::new())?,
    )
    .with_context(|| format!("cannot write {}", weights.display()))
    .and_then(|()| {
        let widths: Vec<String> = model.widths.iter().map(i64::to_string).collect();
        run_onnx_exporter(&python, model, &weights, &widths.join(","), out, desc_json)
    });
    let _ = std::fs::remove_file(&weights);
    r
}

/// Runs scripts/export_onnx.py on `input` (the MLP's weights with `widths` = its layer
/// widths, or a TorchScript file with `widths` = `torchscript`) and renames its output
/// into place.
fn run_onnx_exporter(
    python: &Path,
    model: &LoadedModel,
    input: &Path,
    widths: &str,
    out: &Path,
    desc_json: &str,
) -> Result<()> {
    let meta = temp_beside(out, "meta")?;
    let tmp = temp_beside(out, "onnx")?;
    let cleanup = || {
        for p in [&meta, &tmp] {
            let _ = std::fs::remove_file(p);
        }
    };
    let result = (|| -> Result<()> {
        let meta_json = serde_json::json!({ META_EXPORT: desc_json, META_ARCH: model.arch });
        std::fs::write(&meta, meta_json.to_string())
            .with_context(|| format!("cannot write {}", meta.display()))?;
        let child = std::process::Command::new(python)
            .arg("-c")
            .arg(EXPORT_ONNX_PY)
            .arg(input)
            .arg(widths)
            .arg(&tmp)
            .arg(&meta)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", python.display()))?;
        // A signal stops this command at once (it has no steps); the handler stops the
        // exporter and removes the temporary files too.
        let what = format!("the ONNX exporter (pid {})", child.id());
        let files = [meta.clone(), tmp.clone(), input.to_path_buf()];
        crate::waited_child(Some((child.id(), &what, &files)));
        let o = child.wait_with_output();
        crate::waited_child(None);
        let o = o.with_context(|| format!("waiting for {}", python.display()))?;
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            let tail: Vec<&str> = err.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the ONNX exporter (torch.onnx.export in {}) failed ({}): {}; run \
                 scripts/setup.sh to install torch, onnx and onnxscript there",
                python.display(),
                o.status,
                tail.join(" | ")
            );
        }
        persist(&tmp, out)
    })();
    cleanup();
    result
}
