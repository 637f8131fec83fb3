//! The teacher side of distillation: reading a teacher ([`load_teacher`]: a kdtrain
//! checkpoint or a TorchScript model, checked against the data and frozen), the frozen
//! teacher the loop sees ([`Teacher`], behind [`Network`]) and where the training loop gets its
//! logits from ([`TeacherSource`]: the cache of every training example's logits, every
//! fixed view's with augmentation, or a `no_grad` forward pass per batch).
//!
//! The cache is keyed by row of the training set (by example, not by batch position);
//! with K fixed views row `k * n + i` holds view k of example i. The last cache computed
//! is kept for the next run of the same process (the seeds and objectives of a
//! `reproduce` share it). This module trains nothing and writes no file.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use crate::augment::{Augment, ViewSet};
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::config::settings::Settings;
pub use crate::data::spec_mismatch;
use crate::data::{self, DataSpec, Dataset};
use crate::error::{INTERRUPTED, Interrupted, UsageError, usage};
use crate::eval;
use crate::model::{Network, RunKind};

/// A frozen teacher read from a checkpoint, with what it was trained on.
pub struct LoadedTeacher {
    pub network: Box<dyn Network>,
    pub path: PathBuf,
    pub split: Option<data::SplitInfo>,
    /// How the teacher's training inputs were normalised; `None` for a TorchScript
    /// teacher, which takes the run's inputs as they are.
    pub normalize: Option<data::Normalize>,
    /// SHA-256 of the checkpoint file, hex: which teacher a run used, whatever its path.
    pub sha256: String,
}

impl LoadedTeacher {
    /// What a distilled run records about its teacher in `meta.json`: its file, the
    /// file's SHA-256, its architecture as a spec (`cnn:32,64,256,dropout=0.3`, or
    /// `torchscript`; the run's `model.teacher` is only what `train teacher` would build)
    /// and its split's hash.
    pub fn meta(&self) -> serde_json::Value {
        serde_json::json!({
            "teacher": self.path.display().to_string(),
            "teacher_arch": self.network.arch().spec(),
            "teacher_sha256": self.sha256,
            "teacher_split_hash": self.split.as_ref().map(|s| s.split_hash.clone()),
        })
    }
}

/// The teacher checkpoint for distillation: `distill.teacher`, or the newest teacher in
/// the out-dir; read, checked (against the data of `spec`) and frozen before training.
///
/// # Errors
/// Usage errors naming the file: none found, unreadable, not a teacher, wrong shapes,
/// another data spec.
pub fn load_teacher(s: &Settings, config: &Config, spec: &DataSpec) -> Result<LoadedTeacher> {
    let path = if config.distill.teacher.as_os_str().is_empty() {
        let out = config.runtime.out_dir.as_path();
        match crate::run::newest_model(out, RunKind::Teacher) {
            Some(p) => p,
            None => {
                return usage(format!(
                    "no finished teacher checkpoint in {0}/teacher-*/model.safetensors or \
                     {0}/reproduce-*/teacher/model.safetensors (interrupted runs are skipped; \
                     finish one with --resume); run `train teacher` first, or pass --teacher PATH",
                    out.display()
                ));
            }
        }
    } else {
        config.distill.teacher.clone()
    };
    // Recorded by its absolute path, so that the run's config.toml (and the printed
    // resume command) finds it from any folder.
    let path = std::path::absolute(&path).unwrap_or(path);
    let (mut network, split, normalize) = open_teacher(&path, s, "--teacher", spec)?;
    network.freeze();
    s.say(&format!(
        "teacher: {} ({})",
        path.display(),
        network.describe()
    ));
    let sha256 = {
        use sha2::{Digest, Sha256};
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read teacher {}", path.display()))?;
        crate::hex(&Sha256::digest(&bytes))
    };
    Ok(LoadedTeacher {
        network,
        split,
        normalize,
        path,
        sha256,
    })
}

/// A teacher network, the split it records, and its inputs' normalisation (`None` for
/// TorchScript).
pub type OpenedTeacher = (
    Box<dyn Network>,
    Option<data::SplitInfo>,
    Option<data::Normalize>,
);

/// A teacher from `path`: a TorchScript file (recognised by content: a zip archive) run
/// through libtorch, or a kdtrain checkpoint; with the split it records (TorchScript
/// files record none). It must take the data of `spec` and give its classes' logits.
///
/// # Errors
/// Usage errors naming the file (missing, not TorchScript, wrong output, not a teacher,
/// trained on data of another spec).
pub fn open_teacher(
    path: &Path,
    s: &Settings,
    flag: &str,
    spec: &DataSpec,
) -> Result<OpenedTeacher> {
    let head = {
        use std::io::Read;
        let mut b = [0u8; 4];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut b))
            .unwrap_or(0);
        b[..n].to_vec()
    };
    if crate::torchscript::is_zip(&head) {
        let input = match s.config.model.teacher_input.as_str() {
            "flat" => crate::torchscript::Input::Flat,
            "image" => crate::torchscript::Input::Image,
            other => {
                return usage(format!(
                    "config key `model.teacher_input` = {other:?}: expected \"image\" or \"flat\""
                ));
            }
        };
        let net = crate::torchscript::TorchScriptNet::load(
            path,
            input,
            s.config.model.teacher_output,
            spec,
            s.device,
        )?;
        return Ok((Box::new(net), None, None));
    }
    let ckpt = Checkpoint::read(path).map_err(|e| match e.downcast_ref::<UsageError>() {
        Some(_) => UsageError(format!(
            "{e}; run `train teacher` first, or pass --teacher PATH"
        ))
        .into(),
        None => e,
    })?;
    let network = teacher_network(&ckpt, s, flag)?;
    if let Some(e) = spec_mismatch(
        &format!("{flag} {}", path.display()),
        network.data_spec(),
        spec,
    ) {
        return usage(e);
    }
    Ok((network, ckpt.split(), Some(ckpt.normalize()?)))
}

/// Refuses a network (`what`: a flag and a file) whose inputs were normalised as `have`
/// on inputs normalised as `want` (means and sds equal within 1e-6).
///
/// # Errors
/// A [`UsageError`] naming both normalisations and `data.normalize`.
pub fn check_same_normalize(
    what: &str,
    have: &data::Normalize,
    want: &data::Normalize,
) -> Result<()> {
    use data::Normalize::*;
    let same = match (have, want) {
        (Unit, Unit) => true,
        (Standardize { mean: m1, sd: s1 }, Standardize { mean: m2, sd: s2 }) => {
            m1.len() == m2.len()
                && s1.len() == s2.len()
                && m1
                    .iter()
                    .chain(s1)
                    .zip(m2.iter().chain(s2))
                    .all(|(a, b)| (a - b).abs() <= 1e-6)
        }
        _ => false,
    };
    match same {
        true => Ok(()),
        false => usage(format!(
            "{what} was trained on inputs normalised as {} but this run's are {}; set \
             data.normalize as the teacher's run did, on the same data",
            have.describe(),
            want.describe()
        )),
    }
}

/// The network of a checkpoint that is to act as a teacher: its recorded architecture
/// (or, for a file that records none, the configured teacher's), and a refusal of a
/// checkpoint trained as a student.
fn teacher_network(ckpt: &Checkpoint, s: &Settings, flag: &str) -> Result<Box<dyn Network>> {
    let network = ckpt
        .network(s.device)
        .map_err(|e| UsageError(format!("{flag}: {e:#}")))?;
    let arch = network.arch().clone();
    if let Some(role) = ckpt.role()
        && role != "teacher"
    {
        return usage(format!(
            "{flag}: {} is a {role} checkpoint ({}; metadata kdtrain.role = {role}), not a \
             teacher; pass a teacher's model.safetensors",
            ckpt.path.display(),
            arch.describe(network.data_spec())
        ));
    }
    Ok(network)
}

/// The teacher's split against this run's: refuses a mismatch (unless
/// `--allow-split-mismatch`), warns when the teacher records none.
pub fn check_teacher_split(s: &Settings, teacher: &LoadedTeacher, data: &Dataset) -> Result<()> {
    if let Some(n) = &teacher.normalize {
        check_same_normalize(
            &format!("--teacher {}", teacher.path.display()),
            n,
            &data.normalize,
        )?;
    }
    match &teacher.split {
        None => {
            crate::errln!(
                "warning: teacher {} records no validation split; make sure this run's \
                 validation images were not in its training set",
                teacher.path.display()
            );
            Ok(())
        }
        Some(t) if t.same_as(&data.split) => Ok(()),
        Some(t) if s.allow_split_mismatch => {
            crate::errln!(
                "warning: teacher {} validated on {}, this run on {} (--allow-split-mismatch)",
                teacher.path.display(),
                t.describe(),
                data.split.describe()
            );
            Ok(())
        }
        Some(t) => {
            let (why, fix) = match (t.split_seed, data.split.split_seed) {
                (None, _) => (
                    "the teacher trained on every training image, so this run's held-out \
                     images are in its training set",
                    "validate on the test set as the teacher did (data.validation = \"test\")"
                        .to_string(),
                ),
                (Some(seed), None) => (
                    "this run would select models on another set than the teacher did",
                    format!(
                        "use the teacher's split (data.validation = \"split\", \
                         data.split_seed = {seed}, data.validation_size = {})",
                        t.validation_size
                    ),
                ),
                (Some(seed), Some(_)) => (
                    "this run's validation images would include images the teacher trained on",
                    format!(
                        "use the teacher's data.split_seed ({seed}) and data.validation_size ({})",
                        t.validation_size
                    ),
                ),
            };
            usage(format!(
                "teacher {} was trained with validation on {}, but this run validates on {}: \
                 {why}; {fix}, or pass --allow-split-mismatch",
                teacher.path.display(),
                t.describe(),
                data.split.describe(),
            ))
        }
    }
}

/// The frozen teacher of a distillation run: its network (own VarStore, frozen, run in
/// eval mode under `no_grad`) and whether its training-set logits are cached.
pub struct Teacher<'a> {
    pub network: &'a dyn Network,
    /// What identifies the teacher's weights (its file's SHA-256): the key under which
    /// its cached logits are kept for the next run of this process (the seeds and
    /// objectives of a `reproduce` share them).
    pub id: String,
    /// Compute the logits of every training example once (`[n, classes] f32`, keyed by row
    /// of the training set) instead of a forward pass per batch. Any objective reads
    /// the same logits, so the cache serves them all.
    pub cache: bool,
}

/// Where a distillation run's teacher logits come from, prepared once before the first
/// step: the cache (when [`Teacher::cache`] and the views allow one) or the network.
pub struct TeacherSource<'a> {
    network: &'a dyn Network,
    /// `[n, classes] f32`, or `[k * n, classes] f32` with K fixed views; `None`: a forward
    /// pass per batch.
    cache: Option<Tensor>,
    /// The teacher's logits on the validation images, `[n_val, classes] f32`.
    pub val: Tensor,
    /// Its largest |logit| there, named if the loss diverges.
    pub max_logit: f64,
    /// Seconds the cache took to compute (every view's); `None` without a cache.
    pub cache_seconds: Option<f64>,
}

impl<'a> TeacherSource<'a> {
    /// Computes (or reuses) the cache of the teacher's logits on the training images
    /// (each of `view_set`'s fixed views of them, with augmentation `aug`) and its
    /// validation logits, and refuses a teacher whose logits are not finite. `table` is
    /// `aug`'s shift table; `say` prints status lines.
    ///
    /// # Errors
    /// [`Interrupted`] when a Ctrl-C arrives while the cache is computed; a
    /// [`crate::error::UsageError`] for a teacher whose logits are NaN or infinite.
    pub fn prepare(
        t: &Teacher<'a>,
        data: &Dataset,
        aug: Augment,
        view_set: Option<&ViewSet>,
        table: &Tensor,
        say: impl Fn(&str),
    ) -> Result<TeacherSource<'a>> {
        let n = data.train.len();
        let device = t.network.device();
        let view_set = &view_set;
        // Keyed by row of `data.train`, i.e. by example, not by batch position; with
        // augmentation, by (view, example): row k * n + i holds view k of example i.
        let t_cache = Instant::now();
        let train_cache = match (Some(t).filter(|t| t.cache), aug.is_none(), &view_set) {
            (None, _, _) => None,
            (Some(t), true, _) => {
                Some(cached_logits(t, &data.split.split_hash, "none", n, || {
                    // A Ctrl-C or SIGTERM is answered between chunks: a big teacher's pass can
                    // outlast Slurm's 30 s between SIGTERM and SIGKILL. Test hook: `cache:0` acts
                    // as one that arrives as the pass starts.
                    if std::env::var(crate::error::INTERRUPT_HOOK).is_ok_and(|h| h == "cache:0") {
                        INTERRUPTED.store(true, Ordering::SeqCst);
                    }
                    let logits = eval::logits_until(
                        t.network,
                        &data.train.images,
                        |x, _| x.shallow_clone(),
                        || INTERRUPTED.load(Ordering::SeqCst),
                    )
                    .map_err(teacher_failed)?; // [n, classes]
                    logits.ok_or_else(|| {
                        Interrupted::new(
                        "interrupted while caching the teacher's logits, before this run's first \
                         step; no checkpoint was written",
                    )
                    .into()
                    })
                })?)
            }
            (Some(t), false, Some(set)) => {
                let what = format!("{} x{}", aug.spec(), set.k);
                let mut fresh = false;
                let logits = cached_logits(t, &data.split.split_hash, &what, n, || {
                    fresh = true;
                    let mut views = Vec::new();
                    for k in 0..set.k {
                        // Each view is a pass of the teacher over the training set: a Ctrl-C
                        // is answered between its chunks, not after all K views.
                        let interrupted = || {
                            Interrupted::new(format!(
                                "interrupted while caching the teacher's logits (view {} of {}), \
                                 before this run's first step; no checkpoint was written",
                                k + 1,
                                set.k,
                            ))
                        };
                        let v = set.fixed(k, n, device);
                        let logits = eval::logits_until(
                            t.network,
                            &data.train.images,
                            |x, rows| aug.apply(x, table, &v.narrow(0, rows.0, rows.1)),
                            || INTERRUPTED.load(Ordering::SeqCst),
                        )
                        .map_err(teacher_failed)?;
                        views.push(logits.ok_or_else(interrupted)?);
                        // Test hook: `cache:K` acts as a Ctrl-C right after view K is cached.
                        if std::env::var(crate::error::INTERRUPT_HOOK)
                            .is_ok_and(|h| h == format!("cache:{}", k + 1))
                        {
                            INTERRUPTED.store(true, Ordering::SeqCst);
                        }
                    }
                    Ok(Tensor::cat(&views, 0)) // [k * n, classes]
                })?;
                say(&format!(
                    "{} the teacher's logits on {} views of {n} examples in {:.1} s",
                    if fresh { "cached" } else { "reused" },
                    set.k,
                    t_cache.elapsed().as_secs_f64()
                ));
                Some(logits)
            }
            (Some(_), false, None) => {
                say(
                    "augment.views = 0 draws a fresh view every epoch, which no cache can hold: \
                     the teacher runs on every batch",
                );
                None
            }
        };
        let cache_seconds = train_cache
            .as_ref()
            .map(|_| t_cache.elapsed().as_secs_f64());
        let val = eval::try_logits(t.network, &data.val.images).map_err(teacher_failed)?; // [n_val, classes]
        // The teacher's largest |logit| on the validation images, named if the loss diverges.
        let max_logit = val.abs().max().double_value(&[]);
        // A teacher with broken weights (NaN or infinite) would make the first loss NaN,
        // which would read as a divergence of the student.
        for (logits, set) in [
            (Some(&val), "validation"),
            (train_cache.as_ref(), "training"),
        ] {
            if let Some(l) = logits {
                let bad = l
                    .isfinite()
                    .logical_not()
                    .any_dim(1, false)
                    .sum(Kind::Int64)
                    .int64_value(&[]);
                if bad > 0 {
                    return crate::error::usage(format!(
                        "the teacher's logits are not finite (NaN or infinite) in {bad} of its {} \
                         rows on the {set} images: its weights are broken; retrain it, or pass \
                         another --teacher",
                        l.size()[0]
                    ));
                }
            }
        }
        Ok(TeacherSource {
            network: t.network,
            cache: train_cache,
            val,
            max_logit,
            cache_seconds,
        })
    }

    /// The teacher's logits for one batch: `rows` (`[len] i64`, the batch's rows of the
    /// cache) from the cache, else a `no_grad` forward pass on `x`, the images the student
    /// sees.
    ///
    /// # Shapes
    /// `rows: [len] i64`, `x: [len, C·H·W] f32` -> `[len, classes] f32`.
    ///
    /// # Errors
    /// [`Network::try_forward`]'s message, when a TorchScript teacher fails on the batch.
    pub fn logits(&self, rows: &Tensor, x: &Tensor) -> std::result::Result<Tensor, String> {
        match &self.cache {
            Some(c) => Ok(c.index_select(0, rows)),
            None => tch::no_grad(|| self.network.try_forward(x)),
        }
    }
}

/// A teacher that failed on a batch, as the usage error it is (the teacher file is the
/// user's input).
pub fn teacher_failed(e: String) -> anyhow::Error {
    UsageError(format!(
        "the teacher failed: {e}; check that it takes this data's images (model.teacher_input) \
         at any batch size"
    ))
    .into()
}

/// The last teacher cache computed in this process, with its key.
static LAST_CACHE: std::sync::Mutex<Option<(String, Tensor)>> = std::sync::Mutex::new(None);

/// The teacher's training-set logits for `what` (`none`, or the views), computed by
/// `compute` unless the previous run of this process computed them for the same teacher
/// (by SHA-256), training split, views, size and device.
fn cached_logits(
    t: &Teacher,
    split_hash: &str,
    what: &str,
    n: i64,
    compute: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let key = format!("{}|{split_hash}|{what}|{n}|{:?}", t.id, t.network.device());
    let mut last = LAST_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, v)) = last.as_ref()
        && *k == key
    {
        return Ok(v.shallow_clone());
    }
    let v = compute()?;
    *last = Some((key, v.shallow_clone()));
    Ok(v)
}

/// A teacher's |logit| above which a diverged loss is blamed on the teacher rather than
/// the learning rate (a trained classifier's logits stay within a few tens).
pub const TEACHER_LOGIT_SUSPECT: f64 = 1e4;
