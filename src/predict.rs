//! The `predict` command: the top classes of images (PNG, JPEG, BMP, GIF, WebP, folders of them, IDX
//! files) under a checkpoint, one line per image or JSON Lines.
//!
//! Also [`load_network`], the one place where the commands `predict` and `export` touch
//! the model API.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::Checkpoint;
use crate::data::{DataSpec, Idx, Normalize};
use crate::error::{UsageError, usage};
use crate::image_input::{self, Invert};
use crate::model::Network;

/// `kdtrain predict CKPT INPUT...`
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A checkpoint written by train or distill (`model.safetensors`).
    pub checkpoint: PathBuf,
    /// PNG, JPEG, BMP, GIF or WebP files (any size and colour), folders of them (not recursive; other
    /// files are skipped with a note), or IDX image files such as
    /// t10k-images-idx3-ubyte.gz (every image, or the one at --index).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// How many classes to show per image, most probable first (1 to the model's number
    /// of classes).
    #[arg(long, default_value_t = 3, value_name = "K",
          value_parser = clap::value_parser!(u8).range(1..))]
    pub top: u8,
    /// Invert grey values of PNG/JPEG inputs so that the object is light on a dark
    /// background, as in Fashion-MNIST: auto = when the image's border is light. IDX
    /// inputs are taken as they are unless `yes`.
    #[arg(long, value_enum, default_value_t = Invert::Auto)]
    pub invert: Invert,
    /// Only the image at this 0-based index of each IDX input.
    #[arg(long, value_name = "I")]
    pub index: Option<usize>,
    /// JSON Lines on stdout: one object per image (source, index, class, name,
    /// probability, top, inverted) or per unreadable input (source, error).
    #[arg(long)]
    pub json: bool,
}

/// A checkpoint loaded for inference: the only value through which `predict` and
/// `export` see a network.
pub struct LoadedModel {
    /// The architecture spec from the checkpoint (`mlp:128`, `mlp:512,256,128`).
    pub arch: String,
    /// Layer widths from input to logits, e.g. `[C·H·W, 128, classes]`; empty for other
    /// architectures than an MLP.
    pub widths: Vec<i64>,
    /// The data it takes and the classes it tells apart, from the checkpoint.
    pub spec: DataSpec,
    /// How its training inputs were normalised; [`LoadedModel::logits`] and
    /// [`LoadedModel::forward`] apply it, and `layers` has it folded in.
    pub normalize: Normalize,
    /// For an MLP, `(weight [out, in] f32, bias [out] f32)` per linear layer, input to
    /// output (empty for other architectures); ReLU between them, none after the last.
    /// They compute the logits of pixels / 255: a standardisation is folded into the
    /// first layer (`W' = W / sd[c]`, `b' = b - W' · mean[c]` per input of channel c).
    pub layers: Vec<(Tensor, Tensor)>,
    net: Box<dyn Network>,
    /// `normalize`'s mean and sd as tensors on the model's device.
    norm: Option<(Tensor, Tensor)>,
}

impl LoadedModel {
    /// The logits, under `no_grad`.
    ///
    /// # Shapes
    /// `images: [n, C·H·W] f32 in [0, 1]` (pixels / 255) -> `[n, classes] f32` (no
    /// softmax); the checkpoint's normalisation is applied first.
    pub fn logits(&self, images: &Tensor) -> Tensor {
        crate::eval::logits(self.net.as_ref(), &self.normalized(images))
    }

    fn normalized(&self, x: &Tensor) -> Tensor {
        match &self.norm {
            None => x.shallow_clone(),
            Some(ms) => Normalize::apply_tensors(ms, x),
        }
    }

    /// The forward pass as a plain function, for tracing: normalisation, then the
    /// network.
    ///
    /// # Shapes
    /// `x: [n, C·H·W] f32` (pixels / 255) -> `[n, classes] f32`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.net.forward(&self.normalized(x))
    }
}

/// Reads a checkpoint and builds its network, frozen, on `device`. The adapter between
/// the model API and `predict`/`export`.
///
/// # Errors
/// As [`Checkpoint::read`] (a missing checkpoint is a [`UsageError`]); a checkpoint whose
/// architecture is neither recorded nor recognisable; wrong tensor shapes.
pub fn load_network(path: &Path, device: Device) -> Result<LoadedModel> {
    let ckpt = Checkpoint::read(path)?;
    let mut net = ckpt.network(device)?;
    let arch = net.arch().clone();
    net.freeze();
    // Only an MLP is a plain stack of linear layers (what the ONNX and PyTorch-named
    // exports rebuild); other architectures leave `layers` empty.
    let spec = net.data_spec().clone();
    let normalize = ckpt.normalize()?;
    let mut layers: Vec<(Tensor, Tensor)> = if arch.is_mlp() {
        net.named_parameters()
            .chunks(2)
            .map(|wb| (wb[0].1.detach(), wb[1].1.detach()))
            .collect()
    } else {
        Vec::new()
    };
    if let (Some(first), Normalize::Standardize { mean, sd }) = (layers.first_mut(), &normalize) {
        // x' = (x - m) / s per input: W x' + b = (W / s) x + (b - (W / s) m).
        let per_input = |v: &[f64]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .repeat_interleave_self_int(spec.height * spec.width, 0, None)
                .to_device(first.0.device())
        };
        let w = &first.0 / per_input(sd).view([1, -1]);
        let b = &first.1 - w.matmul(&per_input(mean));
        *first = (w, b);
    }
    Ok(LoadedModel {
        arch: arch.spec(),
        widths: arch.widths(&spec),
        spec,
        norm: normalize.tensors(device),
        normalize,
        layers,
        net,
    })
}

/// One image to classify, from whichever input it came.
struct Item {
    source: String,
    /// Position in its IDX file.
    index: Option<usize>,
    inverted: bool,
}

/// One input that could not be read.
struct Failure {
    source: String,
    error: String,
}

/// What the inputs gave: images on the 0..255 scale (`[n, C·H·W]` f32) in
/// the order of `items`, and the failures in between (`order` interleaves them).
#[derive(Default)]
struct Gathered {
    items: Vec<Item>,
    pixels: Vec<f32>,
    failures: Vec<Failure>,
    /// `Ok(i)`: items[i]; `Err(j)`: failures[j]; in input order.
    order: Vec<std::result::Result<usize, usize>>,
    notes: Vec<String>,
}

impl Gathered {
    fn push(&mut self, item: Item, pixels: &[f32]) {
        self.order.push(Ok(self.items.len()));
        self.items.push(item);
        self.pixels.extend_from_slice(pixels);
    }

    fn fail(&mut self, source: String, error: String) {
        self.order.push(Err(self.failures.len()));
        self.failures.push(Failure { source, error });
    }
}

/// How an input path is read.
enum InputKind {
    Folder,
    Idx,
    Image,
}

fn kind_of(path: &Path) -> InputKind {
    if path.is_dir() {
        return InputKind::Folder;
    }
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    // gzip, or an IDX u8 header (0x00 0x00 0x08 then the number of dimensions).
    if (n >= 2 && head[..2] == [0x1f, 0x8b]) || (n == 4 && head[..3] == [0, 0, 8]) {
        InputKind::Idx
    } else {
        InputKind::Image
    }
}

/// Reads every input into one batch of images of `spec`. Unreadable images are recorded
/// as failures; a bad `--index` is a usage error.
fn gather(args: &PredictArgs, spec: &DataSpec) -> Result<Gathered> {
    let mut g = Gathered::default();
    let mut idx_inputs = 0;
    for input in &args.inputs {
        match kind_of(input) {
            InputKind::Folder => {
                let entries = match std::fs::read_dir(input) {
                    Ok(e) => e,
                    Err(e) => {
                        g.fail(
                            input.display().to_string(),
                            format!("cannot list folder {}: {e}", input.display()),
                        );
                        continue;
                    }
                };
                let mut files: Vec<PathBuf> =
                    entries.filter_map(|e| Some(e.ok()?.path())).collect();
                files.sort();
                let before = g.order.len();
                for f in files {
                    if f.is_dir() {
                        g.notes.push(format!(
                            "skipping folder {} (folders are not searched recursively)",
                            f.display()
                        ));
                        continue;
                    }
                    let mut head = [0u8; 16];
                    let n = std::fs::File::open(&f)
                        .and_then(|mut h| std::io::Read::read(&mut h, &mut head))
                        .unwrap_or(0);
                    if !image_input::looks_like_image(&head[..n])
                        && !image_input::has_image_extension(&f)
                    {
                        g.notes.push(format!(
                            "skipping {}: not a PNG, JPEG, BMP, GIF or WebP file",
                            f.display()
                        ));
                        continue;
                    }
                    read_image(&mut g, &f, args.invert, spec);
                }
                if g.order.len() == before {
                    g.notes.push(format!(
                        "folder {} holds no PNG, JPEG, BMP, GIF or WebP files",
                        input.display()
                    ));
                }
            }
            InputKind::Idx => {
                idx_inputs += 1;
                read_idx_images(&mut g, input, args, spec)?;
            }
            InputKind::Image => read_image(&mut g, input, args.invert, spec),
        }
    }
    if args.index.is_some() && idx_inputs == 0 {
        if let Some(missing) = args.inputs.iter().find(|p| !p.exists()) {
            return usage(format!(
                "{} does not exist; --index selects an image of an IDX file, so pass its \
                 path (Fashion-MNIST's test images are t10k-images-idx3-ubyte.gz in the data \
                 folder, e.g. /usr/share/datasets/fashion-mnist)",
                missing.display()
            ));
        }
        return usage(
            "--index selects an image of an IDX file, but no IDX file was given; \
             drop --index or pass e.g. t10k-images-idx3-ubyte.gz",
        );
    }
    Ok(g)
}

fn read_image(g: &mut Gathered, path: &Path, invert: Invert, spec: &DataSpec) {
    match image_input::load(path, invert, spec) {
        Ok(p) => g.push(
            Item {
                source: path.display().to_string(),
                index: None,
                inverted: p.inverted,
            },
            &p.pixels,
        ),
        Err(e) => g.fail(path.display().to_string(), format!("{e:#}")),
    }
}

fn read_idx_images(
    g: &mut Gathered,
    path: &Path,
    args: &PredictArgs,
    spec: &DataSpec,
) -> Result<()> {
    let source = path.display().to_string();
    let (height, width) = (spec.height as usize, spec.width as usize);
    let (count, pixels) = match crate::data::read_idx(path) {
        Ok(Idx::Images {
            count,
            rows,
            cols,
            pixels,
        }) if rows == height && cols == width && spec.channels == 1 => (count, pixels),
        Ok(Idx::Images { rows, cols, .. }) => {
            let sized = match *spec == DataSpec::fashion_mnist() {
                true => "Fashion-MNIST-sized".to_string(),
                false => spec.describe(),
            };
            g.fail(
                source,
                format!(
                    "{}: IDX images are {rows}x{cols}, expected {height}x{width}; this model takes \
                     {sized} images (pass them as PNG to have them resized)",
                    path.display()
                ),
            );
            return Ok(());
        }
        Ok(Idx::Labels(_)) => {
            g.fail(
                source,
                format!(
                    "{} is an IDX labels file; pass the images file (...-images-idx3-ubyte)",
                    path.display()
                ),
            );
            return Ok(());
        }
        Err(e) => {
            g.fail(source, format!("{e:#}"));
            return Ok(());
        }
    };
    let px = height * width;
    let range = match args.index {
        Some(i) if i >= count => {
            return Err(UsageError(format!(
                "--index {i} is out of range for {}, which holds {count} images (0 to {})",
                path.display(),
                count.saturating_sub(1)
            ))
            .into());
        }
        Some(i) => i..i + 1,
        None => 0..count,
    };
    let invert = args.invert == Invert::Yes;
    g.pixels.reserve(range.len() * px);
    for i in range {
        let img = &pixels[i * px..(i + 1) * px];
        g.order.push(Ok(g.items.len()));
        g.items.push(Item {
            source: source.clone(),
            index: Some(i),
            inverted: invert,
        });
        g.pixels.extend(img.iter().map(|&v| {
            let v = f32::from(v);
            if invert { 255.0 - v } else { v }
        }));
    }
    Ok(())
}

/// One class and its probability.
#[derive(Debug, Serialize)]
struct Ranked {
    class: i64,
    name: String,
    probability: f64,
}

/// One line of `--json` output.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum JsonLine<'a> {
    Prediction {
        source: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<usize>,
        class: i64,
        name: &'a str,
        probability: f64,
        inverted: bool,
        top: &'a [Ranked],
    },
    Error {
        source: &'a str,
        error: &'a str,
    },
}

/// Standard output as a file of its own (a duplicate of descriptor 1), so that every
/// failed write is reported: Rust's `Stdout` takes EBADF (descriptor 1 open for reading
/// only, as with `1<file`) for success and would drop the predictions without a word.
fn stdout_file() -> Box<dyn std::io::Write> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd as _;
        if let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() {
            return Box::new(std::fs::File::from(fd));
        }
    }
    Box::new(std::io::stdout())
}

/// Runs `predict`.
///
/// # Errors
/// Usage errors (exit 2): a missing checkpoint, a bad `--index`. Runtime errors (exit 1):
/// an unreadable checkpoint; after every readable image was printed, the list of inputs
/// that could not be read.
pub fn run(args: &PredictArgs, device: Device, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let model = load_network(&args.checkpoint, device)?;
    let spec = &model.spec;
    if i64::from(args.top) > spec.classes() {
        return usage(format!(
            "--top {}: the model has {} classes; expected 1 to {}",
            args.top,
            spec.classes(),
            spec.classes()
        ));
    }
    let t_model = t0.elapsed().as_secs_f64();
    let g = gather(args, spec)?;
    for n in &g.notes {
        crate::errln!("note: {n}");
    }
    let t_read = t0.elapsed().as_secs_f64() - t_model;
    let n = g.items.len() as i64;
    let top = i64::from(args.top);
    let (probs, classes) = if n > 0 {
        // [n, C·H·W] f32 on the 0..255 scale, then / 255 on the device as in training.
        let images = Tensor::from_slice(&g.pixels)
            .to_device(device)
            .view([n, spec.inputs()])
            / 255.0;
        let logits = model.logits(&images); // [n, classes]
        let (p, c) = logits.softmax(-1, Kind::Float).topk(top, -1, true, true); // [n, top] each
        let p: Vec<f32> = Vec::try_from(p.to_device(Device::Cpu).flatten(0, -1))?;
        let c: Vec<i64> = Vec::try_from(c.to_device(Device::Cpu).flatten(0, -1))?;
        (p, c)
    } else {
        (Vec::new(), Vec::new())
    };
    let t_infer = t0.elapsed().as_secs_f64() - t_model - t_read;

    let mut out = std::io::BufWriter::new(stdout_file());
    let mut write_error: Option<std::io::Error> = None;
    for entry in &g.order {
        use std::io::Write as _;
        let line = match *entry {
            Ok(i) => {
                let item = &g.items[i];
                let ranked: Vec<Ranked> = (0..top as usize)
                    .map(|k| {
                        let class = classes[i * top as usize + k];
                        Ranked {
                            class,
                            name: spec.class_name(class),
                            probability: f64::from(probs[i * top as usize + k]),
                        }
                    })
                    .collect();
                if args.json {
                    serde_json::to_string(&JsonLine::Prediction {
                        source: &item.source,
                        index: item.index,
                        class: ranked[0].class,
                        name: &ranked[0].name,
                        probability: ranked[0].probability,
                        inverted: item.inverted,
                        top: &ranked,
                    })?
                } else {
                    let label = match item.index {
                        Some(k) => format!("{}[{k}]", item.source),
                        None => item.source.clone(),
                    };
                    let shown: Vec<String> = ranked
                        .iter()
                        .map(|r| format!("{} {:.4}", r.name, r.probability))
                        .collect();
                    let inv = if item.inverted && item.index.is_none() {
                        " (inverted)"
                    } else {
                        ""
                    };
                    format!("{label}{inv}: {}", shown.join(", "))
                }
            }
            Err(j) => {
                let f = &g.failures[j];
                crate::errln!("skipped: {}", f.error);
                if !args.json {
                    continue;
                }
                serde_json::to_string(&JsonLine::Error {
                    source: &f.source,
                    error: &f.error,
                })?
            }
        };
        // A closed pipe (`| head`) ends the output quietly; any other failure (a full
        // disk, say) is reported once the loop stops.
        if let Err(e) = writeln!(out, "{line}") {
            write_error = Some(e);
            break;
        }
    }
    {
        use std::io::Write as _;
        if let Err(e) = out.flush()
            && write_error.is_none()
        {
            write_error = Some(e);
        }
    }
    drop(out);
    if let Some(e) = write_error.filter(|e| e.kind() != std::io::ErrorKind::BrokenPipe) {
        bail!(
            "could not write the predictions to standard output ({e}); free space where it \
             goes, or redirect it elsewhere, and run predict again"
        );
    }
    if !quiet {
        crate::errln!(
            "predict: {n} image{}; checkpoint {t_model:.3} s, reading {t_read:.3} s, \
             inference {t_infer:.3} s, output {:.3} s",
            if n == 1 { "" } else { "s" },
            t0.elapsed().as_secs_f64() - t_model - t_read - t_infer
        );
    }
    if !g.failures.is_empty() {
        let names: Vec<&str> = g.failures.iter().map(|f| f.source.as_str()).collect();
        bail!(
            "{} of {} inputs could not be read ({}); {}",
            g.failures.len(),
            g.failures.len() + g.items.len(),
            names.join(", "),
            if g.items.is_empty() {
                "nothing was classified"
            } else {
                "the others were classified"
            }
        );
    }
    if n == 0 {
        bail!(
            "no images to classify in {}",
            args.inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
