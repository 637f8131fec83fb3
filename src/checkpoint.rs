//! Checkpoint files and run folders: safetensors written atomically, read back with
//! every name and shape checked, the resolved config beside them, and a lock so that
//! two processes never write into one run folder.
//!
//! A checkpoint is a safetensors file of f32 tensors named `fc1.weight`, `fc1.bias`, ...
//! whose `__metadata__` records the architecture, the data's shape and classes
//! (`kdtrain.input`, `kdtrain.classes`, see [`DataSpec`]), the epoch, the best validation
//! metric and the resolved config. Every file is written as `.<name>.tmp`, flushed to disk,
//! then renamed over the old one, so a crash or `kill -9` at any moment leaves either the
//! old file or the new one, never a torn one.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use tch::{Device, Kind, Tensor};

use crate::data::{DataSpec, SplitInfo};
use crate::error::UsageError;
use crate::model::{Arch, Network};

/// Metadata keys in the safetensors header.
/// The architecture spec (`mlp:512,256,128`, see [`Arch::parse`]).
pub const META_ARCH: &str = "kdtrain.arch";
/// The role the network was trained for: `teacher`, `student` or `distilled`.
pub const META_ROLE: &str = "kdtrain.role";
pub const META_CONFIG: &str = "kdtrain.config";
pub const META_EPOCH: &str = "kdtrain.epoch";
pub const META_VERSION: &str = "kdtrain.version";

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, `fsync`,
/// rename, then `fsync` of the folder.
///
/// # Errors
/// Names the path. The previous file at `path`, if any, is untouched on error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "cannot write {}: {e}; check free space and permissions",
            path.display()
        );
    }
    Ok(())
}

/// Serialises named f32 tensors (any device) and `metadata` as safetensors bytes.
pub fn to_safetensors(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let host: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let t = t
                .detach()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            let values: Vec<f32> = Vec::try_from(t.flatten(0, -1))?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((name.clone(), shape, bytes))
        })
        .collect::<Result<_>>()?;
    let views = host
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))?;
    sorted_metadata(bytes)
}

/// The same safetensors bytes with the `__metadata__` entries in key order. The crate
/// writes them in `HashMap` order, which changes from process to process, so two
/// identical runs wrote different bytes (and different SHA-256s for the same teacher).
/// Layout: an 8-byte little-endian header length, the JSON header padded with spaces
/// to a multiple of 8 bytes, then the tensors' bytes (offsets relative to their start,
/// so a header of another length keeps them valid).
fn sorted_metadata(bytes: Vec<u8>) -> Result<Vec<u8>> {
    use std::collections::BTreeMap;
    let len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + len])?;
    if let Some(serde_json::Value::Object(meta)) = header.get_mut("__metadata__") {
        let sorted: BTreeMap<String, serde_json::Value> =
            std::mem::take(meta).into_iter().collect();
        *meta = sorted.into_iter().collect();
    }
    let mut json = serde_json::to_vec(&header)?;
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - len);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + len..]);
    Ok(out)
}

/// A checkpoint read from disk.
pub struct Checkpoint {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Reads and parses a safetensors file. Only f32 tensors are accepted.
    ///
    /// # Errors
    /// A missing file (a usage error), or a truncated or corrupt file, naming the path.
    pub fn read(path: &Path) -> Result<Checkpoint> {
        if path.is_dir() {
            return Err(UsageError(format!(
                "checkpoint {} is a folder; pass the model.safetensors inside it",
                path.display()
            ))
            .into());
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(
                    UsageError(format!("checkpoint {} does not exist", path.display())).into(),
                );
            }
            Err(e) => bail!("cannot read checkpoint {}: {e}", path.display()),
        };
        if bytes.starts_with(b"PK\x03\x04") {
            return Err(UsageError(format!(
                "checkpoint {} is a zip archive (a TorchScript or torch.save file), not \
                 safetensors; pass a model.safetensors written by kdtrain",
                path.display()
            ))
            .into());
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "checkpoint {} is truncated or corrupt, or not safetensors at all (an ONNX \
                 export, say) ({e}); pass a model.safetensors written by kdtrain, or train again",
                path.display()
            )
        })?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            anyhow::anyhow!("checkpoint {}: unreadable header ({e})", path.display())
        })?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                bail!(
                    "checkpoint {}: tensor `{name}` is {:?}, expected F32",
                    path.display(),
                    view.dtype()
                );
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            tensors.insert(name, Tensor::from_slice(&values).view(shape.as_slice()));
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }

    /// The architecture recorded in the metadata (`kdtrain.arch`); `None` when the file
    /// has none or an unreadable one. Nothing is guessed from tensor names.
    pub fn arch(&self) -> Option<Arch> {
        Arch::parse(self.metadata.get(META_ARCH)?).ok()
    }

    /// The role recorded in the metadata: `kdtrain.role`, or for checkpoints written
    /// before roles were recorded, the old `kdtrain.arch` values `teacher`/`student`.
    pub fn role(&self) -> Option<&str> {
        self.metadata
            .get(META_ROLE)
            .map(String::as_str)
            .or_else(|| {
                self.metadata
                    .get(META_ARCH)
                    .map(String::as_str)
                    .filter(|a| matches!(*a, "teacher" | "student"))
            })
    }

    /// The data the network takes (`kdtrain.input`, `kdtrain.classes`); Fashion-MNIST's
    /// for a checkpoint written before they were recorded.
    ///
    /// # Errors
    /// A [`UsageError`] naming the file and the key whose value is unreadable.
    pub fn data_spec(&self) -> Result<DataSpec> {
        DataSpec::from_metadata(&self.metadata).map_err(|e| {
            UsageError(format!(
                "checkpoint {}: {e}; pass a model.safetensors written by kdtrain",
                self.path.display()
            ))
            .into()
        })
    }

    /// How the network's inputs were normalised (`kdtrain.normalize`); pixels / 255 for a
    /// checkpoint written before it was recorded.
    ///
    /// # Errors
    /// A [`UsageError`] naming the file and the key whose value is unreadable.
    pub fn normalize(&self) -> Result<crate::data::Normalize> {
        let channels = self.data_spec()?.channels;
        crate::data::Normalize::from_metadata(&self.metadata, channels).map_err(|e| {
            UsageError(format!(
                "checkpoint {}: {e}; pass a model.safetensors written by kdtrain",
                self.path.display()
            ))
            .into()
        })
    }

    /// The validation split the network was trained with, if recorded.
    pub fn split(&self) -> Option<SplitInfo> {
        SplitInfo::from_metadata(&self.metadata)
    }

    /// Copies the weights into `model`, checking that the checkpoint was trained on data
    /// of the model's [`DataSpec`] and that every tensor is present with the right shape.
    ///
    /// Then adds the logit shifts of [`Checkpoint::logit_bias`] to the output bias.
    ///
    /// # Errors
    /// A [`UsageError`] naming both data specs ([`crate::data::spec_mismatch`]); or names
    /// the tensor and both shapes; or names a tensor that holds NaN or infinite values.
    pub fn load_into(&self, model: &dyn Network) -> Result<()> {
        let spec = self.data_spec()?;
        let what = format!("checkpoint {}", self.path.display());
        if let Some(e) = crate::data::spec_mismatch(&what, &spec, model.data_spec()) {
            return Err(UsageError(e).into());
        }
        let arch = model.arch().spec();
        let holds = || {
            self.role()
                .map(|r| {
                    format!(
                        "a {r} ({})",
                        self.arch().map(|a| a.spec()).unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "another model".into())
        };
        tch::no_grad(|| -> Result<()> {
            for (name, mut p) in model.named_state() {
                let Some(src) = self.tensors.get(&name) else {
                    bail!(
                        "checkpoint {} has no tensor `{name}` that {arch} needs; it holds {}",
                        self.path.display(),
                        holds()
                    );
                };
                if src.size() != p.size() {
                    bail!(
                        "checkpoint {}: tensor `{name}` has shape {:?} but {arch} expects {:?}; \
                         it holds {}",
                        self.path.display(),
                        src.size(),
                        p.size(),
                        holds()
                    );
                }
                if !bool::try_from(src.isfinite().all()).unwrap_or(false) {
                    bail!(
                        "checkpoint {}: tensor `{name}` holds NaN or infinite values; the checkpoint \
                         is corrupt or comes from a diverged run; use another one or train again",
                        self.path.display()
                    );
                }
                // Batch norm divides by sqrt(running_var + eps): a negative variance gives
                // NaN logits for every image.
                if name.ends_with("running_var")
                    && bool::try_from(src.lt(0.0).any()).unwrap_or(true)
                {
                    bail!(
                        "checkpoint {}: tensor `{name}` holds negative variances; the \
                         checkpoint is corrupt; use another one or train again",
                        self.path.display()
                    );
                }
                p.copy_(src);
            }
            Ok(())
        })?;
        // A run that omitted classes stores their logit shift beside the weights as
        // trained; every network built from the file adds it once, here.
        self.logit_bias()?
            .fold_into(model)
            .with_context(|| format!("checkpoint {}", self.path.display()))
    }

    /// The logit shifts recorded in the metadata ([`crate::bias::META_LOGIT_BIAS`]);
    /// empty when there are none.
    ///
    /// # Errors
    /// A [`UsageError`] naming the file and the key whose value is unreadable.
    pub fn logit_bias(&self) -> Result<crate::bias::LogitBias> {
        let classes = self.data_spec()?.classes();
        crate::bias::LogitBias::from_metadata(&self.metadata, classes).map_err(|e| {
            UsageError(format!(
                "checkpoint {}: {e}; pass a model.safetensors written by kdtrain",
                self.path.display()
            ))
            .into()
        })
    }

    /// Builds the network this checkpoint records (`kdtrain.arch`, for the data of
    /// [`Checkpoint::data_spec`]) and loads it.
    ///
    /// # Errors
    /// A usage error when the metadata names no architecture or an unreadable data spec,
    /// or as [`Checkpoint::load_into`].
    pub fn network(&self, device: Device) -> Result<Box<dyn Network>> {
        let Some(arch) = self.arch() else {
            return Err(UsageError(format!(
                "checkpoint {} records no architecture (metadata `{META_ARCH}` is {}); \
                 pass a model.safetensors written by kdtrain",
                self.path.display(),
                match self.metadata.get(META_ARCH) {
                    Some(a) => format!("{a:?}"),
                    None => "missing".into(),
                }
            ))
            .into());
        };
        self.model(&arch, device)
    }

    /// Builds a network of the expected architecture, for the data of
    /// [`Checkpoint::data_spec`], and loads this checkpoint into it.
    ///
    /// # Errors
    /// As [`Checkpoint::data_spec`] and [`Checkpoint::load_into`] (names the tensor and
    /// both shapes).
    pub fn model(&self, expected: &Arch, device: Device) -> Result<Box<dyn Network>> {
        let model = expected.build(&self.data_spec()?, device);
        self.load_into(model.as_ref())?;
        Ok(model)
    }
}

/// The metadata every checkpoint carries: architecture, role, epoch, resolved config,
/// version, and the validation split (when known).
pub fn metadata(
    arch: &Arch,
    role: &str,
    config_toml: &str,
    epoch: usize,
    split: Option<&SplitInfo>,
) -> HashMap<String, String> {
    let mut m = HashMap::from([
        (META_ARCH.to_string(), arch.spec()),
        (META_ROLE.to_string(), role.to_string()),
        (META_CONFIG.to_string(), config_toml.to_string()),
        (META_EPOCH.to_string(), epoch.to_string()),
        (
            META_VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    if let Some(s) = split {
        m.extend(s.to_metadata());
    }
    m
}

/// Saves `model`'s weights to `path` atomically, with `meta` and the model's
/// [`DataSpec`] (`kdtrain.input`, `kdtrain.classes`) as metadata.
pub fn save_model(
    path: &Path,
    model: &dyn Network,
    mut meta: HashMap<String, String>,
) -> Result<()> {
    meta.extend(model.data_spec().to_metadata());
    write_atomic(path, &to_safetensors(&model.named_state(), meta)?)
}

/// An exclusive lock on a run folder, held for the life of the value (an OS file lock
/// on `<run>/run.lock`, released by the kernel even after `kill -9`).
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock.
    ///
    /// # Errors
    /// A usage error when another process holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        let path = run_dir.join("run.lock");
        RunLock::try_file(&path)?.ok_or_else(|| {
            UsageError(format!(
                "run folder {} is in use by another kdtrain process (lock {} is held); \
                 wait for it to finish or choose another --run-name",
                run_dir.display(),
                path.display()
            ))
            .into()
        })
    }

    /// Takes an OS file lock on `path` (created if missing, our pid written into it), or
    /// `None` when another process holds it.
    ///
    /// # Errors
    /// `path` cannot be created (named).
    pub fn try_file(path: &Path) -> Result<Option<RunLock>> {
        use fs2::FileExt;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot create lock file {}", path.display()))?;
        if file.try_lock_exclusive().is_err() {
            return Ok(None);
        }
        let mut f = &file;
        let _ = f.write_all(format!("{}\n", std::process::id()).as_bytes());
        Ok(Some(RunLock { _file: file }))
    }
}

/// The SHA-256 of a safetensors file's tensors alone, as 64 hex digits: for each tensor
/// in name order, its name, dtype, shape and bytes. Two checkpoints with the same weights
/// and other metadata (a run's folder, say) have the same value: what
/// `teachers/fashion-mnist-cnn.epoch1.sha256` records of the shipped teacher's recipe.
///
/// # Errors
/// The file cannot be read or is not safetensors (named).
pub fn weights_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a safetensors file: {e}", path.display()))?;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        let v = st.tensor(&n)?;
        h.update(n.as_bytes());
        h.update(format!("{:?}{:?}", v.dtype(), v.shape()).as_bytes());
        h.update(v.data());
    }
    Ok(crate::hex(&h.finalize()))
}

/// The SHA-256 of the file at `path`, as 64 hex digits: which teacher (or checkpoint) a
/// run used, whatever its path.
///
/// # Errors
/// The file cannot be read (named).
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(crate::hex(&Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kdtrain-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        let t = vec![
            ("b".to_string(), Tensor::from_slice(&[1.0f32, 2.0])),
            ("a".to_string(), Tensor::from_slice(&[3.0f32])),
        ];
        // Each HashMap has its own random hasher, so each iterates its 20 keys in its
        // own order.
        let meta = || -> HashMap<String, String> {
            (0..20)
                .map(|i| (format!("key{i}"), format!("value {i}")))
                .collect()
        };
        let first = to_safetensors(&t, meta()).unwrap();
        for _ in 0..5 {
            assert_eq!(to_safetensors(&t, meta()).unwrap(), first);
        }
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("b").unwrap().data().len(), 8);
        let (_, parsed) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        assert_eq!(parsed.metadata().as_ref().unwrap(), &meta());
        assert_eq!(u64::from_le_bytes(first[..8].try_into().unwrap()) % 8, 0);
    }

    #[test]
    fn save_and_load_round_trip() {
        let d = tmpdir("rt");
        let m = Arch::student().build(&DataSpec::fashion_mnist(), Device::Cpu);
        let p = d.join("model.safetensors");
        let meta = metadata(&Arch::student(), "student", "seed = 1\n", 3, None);
        save_model(&p, m.as_ref(), meta).unwrap();
        let c = Checkpoint::read(&p).unwrap();
        assert_eq!(c.arch(), Some(Arch::student()));
        assert_eq!(c.role(), Some("student"));
        assert_eq!(c.metadata[META_EPOCH], "3");
        let m2 = c.network(Device::Cpu).unwrap();
        for (a, b) in m.parameters().iter().zip(m2.parameters()) {
            assert!(a.equal(&b));
        }
        assert!(!d.join(".model.safetensors.tmp").exists());
    }

    #[test]
    fn student_as_teacher_names_the_tensor_and_shapes() {
        let d = tmpdir("shape");
        let p = d.join("s.safetensors");
        let mut meta = metadata(&Arch::student(), "student", "", 1, None);
        meta.remove(META_ARCH);
        save_model(
            &p,
            Arch::student()
                .build(&DataSpec::fashion_mnist(), Device::Cpu)
                .as_ref(),
            meta,
        )
        .unwrap();
        let c = Checkpoint::read(&p).unwrap();
        let e = c
            .model(&Arch::teacher(), Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("fc1.weight") && e.contains("[128, 784]") && e.contains("[512, 784]"),
            "{e}"
        );
        // Without `kdtrain.arch` nothing is guessed.
        assert_eq!(c.arch(), None);
        let e = c.network(Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("records no architecture"), "{e}");
    }

    #[test]
    fn truncated_file_is_an_error_not_a_panic() {
        let d = tmpdir("trunc");
        let p = d.join("m.safetensors");
        save_model(
            &p,
            Arch::student()
                .build(&DataSpec::fashion_mnist(), Device::Cpu)
                .as_ref(),
            metadata(&Arch::student(), "student", "", 1, None),
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = Checkpoint::read(&p).err().unwrap().to_string();
            assert!(e.contains("truncated or corrupt"), "cut {cut}: {e}");
        }
        // The start of an ONNX file (protobuf: ir_version, producer_name "pytorch").
        std::fs::write(
            &p,
            b"\x08\x08\x12\x07pytorch\x1a\x052.11.0:\xa4\x8f\x06\n\x0b",
        )
        .unwrap();
        let e = Checkpoint::read(&p).err().unwrap().to_string();
        assert!(e.contains("not safetensors at all (an ONNX export"), "{e}");
        assert!(
            e.contains("pass a model.safetensors written by kdtrain"),
            "{e}"
        );
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tmpdir("lock");
        let l = RunLock::acquire(&d).unwrap();
        // fs2 locks are per open file description, so a second open in the same process conflicts.
        let e = RunLock::acquire(&d).err().unwrap().to_string();
        assert!(e.contains("in use"), "{e}");
        drop(l);
        RunLock::acquire(&d).unwrap();
    }

    /// A checkpoint records its data spec and is rebuilt for it; one without the keys
    /// is read as Fashion-MNIST's; a bad value names the key; a checkpoint of one spec
    /// does not load into a model of another.
    #[test]
    fn data_spec_round_trip_default_and_mismatch() {
        let d = tmpdir("spec");
        let spec = DataSpec {
            channels: 3,
            height: 32,
            width: 32,
            class_names: ["cat", "dog", "ship", "car", "frog"]
                .map(String::from)
                .to_vec(),
        };
        let p = d.join("colour.safetensors");
        tch::manual_seed(3);
        let m = Arch::cnn().build(&spec, Device::Cpu);
        save_model(
            &p,
            m.as_ref(),
            metadata(&Arch::cnn(), "teacher", "", 1, None),
        )
        .unwrap();
        let c = Checkpoint::read(&p).unwrap();
        assert_eq!(c.metadata[crate::data::META_INPUT], "3x32x32");
        assert_eq!(
            c.metadata[crate::data::META_LABEL_NAMES],
            r#"["cat","dog","ship","car","frog"]"#
        );
        assert_eq!(c.data_spec().unwrap(), spec);
        let n = c.network(Device::Cpu).unwrap();
        assert_eq!(n.data_spec(), &spec);
        let x = Tensor::rand([2, 3 * 32 * 32], (Kind::Float, Device::Cpu));
        assert_eq!(n.forward(&x).size(), vec![2, 5]);
        assert!(n.forward(&x).equal(&m.forward(&x)));
        // Saving the same model twice writes the same bytes (metadata in key order).
        let again = d.join("again.safetensors");
        save_model(
            &again,
            m.as_ref(),
            metadata(&Arch::cnn(), "teacher", "", 1, None),
        )
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&again).unwrap());

        // Without the two keys: Fashion-MNIST.
        let fm = DataSpec::fashion_mnist();
        let p = d.join("old.safetensors");
        let student = Arch::student().build(&fm, Device::Cpu);
        save_model(&p, student.as_ref(), HashMap::new()).unwrap();
        let mut c = Checkpoint::read(&p).unwrap();
        c.metadata.remove(crate::data::META_INPUT);
        c.metadata.remove(crate::data::META_LABEL_NAMES);
        c.metadata.insert(META_ARCH.into(), "mlp:128".into());
        assert_eq!(c.data_spec().unwrap(), fm);
        assert_eq!(c.network(Device::Cpu).unwrap().data_spec(), &fm);

        // A bad value names the file and the key.
        c.metadata
            .insert(crate::data::META_INPUT.into(), "1x0x28".into());
        let e = c.network(Device::Cpu).err().unwrap().to_string();
        assert!(
            e.contains("old.safetensors") && e.contains("kdtrain.input"),
            "{e}"
        );
        c.metadata
            .insert(crate::data::META_INPUT.into(), fm.describe());
        c.metadata
            .insert(crate::data::META_LABEL_NAMES.into(), "[]".into());
        let e = c.network(Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("kdtrain.classes"), "{e}");

        // The colour checkpoint into a Fashion-MNIST model: refused, naming both.
        let c = Checkpoint::read(&d.join("colour.safetensors")).unwrap();
        let e = c
            .load_into(Arch::cnn().build(&fm, Device::Cpu).as_ref())
            .unwrap_err()
            .to_string();
        assert!(e.contains("3x32x32") && e.contains("1x28x28"), "{e}");
    }
}
