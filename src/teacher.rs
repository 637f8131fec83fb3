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
use crate::ensemble::{self, Combine};
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

/// What a distilled run records in `meta.json` about its teachers: `teachers`, one
/// [`LoadedTeacher::meta`] each; with one teacher also its keys at the top level (as
/// before ensembles); with several, `ensemble` (how they are combined, in words and as
/// its config value) and `ensemble_temperature`.
pub fn teachers_meta(teachers: &[LoadedTeacher], how: Combine, t: f64) -> serde_json::Value {
    let list: Vec<serde_json::Value> = teachers.iter().map(|t| t.meta()).collect();
    let mut v = match teachers {
        [one] => one.meta(),
        _ => serde_json::json!({
            "ensemble": how.key(),
            "ensemble_description": how.describe(t),
            "ensemble_temperature": t,
        }),
    };
    v["teachers"] = serde_json::Value::Array(list);
    v
}

/// The SHA-256 of each teacher a run's `meta.json` records, in order (`teachers`, or the
/// one `teacher_sha256` of runs made before ensembles).
pub fn recorded_teacher_shas(meta: &serde_json::Value) -> Vec<String> {
    match meta["teachers"].as_array() {
        Some(list) => list
            .iter()
            .filter_map(|t| t["teacher_sha256"].as_str().map(String::from))
            .collect(),
        None => meta["teacher_sha256"]
            .as_str()
            .map(|s| vec![s.to_string()])
            .unwrap_or_default(),
    }
}

/// The teachers for distillation: `distill.teachers`, or `distill.teacher`, or the newest
/// teacher in the out-dir; each read, checked against the data of `spec` and frozen
/// before training, and no file twice (by SHA-256, so a copy counts).
///
/// # Errors
/// Usage errors naming the file: none found, unreadable, not a teacher, wrong shapes,
/// another data spec, the same teacher twice.
pub fn load_teachers(s: &Settings, config: &Config, spec: &DataSpec) -> Result<Vec<LoadedTeacher>> {
    let paths = config.distill.teacher_paths();
    if paths.len() <= 1 {
        return Ok(vec![load_teacher(s, config, spec)?]);
    }
    let mut loaded: Vec<LoadedTeacher> = Vec::new();
    for p in paths {
        let mut one = config.clone();
        one.distill.teacher = p;
        one.distill.teachers.clear();
        let t = load_teacher(s, &one, spec)?;
        if let Some(same) = loaded.iter().find(|o| o.sha256 == t.sha256) {
            return usage(format!(
                "--teacher {} and --teacher {} are the same file (SHA-256 {}): an ensemble's \
                 members must differ; pass each teacher once",
                same.path.display(),
                t.path.display(),
                &t.sha256[..16]
            ));
        }
        loaded.push(t);
    }
    // Members that disagree with each other on the split: each is also checked against
    // the run's (check_teacher_split), but this names the pair.
    for w in loaded.windows(2) {
        if let (Some(a), Some(b)) = (&w[0].split, &w[1].split)
            && !a.same_as(b)
        {
            return usage(format!(
                "the teachers were trained with different validation splits: {} on {}, {} on \
                 {}; distil an ensemble of teachers that share one split",
                w[0].path.display(),
                a.describe(),
                w[1].path.display(),
                b.describe()
            ));
        }
    }
    Ok(loaded)
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
    let sha256 = crate::checkpoint::file_sha256(&path).context("teacher")?;
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

/// The frozen teacher of a distillation run: one network or an ensemble of them (each
/// with its own VarStore, frozen, run in eval mode under `no_grad`), how an ensemble's
/// logits are combined, and whether its training-set logits are cached.
pub struct Teacher<'a> {
    /// The members, in the order given; one for a single teacher.
    pub members: Vec<&'a dyn Network>,
    /// What identifies each member's weights (its file's SHA-256): the key under which
    /// its cached logits are kept for the next run of this process (the seeds and
    /// objectives of a `reproduce` share them).
    pub ids: Vec<String>,
    /// How the members' logits are combined ([`ensemble::combine`]).
    pub combine: Combine,
    /// The temperature of that combination: the objective's T, or 1.
    pub temperature: f64,
    /// Compute the logits of every training example once (`[n, classes] f32` per member,
    /// keyed by row of the training set) instead of a forward pass per batch. Any
    /// objective reads the same logits, so the cache serves them all.
    pub cache: bool,
}

impl<'a> Teacher<'a> {
    /// One teacher network, `id` its file's SHA-256.
    pub fn single(network: &'a dyn Network, id: String, cache: bool) -> Teacher<'a> {
        Teacher {
            members: vec![network],
            ids: vec![id],
            combine: Combine::Probabilities,
            temperature: 1.0,
            cache,
        }
    }

    fn device(&self) -> tch::Device {
        self.members[0].device()
    }

    /// The ensemble's logits from its members' ([`ensemble::combine`]).
    fn combined(&self, members: &[Tensor]) -> Tensor {
        ensemble::combine(members, self.combine, self.temperature)
    }
}

/// Where a distillation run's teacher logits come from, prepared once before the first
/// step: the cache (when [`Teacher::cache`] and the views allow one) or the networks.
pub struct TeacherSource<'a> {
    members: Vec<&'a dyn Network>,
    combine: Combine,
    temperature: f64,
    /// The (combined) logits, `[n, classes] f32`, or `[k * n, classes] f32` with K fixed
    /// views; `None`: a forward pass of every member per batch.
    cache: Option<Tensor>,
    /// The teacher's (combined) logits on the validation images, `[n_val, classes] f32`.
    pub val: Tensor,
    /// Its largest |logit| there, named if the loss diverges.
    pub max_logit: f64,
    /// Seconds the cache took to compute (every member's and view's); `None` without a
    /// cache.
    pub cache_seconds: Option<f64>,
}

impl<'a> TeacherSource<'a> {
    /// Computes (or reuses) the cache of each member's logits on the training images
    /// (each of `view_set`'s fixed views of them, with augmentation `aug`), combines the
    /// members' into the ensemble's once, computes the validation logits, and refuses a
    /// teacher whose logits are not finite. `table` is `aug`'s shift table; `say` prints
    /// status lines.
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
        let device = t.device();
        let view_set = &view_set;
        // The cache is keyed by row of `data.train`, i.e. by example, not by batch
        // position (with augmentation, by (view, example): row k * n + i holds view k of
        // example i); so by the training set's rows too, which a transfer subset changes.
        let rows_key = rows_hash(&data.train_index);
        let t_cache = Instant::now();
        let members = t.members.len();
        let of = |i: usize| match members {
            1 => String::new(),
            m => format!(" (teacher {} of {m})", i + 1),
        };
        let train_cache = match (Some(t).filter(|t| t.cache), aug.is_none(), &view_set) {
            (None, _, _) => None,
            (Some(t), true, _) => {
                let mut each = Vec::new();
                for (i, (net, id)) in t.members.iter().zip(&t.ids).enumerate() {
                    each.push(cached_logits(id, *net, &rows_key, "none", n, || {
                        // A Ctrl-C or SIGTERM is answered between chunks: a big teacher's pass
                        // can outlast Slurm's 30 s between SIGTERM and SIGKILL. Test hook:
                        // `cache:0` acts as one that arrives as the pass starts.
                        if std::env::var(crate::error::INTERRUPT_HOOK).is_ok_and(|h| h == "cache:0")
                        {
                            INTERRUPTED.store(true, Ordering::SeqCst);
                        }
                        let logits = eval::logits_until(
                            *net,
                            &data.train.images,
                            |x, _| x.shallow_clone(),
                            || INTERRUPTED.load(Ordering::SeqCst),
                        )
                        .map_err(teacher_failed)?; // [n, classes]
                        logits.ok_or_else(|| {
                            Interrupted::new(format!(
                                "interrupted while caching the teacher's logits{}, before this \
                                 run's first step; no checkpoint was written",
                                of(i)
                            ))
                            .into()
                        })
                    })?);
                }
                Some(t.combined(&each))
            }
            (Some(t), false, Some(set)) => {
                let what = format!("{} x{}", aug.spec(), set.k);
                let mut fresh = false;
                let mut each = Vec::new();
                for (i, (net, id)) in t.members.iter().zip(&t.ids).enumerate() {
                    each.push(cached_logits(id, *net, &rows_key, &what, n, || {
                        fresh = true;
                        let mut views = Vec::new();
                        for k in 0..set.k {
                            // Each view is a pass of the teacher over the training set: a
                            // Ctrl-C is answered between its chunks, not after all K views.
                            let interrupted = || {
                                Interrupted::new(format!(
                                    "interrupted while caching the teacher's logits{} (view {} \
                                     of {}), before this run's first step; no checkpoint was \
                                     written",
                                    of(i),
                                    k + 1,
                                    set.k,
                                ))
                            };
                            let v = set.fixed(k, n, device);
                            let logits = eval::logits_until(
                                *net,
                                &data.train.images,
                                |x, rows| aug.apply(x, table, &v.narrow(0, rows.0, rows.1)),
                                || INTERRUPTED.load(Ordering::SeqCst),
                            )
                            .map_err(teacher_failed)?;
                            views.push(logits.ok_or_else(interrupted)?);
                            // Test hook: `cache:K` acts as a Ctrl-C right after view K is
                            // cached.
                            if std::env::var(crate::error::INTERRUPT_HOOK)
                                .is_ok_and(|h| h == format!("cache:{}", k + 1))
                            {
                                INTERRUPTED.store(true, Ordering::SeqCst);
                            }
                        }
                        Ok(Tensor::cat(&views, 0)) // [k * n, classes]
                    })?);
                }
                say(&format!(
                    "{} the teacher{}'s logits on {} views of {n} examples in {:.1} s",
                    if fresh { "cached" } else { "reused" },
                    match members {
                        1 => String::new(),
                        m => format!("s' ({m})"),
                    },
                    set.k,
                    t_cache.elapsed().as_secs_f64()
                ));
                Some(t.combined(&each))
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
        let mut each_val = Vec::new();
        for net in &t.members {
            each_val.push(eval::try_logits(*net, &data.val.images).map_err(teacher_failed)?);
        }
        let val = t.combined(&each_val); // [n_val, classes]
        // The teacher's largest |logit| on the validation images, named if the loss
        // diverges.
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
            members: t.members.clone(),
            combine: t.combine,
            temperature: t.temperature,
            cache: train_cache,
            val,
            max_logit,
            cache_seconds,
        })
    }

    /// The teacher's logits for one batch: `rows` (`[len] i64`, the batch's rows of the
    /// cache) from the cache, else a `no_grad` forward pass of each member on `x`, the
    /// images the student sees, combined.
    ///
    /// # Shapes
    /// `rows: [len] i64`, `x: [len, C·H·W] f32` -> `[len, classes] f32`.
    ///
    /// # Errors
    /// [`Network::try_forward`]'s message, when a TorchScript teacher fails on the batch.
    pub fn logits(&self, rows: &Tensor, x: &Tensor) -> std::result::Result<Tensor, String> {
        match &self.cache {
            Some(c) => Ok(c.index_select(0, rows)),
            None => tch::no_grad(|| {
                let each = self
                    .members
                    .iter()
                    .map(|m| m.try_forward(x))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(ensemble::combine(&each, self.combine, self.temperature))
            }),
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

/// The first 16 hex digits of the SHA-256 of `rows` (little-endian i64): which
/// training images, in which order, a cache holds.
fn rows_hash(rows: &[i64]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for r in rows {
        h.update(r.to_le_bytes());
    }
    crate::hex(&h.finalize())[..16].to_string()
}

/// The teacher caches computed last in this process, newest last, with their keys: an
/// ensemble's members each have one.
static LAST_CACHES: std::sync::Mutex<Vec<(String, Tensor)>> = std::sync::Mutex::new(Vec::new());

/// How many caches [`LAST_CACHES`] keeps (an ensemble's members, and a few more).
const KEEP_CACHES: usize = 8;

/// One teacher's training-set logits for `what` (`none`, or the views), computed by
/// `compute` unless an earlier run of this process computed them for the same teacher
/// (`id`, its SHA-256), training rows (`rows_key`), views, size and device.
fn cached_logits(
    id: &str,
    network: &dyn Network,
    rows_key: &str,
    what: &str,
    n: i64,
    compute: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let key = format!("{id}|{rows_key}|{what}|{n}|{:?}", network.device());
    {
        let last = LAST_CACHES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, v)) = last.iter().find(|(k, _)| *k == key) {
            return Ok(v.shallow_clone());
        }
    }
    let v = compute()?;
    let mut last = LAST_CACHES.lock().unwrap_or_else(|e| e.into_inner());
    last.push((key, v.shallow_clone()));
    let excess = last.len().saturating_sub(KEEP_CACHES);
    last.drain(..excess);
    Ok(v)
}

/// A teacher's |logit| above which a diverged loss is blamed on the teacher rather than
/// the learning rate (a trained classifier's logits stay within a few tens).
pub const TEACHER_LOGIT_SUSPECT: f64 = 1e4;
